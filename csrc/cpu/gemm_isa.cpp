// CPU skinny GEMM (decode-sized batches through a linear layer), compiled once per ISA level.
//
// CMake builds this file with -DDISTLLM_ISA=base|avx2|avx512|avx512bf16 next to attention_isa.cpp;
// cpu_attention.cpp picks one at runtime. Only C headers and gemm_kernels.h are included (same
// ODR rule as the attention kernels).
//
// A decode step's linears multiply m <= 8 activation rows by a weight w [n, k] that does not fit
// in cache (the lm_head alone is 64 MB in fp32), so the step is bound by reading w. Each weight
// row is streamed once for all m rows: dotted with every x row (x, m * k floats, stays in L1),
// the m partial sums held in SIMD registers, then reduced horizontally. Threads split the rows.
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/gemm_kernels.h"

#ifndef DISTLLM_ISA
#error "DISTLLM_ISA must be defined (base, avx2 or avx512)"
#endif

namespace distllm {
namespace cpu {
namespace DISTLLM_ISA {
namespace {

#include "cpu/attention_simd.inc"

// The weight row this many rows ahead is prefetched while a row is read: one sequential stream
// (measured on a Zen 4 core: 2.7 ms for the 64 MB lm_head and one row of x, ~24 GB/s; streaming
// 2 or 4 weight rows side by side reached only ~10-13 GB/s).
constexpr int64_t kPrefetchRows = 2;

inline float hsum(vfloat v) {
  const v4float f = fold4(v);
  return (f[0] + f[1]) + (f[2] + f[3]);
}

// out[:, row] = x . w[row] for all M rows of x: one pass over the weight row.
template <int M>
inline void dot_row(const SkinnyGemmParams& p, int64_t row) {
  const int64_t k = p.k, k_vec = k - k % kVec;
  const float* w = p.w + row * k;
  const float* ahead = p.w + imin(row + kPrefetchRows, p.n - 1) * k;
  vfloat acc[M];
  for (int i = 0; i < M; ++i) acc[i] = vfloat{};
  for (int64_t c = 0; c < k_vec; c += kVec) {
    const vfloat wv = vload(w + c);
    __builtin_prefetch(ahead + c);
    for (int i = 0; i < M; ++i) acc[i] += vload(p.x + i * k + c) * wv;
  }
  for (int i = 0; i < M; ++i) {
    float s = hsum(acc[i]);
    for (int64_t c = k_vec; c < k; ++c) s += p.x[i * k + c] * w[c];
    p.out[i * p.n + row] = p.bias ? s + p.bias[row] : s;
  }
}

template <int M>
void run(const SkinnyGemmParams& p) {
  const int threads = p.num_threads > 1 && p.n >= 64 ? p.num_threads : 1;
  if (threads == 1) {
    for (int64_t row = 0; row < p.n; ++row) dot_row<M>(p, row);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    // NOTE: one contiguous range of rows per thread, so each reads one sequential stream.
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = (p.n + nt - 1) / nt;
    const int64_t end = imin(p.n, (t + 1) * chunk);
    for (int64_t row = t * chunk; row < end; ++row) dot_row<M>(p, row);
  }
}

}  // namespace

void skinny_gemm(const SkinnyGemmParams& p) {
  switch (p.m) {
    case 1: return run<1>(p);
    case 2: return run<2>(p);
    case 3: return run<3>(p);
    case 4: return run<4>(p);
    case 5: return run<5>(p);
    case 6: return run<6>(p);
    case 7: return run<7>(p);
    case 8: return run<8>(p);
    default: abort();  // NOTE: the torch-facing op checks 1 <= m <= kSkinnyMaxRows
  }
}

}  // namespace DISTLLM_ISA
}  // namespace cpu
}  // namespace distllm
