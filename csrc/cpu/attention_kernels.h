// Torch-free interface of the CPU attention kernels (attention_isa.cpp is compiled once per ISA
// level: base, avx2, avx512, avx512bf16; cpu_attention.cpp picks one at runtime).
//
// Files: attention_isa.cpp (scratch, K/V tile loading + prefetch), attention_simd.inc (vector
// types, exp, horizontal sums), attention_tile_rows.inc / attention_tile_dot.inc (the two score +
// online-softmax paths; bf16 dot products on avx512bf16), attention_tile_pv.inc (P.V),
// attention_tasks.inc (OpenMP task grids, split merge).
//
// KV cache layout: [num_blocks, num_kv_heads, block_size, head_dim], contiguous.
// NOTE: attention_isa.cpp includes only this header and C headers, so that no inline function
// compiled with AVX-512 can be shared (ODR/COMDAT) with the portable translation units.
#pragma once

#include <cstdint>

namespace distllm {
namespace cpu {

enum class KVDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct PagedKV {
  const void* key_cache;    // [num_blocks, num_kv_heads, block_size, head_dim], KVDtype
  const void* value_cache;  // same shape and dtype as key_cache
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq;
  int64_t num_kv_heads;
  int64_t block_size;
  KVDtype dtype;
};

struct DecodeParams {
  const float* query;  // [num_seqs, num_heads, head_dim], fp32 contiguous
  float* out;          // [num_seqs, num_heads, head_dim], fp32 contiguous
  PagedKV kv;
  const int32_t* context_lens;  // [num_seqs]
  int64_t num_seqs;
  int64_t num_heads;
  int64_t head_dim;
  float scale;
  int64_t num_splits;  // context partitions per (seq, kv head); >= 1
  bool query_is_bf16;  // query values are exact bf16 (bf16 dot products may be used)
  int num_threads;     // OpenMP threads (torch's intra-op thread count)
};

struct PrefillParams {
  const float* query;  // [num_tokens, num_heads, head_dim], fp32 contiguous
  const float* key;    // [num_tokens, num_kv_heads, head_dim], fp32 contiguous
  const float* value;  // [num_tokens, num_kv_heads, head_dim], fp32 contiguous
  float* out;          // [num_tokens, num_heads, head_dim], fp32 contiguous
  PagedKV kv;          // cached prefix; key_cache == nullptr when there is none
  const int32_t* cu_seqlens_q;       // [num_seqs + 1]
  const int32_t* num_cached_tokens;  // [num_seqs] or nullptr
  int64_t num_seqs;
  int64_t num_heads;
  int64_t head_dim;
  float scale;
  int64_t q_tile;  // query tokens per task
  bool query_is_bf16;  // query values are exact bf16 (bf16 dot products may be used)
  int num_threads;  // OpenMP threads (torch's intra-op thread count)
};

#define DISTLLM_DECLARE_ISA(isa)                   \
  namespace isa {                                  \
  void decode_attention(const DecodeParams& p);    \
  void prefill_attention(const PrefillParams& p);  \
  }

DISTLLM_DECLARE_ISA(base)
DISTLLM_DECLARE_ISA(avx2)
DISTLLM_DECLARE_ISA(avx512)
DISTLLM_DECLARE_ISA(avx512bf16)

#undef DISTLLM_DECLARE_ISA

}  // namespace cpu
}  // namespace distllm
