// Host-side plan of the paged decode attention launch (pure C++, unit-tested without a GPU):
// how many query heads one thread block serves and how many context splits fill the SMs.
#pragma once

#include <algorithm>

namespace distllm::cuda {

constexpr int kMaxHeadsPerBlock = 8;   // query heads of one KV head served by one block
constexpr int kMinSplitTokens = 256;   // a split reads at least this many tokens
constexpr int kMaxSplits = 256;        // merge kernel's shared weight array

// Resident decode blocks per SM by query-head tile (64K registers / (128 threads x the kernel's
// registers: about 64, 96, 128 and 213 for tiles 1, 2, 4 and 8, ptxas for sm_80/sm_90).
inline int blocks_per_sm(int heads_per_block) {
  return heads_per_block >= 8 ? 2 : heads_per_block >= 4 ? 4 : heads_per_block >= 2 ? 5 : 8;
}

struct DecodePlan {
  int heads_per_block;  // 1, 2, 4 or 8: the kernel's compile-time query-head tile
  int head_chunks;      // ceil(group / heads_per_block)
  int num_splits;       // context splits per (seq, KV head); 1 = no merge kernel
  int split_tokens;     // tokens per split, a multiple of block_size
};

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// group: query heads per KV head; max_context: an upper bound of the context lengths (the block
// table width times the block size, known without reading the lengths from the device);
// requested_splits <= 0 picks the split count from the SM count.
inline DecodePlan plan_decode(int num_seqs, int num_kv_heads, int group, int max_context,
                              int block_size, int num_sms, int requested_splits) {
  DecodePlan plan{};
  plan.heads_per_block = 1;
  while (plan.heads_per_block < std::min(group, kMaxHeadsPerBlock)) plan.heads_per_block *= 2;
  plan.head_chunks = ceil_div(group, plan.heads_per_block);
  max_context = std::max(max_context, 1);
  int splits = requested_splits;
  if (splits <= 0) {
    // NOTE: at most one wave of resident blocks (floor), so no partial second wave idles SMs.
    const int base_blocks = std::max(num_seqs * num_kv_heads * plan.head_chunks, 1);
    const int wave = blocks_per_sm(plan.heads_per_block) * std::max(num_sms, 1);
    splits = std::min(wave / base_blocks, ceil_div(max_context, kMinSplitTokens));
  }
  splits = std::clamp(splits, 1, std::min(kMaxSplits, ceil_div(max_context, block_size)));
  plan.split_tokens = ceil_div(ceil_div(max_context, splits), block_size) * block_size;
  plan.num_splits = ceil_div(max_context, plan.split_tokens);
  return plan;
}

}  // namespace distllm::cuda
