"""The KV transport rule (auto: shared memory between CPU workers of one node, gloo between CPU
nodes, CUDA IPC on one GPU, NCCL between GPUs), forced
choices that cannot work (ValueError naming --kv-transport), and the plan the driver builds: which
pairs migrate, which transport each uses, which NCCL pair groups every rank creates."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from distllm.distributed.transport_select import (
    TransportPlan,
    WorkerLocation,
    check_kv_transport,
    choose_transport,
    plan_transports,
)
from distllm.engine import ray_cluster

CPU_A, CPU_B = WorkerLocation("n0", "cpu"), WorkerLocation("n1", "cpu")
GPU_A, GPU_A2 = WorkerLocation("n0", "cuda", "GPU-a"), WorkerLocation("n0", "cuda", "GPU-a")
GPU_B, REMOTE = WorkerLocation("n0", "cuda", "GPU-b"), WorkerLocation("n1", "cuda", "GPU-a")
SHM_A, SHM_A2 = WorkerLocation("n0", "cpu", has_shm=True), WorkerLocation("n0", "cpu", has_shm=True)
SHM_B = WorkerLocation("n1", "cpu", has_shm=True)


def test_auto_rule() -> None:
    assert choose_transport(CPU_A, CPU_B) == "gloo"
    assert choose_transport(GPU_A, GPU_A2) == "cuda_ipc"
    assert choose_transport(GPU_A, GPU_B) == "nccl"  # same node, other GPU
    assert choose_transport(GPU_A, REMOTE) == "nccl"  # same GPU uuid string, other node
    unknown = WorkerLocation("n0", "cuda")  # no uuid: never assumed to be the same GPU
    assert choose_transport(unknown, unknown) == "nccl"
    with pytest.raises(ValueError, match="same device kind"):
        choose_transport(CPU_A, GPU_A)


def test_auto_rule_on_cpu_uses_shm_within_a_node() -> None:
    assert choose_transport(SHM_A, SHM_A2) == "shm"
    assert choose_transport(SHM_A, SHM_B) == "gloo"  # other node
    assert choose_transport(SHM_A, WorkerLocation("n0", "cpu")) == "gloo"  # no /dev/shm there
    unknown = WorkerLocation("", "cpu", has_shm=True)  # node not reported: never assumed shared
    assert choose_transport(unknown, unknown) == "gloo"
    assert choose_transport(SHM_A, SHM_A2, "gloo") == "gloo"
    assert choose_transport(SHM_A, SHM_A2, "shm") == "shm"


def test_local_location_reports_shm() -> None:
    from distllm.distributed.shm_transport import is_shm_usable
    from distllm.distributed.transport_select import local_location

    assert local_location("n0", "cpu") == WorkerLocation("n0", "cpu", has_shm=is_shm_usable())


def test_forced_choices() -> None:
    assert choose_transport(GPU_A, GPU_A2, "gloo") == "gloo"  # through host memory
    assert choose_transport(GPU_A, GPU_B, "gloo") == "gloo"
    assert choose_transport(GPU_A, GPU_B, "nccl") == "nccl"
    assert choose_transport(GPU_A, GPU_A2, "cuda_ipc") == "cuda_ipc"
    assert choose_transport(CPU_A, CPU_B, "gloo") == "gloo"


@pytest.mark.parametrize("src, dst, requested, match", [
    (CPU_A, CPU_B, "nccl", "--kv-transport nccl needs CUDA"),
    (CPU_A, CPU_B, "cuda_ipc", "--kv-transport cuda_ipc needs CUDA"),
    (GPU_A, GPU_B, "cuda_ipc", "--kv-transport cuda_ipc: .* different GPUs"),
    (GPU_A, REMOTE, "cuda_ipc", "--kv-transport cuda_ipc: .* different GPUs"),
    (GPU_A, GPU_A2, "nccl", "--kv-transport nccl: .* share GPU GPU-a"),
    (GPU_A, GPU_B, "tcp", "--kv-transport must be one of"),
    (GPU_A, GPU_A2, "shm", "--kv-transport shm needs CPU workers"),
    (SHM_A, SHM_B, "shm", "--kv-transport shm: .*do not share a node"),
    (SHM_A, CPU_A, "shm", "--kv-transport shm: .*shm usable: False"),
])
def test_forced_choice_that_cannot_work(src: WorkerLocation, dst: WorkerLocation, requested: str,
                                        match: str) -> None:
    with pytest.raises(ValueError, match=match):
        choose_transport(src, dst, requested)


def test_check_kv_transport_by_device() -> None:
    for requested in ("auto", "gloo"):
        check_kv_transport(requested, "cpu")
    for requested in ("auto", "gloo", "nccl", "cuda_ipc"):
        check_kv_transport(requested, "cuda")
    with pytest.raises(ValueError, match="--kv-transport nccl needs CUDA"):
        check_kv_transport("nccl", "cpu")
    check_kv_transport("shm", "cpu")
    check_kv_transport("shm")  # device not known yet
    with pytest.raises(ValueError, match="--kv-transport shm needs CPU"):
        check_kv_transport("shm", "cuda")


def test_plan_mixes_transports_and_lists_nccl_groups_in_order() -> None:
    # ranks 0, 1: prefill on GPU-a, GPU-b; rank 2: decode sharing GPU-a; rank 3: decode remote
    locations = [GPU_A, GPU_B, GPU_A2, REMOTE]
    plan = plan_transports([(1, 3), (0, 2), (1, 2), (0, 3), (0, 2)], locations)
    assert plan.routes == (((0, 2), "cuda_ipc"), ((0, 3), "nccl"), ((1, 2), "nccl"),
                           ((1, 3), "nccl"))
    assert plan.nccl_pairs == ((0, 3), (1, 2), (1, 3))
    assert plan.peers(2, "cuda_ipc") == {0} and plan.peers(2, "nccl") == {1}
    assert plan.peers(0, "nccl") == {3} and plan.peers(3, "cuda_ipc") == set()
    assert plan.transport_between(1, 3) == "nccl" and plan.transport_between(2, 3) == "gloo"
    gloo = plan_transports([(0, 2), (1, 3)], locations, "gloo")
    assert gloo.nccl_pairs == () and {t for _, t in gloo.routes} == {"gloo"}
    with pytest.raises(ValueError, match="--kv-transport nccl"):
        plan_transports([(0, 3), (0, 2)], locations, "nccl")  # 0 and 2 share GPU-a


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="sorted"):
        TransportPlan(nccl_pairs=((1, 2), (0, 3)))
    with pytest.raises(ValueError, match="bad KV route"):
        TransportPlan(routes=(((0, 1), "rdma"),))
    assert TransportPlan().peers(0, "nccl") == set()


@dataclass
class FakeRef:
    value: object


class FakeWorker:
    """Stands in for a Ray actor handle: `location.remote()` returns a ref to its location."""

    def __init__(self, location: WorkerLocation) -> None:
        self.location = SimpleNamespace(remote=lambda: FakeRef(location))


def _instance(name: str, tp: int, pp: int, device: str, first_rank: int,
              gpus: list[str] | None = None) -> ray_cluster.InstanceWorkers:
    dims = SimpleNamespace(num_layers=4, num_kv_heads=4)
    config = SimpleNamespace(device=device, model=SimpleNamespace(dims=dims),
                             parallel=SimpleNamespace(tp=tp, pp=pp))
    workers = [FakeWorker(WorkerLocation("n0", device, g, has_shm=device == "cpu"))
               for g in (gpus or [None] * tp * pp)]
    return ray_cluster.InstanceWorkers(name, config, workers, None,
                                       list(range(first_rank, first_rank + tp * pp)))


def test_migration_pairs_follow_plan_migration() -> None:
    # prefill tp2 (ranks 0, 1) -> decode tp1 pp2 (ranks 2, 3): every decode stage needs both
    # prefill head halves; a second decode instance tp2 (ranks 4, 5) gets head half i from i
    instances = [_instance("prefill-0", 2, 1, "cpu", 0), _instance("decode-0", 1, 2, "cpu", 2),
                 _instance("decode-1", 2, 1, "cpu", 4)]
    assert [i.kind for i in instances] == ["prefill", "decode", "decode"]
    assert ray_cluster.migration_pairs(instances) == [(0, 2), (0, 3), (0, 4), (1, 2), (1, 3),
                                                      (1, 5)]
    colocated = [_instance("colocated-0", 1, 1, "cpu", 0), _instance("colocated-1", 1, 1, "cpu", 1)]
    assert ray_cluster.migration_pairs(colocated) == []


def test_world_plan_on_cpu_and_on_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_cluster.ray, "get", lambda refs, timeout: [r.value for r in refs])
    cpu = [_instance("prefill-0", 1, 1, "cpu", 0), _instance("decode-0", 2, 1, "cpu", 1)]
    plan = ray_cluster.plan_world_transports(cpu, "auto", 1.0)  # one node: shared memory
    assert plan.routes == (((0, 1), "shm"), ((0, 2), "shm")) and plan.nccl_pairs == ()
    assert plan.peers(0, "shm") == {1, 2} and plan.peers(2, "shm") == {0}
    plan = ray_cluster.plan_world_transports(cpu, "gloo", 1.0)
    assert plan.routes == (((0, 1), "gloo"), ((0, 2), "gloo"))
    with pytest.raises(ValueError, match="--kv-transport nccl needs CUDA"):
        ray_cluster.plan_world_transports(cpu, "nccl", 1.0)

    # 1P on GPU-a, 1D tp2 on GPU-a (shared) and GPU-b
    gpu = [_instance("prefill-0", 1, 1, "cuda", 0, ["GPU-a"]),
           _instance("decode-0", 2, 1, "cuda", 1, ["GPU-a", "GPU-b"])]
    plan = ray_cluster.plan_world_transports(gpu, "auto", 1.0)
    assert plan.routes == (((0, 1), "cuda_ipc"), ((0, 2), "nccl")) and plan.nccl_pairs == ((0, 2),)
    with pytest.raises(ValueError, match="--kv-transport cuda_ipc"):
        ray_cluster.plan_world_transports(gpu, "cuda_ipc", 1.0)
    assert ray_cluster.plan_world_transports(gpu, "gloo", 1.0).nccl_pairs == ()
    with pytest.raises(ValueError, match="--kv-transport shm needs CPU"):
        ray_cluster.plan_world_transports(gpu, "shm", 1.0)
