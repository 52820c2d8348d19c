"""One instance of the Ray engine: a prefill, decode or colocated scheduler with its block
manager, driving the instance's tp x pp Ray workers.

    submit(schedule()):  stage 0 workers --hidden (Ray object refs)--> stage 1 ... --> last stage
    TP ranks of a stage run the same SchedulerOutput in lockstep (all-reduce over their gloo
    group); TP rank 0 of the last stage returns the sampled tokens.
Every instance kind keeps up to pp micro-batches (steps) in the pipeline at once, so stage k
runs step i while stage k+1 runs step i-1; each worker runs its steps in submission order. The
scheduler puts a request in at most one step in flight (its next token depends on the sampled
one) and shares the running decodes out among the steps. With pp=1, decode and colocated
instances schedule asynchronously (DisaggConfig.async_scheduling): the next decode step is
submitted while one runs, its requests fed the tokens the running step samples, so the worker
does not sit idle through the round trip and the driver's bookkeeping.

How a step reaches the workers (DisaggConfig.worker_rpc): "channel" (default) sends instances
with pp = 1 their steps over a socket per worker (distllm.worker.step_channel; on the 2-core
host a quarter of the driver CPU per step and half the round trip of a Ray task per step,
evaluation/bench_step_rpc.py); "ray", and every instance with pp > 1 (its stages
pass hidden states as object refs), submits a Ray task per worker and step. Either way
`submit` returns a PendingStep.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import ray

from distllm.core.block_manager import BlockManager
from distllm.core.colocated_scheduler import ColocatedScheduler
from distllm.core.decode_scheduler import DecodeScheduler
from distllm.core.prefill_scheduler import PrefillScheduler
from distllm.core.scheduler import Scheduler
from distllm.core.scheduler_output import SchedulerOutput
from distllm.disagg_config import DisaggConfig
from distllm.distributed.kv_transport import SlabTransfer, plan_migration
from distllm.engine.ray_cluster import InstanceWorkers
from distllm.tracing import step_trace
from distllm.worker.step_channel import StepChannel, StepFailed, WorkerLost

KINDS = ("prefill", "decode", "colocated")


class PendingStep:
    """A submitted step: `done()` without blocking, then `result()`: what the last stage's TP
    rank 0 returned (a StepResult). `result` raises StepFailed (the step raised, or timed out)
    or WorkerLost (a worker of the instance is gone)."""

    refs: tuple | list = ()  # Ray ObjectRefs to wait on
    channels: tuple | list = ()  # StepChannels to wait on

    def done(self) -> bool:
        raise NotImplementedError

    def result(self, timeout_s: float) -> Any:
        raise NotImplementedError


class RayStep(PendingStep):
    """A step submitted as Ray tasks: done when every last-stage ref is ready."""

    def __init__(self, refs: list[Any]) -> None:
        self.refs = refs

    def done(self) -> bool:
        return len(ray.wait(self.refs, num_returns=len(self.refs), timeout=0)[0]) == len(
            self.refs)

    def result(self, timeout_s: float) -> Any:
        try:
            return ray.get(self.refs, timeout=timeout_s)[0]
        except ray.exceptions.RayActorError as e:
            raise WorkerLost(str(e)) from e
        except ray.exceptions.RayError as e:
            raise StepFailed(str(e)) from e


class ChannelStep(PendingStep):
    """A step sent down each TP rank's step channel: done when every rank replied."""

    def __init__(self, channels: list[StepChannel], seqs: list[int]) -> None:
        self.channels, self.seqs = channels, seqs

    def done(self) -> bool:
        return all(c.done(s) for c, s in zip(self.channels, self.seqs, strict=True))

    def result(self, timeout_s: float) -> Any:
        # NOTE: every rank's reply is taken, so none stays buffered when one failed
        values, errors = [], []
        for c, s in zip(self.channels, self.seqs, strict=True):
            try:
                values.append(c.result(s, timeout_s))
            except (StepFailed, WorkerLost) as e:
                errors.append(e)
        if errors:
            raise next((e for e in errors if isinstance(e, WorkerLost)), errors[0])
        return values[0]


@dataclass
class InflightStep:
    """A submitted step and what it was asked to do."""

    pending: PendingStep
    scheduler_output: SchedulerOutput
    started_s: float


