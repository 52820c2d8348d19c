"""Colocated instance (the baseline): one instance runs both phases.

Without chunking it is vLLM-style prefill-priority: whenever requests wait and their KV fits, the
next iteration is a prefill batch and decoding stalls. With `chunk_tokens` it is chunked prefill
(Sarathi / vLLM v1): every iteration carries all decoding requests plus prefill chunks that fill
the remaining token budget, so decoding never stalls but shares the iteration.

With `async_lag` (distllm's async scheduling, pp = 1, prefill-priority) the engine composes the
step after the running one while it runs (a lookahead decode of the running requests, or a
prefill of what waits), so a request that arrives, or ends its prefill, while a step runs and
another is already composed waits for the step after that one.

    waiting --admit (KV for the whole prompt)--> prefilling --last chunk--> running --> finished
                                         ^---------- preempted (LIFO, recompute) ---------'
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from distllm.request import LifecycleEvent
from simdist.batch import DecodeBatch
from simdist.core import EventKind, Simulator
from simdist.profile import StageCost
from simdist.sim_request import SimRequest

if TYPE_CHECKING:
    from simdist.cluster import Cluster

_PB, _PE = LifecycleEvent.PREFILL_BEGIN, LifecycleEvent.PREFILL_END
_DB = LifecycleEvent.DECODE_BEGIN
_STEP_END = EventKind.STEP_END


class ColocatedInstance:
    __slots__ = ("name", "index", "sim", "cost", "capacity", "max_tokens", "max_batch",
                 "chunk_tokens", "cluster", "batch", "waiting", "queued_tokens", "prefilling",
                 "reserved", "busy", "node", "gpus", "lookahead", "queued", "ready",
                 "running_decode")

    def __init__(self, name: str, index: int, sim: Simulator, cost: StageCost, capacity: int,
                 max_tokens: int, max_batch: int, chunk_tokens: int | None, cluster: Cluster,
                 node: int, gpus: tuple[int, ...], async_lag: bool = False) -> None:
        self.name, self.index, self.sim, self.cost = name, index, sim, cost
        self.capacity, self.max_tokens, self.max_batch = capacity, max_tokens, max_batch
        self.chunk_tokens, self.cluster, self.node, self.gpus = chunk_tokens, cluster, node, gpus
        self.batch = DecodeBatch()
        self.waiting: deque[SimRequest] = deque()  # not admitted (new or preempted)
        self.queued_tokens = 0
        self.prefilling: list[SimRequest] = []  # admitted, prefill chunks outstanding
        self.reserved = 0  # KV tokens reserved for prefilling (and ready) requests
        self.busy = False
        # async scheduling: the step after the running one, composed while it runs
        self.lookahead = async_lag and chunk_tokens is None and cost.pp == 1
        self.queued: tuple | None = None  # ("prefill", admitted, tokens, sq) | ("decode", joins)
        self.ready: list[SimRequest] = []  # prefilled, join the next decode step composed
        self.running_decode = False  # the running step decodes

    @property
    def load(self) -> int:
        return self.queued_tokens + self.reserved + self.batch.sum_ctx

    @property
    def num_unfinished(self) -> int:
        """Requests here not finished (waiting, prefilling, running): the engine's routing."""
        return len(self.waiting) + len(self.prefilling) + len(self.ready) + self.batch.size

    def enqueue(self, r: SimRequest) -> None:
        if r.prompt_len + r.remaining > self.capacity:
            self.cluster.fail(r, "request exceeds the instance's KV capacity")
            return
        self.waiting.append(r)
        self.queued_tokens += r.prompt_len
        if not self.busy:
            self._start()
        elif self.lookahead and self.queued is None:
            self.queued = self._compose()

    def _can_admit(self, n: int) -> bool:
        b = self.batch
        return (b.size + len(self.prefilling) + len(self.ready) < self.max_batch
                and b.sum_ctx + b.size + self.reserved + n + 1 <= self.capacity)

    def _admit(self, r: SimRequest, now: float) -> None:
        self.waiting.popleft()
        self.queued_tokens -= r.prompt_len
        self.reserved += r.ctx
        self.prefilling.append(r)
        r.log.append((_PB, now))

    def _preempt_overflow(self) -> None:
        b = self.batch
        while b.size and b.sum_ctx + b.size + self.reserved > self.capacity:
            r = b.evict_last()
            r.pending_prefill = r.ctx  # recompute prompt + generated tokens
            self.waiting.appendleft(r)
            self.queued_tokens += r.prompt_len

    def _start(self) -> None:
        if self.lookahead:
            self._start_async()
            return
        self._preempt_overflow()
        if self.chunk_tokens is None:
            self._start_prefill_priority()
        else:
            self._start_chunked()

    def _admit_waiting(self) -> tuple[list[SimRequest], int, int]:
        """Admit waiting requests FCFS into one prefill batch while they fit its token budget
        (the first whatever its length) and the KV / batch room: (admitted, tokens, sum of
        squared lengths)."""
        now, waiting, tokens, sq = self.sim.now, self.waiting, 0, 0
        admitted: list[SimRequest] = []
        while waiting:
            n = waiting[0].pending_prefill
            if (admitted and tokens + n > self.max_tokens) or not self._can_admit(n):
                break
            admitted.append(waiting[0])
            self._admit(waiting[0], now)
            tokens += n
            sq += n * n
        return admitted, tokens, sq

    def _start_prefill_priority(self) -> None:
        # NOTE: nothing is left prefilling between iterations here (whole prompts), so the
        # admitted requests are self.prefilling
        _, tokens, sq = self._admit_waiting()
        if self.prefilling:
            chunks = [(r, r.pending_prefill) for r in self.prefilling]
            dt = self.cost.prefill_stage(tokens, sq) * self.cost.pp
            self._launch(dt, chunks, False)
        elif self.batch.size:
            self._launch(self.cost.decode(self.batch.size, self.batch.sum_ctx), [], True)
        else:
            self.busy = False

    def _start_async(self) -> None:
        """Run the step composed while the last one ran (or compose one now), then compose the
        step after it, as the engine fills its two-step pipeline."""
        step, self.queued = self.queued or self._compose(), None
        if step is None:
            self.busy = False
            return
        b = self.batch
        self._preempt_overflow()
        if step[0] == "prefill":
            _, admitted, tokens, sq = step
            self.running_decode = False
            self._launch(self.cost.prefill_stage(tokens, sq),
                         [(r, r.pending_prefill) for r in admitted], False)
        else:
            for r in step[1]:
                self.reserved -= r.ctx
                b.join(r)
            if not b.size:  # every request was preempted: prefill them again
                self._start_async()
                return
            self.running_decode = True
            self._launch(self.cost.decode(b.size, b.sum_ctx), [], True)
        self.queued = self._compose()

    def _compose(self) -> tuple | None:
        """The engine's schedule() for the next step: a prefill of the waiting requests that
        fit, else a decode of the running requests that outlast the running step (lookahead)
        and of those prefilled since the last decode step was composed; None: nothing to do."""
        admitted, tokens, sq = self._admit_waiting()
        if admitted:
            return ("prefill", admitted, tokens, sq)
        b = self.batch
        stay = b.size
        if self.busy and self.running_decode:  # NOTE: a request's last token is not looked past
            nxt = b.step + 1
            stay -= sum(r.batch is b and r.finish_step == nxt for r in b.finish_at.get(nxt, ()))
        if not (stay or self.ready):
            return None
        joins, self.ready = self.ready, []
        return ("decode", joins)

    def _start_chunked(self) -> None:
        now, b = self.sim.now, self.batch
        budget = self.chunk_tokens - b.size
        chunks, tokens, sq = [], 0, 0
        for r in self.prefilling:
            if budget <= 0:
                break
            n = min(r.pending_prefill, budget)
            chunks.append((r, n))
            prior = r.ctx - r.pending_prefill
            tokens, sq, budget = tokens + n, sq + n * (n + 2 * prior), budget - n
        while budget > 0 and self.waiting and self._can_admit(self.waiting[0].pending_prefill):
            r = self.waiting[0]
            self._admit(r, now)
            n = min(r.pending_prefill, budget)
            prior = r.ctx - r.pending_prefill
            chunks.append((r, n))
            tokens, sq, budget = tokens + n, sq + n * (n + 2 * prior), budget - n
        if b.size:
            dt = self.cost.decode(b.size, b.sum_ctx) + self.cost.prefill_extra(tokens, sq)
        elif chunks:
            dt = self.cost.prefill_stage(tokens, sq) * self.cost.pp
        else:
            self.busy = False
            return
        self._launch(dt, chunks, b.size > 0)

    def _launch(self, dt: float, chunks: list, decodes: bool) -> None:
        """Run one iteration of (profiled) duration dt from now."""
        self.busy = True
        end = self.sim.now + self.cluster.step_time(self, dt, bool(chunks))
        self.sim.schedule(end, _STEP_END, self._on_iteration_end, (chunks, decodes))

    def _on_iteration_end(self, arg: tuple) -> None:
        chunks, decodes = arg
        now, b, cluster = self.sim.now, self.batch, self.cluster
        cluster.step_done(self, (b.size if decodes else 0)
                          + sum(n == r.pending_prefill for r, n in chunks))
        if decodes:
            done = b.advance(now)
            if done:
                for r in done:
                    cluster.finish(r)
        for r, n in chunks:
            r.pending_prefill -= n
        if chunks:
            self.prefilling = [r for r in self.prefilling if r.pending_prefill]
        for r, _ in chunks:
            if r.pending_prefill:
                continue
            r.log.append((_PE, now))
            if r.first_token < 0:
                r.first_token = now
            if r.remaining == 0:
                self.reserved -= r.ctx
                r.last_token = now
                cluster.finish(r)
                continue
            r.log.append((_DB, now))
            if self.lookahead:  # joins the next decode step composed from now on
                self.ready.append(r)
                continue
            self.reserved -= r.ctx
            b.join(r)
        self.busy = False
        self._start()
