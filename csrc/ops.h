// Declarations of the native ops registered in torch_bindings.cpp (CPU implementations in cpu/).
// Semantics follow distllm/ops/reference.py; the KV cache layout is
// [num_blocks, num_kv_heads, block_size, head_dim], contiguous.
#pragma once

#include <torch/all.h>

#include <optional>
#include <string>
#include <vector>

// out: [num_seqs, num_heads, head_dim]; num_splits <= 0 picks the context split automatically.
void paged_decode_attention(torch::Tensor& out, const torch::Tensor& query,
                            const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                            const torch::Tensor& block_tables, const torch::Tensor& context_lens,
                            double scale, int64_t num_splits);

// out: [num_tokens, num_heads, head_dim]; q_tile <= 0 picks the query tile automatically.
void prefill_attention(torch::Tensor& out, const torch::Tensor& query, const torch::Tensor& key,
                       const torch::Tensor& value, const torch::Tensor& cu_seqlens_q, double scale,
                       const std::optional<torch::Tensor>& key_cache,
                       const std::optional<torch::Tensor>& value_cache,
                       const std::optional<torch::Tensor>& block_tables,
                       const std::optional<torch::Tensor>& num_cached_tokens, int64_t q_tile);

void reshape_and_cache(const torch::Tensor& key, const torch::Tensor& value,
                       torch::Tensor& key_cache, torch::Tensor& value_cache,
                       const torch::Tensor& slot_mapping);

void copy_blocks(const std::vector<torch::Tensor>& key_caches,
                 const std::vector<torch::Tensor>& value_caches,
                 const torch::Tensor& block_mapping);

void swap_blocks(const torch::Tensor& src, torch::Tensor& dst, const torch::Tensor& block_mapping);

// x @ weight^T (+ bias) for 1 to 8 float32 rows of x (decode batches): weight [n, k] is read
// once for all rows (cpu/gemm_isa.cpp). Returns [m, n].
torch::Tensor skinny_linear(const torch::Tensor& x, const torch::Tensor& weight,
                            const std::optional<torch::Tensor>& bias);

// The ISA level the attention kernels run with: "base", "avx2" or "avx512".
std::string cpu_isa();
// Forces an ISA level (tests); raises if the CPU lacks it. "auto" restores detection.
void set_cpu_isa(const std::string& isa);

#ifdef DISTLLM_WITH_CUDA
// CUDA implementations (cuda/torch_ops.cpp, cuda/torch_block_ops.cpp) of the schemas above,
// registered for the CUDA dispatch key; fp16/bf16 attention, any dtype for the block movers.
void paged_decode_attention_cuda(torch::Tensor& out, const torch::Tensor& query,
                                 const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                                 const torch::Tensor& block_tables,
                                 const torch::Tensor& context_lens, double scale,
                                 int64_t num_splits);
// Causal prefill (FlashAttention-2 style, tensor cores): fp16/bf16, head_dim 64/128.
void prefill_attention_cuda(torch::Tensor& out, const torch::Tensor& query,
                            const torch::Tensor& key, const torch::Tensor& value,
                            const torch::Tensor& cu_seqlens_q, double scale,
                            const std::optional<torch::Tensor>& key_cache,
                            const std::optional<torch::Tensor>& value_cache,
                            const std::optional<torch::Tensor>& block_tables,
                            const std::optional<torch::Tensor>& num_cached_tokens,
                            int64_t q_tile);
void reshape_and_cache_cuda(const torch::Tensor& key, const torch::Tensor& value,
                            torch::Tensor& key_cache, torch::Tensor& value_cache,
                            const torch::Tensor& slot_mapping);
void copy_blocks_cuda(const std::vector<torch::Tensor>& key_caches,
                      const std::vector<torch::Tensor>& value_caches,
                      const torch::Tensor& block_mapping);
// One side may be (pinned) CPU memory; the copy runs on a dedicated per-device stream.
void swap_blocks_cuda(const torch::Tensor& src, torch::Tensor& dst,
                      const torch::Tensor& block_mapping);
// dst_caches[c][dst_blocks[j], dst_head_start + h] = src_caches[c][src_blocks[j],
// src_head_start + h] for h < num_heads, every cache c and pair j, in one kernel launch.
// Caches: [num_blocks, num_kv_heads, block_size, head_dim]; src may be IPC-opened memory.
void migrate_blocks_cuda(const std::vector<torch::Tensor>& src_caches,
                         const std::vector<torch::Tensor>& dst_caches,
                         const torch::Tensor& src_blocks, const torch::Tensor& dst_blocks,
                         int64_t src_head_start, int64_t dst_head_start, int64_t num_heads);
#endif
