"""The shared-memory KV transport between two spawned gloo ranks: slabs of several shapes and
dtypes both ways arrive exactly (one outgrows the first segment; with a capped segment it goes
over the fallback), a shape or dtype mismatch raises on both sides, no segment file is left
under /dev/shm; a migration straight between caches arrives exactly through a segment and
through the fallback; and `build_transport` wires it from a plan."""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from distllm.distributed import shm_transport as shm
from distllm.distributed.transport_select import TransportPlan
from tests.distributed.kv_world import KVWorld, run_world

pytestmark = pytest.mark.skipif(not shm.is_shm_usable(), reason="no usable /dev/shm")

# (shape, dtype) of the slabs each side sends, in order; the third outgrows the 1 MiB segment
SLABS = [((2, 3, 4, 2, 4, 8), torch.float32), ((2, 1, 5, 1, 4, 16), torch.bfloat16),
         ((2, 2, 40, 4, 16, 64), torch.float32), ((7,), torch.float16),
         ((2, 1, 1, 1, 4, 8), torch.bfloat16)]


def _slab(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(dtype)


def _files(pid: int) -> list[str]:
    return [f for f in os.listdir(shm.SHM_DIR) if f.startswith(f"{shm.SEGMENT_PREFIX}-{pid}-")]


def _exchange(transport: shm.ShmSlabTransport, rank: int, sender: int) -> list[bool]:
    """Every slab of SLABS from `sender` to the other rank; the receiver checks each."""
    peer, same = 1 - rank, []
    for i, (shape, dtype) in enumerate(SLABS):
        want = _slab(shape, dtype, seed=10 * sender + i)
        if rank == sender:
            transport.send(want, peer)
        else:
            got = transport.recv(shape, dtype, peer)
            same.append(got.dtype == dtype and torch.equal(got, want))
    return same


def _mismatch(transport: shm.ShmSlabTransport, rank: int) -> str:
    """Rank 0 sends a [2, 3] slab that rank 1 expects as [3, 2] and as bf16: both raise."""
    errors = []
    for expected in (((3, 2), torch.float32), ((2, 3), torch.bfloat16)):
        try:
            if rank == 0:
                transport.send(torch.zeros(2, 3), 1)
            else:
                transport.recv(*expected, 0)
        except RuntimeError as e:
            errors.append(str(e))
    return " | ".join(errors) if len(errors) == 2 else f"only {len(errors)} errors: {errors}"


def _blocks(transport: shm.ShmSlabTransport, rank: int) -> bool:
    """Rank 0 migrates KV heads [1, 3) of layers [1, 3) of three blocks to other blocks of
    rank 1 (`send_blocks`/`recv_blocks`: straight from and into the caches); rank 1 checks
    them and that nothing else changed."""
    gen = torch.Generator().manual_seed(3)
    full = [(torch.randn(8, 4, 4, 8, generator=gen), torch.randn(8, 4, 4, 8, generator=gen))
            for _ in range(3)]
    src, dst, layers, heads = [6, 0, 3], [1, 7, 2], (1, 3), (1, 3)
    if rank == 0:
        transport.send_blocks(full, src, layers, heads, 1)
        return True
    caches = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in full]
    nbytes = transport.recv_blocks(caches, dst, layers, heads, 0)
    want = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in full]
    for (k, v), (fk, fv) in zip(want[1:3], full[1:3], strict=True):
        k[dst, 1:3], v[dst, 1:3] = fk[src, 1:3], fv[src, 1:3]
    return nbytes == 2 * 2 * 3 * 2 * 4 * 8 * 4 and all(
        torch.equal(a, b) for got, exp in zip(caches, want, strict=True)
        for a, b in zip(got, exp, strict=True))


