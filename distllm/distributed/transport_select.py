"""Which KV transport each (prefill worker, decode worker) pair uses, from where each one runs and
the `--kv-transport` choice: "auto" picks shared memory ("shm") between CPU workers on the same
node when /dev/shm is usable there, gloo between CPU workers otherwise, CUDA IPC when both use the
same GPU (1P+1D sharing it), NCCL for GPUs otherwise (other GPU or other node; no host staging).
"gloo" also works on GPUs (through host memory). Pure Python: the driver builds one
`TransportPlan` for the whole world and hands it to every worker (`process_groups.build_transport`
applies it)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

KV_TRANSPORTS = ("auto", "gloo", "shm", "nccl", "cuda_ipc")  # what --kv-transport accepts
TRANSPORTS = ("gloo", "shm", "nccl", "cuda_ipc")  # what a pair ends up using
_FLAG = "--kv-transport"


@dataclass(frozen=True)
class WorkerLocation:
    """Where one worker runs."""

    node_id: str  # Ray node id (or host name)
    device: str  # "cpu" or "cuda"
    gpu_uuid: str | None = None  # the physical GPU (CUDA_VISIBLE_DEVICES renumbers indices)
    has_shm: bool = False  # /dev/shm usable by this worker (shared memory with same-node peers)


def check_kv_transport(requested: str, device: str | None = None) -> None:
    """ValueError (naming the flag) when `requested` is unknown or cannot run on `device` (None:
    where the instances run is not known yet, e.g. when the config is built)."""
    if requested not in KV_TRANSPORTS:
        raise ValueError(f"{_FLAG} must be one of {KV_TRANSPORTS}, got {requested!r}")
    if device is not None and requested in ("nccl", "cuda_ipc") and device != "cuda":
        raise ValueError(f"{_FLAG} {requested} needs CUDA workers (--device cuda), the "
                         f"instances run on {device}: use {_FLAG} gloo or auto")
    if device is not None and requested == "shm" and device != "cpu":
        raise ValueError(f"{_FLAG} shm needs CPU workers (--device cpu), the instances run on "
                         f"{device}: use {_FLAG} cuda_ipc, nccl or auto")


def choose_transport(src: WorkerLocation, dst: WorkerLocation, requested: str = "auto") -> str:
    """The transport that moves KV from `src` (prefill) to `dst` (decode). ValueError when the
    devices differ or a forced `requested` transport cannot connect the two."""
    if src.device != dst.device:
        raise ValueError(f"prefill on {src.device} and decode on {dst.device}: both instances "
                         "must use the same device kind")
    check_kv_transport(requested, src.device)
    same_gpu = is_same_gpu(src, dst)
    if requested == "auto":
        if src.device != "cuda":
            return "shm" if is_same_node_shm(src, dst) else "gloo"
        return "cuda_ipc" if same_gpu else "nccl"
    if requested == "shm" and not is_same_node_shm(src, dst):
        raise ValueError(f"{_FLAG} shm: a prefill worker ({src.node_id}, shm usable: "
                         f"{src.has_shm}) and a decode worker ({dst.node_id}, shm usable: "
                         f"{dst.has_shm}) do not share a node with a usable /dev/shm: use "
                         f"{_FLAG} gloo or auto")
    if requested == "nccl" and same_gpu:
        raise ValueError(f"{_FLAG} nccl: a prefill and a decode worker share GPU "
                         f"{src.gpu_uuid} on {src.node_id}, and NCCL cannot connect two ranks on "
                         f"one GPU: use {_FLAG} cuda_ipc or auto")
    if requested == "cuda_ipc" and not same_gpu:
        raise ValueError(f"{_FLAG} cuda_ipc: a prefill worker ({src.node_id}/{src.gpu_uuid}) and "
                         f"a decode worker ({dst.node_id}/{dst.gpu_uuid}) are on different GPUs, "
                         f"and IPC handles open only on the same GPU: use {_FLAG} nccl or auto")
    return requested


def is_same_node_shm(src: WorkerLocation, dst: WorkerLocation) -> bool:
    """Both CPU workers on one node and both can use /dev/shm (shared memory between them)."""
    return (src.device == dst.device == "cpu" and bool(src.node_id)
            and src.node_id == dst.node_id and src.has_shm and dst.has_shm)


def is_same_gpu(src: WorkerLocation, dst: WorkerLocation) -> bool:
    """Both workers on one physical GPU (1P+1D sharing it: each instance needs its own
    --gpu-memory-utilization share, and Ray a fractional GPU per worker). NOTE: only then can
    IPC handles be opened: Ray shows each worker just its own GPU."""
    return (src.device == dst.device == "cuda" and src.node_id == dst.node_id
            and src.gpu_uuid is not None and src.gpu_uuid == dst.gpu_uuid)


@dataclass(frozen=True)
class TransportPlan:
    """The transport of every migrating pair of the world, identical on every rank.

    routes: ((src rank, dst rank), transport) of each prefill -> decode worker pair that moves
        KV; pairs not listed use gloo.
    nccl_pairs: (low rank, high rank) of each pair that needs its own 2-rank NCCL group, sorted.
        NOTE: every rank creates these groups in this order (torch.distributed requires all
        ranks to call new_group alike), so group creation cannot deadlock.
    """

    routes: tuple[tuple[tuple[int, int], str], ...] = ()
    nccl_pairs: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for (src, dst), transport in self.routes:
            if transport not in TRANSPORTS or src == dst:
                raise ValueError(f"bad KV route {src} -> {dst} over {transport!r}")
        if list(self.nccl_pairs) != sorted(set(self.nccl_pairs)):
            raise ValueError("nccl_pairs must be sorted and unique")

    def peers(self, rank: int, transport: str) -> set[int]:
        """The ranks `rank` exchanges KV with over `transport` (either direction)."""
        out = set()
        for (src, dst), used in self.routes:
            if used == transport and rank in (src, dst):
                out.add(dst if rank == src else src)
        return out

    def transport_between(self, src: int, dst: int) -> str:
        return dict(self.routes).get((src, dst), "gloo")


def plan_transports(pairs: Iterable[tuple[int, int]], locations: list[WorkerLocation],
                    requested: str = "auto") -> TransportPlan:
    """The plan for the migrating `pairs` ((prefill rank, decode rank)); `locations[r]` is where
    rank r runs. ValueError (naming --kv-transport) when a forced transport cannot work."""
    routes = {}
    for src, dst in sorted(set(pairs)):
        routes[(src, dst)] = choose_transport(locations[src], locations[dst], requested)
    nccl = sorted({(min(p), max(p)) for p, used in routes.items() if used == "nccl"})
    return TransportPlan(tuple(routes.items()), tuple(nccl))


def local_location(node_id: str, device: str) -> WorkerLocation:
    """This process's location (the CUDA device it uses is the current one; a CPU worker says
    whether it can use /dev/shm)."""
    if device != "cuda":
        from distllm.distributed.shm_transport import is_shm_usable

        return WorkerLocation(node_id, device, has_shm=device == "cpu" and is_shm_usable())
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return WorkerLocation(node_id, device, str(getattr(props, "uuid", props.name)))
