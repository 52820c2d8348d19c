"""Profiler: times the real engine's steps on a grid and fits simdist's latency profile."""
from __future__ import annotations

from distllm.profiler.grid import ProfileGridConfig
from distllm.profiler.profiler import ProfileRun, profile_model, to_profile

__all__ = ["ProfileGridConfig", "ProfileRun", "profile_model", "to_profile"]
