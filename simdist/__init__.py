"""simdist: discrete-event simulator, latency models and placement planner for distllm."""
from __future__ import annotations

__all__ = ["ClusterSpec", "InstanceSpec", "SchedulerSpec", "load_profile", "make_workload",
           "simulate"]

from simdist.cluster import ClusterSpec, InstanceSpec, SchedulerSpec, simulate
from simdist.profile import load_profile
from simdist.workload import make_workload
