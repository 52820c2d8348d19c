// Torch-free host API of the CUDA kernels (csrc/cuda/*.cu). The torch-facing launchers in
// torch_ops.cpp check tensors, pick the plan and call these; the .cu files include no torch
// headers, so they compile quickly and can be compile-checked without torch.
// KV cache layout: [num_blocks, num_kv_heads, block_size, head_dim], contiguous.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace distllm::cuda {

enum class DType : int { kHalf = 0, kBFloat16 = 1 };

// Paged decode attention. grid: (num_kv_heads * head_chunks, num_seqs, num_splits), 128 threads;
// each block serves the query heads [chunk * heads_per_block, ...) of one KV head over one
// context split. With num_splits > 1 the blocks write fp32 partials (tmp_out, tmp_lse in log2
// units) and a merge kernel (grid: (num_heads, num_seqs)) combines them into out.
struct DecodeParams {
  void* out;                  // [num_seqs, num_heads, head_dim], strides below
  const void* query;          // [num_seqs, num_heads, head_dim], strides below
  const void* key_cache;      // [num_blocks, num_kv_heads, block_size, head_dim]
  const void* value_cache;    // [num_blocks, num_kv_heads, block_size, head_dim]
  const int* block_tables;    // [num_seqs, max_blocks_per_seq]
  const int* context_lens;    // [num_seqs]; 0 writes zeros
  float* tmp_out;             // [num_seqs, num_splits, num_heads, head_dim]; num_splits > 1
  float* tmp_lse;             // [num_seqs, num_splits, num_heads]; num_splits > 1
  int64_t out_stride_seq, out_stride_head;  // elements; multiples of 8 (16-byte rows)
  int64_t q_stride_seq, q_stride_head;      // elements; multiples of 8
  int num_seqs, num_heads, num_kv_heads, head_dim;
  int block_size, block_size_log2, max_blocks_per_seq;
  int heads_per_block, num_splits, split_tokens;
  float scale;
};

// Whether (head_dim, block_size) has a compiled kernel: head_dim 64/128/256, block 8/16/32.
bool decode_supported(int head_dim, int block_size);
cudaError_t launch_paged_decode(const DecodeParams& p, DType dtype, cudaStream_t stream);

// KV append by slot mapping; works on bytes (key dtype == cache dtype). grid: num_tokens.
struct AppendParams {
  const char* key;            // [num_tokens, num_kv_heads, head_dim], strides in bytes below
  const char* value;
  char* key_cache;            // [num_blocks, num_kv_heads, block_size, head_dim]
  char* value_cache;
  const int64_t* slot_mapping;  // [num_tokens]; -1 = skip
  int64_t key_stride_token, key_stride_head, value_stride_token, value_stride_head;  // bytes
  int num_tokens, num_kv_heads, block_size;
  int head_bytes;             // head_dim * element size
};
cudaError_t launch_reshape_and_cache(const AppendParams& p, cudaStream_t stream);

// Batched block copy between (or within) paged caches, one launch for every cache and block:
// dst_caches[c][dst_blocks[j]] bytes [dst_offset, dst_offset + chunk) =
// src_caches[c][src_blocks[j]] bytes [src_offset, src_offset + chunk). With a head range this is
// the migration gather/scatter; with the whole block it is copy_blocks. grid: (num_pairs,
// num_caches), 256 threads.
struct BlockCopyParams {
  const int64_t* src_ptrs;    // [num_caches], device addresses (device memory)
  const int64_t* dst_ptrs;    // [num_caches]
  const int64_t* src_blocks;  // [num_pairs]; device memory
  const int64_t* dst_blocks;  // [num_pairs]; may alias src_blocks + 1 with pair_stride 2
  int64_t pair_stride;        // elements between consecutive pairs in src/dst_blocks
  int64_t src_block_bytes, dst_block_bytes, src_offset, dst_offset, chunk_bytes;
  int num_pairs, num_caches;
};
cudaError_t launch_block_copy(const BlockCopyParams& p, cudaStream_t stream);

// Causal prefill attention over a ragged batch (FlashAttention-2 style: mma.sync m16n8k16
// tensor-core tiles, online softmax in registers, causal tile skipping). Seq i's new tokens
// [cu_seqlens_q[i], cu_seqlens_q[i+1]) attend to its first num_cached_tokens[i] tokens, read from
// the paged cache through block_tables (null: no cached prefix), then causally to each other.
// grid: (ceil(num_tokens / 64) + num_seqs, num_heads), 128 threads (4 warps x 16 query rows).
struct PrefillParams {
  void* out;                       // [num_tokens, num_heads, head_dim], strides below
  const void* query;               // [num_tokens, num_heads, head_dim]
  const void* key;                 // [num_tokens, num_kv_heads, head_dim]
  const void* value;               // [num_tokens, num_kv_heads, head_dim]
  const int* cu_seqlens_q;         // [num_seqs + 1]
  const void* key_cache;           // [num_blocks, num_kv_heads, block_size, head_dim] or null
  const void* value_cache;
  const int* block_tables;         // [num_seqs, max_blocks_per_seq] or null
  const int* num_cached_tokens;    // [num_seqs] or null (no cached prefix)
  int64_t out_stride_token, out_stride_head, q_stride_token, q_stride_head;  // elements, even
  int64_t k_stride_token, k_stride_head, v_stride_token, v_stride_head;      // multiples of 8
  int num_seqs, num_tokens, num_heads, num_kv_heads, head_dim;
  int block_size, max_blocks_per_seq;
  float scale;
};

// head_dim 64 or 128.
bool prefill_supported(int head_dim);
cudaError_t launch_prefill(const PrefillParams& p, DType dtype, cudaStream_t stream);

}  // namespace distllm::cuda
