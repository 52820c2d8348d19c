"""KV transfer time over the gloo transport between two local processes (the CPU path of the
disaggregated engine): gather the slab from paged caches, send, receive, scatter into the peer's
caches -- what `RayWorker.send_kv` / `recv_kv` do, without Ray."""
from __future__ import annotations

import socket
import time

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peer(rank: int, port: int, shape: tuple[int, ...], dtype: torch.dtype, repeats: int,
          results: mp.Queue) -> None:
    import torch.distributed as dist

    from distllm.distributed.kv_transport import GlooTransport

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        transport = GlooTransport()
        # shape: [2, num_layers, num_blocks, num_heads, block_size, head_dim]
        caches = torch.zeros(shape, dtype=dtype)
        blocks = torch.arange(shape[2])
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            if rank == 0:
                transport.send(caches.index_select(2, blocks).contiguous(), 1)
            else:
                caches.index_copy_(2, blocks, transport.recv(shape, dtype, 0))
            times.append(time.perf_counter() - t0)
        if rank == 1:
            results.put(sorted(times)[len(times) // 2])
    finally:
        dist.destroy_process_group()


def time_gloo_transfer(shape: tuple[int, ...], dtype: torch.dtype,
                       repeats: int = 5) -> tuple[int, float]:
    """(bytes, median seconds) of moving a slab of `shape` ([2, layers, blocks, heads,
    block_size, head_dim]) from one process to another over gloo."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_peer, args=(r, port, shape, dtype, repeats, results))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        seconds = float(results.get(timeout=120))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    nbytes = torch.empty(shape, dtype=dtype).numel() * torch.empty((), dtype=dtype).element_size()
    return nbytes, seconds
