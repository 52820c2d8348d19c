"""Colocated scheduler: vLLM-style prefill-priority continuous batching (the baseline).

Default: each step is a prefill batch or a decode batch. Waiting requests are admitted FCFS while
they fit the token budget (`max_num_batched_tokens`, and `prefill_saturation_tokens` past the
first prompt), the batch cap (`max_num_seqs`) and the free blocks above the watermark; when any
are admitted the step prefills them. Otherwise every running request decodes one token.
With `enable_chunked_prefill`, a step mixes both: running decodes first (one token each), then
the unfinished prompt chunks of running requests, then new requests, each prompt cut to fit
what is left of the budget.
When a running request cannot get a slot, the newest running request is preempted: swapped to
CPU (`preemption_mode="swap"`, while swap space lasts) or recomputed (its blocks are freed and it
goes back to the head of the waiting queue). Swapped requests come back before new admissions.
With pp > 1 (`num_micro_batches`), requests in a step still in flight are skipped (neither
scheduled nor preempted) and one step decodes at most its share of the running requests. With
pp = 1 and `lookahead` (async scheduling), a request whose decode step is in flight decodes one
step ahead (Scheduler docstring), so the worker never waits for the driver between steps.
"""
from __future__ import annotations

import logging
import time
from collections import deque

from distllm.core.block_manager import AllocStatus
from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler import Scheduler, lookahead_request, scheduled_request
from distllm.core.scheduler_output import SchedulerOutput

logger = logging.getLogger(__name__)


class ColocatedScheduler(Scheduler):
    """Prefill and decode on the same instance."""

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_request_ids=self._take_finished_ids())
        budget = self.config.max_num_batched_tokens
        self._swap_in(out)
        if self.config.enable_chunked_prefill:
            budget = self._schedule_decodes(out, budget)
            budget = self._schedule_prefill_chunks(out, budget)
            if not self.swapped:
                self._schedule_prefills(out, budget)
        else:
            if not self.swapped:
                self._schedule_prefills(out, budget)
            if not out.prefills:
                self._schedule_decodes(out, budget)
        return self._mark_inflight(out)

    def _swap_in(self, out: SchedulerOutput) -> None:
        while self.swapped and len(self.running) < self.config.max_num_seqs:
            request = self.swapped[0]
            status = self.block_manager.can_swap_in(request)
            if status is AllocStatus.LATER:
                break
            self.swapped.popleft()
            if status is AllocStatus.NEVER:  # the watermark grew past it: recompute instead
                self.block_manager.free(request)
                self._requeue_for_recompute(request)
                continue
            out.blocks_to_swap_in += self.block_manager.swap_in(request)
            request.status = RequestStatus.RUNNING
            self.running.append(request)

    def _schedule_prefills(self, out: SchedulerOutput, budget: int) -> int:
        """Admit waiting requests FCFS; returns the budget left."""
        now = time.monotonic()
        chunked = self.config.enable_chunked_prefill
        start_budget = budget
        while self.waiting and len(self.running) < self.config.max_num_seqs and budget > 0:
            request = self.waiting[0]
            num_tokens = min(request.num_tokens, budget) if chunked else request.num_tokens
            if num_tokens > budget or not (chunked or self.config.admits_prefill(
                    start_budget - budget, num_tokens)):
                break
            status = self.block_manager.can_allocate(request)
            if status is AllocStatus.LATER:
                break
            if status is AllocStatus.NEVER:
                self._ignore(request)
                continue
            self.waiting.popleft()
            self.block_manager.allocate(request)  # NOTE: blocks for every token, chunked or not
            self._start_prefill(request, now)
            out.prefills.append(scheduled_request(request, num_tokens))
            budget -= num_tokens
        return budget

    def _schedule_prefill_chunks(self, out: SchedulerOutput, budget: int) -> int:
        """Continue the prompts of running requests that are partly prefilled."""
        for request in self.running:
            remaining = request.num_tokens - request.num_computed_tokens
            if budget <= 0:
                break
            if remaining > 1 and not self.is_inflight(request):
                num_tokens = min(remaining, budget)
                out.prefills.append(scheduled_request(request, num_tokens))
                budget -= num_tokens
        return budget

    def _schedule_decodes(self, out: SchedulerOutput, budget: int) -> int:
        """One token for every running request whose prompt is in the cache and that is not in
        flight, oldest first, up to its share of the micro-batches; preempts the newest of those
        (never a request in flight) when blocks run out. Returns the budget left."""
        queue = deque(r for r in self.running if not self.is_inflight(r))
        max_decodes = self._max_decodes()
        while queue and budget > 0 and len(out.decodes) < max_decodes:
            request = queue.popleft()
            if request.num_tokens - request.num_computed_tokens > 1:
                continue  # mid-prefill (chunked): continued by _schedule_prefill_chunks
            while not self.block_manager.can_append_slot(request):
                victim = queue.pop() if queue else request  # newest first
                self._preempt(victim, out)
                if victim is request:
                    break
            else:
                copy = self.block_manager.append_slot(request)
                if copy is not None:
                    out.blocks_to_copy.append(copy)
                out.decodes.append(scheduled_request(request))
                budget -= 1
        if self.lookahead:
            budget = self._schedule_lookahead(out, budget, max_decodes)
        return budget

    def _schedule_lookahead(self, out: SchedulerOutput, budget: int, max_decodes: int) -> int:
        """Async scheduling: one more token for running requests whose decode step is in
        flight, oldest first, while their slot fits without preempting anyone (a request in
        flight is never preempted; it is simply scheduled normally once its step is back)."""
        for request in self.running:
            if budget <= 0 or len(out.decodes) >= max_decodes:
                break
            if not (self.can_look_ahead(request)
                    and self.block_manager.can_append_slot(request, ahead=1)):
                continue
            copy = self.block_manager.append_slot(request, ahead=1)
            if copy is not None:
                out.blocks_to_copy.append(copy)
            out.decodes.append(lookahead_request(request))
            budget -= 1
        return budget

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        swap = self.config.preemption_mode == "swap" and not request.is_prefilling
        if swap and self.block_manager.can_swap_out(request):
            logger.debug("preempting request %s by swapping", request.request_id)
            out.blocks_to_swap_out += self.block_manager.swap_out(request)
            request.status = RequestStatus.SWAPPED
            request.num_preemptions += 1
            self.swapped.append(request)
            return
        logger.debug("preempting request %s by recompute", request.request_id)
        self.block_manager.free(request)
        self._requeue_for_recompute(request)

    def _requeue_for_recompute(self, request: Request) -> None:
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.appendleft(request)

    def _ignore(self, request: Request) -> None:
        request.error = (f"{request.num_tokens} tokens need more KV blocks than the cache has "
                         f"({self.block_manager.num_blocks})")
        logger.warning("request %s ignored: %s", request.request_id, request.error)
        self._finish(request, RequestStatus.FINISHED_IGNORED)