class StageEngine:
    """Scheduler + block manager of one instance, and the handles of its workers."""

    def __init__(self, kind: str, workers: InstanceWorkers, num_blocks: int,
                 num_swap_blocks: int, disagg: DisaggConfig) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.name, self.ray = kind, workers.name, workers
        config = workers.config
        self.config = config
        self.block_manager = BlockManager(num_blocks, config.cache.block_size,
                                          config.cache.watermark, num_swap_blocks)
        args = (config.scheduler, self.block_manager, config.model.max_seq_len)
        micro = dict(num_micro_batches=config.parallel.pp)
        # NOTE: a prefill instance gains nothing from scheduling ahead (no step feeds the next)
        lookahead = disagg.async_scheduling and self.pp == 1 and kind != "prefill"
        self.scheduler: Scheduler
        if kind == "prefill":
            self.scheduler = PrefillScheduler(*args, **micro)
        elif kind == "decode":
            self.scheduler = DecodeScheduler(*args, pull_threshold=disagg.decode_pull_threshold,
                                             lookahead=lookahead, **micro)
        else:
            self.scheduler = ColocatedScheduler(*args, lookahead=lookahead, **micro)
        self.inflight: list[InflightStep] = []  # submission order
        # NOTE: one micro-batch per pipeline stage; with async scheduling one step runs while
        # the next waits on the worker
        self.max_inflight = self.pp + int(lookahead)
        self.peak_inflight = 0  # most steps in flight at once so far
        self.dead_reason: str | None = None  # set when a worker died or hung
        self.channels: list[StepChannel] | None = None  # one per worker; None: Ray tasks
        self.trace = step_trace("driver")
        if disagg.worker_rpc == "channel" and self.pp == 1:
            self.channels = open_channels(workers, disagg.step_timeout_s)

    @property
    def tp(self) -> int:
        return self.config.parallel.tp

    @property
    def pp(self) -> int:
        return self.config.parallel.pp

    @property
    def is_alive(self) -> bool:
        return self.dead_reason is None

    def step_once(self) -> bool:
        """Schedule and submit a step when the pipeline has room; True if one was submitted."""
        if len(self.inflight) >= self.max_inflight or not self.is_alive:
            return False
        out = self.scheduler.schedule()
        if not (out.has_forward or out.blocks_to_swap_in or out.blocks_to_swap_out
                or out.blocks_to_copy or out.finished_request_ids):
            return False
        pending = self.submit(out)
        if self.trace.enabled:
            seq = pending.seqs[0] if isinstance(pending, ChannelStep) else -1
            self.trace.event("submit", self.name, seq, len(out.prefills), len(out.decodes))
        self.inflight.append(InflightStep(pending, out, time.monotonic()))
        self.peak_inflight = max(self.peak_inflight, len(self.inflight))
        return True

    def fill_pipeline(self) -> int:
        """Submit steps while the pipeline has room and the scheduler has work; returns how
        many were submitted (at most one with pp=1)."""
        submitted = 0
        while self.step_once():
            submitted += 1
        return submitted

    def submit(self, scheduler_output: SchedulerOutput) -> PendingStep:
        """Run the step on every worker (stage after stage with pp > 1)."""
        if self.channels is not None:
            return ChannelStep(self.channels, [c.submit(scheduler_output)
                                               for c in self.channels])
        refs: list[Any] = [None] * self.tp
        for pp_rank in range(self.pp):
            stage = self.ray.workers[pp_rank * self.tp:(pp_rank + 1) * self.tp]
            refs = [w.execute_model.options(concurrency_group="compute").remote(
                scheduler_output, ref) for w, ref in zip(stage, refs, strict=True)]
        return RayStep(refs)

    def close(self) -> None:
        """Close the step channels (the workers' channel threads end)."""
        for c in self.channels or []:
            c.close()

    @property
    def load(self) -> float:
        """Work queued here, for routing: pending prompt tokens (prefill) or requests."""
        s = self.scheduler
        if isinstance(s, PrefillScheduler):
            return s.num_pending_tokens
        return s.num_unfinished_requests

    def stats(self) -> dict[str, Any]:
        s, bm = self.scheduler, self.block_manager
        out = {"kind": self.kind, "num_running": len(s.running), "num_waiting": len(s.waiting),
               "num_swapped": len(s.swapped), "num_blocks": bm.num_blocks,
               "num_free_blocks": bm.num_free_blocks,
               "num_free_swap_blocks": bm.num_free_swap_blocks, "alive": self.is_alive,
               "num_inflight_steps": len(self.inflight), "peak_inflight_steps": self.peak_inflight}
        if isinstance(s, DecodeScheduler):
            out["num_migrating"] = len(s.migrating)
        return out


def open_channels(workers: InstanceWorkers, timeout_s: float) -> list[StepChannel]:
    """A step channel to every worker of the instance, authenticated with a fresh key."""
    authkey = os.urandom(32)
    node = ray.get_runtime_context().get_node_id()
    ends = ray.get([w.open_step_channel.remote(authkey, node, workers.name)
                    for w in workers.workers], timeout=timeout_s)
    return [StepChannel(family, address, authkey, f"{workers.name} worker {i}")
            for i, (family, address) in enumerate(ends)]


@cache
def _plan(num_layers: int, num_kv_heads: int, src: tuple[int, int],
          dst: tuple[int, int]) -> list[SlabTransfer]:
    return plan_migration(num_layers, num_kv_heads, *src, *dst)


def submit_migration(src: StageEngine, dst: StageEngine, src_blocks: list[int],
                     dst_blocks: list[int], request_id: str = "",
                     generator_state: Any = None) -> list[Any]:
    """Start moving a request's KV from `src` to `dst` (its blocks, in logical order) and its
    seeded generator state, if any. Returns the refs of every send and receive task (their
    results sum to the bytes moved)."""
    dims = src.config.model.dims
    plan = _plan(dims.num_layers, dims.num_kv_heads, (src.tp, src.pp), (dst.tp, dst.pp))
    refs = []
    for i, worker in enumerate(src.ray.workers):
        mine = [t for t in plan if t.src == i]
        if mine:
            refs.append(worker.send_kv.options(concurrency_group="migrate").remote(
                src_blocks, mine, [dst.ray.ranks[t.dst] for t in mine]))
    for i, worker in enumerate(dst.ray.workers):
        mine = [t for t in plan if t.dst == i]
        refs.append(worker.recv_kv.options(concurrency_group="migrate").remote(
            dst_blocks, mine, [src.ray.ranks[t.src] for t in mine], request_id,
            generator_state))
    return refs
