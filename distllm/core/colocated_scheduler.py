"""Colocated scheduler: vLLM-style prefill-priority continuous batching (the baseline).

Each step is either a prefill batch or a decode batch. Waiting requests are admitted FCFS while
they fit the token budget (`max_num_batched_tokens`), the batch cap (`max_num_seqs`) and the free
blocks above the watermark; when any are admitted the step prefills them. Otherwise every running
request decodes one token; when a running request cannot get a slot, the newest running request
is preempted by recompute (its blocks are freed and it goes back to the head of the queue).
"""
from __future__ import annotations

import logging
import time
from collections import deque

from distllm.core.block_manager import AllocStatus
from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler import Scheduler
from distllm.core.scheduler_output import ModelRunnerOutput, ScheduledRequest, SchedulerOutput
from distllm.core.stop_checker import check_stop
from distllm.request import LifecycleEvent

logger = logging.getLogger(__name__)


def suppressed_token_ids(request: Request) -> tuple[int, ...]:
    """Stop tokens the request may not sample yet (it has fewer than min_tokens outputs)."""
    params = request.sampling_params
    if request.num_output_tokens >= params.min_tokens:
        return ()
    eos = () if params.ignore_eos or request.eos_token_id is None else (request.eos_token_id,)
    return params.stop_token_ids + eos


def scheduled_request(request: Request) -> ScheduledRequest:
    """The worker's view of a request: every token not yet in the cache, and its blocks."""
    return ScheduledRequest(
        request_id=request.request_id,
        token_ids=request.all_token_ids[request.num_computed_tokens:],
        num_computed_tokens=request.num_computed_tokens,
        block_table=list(request.block_table),
        sampling_params=request.sampling_params,
        suppressed_token_ids=suppressed_token_ids(request),
    )


class ColocatedScheduler(Scheduler):
    """Prefill and decode on the same instance; preemption by recompute."""

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_request_ids=self._take_finished_ids())
        self._schedule_prefills(out)
        if not out.prefills:
            self._schedule_decodes(out)
        return out

    def _schedule_prefills(self, out: SchedulerOutput) -> None:
        budget = self.config.max_num_batched_tokens
        now = time.monotonic()
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if request.num_tokens > budget:
                break
            status = self.block_manager.can_allocate(request)
            if status is AllocStatus.LATER:
                break
            if status is AllocStatus.NEVER:
                request.error = (f"{request.num_tokens} tokens need more KV blocks than the "
                                 f"cache has ({self.block_manager.num_blocks})")
                logger.warning("request %s ignored: %s", request.request_id, request.error)
                self._finish(request, RequestStatus.FINISHED_IGNORED)
                continue
            self.waiting.popleft()
            self.block_manager.allocate(request)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            request.lifetime.record(LifecycleEvent.PREFILL_BEGIN, now)
            out.prefills.append(scheduled_request(request))
            budget -= request.num_tokens

    def _schedule_decodes(self, out: SchedulerOutput) -> None:
        queue = deque(self.running)  # oldest first
        while queue:
            request = queue.popleft()
            while not self.block_manager.can_append_slot(request):
                victim = queue.pop() if queue else request  # newest first
                self._preempt(victim)
                if victim is request:
                    break
            else:
                copy = self.block_manager.append_slot(request)
                if copy is not None:
                    out.blocks_to_copy.append(copy)
                out.decodes.append(scheduled_request(request))

    def _preempt(self, request: Request) -> None:
        logger.debug("preempting request %s by recompute", request.request_id)
        self.running.remove(request)
        self.block_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.appendleft(request)

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           model_runner_output: ModelRunnerOutput) -> list[Request]:
        now = time.monotonic()
        updated = []
        num_prefills = len(scheduler_output.prefills)
        for i, scheduled in enumerate(scheduler_output.scheduled):
            request = self.requests.get(scheduled.request_id)
            if request is None:  # finished (aborted) after it was scheduled
                continue
            request.num_computed_tokens += scheduled.num_tokens
            token_id = model_runner_output.sampled_token_ids.get(scheduled.request_id)
            if token_id is None:
                continue
            if i < num_prefills:
                self._record_prefill_end(request, now)
            request.append_output_token(token_id, now)
            status = check_stop(request, self.max_model_len)
            if status is not None:
                self._finish(request, status)
            updated.append(request)
        return updated

    @staticmethod
    def _record_prefill_end(request: Request, now: float) -> None:
        request.lifetime.record(LifecycleEvent.PREFILL_END, now)
        # NOTE: colocated requests decode where they prefilled: no migration in between.
        if request.lifetime.get(LifecycleEvent.DECODE_BEGIN) is None:
            request.lifetime.record(LifecycleEvent.DECODE_BEGIN, now)
