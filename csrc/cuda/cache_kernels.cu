// KV cache data movement: append new tokens' K/V by slot mapping, and one batched block-copy
// kernel used for copy_blocks (whole blocks, within a cache) and for KV migration (a head range
// of every layer's blocks, between caches, including caches opened through CUDA IPC).
// All kernels move bytes (dtype-agnostic), 16 bytes per access when every address allows it.
#include <cstdint>

#include "common.cuh"
#include "kernels.h"

namespace distllm::cuda {
namespace {

constexpr int kAppendThreads = 128;
constexpr int kCopyThreads = 256;
constexpr int kCopyUnroll = 4;

// grid: num_tokens; each thread moves units of U for K and V of one token, all KV heads.
template <typename U>
__global__ void __launch_bounds__(kAppendThreads) reshape_and_cache_kernel(AppendParams p) {
  const int token = static_cast<int>(blockIdx.x);
  const int64_t slot = p.slot_mapping[token];
  if (slot < 0) return;  // padding: do not write
  const int64_t blk = slot / p.block_size, off = slot % p.block_size;
  const int units_per_head = p.head_bytes / static_cast<int>(sizeof(U));
  const int n = p.num_kv_heads * units_per_head;
  for (int i = static_cast<int>(threadIdx.x); i < n; i += kAppendThreads) {
    const int h = i / units_per_head, j = i % units_per_head;
    const int64_t dst = ((blk * p.num_kv_heads + h) * p.block_size + off) * p.head_bytes +
                        static_cast<int64_t>(j) * sizeof(U);
    const int64_t col = static_cast<int64_t>(j) * sizeof(U);
    const U k = *reinterpret_cast<const U*>(p.key + token * p.key_stride_token +
                                            h * p.key_stride_head + col);
    const U v = *reinterpret_cast<const U*>(p.value + token * p.value_stride_token +
                                            h * p.value_stride_head + col);
    *reinterpret_cast<U*>(p.key_cache + dst) = k;
    *reinterpret_cast<U*>(p.value_cache + dst) = v;
  }
}

// Copies n units of U; each thread issues kCopyUnroll loads before its stores.
template <typename U>
__device__ __forceinline__ void copy_units(U* __restrict__ dst, const U* __restrict__ src,
                                           int64_t n) {
  constexpr int64_t kTile = static_cast<int64_t>(kCopyThreads) * kCopyUnroll;
  int64_t base = 0;
  for (; base + kTile <= n; base += kTile) {
    U r[kCopyUnroll];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) r[u] = src[base + u * kCopyThreads + threadIdx.x];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) dst[base + u * kCopyThreads + threadIdx.x] = r[u];
  }
  for (int64_t i = base + threadIdx.x; i < n; i += kCopyThreads) dst[i] = src[i];
}

// grid: (num_pairs, num_caches); block (j, c) copies chunk_bytes of pair j in cache c.
template <typename U>
__global__ void __launch_bounds__(kCopyThreads) block_copy_kernel(BlockCopyParams p) {
  const int pair = static_cast<int>(blockIdx.x), cache = static_cast<int>(blockIdx.y);
  const int64_t src_block = p.src_blocks[pair * p.pair_stride];
  const int64_t dst_block = p.dst_blocks[pair * p.pair_stride];
  const char* src = reinterpret_cast<const char*>(p.src_ptrs[cache]) +
                    src_block * p.src_block_bytes + p.src_offset;
  char* dst = reinterpret_cast<char*>(p.dst_ptrs[cache]) + dst_block * p.dst_block_bytes +
              p.dst_offset;
  copy_units<U>(reinterpret_cast<U*>(dst), reinterpret_cast<const U*>(src),
                p.chunk_bytes / static_cast<int64_t>(sizeof(U)));
}

bool aligned(const void* ptr, int n) { return reinterpret_cast<uintptr_t>(ptr) % n == 0; }
bool aligned16(int64_t v) { return v % 16 == 0; }
bool aligned16(const void* ptr) { return aligned(ptr, 16); }

}  // namespace

cudaError_t launch_reshape_and_cache(const AppendParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  const bool vec16 = aligned16(p.key) && aligned16(p.value) && aligned16(p.key_cache) &&
                     aligned16(p.value_cache) && aligned16(p.head_bytes) &&
                     aligned16(p.key_stride_token) && aligned16(p.key_stride_head) &&
                     aligned16(p.value_stride_token) && aligned16(p.value_stride_head);
  const bool vec2 = aligned(p.key, 2) && aligned(p.value, 2) && aligned(p.key_cache, 2) &&
                    aligned(p.value_cache, 2) && p.head_bytes % 2 == 0 &&
                    p.key_stride_token % 2 == 0 && p.key_stride_head % 2 == 0 &&
                    p.value_stride_token % 2 == 0 && p.value_stride_head % 2 == 0;
  const auto kernel = vec16  ? reshape_and_cache_kernel<uint4>
                      : vec2 ? reshape_and_cache_kernel<uint16_t>
                             : reshape_and_cache_kernel<uint8_t>;
  return launch_kernel(kernel, dim3(p.num_tokens), dim3(kAppendThreads), stream, p);
}

cudaError_t launch_block_copy(const BlockCopyParams& p, cudaStream_t stream) {
  if (p.num_pairs == 0 || p.num_caches == 0 || p.chunk_bytes == 0) return cudaSuccess;
  if (p.num_caches > 65535) return cudaErrorInvalidValue;
  // NOTE: the cache base addresses live on the device; the torch allocator (and IPC) hands out
  // 256-byte aligned bases, which the launcher checks before calling us.
  const bool vec16 = aligned16(p.src_block_bytes) && aligned16(p.dst_block_bytes) &&
                     aligned16(p.src_offset) && aligned16(p.dst_offset) &&
                     aligned16(p.chunk_bytes);
  const dim3 grid(p.num_pairs, p.num_caches);
  const auto kernel = vec16 ? block_copy_kernel<uint4> : block_copy_kernel<uint8_t>;
  return launch_kernel(kernel, grid, dim3(kCopyThreads), stream, p);
}

}  // namespace distllm::cuda
