"""torch.distributed setup of one worker process: the world group over every worker of every
instance (gloo; KV between CPU workers on different nodes, and the small shared-memory / CUDA IPC
messages, go point-to-point on it),
the TP group of its stage, one 2-rank NCCL group per GPU pair that migrates KV across GPUs, and
the worker's KV transport built from the driver's `TransportPlan`."""
from __future__ import annotations

import socket
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from distllm.distributed.kv_transport import KVTransport
    from distllm.distributed.transport_select import TransportPlan


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def node_ip() -> str:
    """An address peers on other nodes can reach (loopback on a single machine)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray
        return "127.0.0.1"


def init_world(master_addr: str, master_port: int, rank: int, world_size: int,
               tp_groups: list[list[int]], backend: str = "gloo",
               timeout_s: float = 120.0) -> Any:
    """Join the world group and create every TP group (all ranks create all groups, in the same
    order, as torch.distributed requires). Returns this rank's TP group, or None when it is
    alone in its group. Also registers it for the TP collectives."""
    import torch.distributed as dist

    from distllm.distributed.collectives import set_tp_group

    dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}",
                            rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    mine = None
    for ranks in tp_groups:
        group = dist.new_group(ranks, backend=backend)
        if rank in ranks and len(ranks) > 1:
            mine = group
    set_tp_group(mine)
    return mine


def new_pair_groups(pairs: tuple[tuple[int, int], ...], rank: int,
                    backend: str = "nccl") -> dict[int, Any]:
    """Create one group per pair, every rank every group in the order given (collective over
    the world: all ranks must call it with the same pairs). Returns peer rank -> the group of
    this rank's pairs. NOTE: NCCL sets a pair's communicator up at its first send
    (`warm_up_pairs` does that at start-up)."""
    import torch.distributed as dist

    mine = {}
    for low, high in pairs:
        group = dist.new_group([low, high], backend=backend)
        if rank in (low, high):
            mine[high if rank == low else low] = group
    return mine


def warm_up_pairs(pairs: tuple[tuple[int, int], ...], rank: int,
                  transport: KVTransport, device: torch.device) -> None:
    """One 1-element transfer over each of this rank's pairs, low rank to high, in the plan's
    order: the NCCL communicators form now (a broken link fails start-up, and the first
    migration does not pay for it). NOTE: deadlock-free: the earliest unfinished pair of the
    sorted list has both ranks done with all their earlier pairs, so both are at it."""
    import torch

    for low, high in pairs:
        if rank == low:
            transport.send(torch.ones(1, device=device), high)
        elif rank == high and transport.recv((1,), torch.float32, low).item() != 1.0:
            raise RuntimeError(f"KV pair group {low}-{high}: warm-up sent a wrong value")


def build_transport(plan: TransportPlan, rank: int, device: torch.device,
                    pair_backend: str = "nccl") -> KVTransport:
    """This worker's KV transport: NCCL pair groups with its "nccl" peers, CUDA IPC with its
    "cuda_ipc" peers, shared memory with its "shm" peers (CPU), gloo (world group) with the
    rest. Collective (creates and warms up the pair groups).
    `pair_backend` "gloo" runs the NCCL transport's code on CPU (tests)."""
    from distllm.distributed import kv_transport

    gloo = kv_transport.GlooTransport()
    groups = new_pair_groups(plan.nccl_pairs, rank, pair_backend)
    nccl = kv_transport.NcclTransport(groups, device)
    warm_up_pairs(plan.nccl_pairs, rank, nccl, device)
    routed = kv_transport.RoutedTransport({peer: nccl for peer in groups}, gloo)
    if device.type != "cuda":
        from distllm.distributed.shm_transport import ShmSlabTransport

        # NOTE: always wrapped on CPU (empty local_peers: no shm peer) so the type is alike
        return ShmSlabTransport(routed, plan.peers(rank, "shm"))
    from distllm.distributed.cuda_ipc_transport import CudaIpcSlabTransport

    # NOTE: always wrapped on CUDA (empty local_peers: no IPC peer) so the type is alike
    return CudaIpcSlabTransport(routed, plan.peers(rank, "cuda_ipc"), device)


def destroy_world() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
