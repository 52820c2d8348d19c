// Device helpers shared by the CUDA kernels: 16-byte vectors of fp16/bf16 <-> fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#ifdef DISTLLM_EMULATE
#include "cuda/emulate/emulate.h"  // host emulation of the CUDA built-ins (CPU tests only)
#endif

namespace distllm::cuda {

constexpr int kVec = 8;  // 16-bit elements per 16-byte load

template <typename T>
struct Packed2;
template <>
struct Packed2<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 to_float2(type v) { return __half22float2(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ type from_float2(float lo, float hi) {
    return __floats2half2_rn(lo, hi);
  }
};
template <>
struct Packed2<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_float2(type v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) {
    return __float2bfloat16_rn(v);
  }
  static __device__ __forceinline__ type from_float2(float lo, float hi) {
    return __floats2bfloat162_rn(lo, hi);
  }
};

// Two floats -> one register of two 16-bit T (lo in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const typename Packed2<T>::type v = Packed2<T>::from_float2(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// d += a * b for one warp: a 16x16 (row-major) times b 16x8 (col-major) tile of T, fp32 d
// (PTX mma.sync.aligned.m16n8k16). Fragments, with g = lane / 4 and t = lane % 4:
// a[0]: A[g][2t..2t+1], a[1]: A[g+8][2t..], a[2]: A[g][2t+8..], a[3]: A[g+8][2t+8..];
// b[0]: B[2t..2t+1][g], b[1]: B[2t+8..2t+9][g]; d[0..1]: D[g][2t..2t+1], d[2..3]: D[g+8][2t..].
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
#ifdef DISTLLM_EMULATE
  emulate::mma_m16n8k16<Packed2<T>>(d, a, b);
#else
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// 16 bytes (8 elements of T) -> 8 floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& raw, float (&f)[kVec]) {
  using P = Packed2<T>;
  const auto* h = reinterpret_cast<const typename P::type*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) {
    const float2 x = P::to_float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// Streaming 16-byte global load (KV is read once per step: do not keep it in L1).
__device__ __forceinline__ uint4 load_stream16(const void* ptr) {
  return __ldcs(reinterpret_cast<const uint4*>(ptr));
}

// kernel<<<grid, block, 0, stream>>>(args...), or its host emulation under DISTLLM_EMULATE.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                          Args&&... args) {
#ifdef DISTLLM_EMULATE
  (void)stream;
  emulate::launch(kernel, grid, block, std::forward<Args>(args)...);
  return cudaSuccess;
#else
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
#endif
}

}  // namespace distllm::cuda
