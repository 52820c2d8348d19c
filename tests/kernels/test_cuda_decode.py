"""CUDA paged decode attention vs distllm/ops/reference.py (gpu-marked; skipped without CUDA).

Covers fp16/bf16, head sizes 64/128/256, block sizes 8/16/32, GQA ratios 1/4/8 (plus 6 and 12:
a partial and a second head tile), contexts that are not multiples of the block size, the
single-split, forced-split and planned-split paths, long contexts (>= 64K tokens in the batch),
strided query/out views. Tolerance: tests/kernels/utils.py TOLERANCES (both sides accumulate in
fp32; outputs may differ by about one rounding step of fp16/bf16).
"""

from __future__ import annotations

import pytest
import torch

from distllm import ops
from distllm.ops import reference
from tests.kernels.utils import assert_close, make_decode_case

pytestmark = pytest.mark.gpu

LENS = [1, 19, 70, 333]  # not multiples of any block size


@pytest.fixture(autouse=True)
def _cuda_kernels() -> None:
    assert ops.HAS_CUDA_NATIVE, (
        "distllm._C has no CUDA kernels: rebuild with DISTLLM_TARGET_DEVICE=cuda "
        "(pip install --no-build-isolation -e .)"
    )


def _case(
    lens: list[int],
    head_dim: int,
    num_kv_heads: int,
    group: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int = 0,
) -> tuple:
    query, kv, context_lens, scale = make_decode_case(
        lens, head_dim, num_kv_heads, group, block_size, dtype, seed
    )
    dev = torch.device("cuda")
    return (
        query.to(dev),
        kv.key_cache.to(dev),
        kv.value_cache.to(dev),
        kv.block_tables.to(dev),
        context_lens.to(dev),
        scale,
    )


def _native(query, key_cache, value_cache, tables, lens, scale, splits: int) -> torch.Tensor:
    out = torch.empty_like(query)
    torch.ops.distllm_C.paged_decode_attention(
        out, query, key_cache, value_cache, tables, lens, scale, splits
    )
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_decode_matches_reference(
    head_dim: int, group: int, block_size: int, dtype: torch.dtype
) -> None:
    args = _case(LENS, head_dim, 2, group, block_size, dtype)
    expected = reference.paged_decode_attention(*args)
    for splits in (1, 3, 0):  # one split, forced split + merge, the planned split
        assert_close(_native(*args, splits), expected)


@pytest.mark.parametrize("group", [2, 6, 12])
def test_decode_partial_and_multiple_head_tiles(group: int) -> None:
    args = _case([5, 77, 260], 128, 3, group, 16, torch.bfloat16, seed=1)
    expected = reference.paged_decode_attention(*args)
    for splits in (1, 2):
        assert_close(_native(*args, splits), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_long_context_split_path(dtype: torch.dtype) -> None:
    """>= 64K context tokens in the batch; the plan splits the contexts across the SMs."""
    lens = [40_001, 25_117, 3]
    args = _case(lens, 128, 2, 4, 16, dtype, seed=2)
    expected = reference.paged_decode_attention(*args)
    assert_close(_native(*args, 0), expected)
    assert_close(_native(*args, 200), expected)  # many splits, most of them short


def test_decode_through_ops_with_strided_views() -> None:
    """ops.paged_decode_attention on CUDA: query sliced from a fused qkv tensor, out a view."""
    query, key_cache, value_cache, tables, lens, scale = _case(
        LENS, 64, 2, 4, 16, torch.float16, seed=3
    )
    qkv = torch.randn(len(LENS), 8 + 2 * 2, 64, device="cuda", dtype=torch.float16)
    qkv[:, :8] = query
    q_view = qkv[:, :8]
    out_buf = torch.zeros(len(LENS), 2, 8, 64, device="cuda", dtype=torch.float16)
    out_view = out_buf[:, 1]
    expected = reference.paged_decode_attention(query, key_cache, value_cache, tables, lens, scale)
    got = ops.paged_decode_attention(
        q_view, key_cache, value_cache, tables, lens, scale, out=out_view
    )
    torch.cuda.synchronize()
    assert got.data_ptr() == out_view.data_ptr()
    assert_close(out_view, expected)
    assert torch.count_nonzero(out_buf[:, 0]) == 0  # nothing written outside the view


def test_decode_tables_wider_than_contexts() -> None:
    """Block tables padded far past the contexts (as the engine allocates them)."""
    query, key_cache, value_cache, tables, lens, scale = _case(
        [3, 50], 128, 2, 8, 16, torch.bfloat16, seed=4
    )
    wide = torch.zeros(2, 512, dtype=torch.int32, device="cuda")
    wide[:, : tables.shape[1]] = tables
    expected = reference.paged_decode_attention(query, key_cache, value_cache, tables, lens, scale)
    assert_close(_native(query, key_cache, value_cache, wide, lens, scale, 0), expected)


def test_decode_rejects_unsupported_shapes() -> None:
    query, key_cache, value_cache, tables, lens, scale = _case([9], 128, 2, 2, 16, torch.float16)
    with pytest.raises(RuntimeError, match="float16 and bfloat16"):
        _native(query.float(), key_cache.float(), value_cache.float(), tables, lens, scale, 0)
    # fp32 and unsupported head sizes still work through ops (the reference path)
    got = ops.paged_decode_attention(
        query.float(), key_cache.float(), value_cache.float(), tables, lens, scale
    )
    expected = reference.paged_decode_attention(
        query.float(), key_cache.float(), value_cache.float(), tables, lens, scale
    )
    assert_close(got, expected)


def test_decode_captures_in_a_cuda_graph() -> None:
    """No host sync or host allocation in the op: it can run inside a CUDA graph (decode steps)."""
    query, key_cache, value_cache, tables, lens, scale = _case(
        [300, 4000], 128, 2, 4, 16, torch.bfloat16, seed=5
    )
    out = torch.empty_like(query)
    ops.paged_decode_attention(query, key_cache, value_cache, tables, lens, scale, out=out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.paged_decode_attention(query, key_cache, value_cache, tables, lens, scale, out=out)
    query.copy_(torch.randn_like(query))  # new inputs, same buffers
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.paged_decode_attention(query, key_cache, value_cache, tables, lens, scale)
    assert_close(out, expected)
