"""`linear(x, weight, bias)`: F.linear, except for decode-sized batches on CPU.

A decode step multiplies a few activation rows by weights that do not fit in cache, so it is bound
by reading the weights. BLAS libraries read them poorly there: on this project's CPU host (Zen 4,
MKL sgemm through F.linear) the 64 MB lm_head takes 6.5 ms for one row, 14 ms for two and 22 ms
for three. The native skinny GEMM (csrc/cpu/gemm_isa.cpp) reads every weight row once for all
rows of x (2.3-3.9 ms for 1 to 4 rows there; evaluation/bench_cpu_linear.py measures it). It
takes float32 CPU tensors with 1 to 4 rows, or up to SKINNY_MAX_ROWS for weights too large for the
cache; everything else goes to F.linear, the reference it is tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distllm.ops import HAS_NATIVE

SKINNY_MAX_ROWS = 8  # csrc/cpu/gemm_kernels.h kSkinnyMaxRows
# Above 4 rows the skinny GEMM wins only while the weight streams from memory: a weight that
# stays in cache (under ~16 MB here) is compute-bound there, where sgemm's blocking does better
# (bench_cpu_linear: 512 x 1408 at 8 rows 0.26 vs 0.19 ms; the lm_head at 8 rows 6.9 vs 12.6 ms).
SKINNY_ALWAYS_ROWS = 4
SKINNY_LARGE_WEIGHT = 4 * 1024 * 1024  # elements (16 MB of fp32)
# NOTE: evaluation/bench_cpu_linear.py turns it off to time the same model on F.linear alone
ENABLED = True


def skinny_ok(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `linear` runs these tensors on the native skinny GEMM."""
    rows = x.shape[0] if x.dim() == 2 else 0
    return (ENABLED and HAS_NATIVE and 0 < rows <= SKINNY_MAX_ROWS
            and (rows <= SKINNY_ALWAYS_ROWS or weight.numel() >= SKINNY_LARGE_WEIGHT)
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.is_cpu and weight.is_cpu and weight.is_contiguous()
            and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous())))


def linear(x: torch.Tensor, weight: torch.Tensor,  # x [m, k], weight [n, k]
           bias: torch.Tensor | None = None) -> torch.Tensor:  # [m, n]
    """x @ weight^T (+ bias), as F.linear."""
    if skinny_ok(x, weight, bias):
        return torch.ops.distllm_C.skinny_linear(x, weight, bias)
    return F.linear(x, weight, bias)
