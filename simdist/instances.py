"""Prefill and decode instances of the disaggregated mode.

    prefill: waiting --FCFS batch under a token budget, if its KV fits--> running
             --> first token --> holds KV until a decode instance has pulled it (back-pressure)
    decode:  pending --pull when KV room + batch slot--> migrating (link) --> running
             (continuous batching) --> finished; preempted --> recompute (LIFO victim)
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
_MB, _ME = LifecycleEvent.MIGRATION_BEGIN, LifecycleEvent.MIGRATION_END
_DB = LifecycleEvent.DECODE_BEGIN
_STEP_END, _XFER_END = EventKind.STEP_END, EventKind.TRANSFER_END
_STAGE_FREE = EventKind.STAGE_FREE


class PrefillInstance:
    __slots__ = ("name", "index", "sim", "cost", "capacity", "max_tokens", "pp", "cluster",
                 "waiting", "queued_tokens", "kv_used", "stage_busy", "node", "gpus")

    def __init__(self, name: str, index: int, sim: Simulator, cost: StageCost, capacity: int,
                 max_tokens: int, cluster: Cluster, node: int, gpus: tuple[int, ...]) -> None:
        self.name, self.index, self.sim, self.cost = name, index, sim, cost
        self.capacity, self.max_tokens, self.cluster = capacity, max_tokens, cluster
        self.pp = cost.pp
        self.node, self.gpus = node, gpus
        self.waiting: deque[SimRequest] = deque()
        self.queued_tokens = 0  # prompt tokens waiting (routing load)
        self.kv_used = 0  # KV tokens of running + not-yet-migrated requests
        self.stage_busy = False  # first pipeline stage busy

    def enqueue(self, r: SimRequest) -> None:
        if r.prompt_len > self.capacity:
            self.cluster.fail(r, "prompt exceeds the prefill instance's KV capacity")
            return
        self.waiting.append(r)
        self.queued_tokens += r.prompt_len
        if not self.stage_busy:
            self._launch()

    def _launch(self) -> None:
        now, waiting = self.sim.now, self.waiting
        batch: list[SimRequest] = []
        tokens = sq = 0
        room = self.capacity - self.kv_used
        while waiting:
            n = waiting[0].prompt_len
            if (batch and tokens + n > self.max_tokens) or tokens + n > room:
                break  # token budget, or back-pressure from unmigrated KV
            r = waiting.popleft()
            batch.append(r)
            tokens += n
            sq += n * n
            r.log.append((_PB, now))
        if not batch:
            return
        self.kv_used += tokens
        self.queued_tokens -= tokens
        stage = self.cluster.step_time(self, self.cost.prefill_stage(tokens, sq))
        self.stage_busy = True
        if self.pp > 1:
            self.sim.schedule(now + stage, _STAGE_FREE, self._on_stage_free)
        self.sim.schedule(now + stage * self.pp, _STEP_END, self._on_batch_end, batch)

    def _on_stage_free(self, _: object) -> None:
        self.stage_busy = False
        if self.waiting:
            self._launch()

    def _on_batch_end(self, batch: list[SimRequest]) -> None:
        now, cluster = self.sim.now, self.cluster
        cluster.step_done(self, len(batch))
        for r in batch:
            r.log.append((_PE, now))
            r.first_token = now
            cluster.on_prefilled(r, self)
        if self.pp == 1:
            self._on_stage_free(None)

    def release(self, r: SimRequest) -> None:
        """The request's KV left this instance (migrated or finished)."""
        self.kv_used -= r.prompt_len
        if self.waiting and not self.stage_busy:
            self._launch()


