// C entry points of the emulated CUDA kernels (g++ -DDISTLLM_EMULATE -shared; loaded with ctypes
// by tests/kernels/test_cuda_emulated.py). They fill the same parameter structs and call the same
// launch functions as the torch launchers (csrc/cuda/torch_ops.cpp), on host memory.
// NOTE: not part of the CMake build (csrc/cuda/*.cu|*.cpp is globbed, not this folder).
#include <vector>

#include "cuda/cache_kernels.cu"
#include "cuda/decode_attention.cu"
#include "cuda/prefill_attention.cu"

namespace dc = distllm::cuda;

extern "C" {

// Contiguous out/query [num_seqs, num_heads, head_dim] unless strides are given (elements).
int emu_paged_decode(void* out, const void* query, const void* key_cache, const void* value_cache,
                     const int* block_tables, const int* context_lens, int num_seqs,
                     int num_heads, int num_kv_heads, int head_dim, int block_size,
                     int max_blocks_per_seq, float scale, int requested_splits, int num_sms,
                     int is_bf16, int64_t q_stride_seq, int64_t q_stride_head) {
  const dc::DecodePlan plan =
      dc::plan_decode(num_seqs, num_kv_heads, num_heads / num_kv_heads,
                      max_blocks_per_seq * block_size, block_size, num_sms, requested_splits);
  std::vector<float> tmp_out(static_cast<size_t>(num_seqs) * plan.num_splits * num_heads *
                             head_dim);
  std::vector<float> tmp_lse(static_cast<size_t>(num_seqs) * plan.num_splits * num_heads);
  dc::DecodeParams p{};
  p.out = out;
  p.query = query;
  p.key_cache = key_cache;
  p.value_cache = value_cache;
  p.block_tables = block_tables;
  p.context_lens = context_lens;
  p.tmp_out = tmp_out.data();
  p.tmp_lse = tmp_lse.data();
  p.out_stride_seq = static_cast<int64_t>(num_heads) * head_dim;
  p.out_stride_head = head_dim;
  p.q_stride_seq = q_stride_seq;
  p.q_stride_head = q_stride_head;
  p.num_seqs = num_seqs;
  p.num_heads = num_heads;
  p.num_kv_heads = num_kv_heads;
  p.head_dim = head_dim;
  p.block_size = block_size;
  p.block_size_log2 = block_size == 8 ? 3 : (block_size == 16 ? 4 : 5);
  p.max_blocks_per_seq = max_blocks_per_seq;
  p.heads_per_block = plan.heads_per_block;
  p.num_splits = plan.num_splits;
  p.split_tokens = plan.split_tokens;
  p.scale = scale;
  const dc::DType dtype = is_bf16 ? dc::DType::kBFloat16 : dc::DType::kHalf;
  return static_cast<int>(dc::launch_paged_decode(p, dtype, nullptr)) * 1000 + plan.num_splits;
}

int emu_reshape_and_cache(const char* key, const char* value, char* key_cache, char* value_cache,
                          const int64_t* slot_mapping, int64_t key_stride_token,
                          int64_t key_stride_head, int64_t value_stride_token,
                          int64_t value_stride_head, int num_tokens, int num_kv_heads,
                          int block_size, int head_bytes) {
  const dc::AppendParams p{key,          value,           key_cache,       value_cache,
                           slot_mapping, key_stride_token, key_stride_head, value_stride_token,
                           value_stride_head, num_tokens,  num_kv_heads,    block_size,
                           head_bytes};
  return static_cast<int>(dc::launch_reshape_and_cache(p, nullptr));
}

int emu_block_copy(const int64_t* src_ptrs, const int64_t* dst_ptrs, const int64_t* src_blocks,
                   const int64_t* dst_blocks, int64_t pair_stride, int64_t src_block_bytes,
                   int64_t dst_block_bytes, int64_t src_offset, int64_t dst_offset,
                   int64_t chunk_bytes, int num_pairs, int num_caches) {
  const dc::BlockCopyParams p{src_ptrs,        dst_ptrs,        src_blocks, dst_blocks,
                              pair_stride,     src_block_bytes, dst_block_bytes,
                              src_offset,      dst_offset,      chunk_bytes, num_pairs,
                              num_caches};
  return static_cast<int>(dc::launch_block_copy(p, nullptr));
}

// Contiguous query/key/value/out; key_cache/value_cache/block_tables/num_cached_tokens may be null.
int emu_prefill(void* out, const void* query, const void* key, const void* value,
                const int* cu_seqlens_q, const void* key_cache, const void* value_cache,
                const int* block_tables, const int* num_cached_tokens, int num_seqs,
                int num_tokens, int num_heads, int num_kv_heads, int head_dim, int block_size,
                int max_blocks_per_seq, float scale, int is_bf16) {
  dc::PrefillParams p{};
  p.out = out;
  p.query = query;
  p.key = key;
  p.value = value;
  p.cu_seqlens_q = cu_seqlens_q;
  p.key_cache = key_cache;
  p.value_cache = value_cache;
  p.block_tables = block_tables;
  p.num_cached_tokens = num_cached_tokens;
  p.out_stride_token = p.q_stride_token = static_cast<int64_t>(num_heads) * head_dim;
  p.out_stride_head = p.q_stride_head = head_dim;
  p.k_stride_token = p.v_stride_token = static_cast<int64_t>(num_kv_heads) * head_dim;
  p.k_stride_head = p.v_stride_head = head_dim;
  p.num_seqs = num_seqs;
  p.num_tokens = num_tokens;
  p.num_heads = num_heads;
  p.num_kv_heads = num_kv_heads;
  p.head_dim = head_dim;
  p.block_size = block_size;
  p.max_blocks_per_seq = max_blocks_per_seq;
  p.scale = scale;
  const dc::DType dtype = is_bf16 ? dc::DType::kBFloat16 : dc::DType::kHalf;
  return static_cast<int>(dc::launch_prefill(p, dtype, nullptr));
}

}  // extern "C"
