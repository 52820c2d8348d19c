"""Native ragged causal prefill attention (with and without a cached prefix) vs reference.py."""

from __future__ import annotations

import pytest
import torch

from distllm import ops
from distllm.ops import reference
from tests.kernels.utils import assert_close, make_paged_kv, needs_native, set_isa

pytestmark = needs_native


def _prefill_case(
    new_lens: list[int],
    cached: list[int],
    head_dim: int,
    num_kv_heads: int,
    group: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int = 0,
) -> dict:
    gen = torch.Generator().manual_seed(seed)
    total = sum(new_lens)
    num_heads = num_kv_heads * group
    kv = make_paged_kv([c + 1 for c in cached], num_kv_heads, block_size, head_dim, dtype, gen)
    cu = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    return {
        "query": torch.randn(total, num_heads, head_dim, generator=gen).to(dtype),
        "key": torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype),
        "value": torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype),
        "cu_seqlens_q": cu,
        "scale": head_dim**-0.5,
        "key_cache": kv.key_cache,
        "value_cache": kv.value_cache,
        "block_tables": kv.block_tables,
        "num_cached_tokens": torch.tensor(cached, dtype=torch.int32),
    }


def _without_cache(case: dict) -> dict:
    names = ("key_cache", "value_cache", "block_tables", "num_cached_tokens")
    return {k: v for k, v in case.items() if k not in names}


@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_matches_reference(
    head_dim: int, group: int, block_size: int, dtype: torch.dtype, with_prefix: bool
) -> None:
    case = _prefill_case([13, 1, 41], [21, 5, 0], head_dim, 2, group, block_size, dtype)
    if not with_prefix:
        case = _without_cache(case)
    assert_close(ops.prefill_attention(**case), reference.prefill_attention(**case))


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512", "avx512bf16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("q_tile", [1, 7, 64])
def test_prefill_every_isa_tile_and_dtype(isa: str, dtype: torch.dtype, q_tile: int) -> None:
    case = _prefill_case([37, 70], [50, 3], 128, 2, 4, 16, dtype, seed=1)
    expected = reference.prefill_attention(**case)
    set_isa(isa)
    try:
        out = torch.empty_like(case["query"])
        torch.ops.distllm_C.prefill_attention(
            out,
            case["query"],
            case["key"],
            case["value"],
            case["cu_seqlens_q"],
            case["scale"],
            case["key_cache"],
            case["value_cache"],
            case["block_tables"],
            case["num_cached_tokens"],
            q_tile,
        )
        assert_close(out, expected)
    finally:
        torch.ops.distllm_C.set_cpu_isa("auto")


def test_prefill_long_prompt_and_out_argument() -> None:
    case = _prefill_case([300, 5, 129], [0, 200, 17], 64, 1, 8, 32, torch.float32, seed=2)
    out = torch.full_like(case["query"], float("nan"))
    result = ops.prefill_attention(**case, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert_close(out, reference.prefill_attention(**case))


def test_prefill_strided_inputs_bf16_out_of_fp32_query() -> None:
    case = _prefill_case([17, 9], [0, 0], 64, 2, 2, 16, torch.float32, seed=3)
    qkv = torch.cat([case["query"].flatten(1), case["key"].flatten(1), case["value"].flatten(1)], 1)
    q, k, v = qkv.split([4 * 64, 2 * 64, 2 * 64], dim=1)  # non-contiguous views
    args = (q.view(-1, 4, 64), k.view(-1, 2, 64), v.view(-1, 2, 64), case["cu_seqlens_q"], 0.125)
    expected = reference.prefill_attention(*args)
    out = torch.empty(expected.shape, dtype=torch.bfloat16)
    ops.prefill_attention(*args, out=out)
    assert_close(out, expected.to(torch.bfloat16))


@pytest.mark.parametrize("group", [1, 8])
def test_prefill_generic_head_dim(group: int) -> None:
    case = _prefill_case([19, 40], [7, 0], 80, 2, group, 16, torch.float32, seed=4)
    assert_close(ops.prefill_attention(**case), reference.prefill_attention(**case))
