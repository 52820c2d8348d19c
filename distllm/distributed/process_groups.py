"""torch.distributed setup of one worker process: the world group over every worker of every
instance (gloo on CPU; KV migration runs point-to-point on it) and the TP group of its stage."""
from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any


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


def destroy_world() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
