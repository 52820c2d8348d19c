// CPU paged KV cache ops: write new K/V by slot mapping, copy blocks, swap blocks (memcpy per
// row or block). Layout: [num_blocks, num_kv_heads, block_size, head_dim], contiguous.
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "ops.h"

namespace {

void check_cache(const torch::Tensor& cache, const char* name) {
  TORCH_CHECK(cache.device().is_cpu() && cache.is_contiguous(), name,
              " must be a contiguous CPU tensor");
}

// OpenMP threads for the copies: torch's intra-op thread count.
int num_threads() { return std::max(1, at::get_num_threads()); }

// Checks lo <= v[i] < hi over a contiguous int64 tensor (a loop: at::min/max cost microseconds).
// Entries < 0 are allowed when skip_negative (padding slots).
void check_ids(const torch::Tensor& ids, int64_t hi, bool skip_negative, const char* what) {
  const int64_t* v = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    TORCH_CHECK(v[i] < hi && (v[i] >= 0 || skip_negative), what, " ", v[i], " out of range [0, ",
                hi, ")");
  }
}

int64_t block_bytes(const torch::Tensor& cache) {
  return cache.size(0) == 0 ? 0 : cache.nbytes() / cache.size(0);
}

}  // namespace

void reshape_and_cache(const torch::Tensor& key, const torch::Tensor& value,
                       torch::Tensor& key_cache, torch::Tensor& value_cache,
                       const torch::Tensor& slot_mapping) {
  check_cache(key_cache, "key_cache");
  check_cache(value_cache, "value_cache");
  TORCH_CHECK(key.dim() == 3 && key.sizes() == value.sizes(), "key/value: [tokens, kv_heads, dim]");
  TORCH_CHECK(key.size(1) == key_cache.size(1) && key.size(2) == key_cache.size(3),
              "key shape does not match the cache");
  TORCH_CHECK(slot_mapping.dim() == 1 && slot_mapping.size(0) == key.size(0),
              "slot_mapping must be [num_tokens]");
  // NOTE: casting first keeps the copy a memcpy; rows may be strided (views of a fused qkv).
  torch::Tensor k = key.to(key_cache.scalar_type());
  torch::Tensor v = value.to(value_cache.scalar_type());
  if (k.stride(2) != 1) k = k.contiguous();
  if (v.stride(2) != 1) v = v.contiguous();
  torch::Tensor slots = slot_mapping.to(at::kLong).contiguous();
  const int64_t num_tokens = k.size(0), kvh = k.size(1), D = k.size(2);
  const int64_t bs = key_cache.size(2), num_blocks = key_cache.size(0);
  if (num_tokens == 0) return;
  check_ids(slots, num_blocks * bs, /*skip_negative=*/true, "slot");
  const int64_t es = k.element_size(), row = D * es;
  const int64_t* slot = slots.data_ptr<int64_t>();
  const char* kp = static_cast<const char*>(k.data_ptr());
  const char* vp = static_cast<const char*>(v.data_ptr());
  char* kc = static_cast<char*>(key_cache.data_ptr());
  char* vc = static_cast<char*>(value_cache.data_ptr());
  const int64_t ks0 = k.stride(0) * es, ks1 = k.stride(1) * es;
  const int64_t vs0 = v.stride(0) * es, vs1 = v.stride(1) * es;
#pragma omp parallel for schedule(static) if (num_tokens * kvh * row > (1 << 16)) \
    num_threads(num_threads())
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (slot[t] < 0) continue;  // padding
    const int64_t blk = slot[t] / bs, off = slot[t] % bs;
    for (int64_t h = 0; h < kvh; ++h) {
      const int64_t dst = ((blk * kvh + h) * bs + off) * row;
      std::memcpy(kc + dst, kp + t * ks0 + h * ks1, row);
      std::memcpy(vc + dst, vp + t * vs0 + h * vs1, row);
    }
  }
}

void copy_blocks(const std::vector<torch::Tensor>& key_caches,
                 const std::vector<torch::Tensor>& value_caches,
                 const torch::Tensor& block_mapping) {
  TORCH_CHECK(key_caches.size() == value_caches.size(), "need one value cache per key cache");
  TORCH_CHECK(block_mapping.dim() == 2 && block_mapping.size(1) == 2, "block_mapping: [n, 2]");
  torch::Tensor mapping = block_mapping.to(torch::kCPU).to(at::kLong).contiguous();
  const int64_t num_pairs = mapping.size(0), num_layers = key_caches.size();
  const int64_t* pairs = mapping.data_ptr<int64_t>();
  std::vector<char*> bases;  // layer * 2 + (0: key, 1: value) -> cache base pointer
  for (int64_t l = 0; l < num_layers; ++l) {
    check_cache(key_caches[l], "key_caches[i]");
    check_cache(value_caches[l], "value_caches[i]");
    bases.push_back(static_cast<char*>(key_caches[l].data_ptr()));
    bases.push_back(static_cast<char*>(value_caches[l].data_ptr()));
  }
  if (num_pairs == 0 || num_layers == 0) return;
  const int64_t num_blocks = key_caches[0].size(0), bytes = block_bytes(key_caches[0]);
  check_ids(mapping, num_blocks, /*skip_negative=*/false, "block id");
  // NOTE: like vLLM, a block must not be both a source and a destination in one call.
#pragma omp parallel for schedule(static) if (num_pairs * num_layers > 4) \
    num_threads(num_threads())
  for (int64_t i = 0; i < num_layers * 2 * num_pairs; ++i) {
    const int64_t pair = i % num_pairs, which = i / num_pairs;
    char* base = bases[which];
    std::memmove(base + pairs[2 * pair + 1] * bytes, base + pairs[2 * pair] * bytes, bytes);
  }
}

void swap_blocks(const torch::Tensor& src, torch::Tensor& dst, const torch::Tensor& block_mapping) {
  check_cache(src, "src");
  check_cache(dst, "dst");
  TORCH_CHECK(src.scalar_type() == dst.scalar_type(), "src/dst dtypes differ");
  TORCH_CHECK(block_bytes(src) == block_bytes(dst), "src/dst block shapes differ");
  TORCH_CHECK(block_mapping.dim() == 2 && block_mapping.size(1) == 2, "block_mapping: [n, 2]");
  torch::Tensor mapping = block_mapping.to(torch::kCPU).to(at::kLong).contiguous();
  const int64_t num_pairs = mapping.size(0), bytes = block_bytes(src);
  if (num_pairs == 0) return;
  const int64_t* pairs = mapping.data_ptr<int64_t>();
  check_ids(mapping.select(1, 0).contiguous(), src.size(0), false, "source block id");
  check_ids(mapping.select(1, 1).contiguous(), dst.size(0), false, "destination block id");
  const char* sp = static_cast<const char*>(src.data_ptr());
  char* dp = static_cast<char*>(dst.data_ptr());
#pragma omp parallel for schedule(static) if (num_pairs * bytes > (1 << 20)) \
    num_threads(num_threads())
  for (int64_t i = 0; i < num_pairs; ++i) {
    std::memmove(dp + pairs[2 * i + 1] * bytes, sp + pairs[2 * i] * bytes, bytes);
  }
}
