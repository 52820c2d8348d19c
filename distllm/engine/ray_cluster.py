"""Ray plumbing: join or start a cluster, one placement group per instance (its tp x pp workers
kept together as the affinity asks), the world process group over every worker with the KV
transport plan of every migrating worker pair (gloo / NCCL / CUDA IPC), model loading.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from distllm import envs
from distllm.config import EngineConfig
from distllm.distributed.kv_transport import plan_migration
from distllm.distributed.transport_select import (
    TransportPlan,
    check_kv_transport,
    plan_transports,
)
from distllm.worker.ray_worker import RemoteRayWorker

logger = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address`, or reuse the running cluster, or start a local one (logical CPUs: at
    least `num_cpus`, so every worker actor gets its bundle on a small machine)."""
    if ray.is_initialized():
        return
    if address is not None:
        ray.init(address=address, log_to_driver=False)
        return
    ray.init(num_cpus=max(num_cpus or 1, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False, configure_logging=False)


@dataclass
class InstanceWorkers:
    """The Ray side of one instance: its workers (index pp_rank * tp + tp_rank) and their
    global ranks in the world group."""

    name: str
    config: EngineConfig  # the instance's config (parallel = its tp x pp)
    workers: list[Any]  # RemoteRayWorker actor handles
    placement_group: Any
    ranks: list[int] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """prefill, decode or colocated. NOTE: from the name, "<kind>-<index>" (instance_specs)."""
        return self.name.rsplit("-", 1)[0]


def gpu_share(config: EngineConfig) -> float:
    """Ray GPUs one worker of this instance reserves: its memory share on CUDA, 0 on CPU."""
    return config.cache.gpu_memory_utilization if config.device == "cuda" else 0.0


def create_instance(name: str, config: EngineConfig, num_threads: int, affinity: str,
                    timeout_s: float) -> InstanceWorkers:
    """Reserve a placement group (one CPU/GPU bundle per worker) and start the workers in it."""
    tp, pp = config.parallel.tp, config.parallel.pp
    # NOTE: a CUDA worker asks Ray for the share of a GPU it may use, so two instances at
    # --gpu-memory-utilization <= 0.5 (1P+1D) share one GPU
    gpus = gpu_share(config)
    bundle = {"GPU": gpus, "CPU": 1} if config.device == "cuda" else {"CPU": num_threads}
    strategy = "STRICT_PACK" if affinity == "high" else "PACK"
    pg = placement_group([dict(bundle) for _ in range(tp * pp)], strategy=strategy,
                         name=f"distllm-{name}-{uuid.uuid4().hex[:8]}")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        remove_placement_group(pg)
        raise RuntimeError(f"instance {name}: the Ray cluster cannot place {tp * pp} workers "
                           f"with {bundle} each ({strategy}) within {timeout_s:.0f} s") from e
    env = {"OMP_NUM_THREADS": str(num_threads), "DISTLLM_NUM_THREADS": str(num_threads)}
    trace_dir = envs.step_trace_dir()
    if trace_dir:  # the workers' step trace (distllm.tracing) goes with it
        env["DISTLLM_STEP_TRACE"] = trace_dir
    workers = []
    for index in range(tp * pp):
        strategy_i = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)
        options = dict(scheduling_strategy=strategy_i, runtime_env={"env_vars": env},
                       num_cpus=0 if config.device == "cuda" else num_threads,
                       num_gpus=gpus)
        workers.append(RemoteRayWorker.options(**options).remote(
            config, tp_rank=index % tp, pp_rank=index // tp, num_threads=num_threads))
    return InstanceWorkers(name, config, workers, pg)


def init_world(instances: list[InstanceWorkers], timeout_s: float,
               kv_transport: str = "auto") -> None:
    """Number every worker, plan the KV transport of every migrating pair (`kv_transport`: the
    --kv-transport choice; ValueError naming it when it cannot work here), start the world group,
    each instance's TP groups and the NCCL pair groups."""
    rank = 0
    tp_groups: list[list[int]] = []
    for inst in instances:
        inst.ranks = list(range(rank, rank + len(inst.workers)))
        rank += len(inst.workers)
        tp = inst.config.parallel.tp
        tp_groups += [inst.ranks[i:i + tp] for i in range(0, len(inst.ranks), tp)]
    plan = plan_world_transports(instances, kv_transport, timeout_s)
    first = instances[0].workers[0]
    addr, port = ray.get(first.master_address.remote(), timeout=timeout_s)
    refs = [w.init_distributed.remote(addr, port, r, rank, tp_groups, plan)
            for inst in instances for w, r in zip(inst.workers, inst.ranks, strict=True)]
    ray.get(refs, timeout=timeout_s)


def plan_world_transports(instances: list[InstanceWorkers], kv_transport: str,
                          timeout_s: float) -> TransportPlan:
    """The transport plan of numbered instances. Every worker reports where it runs (node, GPU,
    whether /dev/shm is usable); a forced transport the devices cannot run fails first."""
    for inst in instances:
        check_kv_transport(kv_transport, inst.config.device)
    workers = [w for inst in instances for w in inst.workers]
    locations = ray.get([w.location.remote() for w in workers], timeout=timeout_s)
    plan = plan_transports(migration_pairs(instances), locations, kv_transport)
    logger.info("KV transports (%s): %s", kv_transport, plan.routes)
    return plan


def migration_pairs(instances: list[InstanceWorkers]) -> list[tuple[int, int]]:
    """(prefill rank, decode rank) of every worker pair a migration moves KV between (each
    prefill instance to each decode instance, the slabs of `plan_migration`)."""
    pairs = []
    for src in (i for i in instances if i.kind == "prefill"):
        for dst in (i for i in instances if i.kind == "decode"):
            dims = src.config.model.dims
            for t in plan_migration(dims.num_layers, dims.num_kv_heads, src.config.parallel.tp,
                                    src.config.parallel.pp, dst.config.parallel.tp,
                                    dst.config.parallel.pp):
                pairs.append((src.ranks[t.src], dst.ranks[t.dst]))
    return sorted(set(pairs))


def load_models(inst: InstanceWorkers, num_blocks: int | None,
                timeout_s: float) -> tuple[int, int]:
    """Load the instance's shards and size its cache (the smallest shard's budget, or
    `num_blocks`); returns (device blocks, swap blocks)."""
    sizes = ray.get([w.load_model.options(concurrency_group="compute").remote()
                     for w in inst.workers], timeout=timeout_s)
    device = num_blocks or min(s[0] for s in sizes)
    swap = min(s[1] for s in sizes)
    ray.get([w.init_cache.options(concurrency_group="compute").remote(device, swap)
             for w in inst.workers], timeout=timeout_s)
    return device, swap


def destroy(instances: list[InstanceWorkers]) -> None:
    """Kill the workers and free their placement groups (best effort)."""
    for inst in instances:
        for w in inst.workers:
            try:
                ray.kill(w)
            except Exception:  # noqa: BLE001 - already dead
                logger.debug("worker of %s already gone", inst.name)
        try:
            remove_placement_group(inst.placement_group)
        except Exception:  # noqa: BLE001 - cluster already down
            logger.debug("placement group of %s already gone", inst.name)
