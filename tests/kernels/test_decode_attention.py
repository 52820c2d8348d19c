"""Native paged decode attention vs distllm/ops/reference.py (shapes, GQA, dtypes, splits, ISAs)."""

from __future__ import annotations

import pytest
import torch

from distllm import ops
from distllm.ops import reference
from tests.kernels.utils import assert_close, make_decode_case, needs_native, set_isa

pytestmark = needs_native

LENS = [1, 19, 70]  # not multiples of any block size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_matches_reference(
    head_dim: int, group: int, block_size: int, dtype: torch.dtype
) -> None:
    query, kv, lens, scale = make_decode_case(LENS, head_dim, 2, group, block_size, dtype)
    expected = reference.paged_decode_attention(
        query, kv.key_cache, kv.value_cache, kv.block_tables, lens, scale
    )
    actual = ops.paged_decode_attention(
        query, kv.key_cache, kv.value_cache, kv.block_tables, lens, scale
    )
    assert_close(actual, expected)


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512", "avx512bf16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group", [4, 8, 16])  # dot path (< 8 rows) and rows path (8, 16 lanes)
def test_decode_every_isa_and_dtype(isa: str, dtype: torch.dtype, group: int) -> None:
    query, kv, lens, scale = make_decode_case([5, 33, 97], 128, 2, group, 16, dtype, seed=1)
    expected = reference.paged_decode_attention(
        query, kv.key_cache, kv.value_cache, kv.block_tables, lens, scale
    )
    set_isa(isa)
    try:
        for splits in (1, 3):
            out = torch.empty_like(query)
            torch.ops.distllm_C.paged_decode_attention(
                out, query, kv.key_cache, kv.value_cache, kv.block_tables, lens, scale, splits
            )
            assert_close(out, expected)
    finally:
        torch.ops.distllm_C.set_cpu_isa("auto")


@pytest.mark.parametrize("num_splits", [0, 2, 5, 64])
def test_decode_long_context_split_path(num_splits: int) -> None:
    # one sequence x one KV head: fewer tasks than threads, so auto (0) splits the context too
    query, kv, lens, scale = make_decode_case([1500, 7], 64, 1, 8, 16, torch.float32, seed=2)
    expected = reference.paged_decode_attention(
        query, kv.key_cache, kv.value_cache, kv.block_tables, lens, scale
    )
    out = torch.empty_like(query)
    torch.ops.distllm_C.paged_decode_attention(
        out, query, kv.key_cache, kv.value_cache, kv.block_tables, lens, scale, num_splits
    )
    assert_close(out, expected)


@pytest.mark.parametrize("group", [2, 8])
def test_decode_odd_head_dim_and_out_argument(group: int) -> None:
    query, kv, lens, scale = make_decode_case([3, 40], 80, 3, group, 16, torch.bfloat16, seed=3)
    expected = reference.paged_decode_attention(
        query, kv.key_cache, kv.value_cache, kv.block_tables, lens, scale
    )
    out = torch.full_like(query, float("nan"))
    result = ops.paged_decode_attention(
        query, kv.key_cache, kv.value_cache, kv.block_tables, lens, scale, out=out
    )
    assert result.data_ptr() == out.data_ptr()
    assert_close(out, expected)


def test_decode_strided_query_and_int64_metadata() -> None:
    query, kv, lens, scale = make_decode_case([9, 26], 64, 2, 4, 8, torch.float32, seed=4)
    wide = torch.cat([query, query], dim=-1)[..., :64]  # non-contiguous view
    expected = reference.paged_decode_attention(
        query, kv.key_cache, kv.value_cache, kv.block_tables, lens, scale
    )
    actual = ops.paged_decode_attention(
        wide, kv.key_cache, kv.value_cache, kv.block_tables.long(), lens.long(), scale
    )
    assert_close(actual, expected)


def test_decode_rejects_context_beyond_block_table() -> None:
    query, kv, lens, scale = make_decode_case([9, 16], 64, 2, 4, 8, torch.float32, seed=5)
    too_long = torch.tensor([9, 17], dtype=torch.int32)  # table holds 2 blocks of 8
    with pytest.raises(RuntimeError, match="exceeds block_tables capacity"):
        ops.paged_decode_attention(
            query, kv.key_cache, kv.value_cache, kv.block_tables, too_long, scale
        )
