"""CUDA KV cache ops (append, copy, swap, migration) vs distllm/ops/reference.py: exact equality.

The gpu-marked tests are skipped without CUDA. The migration op's slab convention (a slab
[2, num_layers, num_blocks, heads, block_size, head_dim] is the list of its per-layer views) is
also checked on CPU against distllm/distributed/kv_transport's gather/scatter.
"""

from __future__ import annotations

import pytest
import torch

from distllm import ops
from distllm.ops import reference

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SHAPE = (20, 4, 16, 64)  # [num_blocks, num_kv_heads, block_size, head_dim]


def _caches(num: int, shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype).to(device) for _ in range(num)]


def _assert_cuda_kernels() -> None:
    assert ops.HAS_CUDA_NATIVE, (
        "distllm._C has no CUDA kernels: build with DISTLLM_TARGET_DEVICE=cuda"
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", [False, True])
def test_reshape_and_cache_matches_reference(dtype: torch.dtype, strided: bool) -> None:
    _assert_cuda_kernels()
    gen = torch.Generator().manual_seed(0)
    num_tokens, kvh, d = 37, SHAPE[1], SHAPE[3]
    qkv = torch.randn(num_tokens, 8 + 2 * kvh, d, generator=gen).to(dtype).cuda()
    key = qkv[:, 8 : 8 + kvh] if strided else qkv[:, 8 : 8 + kvh].contiguous()
    value = qkv[:, 8 + kvh :] if strided else qkv[:, 8 + kvh :].contiguous()
    slots = torch.randperm(SHAPE[0] * SHAPE[2], generator=gen)[:num_tokens]
    slots[::5] = -1  # padding tokens are not written
    slots = slots.cuda()
    kc, vc = _caches(2, SHAPE, dtype, "cuda", seed=1)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    ops.reshape_and_cache(key, value, kc, vc, slots)
    reference.reshape_and_cache(key, value, kc_ref, vc_ref, slots)
    torch.cuda.synchronize()
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_blocks_matches_reference(dtype: torch.dtype) -> None:
    _assert_cuda_kernels()
    keys, values = _caches(3, SHAPE, dtype, "cuda", 2), _caches(3, SHAPE, dtype, "cuda", 3)
    mapping = torch.tensor([[0, 7], [3, 4], [5, 19], [6, 8]], dtype=torch.int64)
    ref_k, ref_v = [k.clone() for k in keys], [v.clone() for v in values]
    ops.copy_blocks(keys, values, mapping.cuda())
    reference.copy_blocks(ref_k, ref_v, mapping)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip([*keys, *values], [*ref_k, *ref_v], strict=True))


@pytest.mark.gpu
@pytest.mark.parametrize("pinned", [True, False])
def test_swap_out_and_in_round_trip(pinned: bool) -> None:
    _assert_cuda_kernels()
    gpu = _caches(1, SHAPE, torch.bfloat16, "cuda", 4)[0]
    cpu = torch.zeros(SHAPE, dtype=torch.bfloat16, pin_memory=pinned)
    out_map = torch.tensor([[2, 0], [3, 1], [4, 2], [9, 7], [1, 11]])  # runs and singles
    gpu.mul_(2)  # NOTE: pending work on the compute stream: the swap stream must wait for it
    ops.swap_blocks(gpu, cpu, out_map)
    assert torch.equal(cpu[out_map[:, 1]], gpu[out_map[:, 0].cuda()].cpu())
    restored = torch.zeros_like(gpu)
    in_map = out_map[:, [1, 0]]
    ops.swap_blocks(cpu, restored, in_map)
    restored.add_(0)  # a kernel after the swap-in sees the copied blocks
    expected = torch.zeros_like(gpu)
    reference.swap_blocks(cpu, expected, in_map)
    torch.cuda.synchronize()
    assert torch.equal(restored, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_migrate_blocks_head_range_between_caches(dtype: torch.dtype) -> None:
    """A TP-2 decode worker pulls heads [2, 4) of a TP-1 prefill worker's 3 layers (K and V)."""
    _assert_cuda_kernels()
    src = _caches(6, SHAPE, dtype, "cuda", 5)
    dst = _caches(6, (30, 2, 16, 64), dtype, "cuda", 6)
    dst_ref = [c.clone() for c in dst]
    src_blocks = torch.tensor([3, 17, 4, 0, 11], dtype=torch.int64)
    dst_blocks = torch.tensor([29, 1, 2, 8, 5], dtype=torch.int64)
    ops.migrate_blocks(src, dst, src_blocks.cuda(), dst_blocks.cuda(), (2, 4), 0)
    reference.migrate_blocks(src, dst_ref, src_blocks, dst_blocks, (2, 4), 0)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(dst, dst_ref, strict=True))


