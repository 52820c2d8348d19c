// Device helpers shared by the CUDA kernels: 16-byte vectors of fp16/bf16 <-> fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

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

}  // namespace distllm::cuda