def _peer(rank: int, port: int, results: mp.Queue) -> None:
    import torch.distributed as dist

    from distllm.distributed.kv_transport import GlooTransport

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    out: dict = {"rank": rank, "pid": os.getpid()}
    try:
        transport = shm.ShmSlabTransport(GlooTransport(), {1 - rank})
        out["same"] = _exchange(transport, rank, sender=0) + _exchange(transport, rank, sender=1)
        out["staging_bytes"] = [s.view.numel() for s in transport._staging.values()]
        out["files_in_use"] = _files(os.getpid())
        out["mismatch"] = _mismatch(transport, rank)
        out["same"] += _exchange(transport, rank, sender=0)  # still usable after a rejection
        out["blocks"] = _blocks(transport, rank)
        capped = shm.ShmSlabTransport(GlooTransport(), {1 - rank}, max_segment_bytes=1 << 21)
        out["capped_same"] = _exchange(capped, rank, sender=0)  # the big slab: over gloo
        out["capped_bytes"] = [s.view.numel() for s in capped._staging.values()]
        tiny = shm.ShmSlabTransport(GlooTransport(), {1 - rank}, max_segment_bytes=64)
        out["blocks_via_fallback"] = _blocks(tiny, rank)  # no segment: over gloo
        out["tiny_bytes"] = [s.view.numel() for s in tiny._staging.values()]
        tiny.close()
        capped.close()
        dist.barrier()
        transport.close()
        out["files_after_close"] = _files(os.getpid())
    except Exception as e:  # noqa: BLE001 - reported to the test
        out["error"] = repr(e)
    finally:
        dist.destroy_process_group()
    results.put(out)


def _run_pair(timeout_s: float = 90.0) -> dict[int, dict]:
    from distllm.distributed.process_groups import find_free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = find_free_port()
    procs = [ctx.Process(target=_peer, args=(r, port, results)) for r in range(2)]
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


def test_slabs_both_ways_mismatch_and_no_leak() -> None:
    out = _run_pair()
    assert all("error" not in o for o in out.values()), out
    n = len(SLABS)
    assert out[1]["same"][:n] == [True] * n and out[1]["same"][n:] == [True] * n
    assert out[0]["same"] == [True] * n  # what rank 1 sent
    big = max(torch.Size(s).numel() * d.itemsize for s, d in SLABS)
    for o in out.values():
        assert o["staging_bytes"] and o["staging_bytes"][0] >= big > shm.MIN_SEGMENT_BYTES
        assert o["files_in_use"] == [], "a segment file outlived its first ack"
        assert o["files_after_close"] == [] and _files(o["pid"]) == []
    assert out[1]["capped_same"] == [True] * n
    assert out[1]["blocks"] and out[1]["blocks_via_fallback"] and out[0]["tiny_bytes"] == []
    assert out[0]["capped_bytes"] and out[0]["capped_bytes"][0] <= 1 << 21
    recv_err, send_err = out[1]["mismatch"], out[0]["mismatch"]
    assert "expected (3, 2) torch.float32" in recv_err and "torch.bfloat16" in recv_err
    assert send_err.count("rejected a slab of shape (2, 3)") == 2


def test_build_transport_routes_shm_and_gloo_by_plan() -> None:
    plan = TransportPlan(routes=(((0, 2), "shm"), ((1, 2), "gloo")))
    out = run_world(KVWorld(plan=plan, devices=("cpu", "cpu", "cpu")))
    assert all("error" not in o for o in out.values()), out
    assert {r: o["routes"] for r, o in out.items()} == {0: {2: "shm"}, 1: {2: "gloo"},
                                                        2: {0: "shm", 1: "gloo"}}
    assert out[2]["ok"], "the decode rank's cache differs from the prefill KV it should hold"


def test_helpers(tmp_path) -> None:
    assert shm.is_shm_usable(str(tmp_path)) and not shm.is_shm_usable(str(tmp_path / "none"))
    assert shm.segment_path(12, 3) == os.path.join(shm.SHM_DIR, "distllm-kv-12-3")
    header = shm._header(96, 5, torch.bfloat16, (2, 3, 8))
    assert header.tolist()[:8] == [96, os.getpid(), 5, shm._DTYPES.index(torch.bfloat16), 3, 2,
                                   3, 8] and len(header) == shm._HEADER_LEN
    with pytest.raises(ValueError, match="at most 8 dims"):
        shm._header(8, 0, torch.float32, (1,) * 9)
    with pytest.raises(ValueError, match="not supported"):
        shm._header(8, 0, torch.complex64, (1,))


def test_sweep_removes_only_dead_processes_segments(tmp_path) -> None:
    dead, alive = tmp_path / "distllm-kv-999999999-0", tmp_path / f"distllm-kv-{os.getpid()}-1"
    other = tmp_path / "distllm-kv-notes"
    for path in (dead, alive, other):
        path.write_bytes(b"x")
    assert shm.sweep_stale_segments(str(tmp_path)) == [dead.name]
    assert not dead.exists() and alive.exists() and other.exists()
