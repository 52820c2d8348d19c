// Torch-facing CPU ops: attention (argument checks, fp32 staging of queries/new K/V) and the
// skinny linear of decode batches, with the runtime choice of the ISA-specific kernels
// (attention_isa.cpp, gemm_isa.cpp) by CPUID.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include "cpu/attention_kernels.h"
#include "cpu/gemm_kernels.h"
#include "ops.h"

namespace {

using distllm::cpu::DecodeParams;
using distllm::cpu::KVDtype;
using distllm::cpu::PagedKV;
using distllm::cpu::PrefillParams;

enum class Isa : int { kBase = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return __builtin_cpu_supports("avx512bf16") ? Isa::kAvx512Bf16 : Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kBase;
}

std::atomic<int>& active_isa() {
  static std::atomic<int> isa{static_cast<int>(detect_isa())};
  return isa;
}

Isa current_isa() { return static_cast<Isa>(active_isa().load()); }

KVDtype kv_dtype(const torch::Tensor& cache) {
  switch (cache.scalar_type()) {
    case at::kFloat:
      return KVDtype::kFloat32;
    case at::kBFloat16:
      return KVDtype::kBFloat16;
    case at::kHalf:
      return KVDtype::kFloat16;
    default:
      TORCH_CHECK(false, "KV cache dtype must be float32, bfloat16 or float16, got ",
                  cache.scalar_type());
  }
}

PagedKV make_paged_kv(const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                      const torch::Tensor& block_tables, int64_t head_dim) {
  TORCH_CHECK(key_cache.dim() == 4 && key_cache.is_contiguous() && value_cache.is_contiguous(),
              "caches must be contiguous [num_blocks, num_kv_heads, block_size, head_dim]");
  TORCH_CHECK(key_cache.sizes() == value_cache.sizes(), "key/value cache shapes differ");
  TORCH_CHECK(key_cache.scalar_type() == value_cache.scalar_type(), "key/value cache dtypes differ");
  TORCH_CHECK(key_cache.size(3) == head_dim, "cache head_dim does not match the query");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 &&
                  block_tables.is_contiguous(),
              "block_tables must be a contiguous int32 [num_seqs, max_blocks_per_seq] tensor");
  PagedKV kv;
  kv.key_cache = key_cache.data_ptr();
  kv.value_cache = value_cache.data_ptr();
  kv.block_tables = block_tables.data_ptr<int32_t>();
  kv.max_blocks_per_seq = block_tables.size(1);
  kv.num_kv_heads = key_cache.size(1);
  kv.block_size = key_cache.size(2);
  kv.dtype = kv_dtype(key_cache);
  return kv;
}

torch::Tensor as_f32(const torch::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// Context partitions per (seq, kv head): split only when there are too few tasks for the threads.
int64_t auto_num_splits(int64_t num_seq_heads, int64_t max_len) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  if (num_seq_heads == 0 || num_seq_heads >= 2 * threads) return 1;
  const int64_t by_tasks = (4 * threads + num_seq_heads - 1) / num_seq_heads;
  const int64_t by_len = (max_len + 255) / 256;  // NOTE: >= 256 tokens per split
  return std::max<int64_t>(1, std::min(by_tasks, by_len));
}

// Longest context in `lens` ([n] contiguous int32); checks that the block tables can hold it.
int64_t checked_max_len(const torch::Tensor& lens, const PagedKV& kv) {
  const int32_t* data = lens.data_ptr<int32_t>();  // NOTE: a loop; at::max costs microseconds
  const int32_t max_len = lens.numel() ? *std::max_element(data, data + lens.numel()) : 0;
  TORCH_CHECK(max_len <= kv.max_blocks_per_seq * kv.block_size, "a context length (", max_len,
              ") exceeds block_tables capacity (", kv.max_blocks_per_seq * kv.block_size, ")");
  return max_len;
}

// Writes `out32` into `out` unless the kernel already wrote into `out` directly.
void finish_out(torch::Tensor& out, const torch::Tensor& out32) {
  if (!out32.is_same(out)) out.copy_(out32);
}

