"""Decode scheduler (disaggregated mode): continuous batching over requests whose KV cache was
pulled from a prefill instance.

    (prefilled elsewhere) --can_pull + start_migration--> migrating (blocks allocated here)
        --finish_migration--> waiting (holds blocks) --admit--> running --stop--> FINISHED_*
    running --no free slot--> swapped (CPU) or, when swap space is exhausted, waiting without
        blocks (recompute: prefilled again here, prompt + outputs so far)

A request is pulled only while the migrated-but-waiting requests hold less than
`pull_threshold` of the blocks and its own blocks fit above the watermark. The swap, preemption
and decode-step mechanics are the colocated scheduler's (shared through subclassing), pipelined
decode included (with pp > 1 each step decodes the running requests not in flight, at most its
share of them).
"""
from __future__ import annotations

import time

from distllm.config import SchedulerConfig
from distllm.core.block_manager import AllocStatus, BlockManager
from distllm.core.colocated_scheduler import ColocatedScheduler
from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler import scheduled_request
from distllm.core.scheduler_output import SchedulerOutput
from distllm.request import LifecycleEvent


class DecodeScheduler(ColocatedScheduler):
    """Decode-only instance fed by KV migrations."""

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager, max_model_len: int,
                 pull_threshold: float = 0.5, num_micro_batches: int = 1,
                 lookahead: bool = False) -> None:
        super().__init__(config, block_manager, max_model_len, num_micro_batches, lookahead)
        self.pull_threshold = pull_threshold
        self.migrating: dict[str, Request] = {}  # request id -> request whose KV is in flight
        self._abort_on_arrival: set[str] = set()  # ids aborted while their KV was in flight

    def can_pull(self, request: Request) -> AllocStatus:
        """Whether to start pulling `request` now (OK), later, or never (it cannot fit)."""
        status = self.block_manager.can_allocate(request)
        # NOTE: swapped requests come back first; and the device blocks a swap-out in flight
        # freed may not be copied out yet, while a migration would write them concurrently.
        if status is not AllocStatus.OK or self.swapped or self.num_inflight_swap_outs:
            return AllocStatus.LATER if status is AllocStatus.OK else status
        held = sum(len(r.block_table) for r in self.waiting) + sum(
            len(r.block_table) for r in self.migrating.values())
        if held >= self.pull_threshold * self.block_manager.num_blocks:
            return AllocStatus.LATER
        return AllocStatus.OK

    def start_migration(self, request: Request) -> list[int]:
        """Allocate the request's blocks here; returns the block ids the KV lands in."""
        assert not request.block_table, "release the request from its prefill instance first"
        self.block_manager.allocate(request)
        self.requests[request.request_id] = request
        self.migrating[request.request_id] = request
        request.status = RequestStatus.WAITING
        request.lifetime.record(LifecycleEvent.MIGRATION_BEGIN, time.monotonic())
        return list(request.block_table)

    def finish_migration(self, request_id: str, ok: bool = True) -> None:
        """The KV landed (ok) or the transfer failed: queue the request, or drop it and its
        blocks (also when it was aborted in flight)."""
        request = self.migrating.pop(request_id)
        aborted = request_id in self._abort_on_arrival
        self._abort_on_arrival.discard(request_id)
        if ok and not aborted:
            request.lifetime.record(LifecycleEvent.MIGRATION_END, time.monotonic())
            self.waiting.append(request)
            return
        status = request.status if request.status.is_finished else RequestStatus.FINISHED_ABORTED
        request.status = RequestStatus.WAITING  # NOTE: device blocks, for BlockManager.free
        self.block_manager.free(request)
        request.status = status
        self.requests.pop(request_id, None)

    def finish_requests(self, request_ids: str | list[str], status: RequestStatus) -> None:
        """As the base class; a request whose KV is in flight is marked finished now and its
        blocks are freed when the transfer completes."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        for request_id in [i for i in ids if i in self.migrating]:
            self._abort_on_arrival.add(request_id)
            self.migrating[request_id].status = status
        super().finish_requests([i for i in ids if i not in self.migrating], status)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_request_ids=self._take_finished_ids())
        self._swap_in(out)
        self._admit(out)
        if not out.prefills:  # NOTE: a recompute step prefills only (no preemption under it)
            self._schedule_decodes(out, self.config.max_num_batched_tokens)
        return self._mark_inflight(out)

    def _admit(self, out: SchedulerOutput) -> None:
        """Move waiting requests to running in order. Migrated ones hold their blocks already
        and always go (NOTE: holding them back could deadlock: they pin the blocks the others
        need); recomputed ones get blocks and prefill all their tokens once no swapped request
        waits and they fit, FCFS among themselves."""
        budget = self.config.max_num_batched_tokens
        now = time.monotonic()
        can_recompute = not self.swapped
        for request in list(self.waiting):
            if len(self.running) >= self.config.max_num_seqs:
                break
            if not request.block_table:  # preempted for recompute
                can_recompute = can_recompute and request.num_tokens <= budget and (
                    self.block_manager.can_allocate(request) is AllocStatus.OK)
                if not can_recompute:
                    continue
                self.block_manager.allocate(request)
                request.is_prefilling = True
                out.prefills.append(scheduled_request(request))
                budget -= request.num_tokens
            elif request.lifetime.get(LifecycleEvent.DECODE_BEGIN) is None:
                request.lifetime.record(LifecycleEvent.DECODE_BEGIN, now)
            self.waiting.remove(request)
            request.status = RequestStatus.RUNNING
            self.running.append(request)

    @staticmethod
    def _record_prefill_end(request: Request, now: float) -> None:
        request.is_prefilling = False  # a recompute: the request's lifetime already has one
