"""The scheduler interface every stage scheduler (colocated, prefill, decode) implements, with the
bookkeeping they share: queues, the worker's view of a request, applying sampled tokens, finishing
requests, and which requests are part of a step still in flight (pipeline parallelism)."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque

from distllm.config import SchedulerConfig
from distllm.core.block_manager import BlockManager
from distllm.core.request_state import Request, RequestStatus
from distllm.core.scheduler_output import (
    LAST_SAMPLED,
    ModelRunnerOutput,
    ScheduledRequest,
    SchedulerOutput,
)
from distllm.core.stop_checker import check_stop
from distllm.request import LifecycleEvent


def suppressed_token_ids(request: Request, ahead: int = 0) -> tuple[int, ...]:
    """Stop tokens the request may not sample yet (it has fewer than min_tokens outputs, counting
    `ahead` tokens sampled in a step still in flight)."""
    params = request.sampling_params
    if request.num_output_tokens + ahead >= params.min_tokens:
        return ()
    eos = () if params.ignore_eos or request.eos_token_id is None else (request.eos_token_id,)
    return params.stop_token_ids + eos


def scheduled_request(request: Request, num_tokens: int | None = None) -> ScheduledRequest:
    """The worker's view of a request: the next `num_tokens` tokens not yet in the cache (all of
    them by default) and its blocks."""
    start = request.num_computed_tokens
    end = request.num_tokens if num_tokens is None else start + num_tokens
    return ScheduledRequest(
        request_id=request.request_id,
        token_ids=request.all_token_ids[start:end],
        num_computed_tokens=start,
        block_table=list(request.block_table),
        sampling_params=request.sampling_params,
        suppressed_token_ids=suppressed_token_ids(request),
        sample=end == request.num_tokens,
    )


def lookahead_request(request: Request) -> ScheduledRequest:
    """The worker's view of a request decoding one step ahead: its input is the token its step in
    flight samples (LAST_SAMPLED), at position num_tokens."""
    return ScheduledRequest(
        request_id=request.request_id,
        token_ids=[LAST_SAMPLED],
        num_computed_tokens=request.num_tokens,
        block_table=list(request.block_table),
        sampling_params=request.sampling_params,
        suppressed_token_ids=suppressed_token_ids(request, ahead=1),
    )


class Scheduler(ABC):
    """Decides, step by step, which requests run and which KV blocks they use.

    One step is `schedule()` -> (the worker runs the SchedulerOutput) -> `update_from_output()`.
    Invariant: a request is in exactly one of `waiting`, `running`, `swapped`, or finished; only
    running (device) and swapped (CPU) requests hold blocks.

    Up to `num_micro_batches` (the instance's pp) steps may be in flight at once: a request that
    `schedule()` put in a step is in flight until `update_from_output()` (or `release_step()`) of
    that step; it is never scheduled, preempted or swapped meanwhile, and when it finishes
    (abort, stop string) meanwhile, its blocks are freed only once the step is back (the step
    may still write them). Running decodes are shared out: one step takes at most
    ceil(running / num_micro_batches) of them.

    With `lookahead` (async scheduling; one micro-batch only, as the next token must be on the
    worker that runs the next step) a request in flight in a decode step may decode once more
    before that step is back: the worker feeds it the token it sampled for it last
    (LAST_SAMPLED). Never past max_tokens or the model length; when the token in flight ends
    the request otherwise (EOS, a stop token or string, an abort), the step ahead's token is
    dropped.
    """

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 max_model_len: int, num_micro_batches: int = 1,
                 lookahead: bool = False) -> None:
        if num_micro_batches < 1:
            raise ValueError(f"num_micro_batches must be >= 1, got {num_micro_batches}")
        if lookahead and num_micro_batches > 1:
            raise ValueError("lookahead (async scheduling) needs num_micro_batches == 1: with "
                             "pipeline stages the sampled token is not on the first stage")
        self.num_micro_batches = num_micro_batches
        self.lookahead = lookahead
        self.config = config
        self.block_manager = block_manager
        self.max_model_len = max_model_len
        self.requests: dict[str, Request] = {}  # request id -> unfinished request
        self.waiting: deque[Request] = deque()  # FCFS; preempted requests go back to the head
        self.running: list[Request] = []  # admission order, oldest first
        self.swapped: deque[Request] = deque()  # swap-out order, oldest first
        self._finished_ids: list[str] = []  # finished since the last schedule(), for the worker
        self._inflight_ids: dict[str, int] = {}  # id -> steps in flight it is part of (>= 1)
        self._free_on_return: dict[str, Request] = {}  # id -> finished while in flight
        self.num_inflight_swap_outs = 0  # steps in flight that swap blocks out

    @abstractmethod
    def schedule(self) -> SchedulerOutput:
        """Pick this step's batch; allocate, append, swap or preempt blocks to make it fit."""

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           model_runner_output: ModelRunnerOutput) -> list[Request]:
        """Apply the sampled tokens, check stop conditions, free finished requests.
        Returns the requests that got a token this step (finished ones included)."""
        now = time.monotonic()
        updated = []
        self.release_step(scheduler_output)
        for scheduled in scheduler_output.scheduled:
            request = self.requests.get(scheduled.request_id)
            if request is None:  # finished (aborted) after it was scheduled
                continue
            request.num_computed_tokens += scheduled.num_tokens
            token_id = model_runner_output.sampled_token_ids.get(scheduled.request_id)
            if token_id is None:
                continue
            if request.is_prefilling:
                self._record_prefill_end(request, now)
            request.append_output_token(token_id, now)
            status = check_stop(request, self.max_model_len)
            if status is not None:
                self._finish(request, status)
            updated.append(request)
        return updated

    def release_step(self, scheduler_output: SchedulerOutput) -> None:
        """The step is back (or will never be, e.g. a worker failed): its requests may be
        scheduled again, and those finished while it was in flight give their blocks back."""
        self.num_inflight_swap_outs -= bool(scheduler_output.blocks_to_swap_out)
        for scheduled in scheduler_output.scheduled:
            request_id = scheduled.request_id
            left = self._inflight_ids.pop(request_id, 1) - 1
            if left > 0:  # NOTE: its step ahead is still out
                self._inflight_ids[request_id] = left
                continue
            finished = self._free_on_return.pop(request_id, None)
            if finished is not None:
                self.block_manager.free(finished)

    def is_inflight(self, request: Request) -> bool:
        """Whether the request is part of a scheduled step whose result has not come back."""
        return request.request_id in self._inflight_ids

    def can_look_ahead(self, request: Request) -> bool:
        """Whether `request` may decode one step ahead now: lookahead is on, it is in flight in
        exactly one step, a decode, and the token that step samples cannot end it by length.
        NOTE: is_prefilling stays set until a prefill's sampled token is applied, so a request
        in flight without it is in a decode step."""
        if not (self.lookahead and self._inflight_ids.get(request.request_id) == 1
                and not request.is_prefilling):
            return False
        return (request.num_output_tokens + 1 < request.sampling_params.max_tokens
                and request.num_tokens + 1 < self.max_model_len)

    @property
    def has_blocks_pending_free(self) -> bool:
        """Requests finished while in flight still hold blocks (freed when their step is back)."""
        return bool(self._free_on_return)

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests or request.request_id in self._inflight_ids:
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

    def _start_prefill(self, request: Request, now: float) -> None:
        request.status = RequestStatus.RUNNING
        request.is_prefilling = True
        self.running.append(request)
        request.lifetime.record(LifecycleEvent.PREFILL_BEGIN, now)

    @staticmethod
    def _record_prefill_end(request: Request, now: float) -> None:
        request.is_prefilling = False
        request.lifetime.record(LifecycleEvent.PREFILL_END, now)
        # NOTE: colocated requests decode where they prefilled: no migration in between.
        if request.lifetime.get(LifecycleEvent.DECODE_BEGIN) is None:
            request.lifetime.record(LifecycleEvent.DECODE_BEGIN, now)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        assert status.is_finished, status
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status is RequestStatus.SWAPPED:
            self.swapped.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        if self.is_inflight(request):  # NOTE: its step may still write its blocks
            self._free_on_return[request.request_id] = request
        else:
            self.block_manager.free(request)
        request.status = status
        del self.requests[request.request_id]
        self._finished_ids.append(request.request_id)
        if request.lifetime.get(LifecycleEvent.PREFILL_END) is not None:
            request.lifetime.record(LifecycleEvent.DECODE_END, time.monotonic())

    def _mark_inflight(self, out: SchedulerOutput) -> SchedulerOutput:
        """Called by schedule() on its result: every scheduled request is now in flight."""
        self.num_inflight_swap_outs += bool(out.blocks_to_swap_out)
        for scheduled in out.prefills:
            assert scheduled.request_id not in self._inflight_ids, scheduled.request_id
            self._inflight_ids[scheduled.request_id] = 1
        for scheduled in out.decodes:
            ahead = scheduled.token_ids == [LAST_SAMPLED]
            count = self._inflight_ids.get(scheduled.request_id, 0)
            assert count == int(ahead), (scheduled.request_id, count)
            self._inflight_ids[scheduled.request_id] = count + 1
        return out

    def _max_decodes(self) -> int:
        """Running requests one step may decode: an even share of the micro-batches."""
        return -(-len(self.running) // self.num_micro_batches)

    def _take_finished_ids(self) -> list[str]:
        ids, self._finished_ids = self._finished_ids, []
        return ids
