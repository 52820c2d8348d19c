// Helpers shared by the torch-facing CUDA launchers (torch_ops.cpp, torch_block_ops.cpp).
#pragma once

#include <cuda_runtime_api.h>
#include <torch/all.h>

namespace distllm::cuda {

inline void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

inline void check_cache(const torch::Tensor& cache, const torch::Tensor& like, const char* name) {
  TORCH_CHECK(cache.is_cuda() && cache.dim() == 4 && cache.is_contiguous(), name,
              ": contiguous CUDA [num_blocks, num_kv_heads, block_size, head_dim] expected");
  TORCH_CHECK(cache.device() == like.device(), name, " is on another device");
}

// `t` as a contiguous int64 tensor on `device` (no copy when it already is one).
inline torch::Tensor device_i64(const torch::Tensor& t, const torch::Device& device) {
  return t.to(device, at::kLong, /*non_blocking=*/false, /*copy=*/false).contiguous();
}

// Bytes of one block (the first dimension) of a contiguous cache.
inline int64_t block_bytes(const torch::Tensor& cache) {
  return cache.numel() / std::max<int64_t>(cache.size(0), 1) * cache.element_size();
}

}  // namespace distllm::cuda
