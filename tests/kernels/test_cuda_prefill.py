"""CUDA prefill attention (FlashAttention-2 style, tensor cores) vs distllm/ops/reference.py.

gpu-marked (skipped without CUDA). Ragged batches, tile boundaries, GQA 1/4/8, head sizes 64/128,
fp16/bf16, cached prefixes read through the block table (chunked prefill), a 2K-token prompt,
strided q/k/v views. Tolerance: PREFILL_TOLERANCES (probabilities are rounded to fp16/bf16
before the P.V mma, as in FlashAttention-2).
"""

from __future__ import annotations

import pytest
import torch

from distllm import ops
from tests.kernels.test_cuda_emulated import PREFILL_TOLERANCES, prefill_case

pytestmark = pytest.mark.gpu


def _run(case: tuple, dtype: torch.dtype, head_dim: int) -> None:
    assert ops.HAS_CUDA_NATIVE, "distllm._C has no CUDA kernels"
    q, k, v, cu, prefix, expected = case
    cuda = [t.cuda() for t in (q, k, v, cu)]
    prefix_cuda = tuple(t.cuda() for t in prefix) if prefix else ()
    out = ops.prefill_attention(*cuda[:4], head_dim**-0.5, *prefix_cuda)
    torch.cuda.synchronize()
    assert torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float().cpu(), expected.float(), **PREFILL_TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_prefill_matches_reference(dtype: torch.dtype, head_dim: int, group: int) -> None:
    case = prefill_case([1, 63, 64, 65, 200], None, head_dim, 2, group, 16, dtype)
    _run(case, dtype, head_dim)


@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prefill_with_cached_prefix(block_size: int, dtype: torch.dtype) -> None:
    case = prefill_case([20, 65, 1, 130], [37, 0, 100, 500], 128, 2, 4, block_size, dtype, seed=1)
    _run(case, dtype, 128)


def test_prefill_long_prompt() -> None:
    case = prefill_case([2048, 300], None, 128, 8, 4, 16, torch.bfloat16, seed=2)
    _run(case, torch.bfloat16, 128)


def test_prefill_strided_views() -> None:
    """q, k, v sliced from one fused qkv projection, as the attention layer passes them."""
    q, k, v, cu, _, expected = prefill_case([70, 5], None, 64, 2, 4, 16, torch.float16, seed=3)
    qkv = torch.cat([q, k, v], dim=1).cuda()  # [tokens, 8 + 2 + 2, 64]
    out = ops.prefill_attention(qkv[:, :8], qkv[:, 8:10], qkv[:, 10:], cu.cuda(), 64**-0.5)
    torch.cuda.synchronize()
    torch.testing.assert_close(
        out.float().cpu(), expected.float(), **PREFILL_TOLERANCES[torch.float16]
    )