torch::Tensor staging_out(torch::Tensor& out) {
  if (out.scalar_type() == at::kFloat && out.is_contiguous()) return out;
  return torch::empty(out.sizes(), out.options().dtype(at::kFloat));
}

template <typename Params>
void dispatch_isa(void (*base)(const Params&), void (*avx2)(const Params&),
                  void (*avx512)(const Params&), void (*avx512bf16)(const Params&),
                  const Params& p) {
  switch (current_isa()) {
    case Isa::kAvx512Bf16:
      return avx512bf16(p);
    case Isa::kAvx512:
      return avx512(p);
    case Isa::kAvx2:
      return avx2(p);
    default:
      return base(p);
  }
}

}  // namespace

void paged_decode_attention(torch::Tensor& out, const torch::Tensor& query,
                            const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                            const torch::Tensor& block_tables, const torch::Tensor& context_lens,
                            double scale, int64_t num_splits) {
  TORCH_CHECK(query.dim() == 3 && out.sizes() == query.sizes(), "query/out: [seqs, heads, dim]");
  TORCH_CHECK(context_lens.scalar_type() == at::kInt && context_lens.is_contiguous(),
              "context_lens must be contiguous int32");
  const int64_t num_heads = query.size(1), head_dim = query.size(2);
  DecodeParams p;
  p.kv = make_paged_kv(key_cache, value_cache, block_tables, head_dim);
  TORCH_CHECK(num_heads % p.kv.num_kv_heads == 0, "num_heads must be a multiple of kv heads");
  TORCH_CHECK(block_tables.size(0) >= query.size(0) && context_lens.size(0) >= query.size(0),
              "block_tables/context_lens have fewer rows than query");
  if (query.size(0) == 0) return;
  torch::Tensor q32 = as_f32(query);
  torch::Tensor out32 = staging_out(out);
  p.query = q32.data_ptr<float>();
  p.out = out32.data_ptr<float>();
  p.context_lens = context_lens.data_ptr<int32_t>();
  p.num_seqs = query.size(0);
  p.num_heads = num_heads;
  p.head_dim = head_dim;
  p.scale = static_cast<float>(scale);
  const int64_t max_len = checked_max_len(context_lens.narrow(0, 0, p.num_seqs), p.kv);
  p.num_splits =
      num_splits > 0 ? num_splits : auto_num_splits(p.num_seqs * p.kv.num_kv_heads, max_len);
  p.num_threads = std::max(1, at::get_num_threads());
  p.query_is_bf16 = query.scalar_type() == at::kBFloat16;
  namespace c = distllm::cpu;
  dispatch_isa(&c::base::decode_attention, &c::avx2::decode_attention,
               &c::avx512::decode_attention, &c::avx512bf16::decode_attention, p);
  finish_out(out, out32);
}