class DecodeInstance:
    __slots__ = ("name", "index", "sim", "cost", "capacity", "max_batch", "cluster", "batch",
                 "pending", "pending_tokens", "recompute", "arrived", "reserved", "incoming",
                 "busy", "node", "gpus", "async_lag", "deferred")

    def __init__(self, name: str, index: int, sim: Simulator, cost: StageCost, capacity: int,
                 max_batch: int, cluster: Cluster, node: int, gpus: tuple[int, ...],
                 async_lag: bool = False) -> None:
        self.name, self.index, self.sim, self.cost = name, index, sim, cost
        self.capacity, self.max_batch, self.cluster = capacity, max_batch, cluster
        self.node, self.gpus = node, gpus
        self.batch = DecodeBatch()
        self.pending: deque[SimRequest] = deque()  # prefilled, waiting to be pulled
        self.pending_tokens = 0
        self.recompute: deque[SimRequest] = deque()  # preempted, KV dropped
        self.arrived: list[SimRequest] = []  # migrated, join at the next iteration
        # async scheduling (distllm's default at pp = 1): the iteration after the running one is
        # already submitted when a migration lands, so the request joins the one after that
        self.async_lag = async_lag
        self.deferred: list[SimRequest] = []  # landed mid-iteration: join the one after next
        self.reserved = 0  # KV tokens of migrating + arrived requests
        self.incoming = 0  # requests migrating or arrived (batch slots taken)
        self.busy = False

    @property
    def load(self) -> int:
        return self.batch.sum_ctx + self.reserved + self.pending_tokens

    @property
    def migrating(self) -> int:
        """KV migrations to here in flight: pulled requests that have not landed yet."""
        return self.incoming - len(self.arrived) - len(self.deferred)

    def enqueue(self, r: SimRequest) -> None:
        if r.ctx + r.remaining > self.capacity:
            self.cluster.fail(r, "request exceeds the decode instance's KV capacity")
            return
        self.pending.append(r)
        self.pending_tokens += r.ctx
        self._pull()

    def _has_room(self, ctx: int) -> bool:
        b = self.batch
        return (b.size + self.incoming < self.max_batch
                and b.sum_ctx + b.size + self.reserved + ctx + 1 <= self.capacity)

    def _pull(self) -> None:
        """Pull admission: FCFS while KV room and a batch slot are free (preempted first)."""
        pending, now = self.pending, self.sim.now
        while pending and not self.recompute and self._has_room(pending[0].ctx):
            r = pending.popleft()
            self.pending_tokens -= r.ctx
            self.reserved += r.ctx
            self.incoming += 1
            src = r.prefill_inst
            if src is None:  # decode-only run: the KV is already here
                self.arrived.append(r)
                continue
            r.log.append((_MB, now))
            self.sim.schedule(self.cluster.transfer(src, self, r), _XFER_END, self._on_landed, r)
        if self.arrived and not self.busy:
            self._start()

    def _on_landed(self, r: SimRequest) -> None:
        r.log.append((_ME, self.sim.now))
        r.prefill_inst.release(r)
        r.prefill_inst = None
        (self.deferred if self.busy and self.async_lag else self.arrived).append(r)
        if not self.busy:
            self._start()

    def _start(self) -> None:
        """Begin one decode iteration: join migrated requests, rejoin preempted ones, preempt
        (LIFO) while the KV growth of this iteration would not fit."""
        sim, b = self.sim, self.batch
        now = sim.now
        if self.deferred and not b.size and not self.arrived:
            # NOTE: the iteration they waited on was never submitted (every request of the last
            # one finished there), so they join this one
            self.arrived, self.deferred = self.deferred, self.arrived
        if self.arrived:
            for r in self.arrived:
                r.log.append((_DB, now))
                self.reserved -= r.ctx
                b.join(r)
            self.incoming -= len(self.arrived)
            self.arrived.clear()
        if self.deferred:
            self.arrived, self.deferred = self.deferred, self.arrived
        extra = self._readmit(now) if self.recompute else 0.0
        while b.size and b.sum_ctx + b.size + self.reserved > self.capacity:
            self.recompute.appendleft(b.evict_last())
        if b.size == 0:
            self.busy = False
            return
        self.busy = True
        dt = self.cluster.step_time(self, self.cost.decode(b.size, b.sum_ctx) + extra)
        sim.schedule(now + dt, _STEP_END, self._on_step_end)

    def _readmit(self, now: float) -> float:
        """Rejoin preempted requests that fit; their KV is recomputed inside the iteration."""
        extra, b, rec = 0.0, self.batch, self.recompute
        while rec and self._has_room(rec[0].ctx):
            r = rec.popleft()
            r.log.append((_DB, now))
            extra += self.cost.prefill_extra(r.ctx, r.ctx * r.ctx)
            b.join(r)
        return extra

    def _on_step_end(self, _: object) -> None:
        self.cluster.step_done(self, self.batch.size)
        done = self.batch.advance(self.sim.now)
        if done:
            finish = self.cluster.finish
            for r in done:
                finish(r)
        self.busy = False
        if self.pending:
            self._pull()
        if not self.busy and (self.batch.size or self.arrived or self.deferred or self.recompute):
            self._start()
