// Torch-free interface of the CPU skinny GEMM (gemm_isa.cpp is compiled once per ISA level, like
// the attention kernels; cpu_attention.cpp picks one at runtime).
//
// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) for a few rows m (decode batches): w is read
// once per call for all the rows of x, which BLAS libraries do not do well below ~8 rows (MKL's
// sgemm runs 2-3 rows at 2-3x the time of one on this host's CPU; one row at ~1/3 of the
// memory bandwidth).
#pragma once

#include <cstdint>

namespace distllm {
namespace cpu {

struct SkinnyGemmParams {
  const float* x;     // [m, k] fp32 contiguous
  const float* w;     // [n, k] fp32 contiguous (an nn.Linear weight)
  const float* bias;  // [n] or nullptr
  float* out;         // [m, n] fp32 contiguous
  int64_t m;          // 1 <= m <= kSkinnyMaxRows
  int64_t n;
  int64_t k;
  int num_threads;  // OpenMP threads (torch's intra-op thread count)
};

constexpr int64_t kSkinnyMaxRows = 8;  // rows of x per pass over w

#define DISTLLM_DECLARE_GEMM_ISA(isa)             \
  namespace isa {                                 \
  void skinny_gemm(const SkinnyGemmParams& p);    \
  }

DISTLLM_DECLARE_GEMM_ISA(base)
DISTLLM_DECLARE_GEMM_ISA(avx2)
DISTLLM_DECLARE_GEMM_ISA(avx512)
DISTLLM_DECLARE_GEMM_ISA(avx512bf16)

#undef DISTLLM_DECLARE_GEMM_ISA

}  // namespace cpu
}  // namespace distllm
