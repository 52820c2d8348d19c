// Torch-facing launchers of the CUDA kernels (registered for the CUDA dispatch key in
// torch_bindings.cpp): tensor checks, the decode plan, streams. Host C++ only (no nvcc), so the
// torch headers are compiled by the host compiler; the kernels live in the .cu files.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <array>
#include <mutex>

#include "cuda/decode_plan.h"
#include "cuda/kernels.h"
#include "cuda/torch_utils.h"
#include "ops.h"

namespace {

namespace dc = distllm::cuda;
using dc::check_cache;
using dc::check_cuda;

int num_sms(int device) {
  static std::array<int, 64> cached{};
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  TORCH_CHECK(device >= 0 && device < static_cast<int>(cached.size()), "device index too large");
  if (cached[device] == 0) {
    check_cuda(cudaDeviceGetAttribute(&cached[device], cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute");
  }
  return cached[device];
}

dc::DType dtype_of(const torch::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              "CUDA attention supports float16 and bfloat16, got ", t.scalar_type());
  return t.scalar_type() == at::kHalf ? dc::DType::kHalf : dc::DType::kBFloat16;
}

// Rows of 8 16-bit elements: last dim contiguous, 16-byte aligned rows.
bool rows16(const torch::Tensor& t) {
  return t.stride(-1) == 1 && t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

}  // namespace

namespace {

void check_decode_args(const torch::Tensor& out, const torch::Tensor& query,
                       const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                       const torch::Tensor& block_tables, const torch::Tensor& context_lens) {
  TORCH_CHECK(query.is_cuda() && query.dim() == 3, "query: CUDA [num_seqs, num_heads, head_dim]");
  check_cache(key_cache, query, "key_cache");
  check_cache(value_cache, query, "value_cache");
  TORCH_CHECK(key_cache.scalar_type() == query.scalar_type() &&
                  value_cache.scalar_type() == query.scalar_type() &&
                  out.scalar_type() == query.scalar_type(),
              "query, caches and out must share one dtype");
  TORCH_CHECK(key_cache.sizes() == value_cache.sizes(), "key/value cache shapes differ");
  TORCH_CHECK(key_cache.size(3) == query.size(2), "cache head_dim differs from the query's");
  TORCH_CHECK(query.size(1) % key_cache.size(1) == 0,
              "num_heads must be a multiple of num_kv_heads");
  TORCH_CHECK(dc::decode_supported(static_cast<int>(query.size(2)),
                                   static_cast<int>(key_cache.size(2))),
              "CUDA decode supports head_dim 64/128/256 and block_size 8/16/32");
  TORCH_CHECK(out.sizes() == query.sizes() && out.device() == query.device(), "out: like query");
  TORCH_CHECK(block_tables.is_cuda() && block_tables.scalar_type() == at::kInt &&
                  block_tables.is_contiguous() && block_tables.dim() == 2 &&
                  block_tables.size(0) == query.size(0),
              "block_tables: contiguous CUDA int32 [num_seqs, max_blocks_per_seq]");
  TORCH_CHECK(context_lens.is_cuda() && context_lens.scalar_type() == at::kInt &&
                  context_lens.is_contiguous() && context_lens.numel() == query.size(0),
              "context_lens: contiguous CUDA int32 [num_seqs]");
}

dc::DecodeParams decode_params(const torch::Tensor& out, const torch::Tensor& query,
                               const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                               const torch::Tensor& block_tables,
                               const torch::Tensor& context_lens, double scale) {
  dc::DecodeParams p{};
  p.out = out.data_ptr();
  p.query = query.data_ptr();
  p.key_cache = key_cache.data_ptr();
  p.value_cache = value_cache.data_ptr();
  p.block_tables = block_tables.data_ptr<int>();
  p.context_lens = context_lens.data_ptr<int>();
  p.out_stride_seq = out.stride(0);
  p.out_stride_head = out.stride(1);
  p.q_stride_seq = query.stride(0);
  p.q_stride_head = query.stride(1);
  p.num_seqs = static_cast<int>(query.size(0));
  p.num_heads = static_cast<int>(query.size(1));
  p.num_kv_heads = static_cast<int>(key_cache.size(1));
  p.head_dim = static_cast<int>(query.size(2));
  p.block_size = static_cast<int>(key_cache.size(2));
  p.block_size_log2 = p.block_size == 8 ? 3 : (p.block_size == 16 ? 4 : 5);
  p.max_blocks_per_seq = static_cast<int>(block_tables.size(1));
  p.scale = static_cast<float>(scale);
  return p;
}

}  // namespace

void paged_decode_attention_cuda(torch::Tensor& out, const torch::Tensor& query,
                                 const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                                 const torch::Tensor& block_tables,
                                 const torch::Tensor& context_lens, double scale,
                                 int64_t num_splits) {
  check_decode_args(out, query, key_cache, value_cache, block_tables, context_lens);
  const c10::cuda::CUDAGuard guard(query.device());
  const torch::Tensor q = rows16(query) ? query : query.contiguous();
  torch::Tensor target = rows16(out) ? out : torch::empty_like(query, at::MemoryFormat::Contiguous);
  dc::DecodeParams p =
      decode_params(target, q, key_cache, value_cache, block_tables, context_lens, scale);
  const dc::DecodePlan plan =
      dc::plan_decode(p.num_seqs, p.num_kv_heads, p.num_heads / p.num_kv_heads,
                      p.max_blocks_per_seq * p.block_size, p.block_size,
                      num_sms(query.get_device()), static_cast<int>(num_splits));
  p.heads_per_block = plan.heads_per_block;
  p.num_splits = plan.num_splits;
  p.split_tokens = plan.split_tokens;
  torch::Tensor tmp_out, tmp_lse;
  if (plan.num_splits > 1) {
    const auto f32 = query.options().dtype(at::kFloat);
    tmp_out = torch::empty({p.num_seqs, plan.num_splits, p.num_heads, p.head_dim}, f32);
    tmp_lse = torch::empty({p.num_seqs, plan.num_splits, p.num_heads}, f32);
    p.tmp_out = tmp_out.data_ptr<float>();
    p.tmp_lse = tmp_lse.data_ptr<float>();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(query.get_device()).stream();
  check_cuda(dc::launch_paged_decode(p, dtype_of(query), stream), "paged_decode_attention");
  if (!target.is_same(out)) out.copy_(target);
}

void reshape_and_cache_cuda(const torch::Tensor& key, const torch::Tensor& value,
                            torch::Tensor& key_cache, torch::Tensor& value_cache,
                            const torch::Tensor& slot_mapping) {
  check_cache(key_cache, key, "key_cache");
  check_cache(value_cache, key, "value_cache");
  TORCH_CHECK(key.dim() == 3 && key.sizes() == value.sizes(), "key/value: [tokens, kv_heads, dim]");
  TORCH_CHECK(key.size(1) == key_cache.size(1) && key.size(2) == key_cache.size(3),
              "key/value heads or head_dim differ from the cache's");
  TORCH_CHECK(slot_mapping.numel() == key.size(0), "slot_mapping must be [num_tokens]");
  TORCH_CHECK(key_cache.scalar_type() == value_cache.scalar_type(), "cache dtypes differ");
  const c10::cuda::CUDAGuard guard(key_cache.device());
  const auto prepare = [&](const torch::Tensor& t) {
    torch::Tensor r = t.to(key_cache.device(), key_cache.scalar_type());
    return r.stride(2) == 1 ? r : r.contiguous();
  };
  const torch::Tensor k = prepare(key), v = prepare(value);
  const torch::Tensor slots = dc::device_i64(slot_mapping, key_cache.device());
  const int64_t elem = key_cache.element_size();
  dc::AppendParams p{};
  p.key = static_cast<const char*>(k.data_ptr());
  p.value = static_cast<const char*>(v.data_ptr());
  p.key_cache = static_cast<char*>(key_cache.data_ptr());
  p.value_cache = static_cast<char*>(value_cache.data_ptr());
  p.slot_mapping = slots.data_ptr<int64_t>();
  p.key_stride_token = k.stride(0) * elem;
  p.key_stride_head = k.stride(1) * elem;
  p.value_stride_token = v.stride(0) * elem;
  p.value_stride_head = v.stride(1) * elem;
  p.num_tokens = static_cast<int>(k.size(0));
  p.num_kv_heads = static_cast<int>(k.size(1));
  p.block_size = static_cast<int>(key_cache.size(2));
  p.head_bytes = static_cast<int>(k.size(2) * elem);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(key_cache.get_device()).stream();
  check_cuda(dc::launch_reshape_and_cache(p, stream), "reshape_and_cache");
}

namespace {

// Last dim contiguous, token/head strides multiples of `multiple`, base 16-byte aligned.
bool strided_ok(const torch::Tensor& t, int64_t multiple) {
  return t.stride(-1) == 1 && t.stride(0) % multiple == 0 && t.stride(1) % multiple == 0 &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

dc::PrefillParams prefill_params(const torch::Tensor& out, const torch::Tensor& q,
                                 const torch::Tensor& k, const torch::Tensor& v,
                                 const torch::Tensor& cu_seqlens_q, double scale) {
  dc::PrefillParams p{};
  p.out = out.data_ptr();
  p.query = q.data_ptr();
  p.key = k.data_ptr();
  p.value = v.data_ptr();
  p.cu_seqlens_q = cu_seqlens_q.data_ptr<int>();
  p.out_stride_token = out.stride(0);
  p.out_stride_head = out.stride(1);
  p.q_stride_token = q.stride(0);
  p.q_stride_head = q.stride(1);
  p.k_stride_token = k.stride(0);
  p.k_stride_head = k.stride(1);
  p.v_stride_token = v.stride(0);
  p.v_stride_head = v.stride(1);
  p.num_seqs = static_cast<int>(cu_seqlens_q.numel() - 1);
  p.num_tokens = static_cast<int>(q.size(0));
  p.num_heads = static_cast<int>(q.size(1));
  p.num_kv_heads = static_cast<int>(k.size(1));
  p.head_dim = static_cast<int>(q.size(2));
  p.scale = static_cast<float>(scale);
  return p;
}

void set_prefix(dc::PrefillParams& p, const torch::Tensor& q,
                const std::optional<torch::Tensor>& key_cache,
                const std::optional<torch::Tensor>& value_cache,
                const std::optional<torch::Tensor>& block_tables,
                const std::optional<torch::Tensor>& num_cached_tokens) {
  if (!num_cached_tokens || !key_cache) return;
  TORCH_CHECK(value_cache && block_tables, "a cached prefix needs value_cache and block_tables");
  check_cache(*key_cache, q, "key_cache");
  check_cache(*value_cache, q, "value_cache");
  TORCH_CHECK(key_cache->scalar_type() == q.scalar_type() && key_cache->size(3) == q.size(2) &&
                  key_cache->sizes() == value_cache->sizes(),
              "caches must match the query's dtype and head_dim");
  TORCH_CHECK(block_tables->is_cuda() && block_tables->scalar_type() == at::kInt &&
                  block_tables->is_contiguous() && block_tables->size(0) == p.num_seqs,
              "block_tables: contiguous CUDA int32 [num_seqs, max_blocks_per_seq]");
  TORCH_CHECK(num_cached_tokens->is_cuda() && num_cached_tokens->scalar_type() == at::kInt &&
                  num_cached_tokens->is_contiguous() && num_cached_tokens->numel() == p.num_seqs,
              "num_cached_tokens: contiguous CUDA int32 [num_seqs]");
  p.key_cache = key_cache->data_ptr();
  p.value_cache = value_cache->data_ptr();
  p.block_tables = block_tables->data_ptr<int>();
  p.num_cached_tokens = num_cached_tokens->data_ptr<int>();
  p.block_size = static_cast<int>(key_cache->size(2));
  p.max_blocks_per_seq = static_cast<int>(block_tables->size(1));
}

}  // namespace

void prefill_attention_cuda(torch::Tensor& out, const torch::Tensor& query,
                            const torch::Tensor& key, const torch::Tensor& value,
                            const torch::Tensor& cu_seqlens_q, double scale,
                            const std::optional<torch::Tensor>& key_cache,
                            const std::optional<torch::Tensor>& value_cache,
                            const std::optional<torch::Tensor>& block_tables,
                            const std::optional<torch::Tensor>& num_cached_tokens,
                            int64_t /*q_tile: fixed at 64 rows on CUDA*/) {
  TORCH_CHECK(query.is_cuda() && query.dim() == 3 && key.dim() == 3 && key.sizes() == value.sizes(),
              "query: CUDA [tokens, heads, dim]; key/value: [tokens, kv_heads, dim]");
  const dc::DType dtype = dtype_of(query);
  TORCH_CHECK(key.scalar_type() == query.scalar_type() &&
                  value.scalar_type() == query.scalar_type() &&
                  out.scalar_type() == query.scalar_type() && out.sizes() == query.sizes(),
              "query, key, value and out must share one dtype; out must be shaped like query");
  TORCH_CHECK(dc::prefill_supported(static_cast<int>(query.size(2))) &&
                  key.size(2) == query.size(2) && key.size(0) == query.size(0) &&
                  query.size(1) % key.size(1) == 0,
              "CUDA prefill supports head_dim 64/128 and num_heads a multiple of num_kv_heads");
  TORCH_CHECK(cu_seqlens_q.is_cuda() && cu_seqlens_q.scalar_type() == at::kInt &&
                  cu_seqlens_q.is_contiguous() && cu_seqlens_q.dim() == 1 &&
                  cu_seqlens_q.numel() >= 1,
              "cu_seqlens_q: contiguous CUDA int32 [num_seqs + 1]");
  const c10::cuda::CUDAGuard guard(query.device());
  const torch::Tensor q = strided_ok(query, 2) ? query : query.contiguous();
  const torch::Tensor k = strided_ok(key, 8) ? key : key.contiguous();
  const torch::Tensor v = strided_ok(value, 8) ? value : value.contiguous();
  torch::Tensor target =
      strided_ok(out, 2) ? out : torch::empty_like(query, at::MemoryFormat::Contiguous);
  dc::PrefillParams p = prefill_params(target, q, k, v, cu_seqlens_q, scale);
  set_prefix(p, query, key_cache, value_cache, block_tables, num_cached_tokens);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(query.get_device()).stream();
  check_cuda(dc::launch_prefill(p, dtype, stream), "prefill_attention");
  if (!target.is_same(out)) out.copy_(target);
}
