"""Control plane (pure Python): block manager, schedulers and the scheduler-output contracts."""
from __future__ import annotations

from distllm.core.block_manager import AllocStatus, BlockManager
from distllm.core.colocated_scheduler import ColocatedScheduler
from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler import Scheduler
from distllm.core.scheduler_output import ModelRunnerOutput, ScheduledRequest, SchedulerOutput

__all__ = ["AllocStatus", "BlockManager", "ColocatedScheduler", "ModelRunnerOutput", "Request",
           "RequestStatus", "ScheduledRequest", "Scheduler", "SchedulerOutput"]
