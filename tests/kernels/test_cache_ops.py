"""Native reshape_and_cache / copy_blocks / swap_blocks vs reference.py (on cloned caches)."""

from __future__ import annotations

import pytest
import torch

from distllm import ops
from distllm.ops import reference
from tests.kernels.utils import needs_native

pytestmark = needs_native


def _cache(num_blocks: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(num_blocks, 2, 16, 64, generator=gen).to(dtype)  # [nb, kvh, bs, d]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_reshape_and_cache_skips_padding_slots(dtype: torch.dtype, block_size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    num_tokens, num_blocks = 23, 6
    qkv = torch.randn(num_tokens, 3, 2, 64, generator=gen)
    key, value = qkv[:, 1], qkv[:, 2]  # strided views, fp32 (cast to the cache dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[0, 5, 22]] = -1
    k_ref = torch.randn(num_blocks, 2, block_size, 64, generator=gen).to(dtype)
    v_ref = torch.randn(num_blocks, 2, block_size, 64, generator=gen).to(dtype)
    k_nat, v_nat = k_ref.clone(), v_ref.clone()
    reference.reshape_and_cache(key, value, k_ref, v_ref, slots)
    ops.reshape_and_cache(key, value, k_nat, v_nat, slots)
    assert torch.equal(k_nat, k_ref) and torch.equal(v_nat, v_ref)


def test_reshape_and_cache_all_padding_is_a_no_op() -> None:
    gen = torch.Generator().manual_seed(1)
    k_cache, v_cache = _cache(2, torch.float32, gen), _cache(2, torch.float32, gen)
    before = k_cache.clone()
    key = torch.randn(4, 2, 64, generator=gen)
    ops.reshape_and_cache(key, key, k_cache, v_cache, torch.full((4,), -1, dtype=torch.int64))
    assert torch.equal(k_cache, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_blocks_every_layer(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    keys = [_cache(10, dtype, gen) for _ in range(3)]
    values = [_cache(10, dtype, gen) for _ in range(3)]
    mapping = torch.tensor([[0, 7], [3, 8], [3, 9], [1, 2]], dtype=torch.int64)
    keys_ref, values_ref = [k.clone() for k in keys], [v.clone() for v in values]
    reference.copy_blocks(keys_ref, values_ref, mapping)
    ops.copy_blocks(keys, values, mapping)
    assert all(torch.equal(a, b) for a, b in zip(keys + values, keys_ref + values_ref, strict=True))
    assert torch.equal(keys[1][9], keys[1][3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swap_blocks_between_different_caches(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    src, dst = _cache(12, dtype, gen), _cache(5, dtype, gen)
    mapping = torch.tensor([[11, 0], [2, 4], [7, 1]], dtype=torch.int64)
    dst_ref = dst.clone()
    reference.swap_blocks(src, dst_ref, mapping)
    ops.swap_blocks(src, dst, mapping)
    assert torch.equal(dst, dst_ref)
    assert torch.equal(dst[0], src[11])


def test_cache_ops_reject_out_of_range_ids() -> None:
    gen = torch.Generator().manual_seed(4)
    src, dst = _cache(4, torch.float32, gen), _cache(4, torch.float32, gen)
    with pytest.raises(RuntimeError):
        ops.swap_blocks(src, dst, torch.tensor([[0, 4]]))
    with pytest.raises(RuntimeError):
        ops.copy_blocks([src], [dst], torch.tensor([[5, 0]]))
    with pytest.raises(RuntimeError):
        key = torch.zeros(1, 2, 64)
        ops.reshape_and_cache(key, key, src, dst, torch.tensor([4 * 16]))
