// Device helpers shared by the CUDA kernels: 16-byte vectors of fp16/bf16 <-> fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
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
};
template <>
struct Packed2<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_float2(type v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) {
    return __float2bfloat16_rn(v);
  }
};

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
