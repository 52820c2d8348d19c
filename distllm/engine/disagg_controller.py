"""The Ray engine's controller: M prefill x N decode instances (or N colocated ones), routing,
KV migration bookkeeping, failures, and the same step interface as `LLMEngine`.

    add_request --> least-loaded prefill instance --> prefill step samples token #1 (streamed)
        --> awaiting a pull (blocks held on the prefill instance)
        --> a decode instance pulls it (can_pull) --> migration in flight (both sides' blocks)
        --> migration done: prefill frees its blocks; decode admits the request --> tokens
Each instance keeps up to pp steps (micro-batches) in flight and advances on its own; `step()`
waits (briefly) for whatever finishes first. A worker error fails the affected requests with a
message; a worker call that outlives `step_timeout_s` marks its instance dead and fails its
requests.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_connections
from typing import Any

import ray

from distllm.config import EngineConfig, ParallelConfig
from distllm.core.block_manager import AllocStatus
from distllm.core.request_state import Request, RequestStatus
from distllm.disagg_config import DisaggConfig
from distllm.engine import ray_cluster
from distllm.engine.llm_engine import new_request
from distllm.engine.output_processor import OutputProcessor
from distllm.engine.outputs import RequestOutput
from distllm.engine.stage_engine import StageEngine, submit_migration
from distllm.sampling_params import SamplingParams
from distllm.tokenizer import Tokenizer
from distllm.tracing import step_trace
from distllm.worker.step_channel import StepFailed, WorkerLost

logger = logging.getLogger(__name__)

# how often Ray refs are polled while steps on step channels are also in flight (a migration's
# end is seen at most this late)
MIXED_POLL_S = 0.001


@dataclass
class Migration:
    request: Request
    src: StageEngine
    dst: StageEngine
    src_blocks: list[int]  # held on the prefill instance until the transfer completes
    refs: list[Any]  # send / receive task refs; each returns the bytes it moved
    started_s: float


def _stage_config(config: EngineConfig, tp: int, pp: int,
                  num_blocks: int | None) -> EngineConfig:
    cache = config.cache if num_blocks is None else dataclasses.replace(
        config.cache, num_kv_blocks=num_blocks)
    return dataclasses.replace(config, parallel=ParallelConfig(tp=tp, pp=pp), cache=cache)


def instance_specs(config: EngineConfig, disagg: DisaggConfig) -> list[tuple[str, str,
                                                                               EngineConfig]]:
    """(kind, name, config) of every instance the DisaggConfig asks for."""
    d = disagg
    if d.mode == "colocated":
        stage = _stage_config(config, d.decode_tp, d.decode_pp, d.decode_num_kv_blocks)
        return [("colocated", f"colocated-{i}", stage) for i in range(d.num_decode_instances)]
    prefill = _stage_config(config, d.prefill_tp, d.prefill_pp, d.prefill_num_kv_blocks)
    decode = _stage_config(config, d.decode_tp, d.decode_pp, d.decode_num_kv_blocks)
    return ([("prefill", f"prefill-{i}", prefill) for i in range(d.num_prefill_instances)]
            + [("decode", f"decode-{i}", decode) for i in range(d.num_decode_instances)])


class DisaggEngine:
    """Disaggregated (or colocated) serving on Ray, driven one `step()` at a time.

    Args:
        config: model, cache, scheduler and device settings shared by every instance (its
            `parallel` is ignored: each instance takes its TP/PP from `disagg`).
        disagg: instances, their parallelism, Ray address, pull threshold, timeouts.
    """

    def __init__(self, config: EngineConfig, disagg: DisaggConfig) -> None:
        self.config, self.disagg = config, disagg
        self.tokenizer = Tokenizer.from_pretrained(config.model.tokenizer_path)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.instances = self._build_instances()
        self.prefill = [i for i in self.instances if i.kind == "prefill"]
        self.decode = [i for i in self.instances if i.kind != "prefill"]
        self._holders: dict[str, tuple[Request, StageEngine]] = {}  # id -> (request, holder)
        self._awaiting_pull: deque[tuple[StageEngine, Request]] = deque()  # FCFS
        self._migrations: dict[str, Migration] = {}  # request id -> migration in flight
        self._generator_states: dict[str, Any] = {}  # request id -> seeded sampler state
        self.migrated_bytes = 0
        self.migration_time_s = 0.0
        self.trace = step_trace("driver")  # DISTLLM_STEP_TRACE: steps and migrations

    def _build_instances(self) -> list[StageEngine]:
        specs = instance_specs(self.config, self.disagg)
        threads = self.disagg.num_threads_per_worker
        num_workers = sum(c.parallel.world_size for _, _, c in specs)
        ray_cluster.init_ray(self.disagg.ray_address, num_cpus=num_workers * threads)
        timeout = self.disagg.step_timeout_s
        workers: list[ray_cluster.InstanceWorkers] = []
        try:
            for _, name, cfg in specs:
                workers.append(ray_cluster.create_instance(name, cfg, threads,
                                                           self.disagg.affinity, timeout))
            ray_cluster.init_world(workers, timeout, self.disagg.kv_transport)
            sizes = [ray_cluster.load_models(w, c.cache.num_kv_blocks, timeout)
                     for w, (_, _, c) in zip(workers, specs, strict=True)]
        except BaseException:
            ray_cluster.destroy(workers)
            raise
        return [StageEngine(kind, w, *size, self.disagg)
                for (kind, _, _), w, size in zip(specs, workers, sizes, strict=True)]

    # ---- requests (the LLMEngine interface) -------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int],
                    sampling_params: SamplingParams | None = None,
                    arrival_time: float | None = None) -> Request:
        """Tokenize and queue on the least-loaded prefill (or colocated) instance. Raises
        ValueError on an empty or too long prompt, a duplicate id, or no live instance."""
        request, text = new_request(self.tokenizer, self.config.model.max_seq_len, request_id,
                                    prompt, sampling_params, arrival_time)
        if request_id in self._holders:
            raise ValueError(f"request id {request_id!r} is already running")
        entry = [i for i in (self.prefill or self.decode) if i.is_alive]
        if not entry:
            raise ValueError("no live instance can take requests")
        target = min(entry, key=lambda i: i.load)
        if self.trace.enabled:
            self.trace.event("route", request_id, target.name, [i.load for i in entry])
        target.scheduler.add_request(request)
        self.output_processor.add_request(request, text)
        self._holders[request_id] = (request, target)
        return request

    def abort_request(self, request_ids: str | list[str]) -> None:
        """Finish requests now wherever they are; blocks of a request whose KV is in flight are
        freed (on both sides) when the transfer completes."""
        self.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def finish_requests(self, request_ids: str | list[str], status: RequestStatus) -> None:
        for request_id in [request_ids] if isinstance(request_ids, str) else request_ids:
            held = self._holders.get(request_id)
            if held is not None:
                held[1].scheduler.finish_requests(request_id, status)

    def has_unfinished_requests(self) -> bool:  # NOTE: also while finished ones hold blocks
        return bool(self._holders or self._migrations) or any(
            i.scheduler.has_blocks_pending_free for i in self.instances)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._holders)

    @property
    def requests(self) -> dict[str, Request]:
        """Unfinished requests by id."""
        return {rid: held[0] for rid, held in self._holders.items()}

    # ---- the step ---------------------------------------------------------------------------
    def step(self, timeout_s: float = 0.005) -> list[RequestOutput]:
        """Start what can start (pulls, steps while pipelines have room), wait up to `timeout_s`
        for any step or migration to finish, apply the results; outputs of changed requests."""
        self._start_pulls()
        for inst in self.instances:
            inst.fill_pipeline()
        updated = self._collect(timeout_s)
        self._check_timeouts()
        self._start_pulls()
        for inst in self.instances:
            inst.fill_pipeline()
        # NOTE: the processor stops requests on stop strings through our finish_requests
        outputs = self.output_processor.process(updated, self)  # type: ignore[arg-type]
        for output in outputs:
            if output.finished:
                self._holders.pop(output.request_id, None)
                self._generator_states.pop(output.request_id, None)
        return outputs

    def _collect(self, timeout_s: float) -> list[Request]:
        self._wait_any(timeout_s)
        updated: list[Request] = []
        # NOTE: an instance's steps complete in submission order
        for inst in self.instances:
            while inst.inflight and inst.inflight[0].pending.done():
                updated += self._complete_step(inst)
        refs = [r for m in self._migrations.values() for r in m.refs]
        if refs:
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
            for m in list(self._migrations.values()):
                # NOTE: a failure handled earlier in this loop may have settled it already
                if (all(r in ready for r in m.refs)
                        and self._migrations.get(m.request.request_id) is m):
                    self._complete_migration(m)
        return updated

    def _wait_any(self, timeout_s: float) -> None:
        """Block until a step or migration may have finished, at most `timeout_s`. Steps on
        step channels wake on their sockets; Ray refs (migrations, steps of Ray-task
        instances) are polled every MIXED_POLL_S while channel steps are also in flight."""
        steps = [s.pending for i in self.instances for s in i.inflight]
        heads = [i.inflight[0].pending for i in self.instances if i.inflight]
        if any(p.done() for p in heads if p.channels):  # a reply read earlier, a broken channel
            return
        conns = list({id(c): c.conn for p in steps for c in p.channels if c.expecting}.values())
        refs = [r for p in steps for r in p.refs]
        refs += [r for m in self._migrations.values() for r in m.refs]
        if not refs:
            if conns:
                wait_connections(conns, timeout_s)
            else:
                time.sleep(min(timeout_s, 0.001))
            return
        if not conns:
            ray.wait(refs, num_returns=1, timeout=timeout_s)
            return
        deadline = time.monotonic() + timeout_s
        while not ray.wait(refs, num_returns=1, timeout=0)[0]:
            left = deadline - time.monotonic()
            if left <= 0 or wait_connections(conns, min(left, MIXED_POLL_S)):
                return

    def _complete_step(self, inst: StageEngine) -> list[Request]:
        step = inst.inflight.pop(0)  # NOTE: a worker runs its steps in submission order
        try:
            result = step.pending.result(self.disagg.step_timeout_s)
        except WorkerLost as e:
            inst.scheduler.release_step(step.scheduler_output)
            self._kill_instance(inst, f"worker of {inst.name} died: {e}")
            return []
        except StepFailed as e:
            inst.scheduler.release_step(step.scheduler_output)
            ids = [r.request_id for r in step.scheduler_output.scheduled]
            self._fail(inst, ids, f"{inst.name} step failed: {e}")
            return []
        updated = inst.scheduler.update_from_output(step.scheduler_output, result.output)
        if inst.kind == "prefill":
            self._generator_states.update(result.generator_states)
            self._awaiting_pull += [(inst, r) for r in inst.scheduler.pop_prefilled()]
        return updated

    # ---- migrations ---------------------------------------------------------------------------
    def _start_pulls(self) -> None:
        """Decode instances pull prefilled requests FCFS while they may."""
        while self._awaiting_pull:
            src, request = self._awaiting_pull[0]
            if request.request_id not in src.scheduler.requests:  # finished or failed
                self._awaiting_pull.popleft()
                continue
            live = sorted((i for i in self.decode if i.is_alive), key=lambda i: i.load)
            statuses = [inst.scheduler.can_pull(request) for inst in live]
            if AllocStatus.OK not in statuses:
                if all(s is AllocStatus.NEVER for s in statuses):
                    self._awaiting_pull.popleft()
                    reason = (f"no decode instance can hold its {request.num_tokens} tokens"
                              if live else "no live decode instance")
                    self._fail(src, [request.request_id], reason, RequestStatus.FINISHED_IGNORED)
                    continue
                return
            self._awaiting_pull.popleft()
            self._start_migration(src, live[statuses.index(AllocStatus.OK)], request)

    def _start_migration(self, src: StageEngine, dst: StageEngine, request: Request) -> None:
        now = time.monotonic()
        src_blocks = src.scheduler.release(request)
        dst_blocks = dst.scheduler.start_migration(request)
        # NOTE: decode holds one more slot (token #1's KV is computed there); it may start a
        # block the prefill side never had.
        refs = submit_migration(src, dst, src_blocks, dst_blocks[:len(src_blocks)],
                                request.request_id,
                                self._generator_states.pop(request.request_id, None))
        self._migrations[request.request_id] = Migration(request, src, dst, src_blocks, refs,
                                                         now)
        self.trace.event("mig_start", request.request_id, src.name, dst.name, at=now)
        self._holders[request.request_id] = (request, dst)

    def _complete_migration(self, m: Migration, error: str | None = None) -> None:
        del self._migrations[m.request.request_id]
        self.trace.event("mig_end", m.request.request_id)
        if error is None:
            try:
                self.migrated_bytes += sum(ray.get(m.refs, timeout=self.disagg.step_timeout_s))
                self.migration_time_s += time.monotonic() - m.started_s
            except ray.exceptions.RayError as e:
                error = f"KV migration {m.src.name} -> {m.dst.name} failed: {e}"
        m.src.scheduler.free_blocks(m.src_blocks)
        if error is not None and not m.request.is_finished:
            m.request.error = error
            logger.warning("request %s: %s", m.request.request_id, error)
        m.dst.scheduler.finish_migration(m.request.request_id, ok=error is None)

    # ---- failures -------------------------------------------------------------------------------
    def _fail(self, inst: StageEngine, request_ids: list[str], message: str,
              status: RequestStatus = RequestStatus.FINISHED_ABORTED) -> None:
        for request_id in request_ids:
            request = inst.scheduler.requests.get(request_id)
            if request is not None and request_id not in self._migrations:
                request.error = message
                inst.scheduler.finish_requests(request_id, status)
        logger.warning("%d request(s) failed: %s", len(request_ids), message)

    def _kill_instance(self, inst: StageEngine, reason: str) -> None:
        for step in inst.inflight:  # NOTE: never coming back; their blocks are free to go
            inst.scheduler.release_step(step.scheduler_output)
        inst.dead_reason, inst.inflight = reason, []
        inst.close()
        self._fail(inst, list(inst.scheduler.requests), reason)
        for m in [m for m in self._migrations.values() if inst in (m.src, m.dst)]:
            self._complete_migration(m, error=reason)

    def _check_timeouts(self) -> None:
        now, limit = time.monotonic(), self.disagg.step_timeout_s
        for inst in self.instances:
            if inst.inflight and now - inst.inflight[0].started_s > limit:
                self._kill_instance(inst, f"{inst.name}: a step ran over {limit:.0f} s")
        for m in [m for m in self._migrations.values() if now - m.started_s > limit]:
            self._complete_migration(m, error=f"KV migration ran over {limit:.0f} s")

    # ---- queries / lifecycle --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Per-instance queue lengths and block usage, plus migration counters."""
        return {"instances": {i.name: i.stats() for i in self.instances},
                "num_migrations_in_flight": len(self._migrations),
                "num_awaiting_pull": len(self._awaiting_pull),
                "migrated_bytes": self.migrated_bytes}

    def shutdown(self) -> None:
        """Kill every worker and free the placement groups (Ray itself keeps running)."""
        if self.trace.enabled:  # NOTE: killed workers would lose their buffered events
            self.trace.flush()
            try:
                ray.get([w.flush_trace.remote() for i in self.instances for w in i.ray.workers],
                        timeout=10)
            except ray.exceptions.RayError:
                logger.warning("a worker's step trace could not be flushed")
        for inst in self.instances:
            inst.close()
        ray_cluster.destroy([i.ray for i in self.instances])
