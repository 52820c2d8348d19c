"""The native skinny GEMM (decode-sized linears on CPU) against F.linear: every ISA level, 1 to 8
rows, K with and without a SIMD tail, bias or none, one or two threads; bad arguments raise; and
`distllm.ops.linear.linear` sends everything it does not take to F.linear."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distllm.ops.linear import SKINNY_LARGE_WEIGHT, SKINNY_MAX_ROWS, linear, skinny_ok
from tests.kernels.utils import needs_native, set_isa

pytestmark = needs_native


def _case(m: int, n: int, k: int, bias: bool, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k**0.5
    b = torch.randn(n, generator=gen) if bias else None
    return x, w, b


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512", "avx512bf16"])
@pytest.mark.parametrize("k", [512, 37, 100])  # a multiple of every SIMD width, and tails
def test_every_isa_row_count_and_tail(isa: str, k: int) -> None:
    set_isa(isa)
    try:
        for m in range(1, SKINNY_MAX_ROWS + 1):
            for bias in (False, True):
                x, w, b = _case(m, 131, k, bias, seed=m)
                out = torch.ops.distllm_C.skinny_linear(x, w, b)
                torch.testing.assert_close(out, F.linear(x, w, b), atol=2e-5, rtol=2e-5)
    finally:
        torch.ops.distllm_C.set_cpu_isa("auto")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [7, 64, 1000])  # under the threading cutoff, at it, above
def test_threads_split_the_weight_rows(threads: int, n: int) -> None:
    x, w, b = _case(3, n, 256, True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch.ops.distllm_C.skinny_linear(x, w, b)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, F.linear(x, w, b), atol=2e-5, rtol=2e-5)


def test_strided_x_is_made_contiguous() -> None:
    x, w, b = _case(8, 50, 64, True)
    view = x[::2]  # 4 rows, stride 2
    torch.testing.assert_close(torch.ops.distllm_C.skinny_linear(view, w, b),
                               F.linear(view, w, b), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("args, message", [
    (dict(m=0), "1 to 8 rows"),
    (dict(m=9), "1 to 8 rows"),
    (dict(dtype=torch.bfloat16), "float32"),
    (dict(k_w=63), r"\[m, k\]"),
])
def test_bad_arguments_raise(args: dict, message: str) -> None:
    m, dtype, k_w = args.get("m", 2), args.get("dtype", torch.float32), args.get("k_w", 64)
    x = torch.randn(m, 64).to(dtype)
    w = torch.randn(10, k_w).to(dtype)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.distllm_C.skinny_linear(x, w, None)


def test_linear_takes_decode_batches_and_leaves_the_rest_to_f_linear() -> None:
    x, w, b = _case(4, 96, 128, True)
    assert skinny_ok(x, w, b)
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), atol=2e-5, rtol=2e-5)
    big = torch.randn(SKINNY_MAX_ROWS + 1, 128)
    six = torch.randn(6, 128)  # a small weight at 6 rows stays with sgemm (compute-bound)
    bf16 = x.to(torch.bfloat16), w.to(torch.bfloat16), None
    for args in ((big, w, b), (six, w, b), bf16, (x[None], w, b), (x, w.t().contiguous().t(), b)):
        assert not skinny_ok(*args)
        torch.testing.assert_close(linear(*args), F.linear(*args))
    lm_head = torch.empty(SKINNY_LARGE_WEIGHT // 128, 128)  # streams from memory: any 1-8 rows
    assert skinny_ok(six, lm_head, None)
