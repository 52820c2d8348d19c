"""Helpers for the kernel tests: seeded random paged KV caches and block tables."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from distllm import ops

# Documented tolerances (native vs reference.py): both accumulate in fp32; low-precision outputs
# may differ by one rounding step of the output dtype.
TOLERANCES = {
    torch.float32: {"atol": 2e-5, "rtol": 2e-5},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
}

needs_native = pytest.mark.skipif(not ops.HAS_NATIVE, reason="distllm._C is not built")


@dataclass(frozen=True)
class PagedKV:
    key_cache: torch.Tensor  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache: torch.Tensor  # [num_blocks, num_kv_heads, block_size, head_dim]
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq], int32

    def __post_init__(self) -> None:
        if self.key_cache.shape != self.value_cache.shape:
            raise ValueError("key and value caches must have the same shape")


def make_paged_kv(
    lens: list[int],
    num_kv_heads: int,
    block_size: int,
    head_dim: int,
    dtype: torch.dtype,
    gen: torch.Generator,
    spare_blocks: int = 3,
) -> PagedKV:
    """A cache holding len tokens per sequence in shuffled (non-contiguous) blocks."""
    blocks_per_seq = [(n + block_size - 1) // block_size for n in lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    shape = (num_blocks, num_kv_heads, block_size, head_dim)
    key_cache = torch.randn(shape, generator=gen).to(dtype)
    value_cache = torch.randn(shape, generator=gen).to(dtype)
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    max_blocks = max(max(blocks_per_seq), 1)
    tables = torch.zeros(len(lens), max_blocks, dtype=torch.int32)
    start = 0
    for i, nb in enumerate(blocks_per_seq):
        tables[i, :nb] = perm[start : start + nb]
        start += nb
    return PagedKV(key_cache, value_cache, tables)


def make_decode_case(
    lens: list[int],
    head_dim: int,
    num_kv_heads: int,
    group: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int = 0,
) -> tuple[torch.Tensor, PagedKV, torch.Tensor, float]:
    """(query [num_seqs, num_kv_heads * group, head_dim], paged KV of `lens` tokens, context
    lens [num_seqs] int32, scale) of a seeded decode case, on CPU."""
    gen = torch.Generator().manual_seed(seed)
    kv = make_paged_kv(lens, num_kv_heads, block_size, head_dim, dtype, gen)
    query = torch.randn(len(lens), num_kv_heads * group, head_dim, generator=gen).to(dtype)
    return query, kv, torch.tensor(lens, dtype=torch.int32), head_dim**-0.5


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype
    assert torch.isfinite(actual.float()).all()
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCES[expected.dtype])


def set_isa(isa: str) -> None:
    """Selects a native ISA level, skipping the test when this CPU lacks it."""
    try:
        torch.ops.distllm_C.set_cpu_isa(isa)
    except RuntimeError:
        pytest.skip(f"CPU lacks {isa}")
