"""The scheduler interface every stage scheduler (colocated, and later prefill / decode) implements,
with the bookkeeping they share: the waiting queue, the running batch, finishing requests."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque

from distllm.config import SchedulerConfig
from distllm.core.block_manager import BlockManager
from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from distllm.request import LifecycleEvent


class Scheduler(ABC):
    """Decides, step by step, which requests run and which KV blocks they use.

    One step is `schedule()` -> (the worker runs the SchedulerOutput) -> `update_from_output()`.
    Invariant: a request is in exactly one of `waiting`, `running`, `swapped`, or finished; only
    running (device) and swapped (CPU) requests hold blocks.
    """

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 max_model_len: int) -> None:
        self.config = config
        self.block_manager = block_manager
        self.max_model_len = max_model_len
        self.requests: dict[str, Request] = {}  # request id -> unfinished request
        self.waiting: deque[Request] = deque()  # FCFS; preempted requests go back to the head
        self.running: list[Request] = []  # admission order, oldest first
        self.swapped: deque[Request] = deque()
        self._finished_ids: list[str] = []  # finished since the last schedule(), for the worker

    @abstractmethod
    def schedule(self) -> SchedulerOutput:
        """Pick this step's batch; allocate, append, swap or preempt blocks to make it fit."""

    @abstractmethod
    def update_from_output(self, scheduler_output: SchedulerOutput,
                           model_runner_output: ModelRunnerOutput) -> list[Request]:
        """Apply the sampled tokens, check stop conditions, free finished requests.
        Returns the requests that got a token this step (finished ones included)."""

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already running")
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_requests(self, request_ids: str | list[str], status: RequestStatus) -> None:
        """Finish (e.g. abort, or stop on a stop string) requests; unknown ids are ignored."""
        ids = [request_ids] if isinstance(request_ids, str) else request_ids
        for request_id in ids:
            request = self.requests.get(request_id)
            if request is not None:
                self._finish(request, status)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.requests)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        assert status.is_finished, status
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.SWAPPED:
            self.swapped.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_manager.free(request)
        request.status = status
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)
        if request.lifetime.get(LifecycleEvent.PREFILL_END) is not None:
            request.lifetime.record(LifecycleEvent.DECODE_END, time.monotonic())

    def _take_finished_ids(self) -> list[str]:
        ids, self._finished_ids = self._finished_ids, []
        return ids