@pytest.mark.gpu
def test_migrate_blocks_gathers_and_scatters_slabs() -> None:
    _assert_cuda_kernels()
    from distllm.distributed import kv_transport

    caches = [tuple(_caches(2, SHAPE, torch.float16, "cuda", 7 + i)) for i in range(3)]
    blocks = [5, 2, 9]
    slab = _gather_with_ops(caches, blocks, (1, 3), (1, 4))
    torch.cuda.synchronize()
    assert torch.equal(slab, kv_transport.gather_slab(caches, blocks, (1, 3), (1, 4)))


def _gather_with_ops(
    caches: list, blocks: list[int], layers: tuple[int, int], heads: tuple[int, int]
) -> torch.Tensor:
    """kv_transport.gather_slab through one migrate_blocks call."""
    k0 = caches[0][0]
    shape = (2, layers[1] - layers[0], len(blocks), heads[1] - heads[0], *k0.shape[2:])
    slab = torch.empty(shape, dtype=k0.dtype, device=k0.device)
    src = [c for k, v in caches[layers[0] : layers[1]] for c in (k, v)]
    dst = [slab[kv, i] for i in range(shape[1]) for kv in (0, 1)]
    ids = torch.tensor(blocks, dtype=torch.int64, device=k0.device)
    ops.migrate_blocks(src, dst, ids, torch.arange(len(blocks), device=k0.device), heads, 0)
    return slab


def test_migrate_blocks_slab_convention_on_cpu() -> None:
    """The slab-as-views convention reproduces kv_transport's gather and scatter (CPU)."""
    from distllm.distributed import kv_transport

    caches = [tuple(_caches(2, SHAPE, torch.float32, "cpu", 10 + i)) for i in range(3)]
    blocks, layers, heads = [5, 2, 9, 0], (1, 3), (2, 4)
    slab = _gather_with_ops(caches, blocks, layers, heads)
    assert torch.equal(slab, kv_transport.gather_slab(caches, blocks, layers, heads))
    dst_a = [tuple(c.clone() for c in pair) for pair in caches]
    dst_b = [tuple(c.clone() for c in pair) for pair in caches]
    targets = [1, 7, 3, 12]
    kv_transport.scatter_slab(dst_a, targets, (0, 2), (0, 2), slab)
    views = [slab[kv, i] for i in range(2) for kv in (0, 1)]
    flat_b = [c for pair in dst_b[0:2] for c in pair]
    ops.migrate_blocks(views, flat_b, torch.arange(4), torch.tensor(targets), (0, 2), 0)
    assert all(
        torch.equal(a, b)
        for pa, pb in zip(dst_a, dst_b, strict=True)
        for a, b in zip(pa, pb, strict=True)
    )


def _ipc_producer(queue, done) -> None:  # runs in a spawned process
    caches = _caches(4, SHAPE, torch.bfloat16, "cuda", 20)
    queue.put(([c.cpu() for c in caches], caches))  # CUDA tensors travel as IPC handles
    done.wait(timeout=120)


@pytest.mark.gpu
def test_migrate_blocks_pulls_from_ipc_opened_caches() -> None:
    """The decode side pulls blocks from another process's caches opened through CUDA IPC."""
    _assert_cuda_kernels()
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, done = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_ipc_producer, args=(queue, done))
    proc.start()
    try:
        host_copies, remote = queue.get(timeout=120)
        local = _caches(4, (12, 2, 16, 64), torch.bfloat16, "cuda", 21)
        expected = [c.cpu() for c in local]
        src_blocks, dst_blocks = torch.tensor([7, 1, 19]), torch.tensor([0, 11, 5])
        ops.migrate_blocks(remote, local, src_blocks.cuda(), dst_blocks.cuda(), (1, 3), 0)
        reference.migrate_blocks(host_copies, expected, src_blocks, dst_blocks, (1, 3), 0)
        torch.cuda.synchronize()
        assert all(torch.equal(a.cpu(), b) for a, b in zip(local, expected, strict=True))
    finally:
        done.set()
        proc.join(timeout=60)
