"""Prefill scheduler (disaggregated mode): FCFS prefill batches under `max_num_seqs` and
`max_num_batched_tokens` (and `prefill_saturation_tokens` past the first prompt); the forward
samples token #1. A prefilled request keeps its blocks until a decode instance has pulled its KV
cache, so a slow decode side back-pressures prefill.

    waiting --schedule--> running (prefilling) --token #1--> running (prefilled, awaiting a pull)
        --release (migration starts)--> gone from this scheduler; its blocks stay allocated
        --free_blocks (migration done or failed)--> blocks back on the free list
"""
from __future__ import annotations

import logging
import time

from distllm.core.block_manager import AllocStatus
from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler import Scheduler, scheduled_request
from distllm.core.scheduler_output import ModelRunnerOutput, SchedulerOutput
from distllm.request import LifecycleEvent

logger = logging.getLogger(__name__)


class PrefillScheduler(Scheduler):
    """Prefill-only instance. `running` holds prefilling and prefilled-but-unmigrated requests."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._newly_prefilled: list[Request] = []  # prefilled since the last pop_prefilled()

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_request_ids=self._take_finished_ids())
        budget = self.config.max_num_batched_tokens
        now = time.monotonic()
        while self.waiting and len(out.prefills) < self.config.max_num_seqs:
            request = self.waiting[0]
            if request.num_tokens > budget or not self.config.admits_prefill(
                    self.config.max_num_batched_tokens - budget, request.num_tokens):
                break
            status = self.block_manager.can_allocate(request)
            if status is AllocStatus.LATER:
                break  # NOTE: back-pressure: unmigrated requests still hold their blocks
            if status is AllocStatus.NEVER:
                self._ignore(request)
                continue
            self.waiting.popleft()
            self.block_manager.allocate(request)
            self._start_prefill(request, now)
            out.prefills.append(scheduled_request(request))
            budget -= request.num_tokens
        return self._mark_inflight(out)

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           model_runner_output: ModelRunnerOutput) -> list[Request]:
        updated = super().update_from_output(scheduler_output, model_runner_output)
        self._newly_prefilled += [r for r in updated if not r.is_finished]
        return updated

    def pop_prefilled(self) -> list[Request]:
        """Requests that finished their prefill since the last call and wait for a pull."""
        prefilled, self._newly_prefilled = self._newly_prefilled, []
        return [r for r in prefilled if r.request_id in self.requests]

    def release(self, request: Request) -> list[int]:
        """Hand the request over to a migration: it leaves this scheduler, its block ids are
        returned and stay allocated until `free_blocks`."""
        self.running.remove(request)
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)
        block_ids, request.block_table = request.block_table, []
        return block_ids

    def free_blocks(self, block_ids: list[int]) -> None:
        for block_id in reversed(block_ids):
            self.block_manager.device.free(block_id)

    @property
    def num_pending_tokens(self) -> int:
        """Prompt tokens queued or being prefilled (the router's load measure)."""
        return sum(r.num_tokens for r in self.waiting) + sum(
            r.num_tokens for r in self.running if r.is_prefilling)

    @staticmethod
    def _record_prefill_end(request: Request, now: float) -> None:
        request.is_prefilling = False
        request.lifetime.record(LifecycleEvent.PREFILL_END, now)

    def _ignore(self, request: Request) -> None:
        request.error = (f"{request.num_tokens} tokens need more KV blocks than the prefill "
                         f"cache has ({self.block_manager.num_blocks})")
        logger.warning("request %s ignored: %s", request.request_id, request.error)
        self._finish(request, RequestStatus.FINISHED_IGNORED)
