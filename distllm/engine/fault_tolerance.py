"""Fault tolerance of the Ray engine: dead instances are re-created and rejoin, and a
fault-injection worker for tests.

`ResilientDisaggEngine` is a `DisaggEngine` whose `step()` restarts a dead instance (a worker
that died, or a step that ran over `step_timeout_s`) once the requests it held have been
answered (with an error, by DisaggEngine's failure handling) or taken off it: a request that
had streamed nothing yet (no output token) is re-run on another live instance, or on the dead
one once it is back.

    dead instance, its requests answered -> finish in-flight steps / migrations of the others
      -> every live worker leaves the world group -> kill the dead instance's workers
      -> new actors in a new placement group -> world group re-formed over everyone
      -> load the model, new StageEngine in the same slot (same name) -> serving again

The survivors keep their KV caches and requests; only the world group is re-formed.

`FaultyRayWorker` is the worker actor plus `inject_fault(point, action)`: at the next
`execute_model`, `send_kv` or `recv_kv` the process exits (a killed worker) or stalls for a while
then fails (a hung transfer). Tests swap it in for `ray_cluster.RemoteRayWorker`.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import ray

from distllm.engine import ray_cluster
from distllm.engine.disagg_controller import DisaggEngine
from distllm.engine.stage_engine import StageEngine
from distllm.worker.ray_worker import RayWorker

logger = logging.getLogger(__name__)
FAULT_POINTS = ("execute_model", "send_kv", "recv_kv")
FAULT_ACTIONS = ("exit", "hang")
SETUP_TIMEOUT_S = 120.0


@dataclass
class RestartRecord:
    """One instance restart (monotonic times)."""

    name: str
    reason: str
    started_s: float
    rejoined_s: float


class ResilientDisaggEngine(DisaggEngine):
    """A DisaggEngine that re-creates dead instances (at most `max_restarts` in all)."""

    def __init__(self, *args: Any, max_restarts: int = 8, **kwargs: Any) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        super().__init__(*args, **kwargs)
        self.max_restarts = max_restarts
        self.restarts: list[RestartRecord] = []
        self._stashed: list[Any] = []  # requests updated while draining for a restart
        self._world_suspect = False  # a KV transfer timed out: re-form the world group
        self._pending_rerun: list[Any] = []  # requests to re-run once an instance can
        self.num_reruns = 0
        self.num_world_resets = 0

    def step(self, timeout_s: float = 0.005) -> list:
        dead = self._restartable()
        if dead is not None or self._world_suspect:
            self._drain_in_flight()
            if dead is not None:
                self._restart(dead)
            else:
                self._reform_world()
        return super().step(timeout_s)

    def _complete_migration(self, m: Any, error: str | None = None) -> None:
        # NOTE: a transfer given up on may still block a worker thread inside the world
        # group (a receive waiting on its sender): the group is re-formed before the next step.
        if error is not None and "ran over" in error:
            self._world_suspect = True
            for ref in m.refs:  # queued sends / receives of a transfer given up on never run
                ray.cancel(ref)
        super()._complete_migration(m, error)

    def has_unfinished_requests(self) -> bool:
        """Also True while a dead instance waits for its restart (keeps the loop stepping)."""
        return super().has_unfinished_requests() or self._restartable() is not None

    def _collect(self, timeout_s: float) -> list:
        stashed, self._stashed = self._stashed, []
        return stashed + super()._collect(timeout_s)

    # ---- re-running requests that had streamed nothing ----------------------------------
    def _kill_instance(self, inst: StageEngine, reason: str) -> None:
        """As DisaggEngine's, but requests without an output token yet (nothing streamed)
        are taken off the dead instance first and re-run elsewhere (or once it is back)."""
        rerun = [r for r in list(inst.scheduler.requests.values())
                 if r.num_output_tokens == 0 and r.request_id not in self._migrations]
        for request in rerun:
            _detach(inst.scheduler, request)
        super()._kill_instance(inst, reason)
        for request in rerun:
            logger.warning("request %s: %s; re-running it", request.request_id, reason)
            self._pending_rerun.append(request)
            self.num_reruns += 1
        self._place_reruns()

    def _place_reruns(self) -> None:
        """Queue re-run requests on the least-loaded live entry instance, if any."""
        entry = [i for i in (self.prefill or self.decode) if i.is_alive]
        while entry and self._pending_rerun:
            request = self._pending_rerun.pop(0)
            target = min(entry, key=lambda i: i.load)
            target.scheduler.add_request(request)
            self._holders[request.request_id] = (request, target)

    def finish_requests(self, request_ids: str | list[str], status: Any) -> None:
        ids = {request_ids} if isinstance(request_ids, str) else set(request_ids)
        for request in [r for r in self._pending_rerun if r.request_id in ids]:
            self._pending_rerun.remove(request)  # aborted while waiting for a re-run
            request.status = status
        super().finish_requests(request_ids, status)

    def _restartable(self) -> StageEngine | None:
        """A dead instance whose requests have all been answered, if restarts are left."""
        if len(self.restarts) >= self.max_restarts:
            return None
        pending = {r.request_id for r in self._pending_rerun}
        holders = {id(held[1]) for rid, held in self._holders.items() if rid not in pending}
        for inst in self.instances:
            if not inst.is_alive and id(inst) not in holders:
                return inst
        return None

    def _drain_in_flight(self) -> None:
        """Let submitted steps and migrations finish (or time out) without starting new ones."""
        while any(i.inflight for i in self.instances) or self._migrations:
            self._stashed += super()._collect(0.05)
            self._check_timeouts()

    def _reform_world(self) -> None:
        """Every worker leaves the world group and joins a new one (stuck transfers fail)."""
        timeout = max(self.disagg.step_timeout_s, SETUP_TIMEOUT_S)
        logger.warning("re-forming the world group after a KV transfer timeout")
        ray.get([w.shutdown.remote() for i in self.instances for w in i.ray.workers],
                timeout=timeout)
        ray_cluster.init_world([i.ray for i in self.instances], timeout,
                               self.disagg.kv_transport)
        self._world_suspect = False
        self.num_world_resets += 1

    def _restart(self, dead: StageEngine) -> None:
        started = time.monotonic()
        timeout = max(self.disagg.step_timeout_s, SETUP_TIMEOUT_S)  # actors start slowly
        logger.warning("restarting %s (%s)", dead.name, dead.dead_reason)
        live = [i for i in self.instances if i is not dead]
        ray.get([w.shutdown.remote() for i in live for w in i.ray.workers], timeout=timeout)
        ray_cluster.destroy([dead.ray])
        workers = ray_cluster.create_instance(dead.name, dead.ray.config,
                                              self.disagg.num_threads_per_worker,
                                              self.disagg.affinity, timeout)
        index = self.instances.index(dead)
        ray_cluster.init_world([workers if i is dead else i.ray for i in self.instances],
                               timeout, self.disagg.kv_transport)
        size = ray_cluster.load_models(workers, dead.ray.config.cache.num_kv_blocks, timeout)
        fresh = StageEngine(dead.kind, workers, *size, self.disagg)
        self.instances[index] = fresh
        self._world_suspect = False
        self.prefill = [i for i in self.instances if i.kind == "prefill"]
        self.decode = [i for i in self.instances if i.kind != "prefill"]
        self._place_reruns()
        self.restarts.append(RestartRecord(dead.name, dead.dead_reason or "", started,
                                           time.monotonic()))
        logger.warning("%s rejoined after %.1f s", dead.name, time.monotonic() - started)


def _detach(scheduler: Any, request: Any) -> None:
    """Take a request off a (dead) instance's scheduler without finishing it, reset to be
    prefilled again from scratch."""
    for queue in (scheduler.running, scheduler.waiting, scheduler.swapped):
        if request in queue:
            queue.remove(request)
    scheduler.block_manager.free(request)
    del scheduler.requests[request.request_id]
    request.num_computed_tokens = 0
    request.is_prefilling = False
    request.num_preemptions += 1


class FaultyRayWorker(RayWorker):
    """RayWorker with a test-only fault injection hook (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._faults: dict[str, tuple[str, float]] = {}  # point -> (action, stall seconds)

    def inject_fault(self, point: str, action: str = "exit", stall_s: float = 0.0) -> None:
        """Arm a fault at the next call of `point` (one of FAULT_POINTS)."""
        if point not in FAULT_POINTS or action not in FAULT_ACTIONS:
            raise ValueError(f"unknown fault {point}/{action}")
        self._faults[point] = (action, stall_s)

    def ping(self) -> int:
        return os.getpid()

    def _maybe_fail(self, point: str) -> None:
        fault = self._faults.pop(point, None)
        if fault is None:
            return
        action, stall_s = fault
        logger.warning("injected fault: %s at %s", action, point)
        if action == "exit":
            os._exit(1)
        time.sleep(stall_s)
        raise RuntimeError(f"injected fault: {point} stalled for {stall_s:.1f} s")

    def execute_model(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("execute_model")
        return super().execute_model(*args, **kwargs)

    def send_kv(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("send_kv")
        return super().send_kv(*args, **kwargs)

    def recv_kv(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail("recv_kv")
        return super().recv_kv(*args, **kwargs)


RemoteFaultyRayWorker = ray.remote(concurrency_groups={"compute": 1, "migrate": 1})(
    FaultyRayWorker)
