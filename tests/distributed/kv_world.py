"""A small world of spawned processes that migrate KV slabs with `process_groups.build_transport`
and `send_blocks`/`recv_blocks` (the code the Ray workers run): prefill TP ranks first, then
decode TP ranks. On CPU the NCCL transport's code runs over gloo pair groups; on GPUs over real
NCCL / CUDA IPC."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from distllm.distributed import kv_transport as kvt
from distllm.distributed.cuda_ipc_transport import CudaIpcSlabTransport
from distllm.distributed.shm_transport import ShmSlabTransport
from distllm.distributed.transport_select import TransportPlan

SRC_BLOCKS = [4, 1, 3]  # the request's blocks on the prefill side
DST_BLOCKS = [0, 5, 2]  # where the decode side puts them


@dataclass(frozen=True)
class KVWorld:
    """Shapes, parallelism and where each rank runs."""

    plan: TransportPlan
    devices: tuple[str, ...]  # rank -> "cpu", "cuda:0", ...
    prefill_tp: int = 2
    decode_tp: int = 1
    pair_backend: str = "gloo"
    num_layers: int = 3
    num_kv_heads: int = 4
    num_blocks: int = 6
    block_size: int = 4
    head_dim: int = 8


def reference_caches(world: KVWorld) -> kvt.KVCaches:
    """The whole KV of the prefill instance (every head), seeded, on CPU."""
    gen = torch.Generator().manual_seed(7)
    shape = (world.num_blocks, world.num_kv_heads, world.block_size, world.head_dim)
    return [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
            for _ in range(world.num_layers)]


def _head_slice(caches: kvt.KVCaches, heads: tuple[int, int], device: torch.device,
                zero: bool = False) -> kvt.KVCaches:
    pick = [(k[:, heads[0]:heads[1]], v[:, heads[0]:heads[1]]) for k, v in caches]
    return [(torch.zeros_like(k).to(device) if zero else k.contiguous().to(device),
             torch.zeros_like(v).to(device) if zero else v.contiguous().to(device))
            for k, v in pick]


def route_name(transport: kvt.KVTransport, peer: int) -> str:
    """Which transport `transport` uses with `peer`: gloo, shm, nccl or cuda_ipc."""
    if isinstance(transport, CudaIpcSlabTransport | ShmSlabTransport):
        if peer in transport.local_peers:
            return "cuda_ipc" if isinstance(transport, CudaIpcSlabTransport) else "shm"
        transport = transport.fallback
    if isinstance(transport, kvt.RoutedTransport):
        transport = transport.routes.get(peer, transport.default)
    return {kvt.NcclTransport: "nccl", kvt.GlooTransport: "gloo"}[type(transport)]


def _migrate(world: KVWorld, rank: int, transport: kvt.KVTransport) -> dict:
    """This rank's half of one migration; the decode side checks what it received."""
    device = torch.device(world.devices[rank])
    ref = reference_caches(world)
    transfers = kvt.plan_migration(world.num_layers, world.num_kv_heads, world.prefill_tp, 1,
                                   world.decode_tp, 1)
    tp, index = ((world.prefill_tp, rank) if rank < world.prefill_tp
                 else (world.decode_tp, rank - world.prefill_tp))
    heads = kvt.kv_head_range(world.num_kv_heads, index, tp)
    caches = _head_slice(ref, heads, device, zero=rank >= world.prefill_tp)
    routes = {}
    for t in transfers:
        local = (t.heads[0] - heads[0], t.heads[1] - heads[0])
        if rank < world.prefill_tp and t.src == index:
            peer = world.prefill_tp + t.dst
            transport.send_blocks(caches, SRC_BLOCKS, t.layers, local, peer)
        elif rank >= world.prefill_tp and t.dst == index:
            peer = t.src
            nbytes = transport.recv_blocks(caches, DST_BLOCKS, t.layers, local, peer)
            assert nbytes == 2 * (t.layers[1] - t.layers[0]) * len(DST_BLOCKS) * (
                local[1] - local[0]) * world.block_size * world.head_dim * 4
        else:
            continue
        routes[peer] = route_name(transport, peer)
    want = _head_slice(ref, heads, torch.device("cpu"), zero=True)
    for (k, v), (rk, rv) in zip(want, _head_slice(ref, heads, torch.device("cpu")), strict=True):
        k[DST_BLOCKS], v[DST_BLOCKS] = rk[SRC_BLOCKS], rv[SRC_BLOCKS]
    ok = all(torch.equal(a.cpu(), b) for got, exp in zip(caches, want, strict=True)
             for a, b in zip(got, exp, strict=True))
    return {"rank": rank, "routes": routes, "ok": ok or rank < world.prefill_tp}


def _peer(rank: int, world: KVWorld, port: int, results: mp.Queue) -> None:
    from distllm.distributed.process_groups import build_transport, destroy_world, init_world

    torch.set_num_threads(1)
    device = torch.device(world.devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    size = len(world.devices)
    init_world("127.0.0.1", port, rank, size, [[r] for r in range(size)], timeout_s=60)
    try:
        transport = build_transport(world.plan, rank, device, world.pair_backend)
        results.put(_migrate(world, rank, transport))
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put({"rank": rank, "error": repr(e)})
    finally:
        destroy_world()


def run_world(world: KVWorld, timeout_s: float = 120.0) -> dict[int, dict]:
    """Spawn one process per rank, run one migration; rank -> what it reported."""
    from distllm.distributed.process_groups import find_free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = find_free_port()
    procs = [ctx.Process(target=_peer, args=(r, world, port, results))
             for r in range(len(world.devices))]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=timeout_s) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return {o["rank"]: o for o in out}