void prefill_attention(torch::Tensor& out, const torch::Tensor& query, const torch::Tensor& key,
                       const torch::Tensor& value, const torch::Tensor& cu_seqlens_q, double scale,
                       const std::optional<torch::Tensor>& key_cache,
                       const std::optional<torch::Tensor>& value_cache,
                       const std::optional<torch::Tensor>& block_tables,
                       const std::optional<torch::Tensor>& num_cached_tokens, int64_t q_tile) {
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && out.sizes() == query.sizes(),
              "query/out: [tokens, heads, dim], key/value: [tokens, kv_heads, dim]");
  TORCH_CHECK(key.sizes() == value.sizes() && key.size(0) == query.size(0) &&
                  key.size(2) == query.size(2),
              "key/value shapes do not match the query");
  TORCH_CHECK(cu_seqlens_q.scalar_type() == at::kInt && cu_seqlens_q.is_contiguous(),
              "cu_seqlens_q must be contiguous int32");
  const int64_t num_heads = query.size(1), num_kv_heads = key.size(1), head_dim = query.size(2);
  TORCH_CHECK(num_heads % num_kv_heads == 0, "num_heads must be a multiple of kv heads");
  PrefillParams p{};
  p.kv.num_kv_heads = num_kv_heads;
  p.num_cached_tokens = nullptr;
  if (num_cached_tokens.has_value()) {
    TORCH_CHECK(key_cache && value_cache && block_tables,
                "num_cached_tokens needs key_cache, value_cache and block_tables");
    TORCH_CHECK(num_cached_tokens->scalar_type() == at::kInt && num_cached_tokens->is_contiguous(),
                "num_cached_tokens must be contiguous int32");
    p.kv = make_paged_kv(*key_cache, *value_cache, *block_tables, head_dim);
    TORCH_CHECK(p.kv.num_kv_heads == num_kv_heads, "cache kv heads do not match key");
    p.num_cached_tokens = num_cached_tokens->data_ptr<int32_t>();
    TORCH_CHECK(num_cached_tokens->numel() >= cu_seqlens_q.numel() - 1,
                "num_cached_tokens has fewer entries than sequences");
    checked_max_len(*num_cached_tokens, p.kv);
  }
  if (query.size(0) == 0) return;
  torch::Tensor q32 = as_f32(query), k32 = as_f32(key), v32 = as_f32(value);
  torch::Tensor out32 = staging_out(out);
  p.query = q32.data_ptr<float>();
  p.key = k32.data_ptr<float>();
  p.value = v32.data_ptr<float>();
  p.out = out32.data_ptr<float>();
  p.cu_seqlens_q = cu_seqlens_q.data_ptr<int32_t>();
  p.num_seqs = cu_seqlens_q.size(0) - 1;
  p.num_heads = num_heads;
  p.head_dim = head_dim;
  p.scale = static_cast<float>(scale);
  // NOTE: ~64 query rows (G heads x q_tile tokens) per task keep K/V tiles hot in L1.
  p.q_tile = q_tile > 0 ? q_tile : std::max<int64_t>(1, 64 / (num_heads / num_kv_heads));
  p.num_threads = std::max(1, at::get_num_threads());
  p.query_is_bf16 = query.scalar_type() == at::kBFloat16;
  namespace c = distllm::cpu;
  dispatch_isa(&c::base::prefill_attention, &c::avx2::prefill_attention,
               &c::avx512::prefill_attention, &c::avx512bf16::prefill_attention, p);
  finish_out(out, out32);
}

torch::Tensor skinny_linear(const torch::Tensor& x, const torch::Tensor& weight,
                            const std::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "x: [m, k], weight: [n, k]");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "skinny_linear takes float32 x and weight");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= distllm::cpu::kSkinnyMaxRows,
              "skinny_linear takes 1 to ", distllm::cpu::kSkinnyMaxRows, " rows, got ", x.size(0));
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
  distllm::cpu::SkinnyGemmParams p{};
  torch::Tensor x32 = x.contiguous();
  torch::Tensor out = torch::empty({x.size(0), weight.size(0)}, x.options());
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->dim() == 1 &&
                    bias->size(0) == weight.size(0),
                "bias must be a contiguous float32 [n] tensor");
    p.bias = bias->data_ptr<float>();
  }
  p.x = x32.data_ptr<float>();
  p.w = weight.data_ptr<float>();
  p.out = out.data_ptr<float>();
  p.m = x.size(0);
  p.n = weight.size(0);
  p.k = x.size(1);
  p.num_threads = std::max(1, at::get_num_threads());
  namespace c = distllm::cpu;
  dispatch_isa(&c::base::skinny_gemm, &c::avx2::skinny_gemm, &c::avx512::skinny_gemm,
               &c::avx512bf16::skinny_gemm, p);
  return out;
}

std::string cpu_isa() {
  static const char* names[] = {"base", "avx2", "avx512", "avx512bf16"};
  return names[static_cast<int>(current_isa())];
}

void set_cpu_isa(const std::string& isa) {
  const Isa best = detect_isa();
  Isa want = best;
  if (isa == "base") want = Isa::kBase;
  else if (isa == "avx2") want = Isa::kAvx2;
  else if (isa == "avx512") want = Isa::kAvx512;
  else if (isa == "avx512bf16") want = Isa::kAvx512Bf16;
  else TORCH_CHECK(isa == "auto", "unknown ISA '", isa, "' (base, avx2, avx512, avx512bf16, auto)");
  TORCH_CHECK(static_cast<int>(want) <= static_cast<int>(best), "this CPU lacks ", isa);
  active_isa().store(static_cast<int>(want));
}
