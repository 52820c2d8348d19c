// Host emulation of the CUDA built-ins the kernels use, compiled only with -DDISTLLM_EMULATE by
// the CPU tests (tests/kernels/test_cuda_emulated.py): the kernels' own code runs on a CPU.
// A grid runs block after block; the threads of a block are fibers (ucontext) on one OS thread,
// switched round-robin at __syncthreads and at warp shuffles (barriers over the block or the
// warp). A barrier that can never complete (divergent __syncthreads or shuffles) aborts.
#pragma once

#include <math.h>  // exp2f, log2f, fmaf, fmaxf at global scope, as in device code
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#undef __shared__
#define __shared__ static  // one block runs at a time: a static is that block's shared memory
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace distllm::emulate {

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
};

struct Block {
  int num_threads = 0;
  int current = 0;
  uint64_t progress = 0;  // barrier arrivals + finished threads: a round without any = deadlock
  std::vector<ucontext_t> contexts;
  std::vector<std::vector<char>> stacks;
  std::vector<char> done;
  ucontext_t scheduler;
  Barrier block_barrier;
  Barrier warp_barriers[32];
  float warp_slots[32][32];
  const std::function<void()>* body = nullptr;
};

inline Block* g_block = nullptr;
inline uint3 g_block_idx{0, 0, 0};

inline uint3 thread_index() {
  return uint3{static_cast<unsigned>(g_block->current), 0, 0};
}

inline void yield() {
  Block* b = g_block;
  swapcontext(&b->contexts[b->current], &b->scheduler);
}

inline void barrier_wait(Barrier& bar, int participants) {
  const uint64_t gen = bar.generation;
  ++g_block->progress;
  if (++bar.arrived == participants) {
    bar.arrived = 0;
    ++bar.generation;
    return;
  }
  while (bar.generation == gen) yield();
}

inline void fiber_main() {
  (*g_block->body)();
  g_block->done[g_block->current] = 1;
  ++g_block->progress;
}

inline void run_block(int num_threads, const std::function<void()>& body) {
  static Block block;  // NOTE: reused: stacks are allocated once
  block.num_threads = num_threads;
  block.contexts.resize(num_threads);
  block.stacks.resize(num_threads);
  block.done.assign(num_threads, 0);
  block.body = &body;
  block.block_barrier = Barrier{};
  for (auto& w : block.warp_barriers) w = Barrier{};
  g_block = &block;
  for (int t = 0; t < num_threads; ++t) {
    block.stacks[t].resize(1 << 18);
    getcontext(&block.contexts[t]);
    block.contexts[t].uc_stack.ss_sp = block.stacks[t].data();
    block.contexts[t].uc_stack.ss_size = block.stacks[t].size();
    block.contexts[t].uc_link = &block.scheduler;
    makecontext(&block.contexts[t], fiber_main, 0);
  }
  for (int live = num_threads; live > 0;) {
    const uint64_t before = block.progress;
    live = 0;
    for (int t = 0; t < num_threads; ++t) {
      if (block.done[t]) continue;
      block.current = t;
      swapcontext(&block.scheduler, &block.contexts[t]);
      live += !block.done[t];
    }
    if (live > 0 && block.progress == before) {
      std::fprintf(stderr, "emulate: deadlock (a barrier not reached by every thread)\n");
      std::abort();
    }
  }
  g_block = nullptr;
}

struct MmaSlots {
  uint32_t a[32][4];
  uint32_t b[32][2];
};
inline MmaSlots g_mma[32];  // warp -> the fragments its lanes hold

template <typename P>
float2 unpack_reg(uint32_t reg) {
  typename P::type v;
  std::memcpy(&v, &reg, sizeof(reg));
  return P::to_float2(v);
}

// mma.sync m16n8k16 (row.col, fp32 accumulate) on the fragment layout documented in common.cuh.
template <typename P>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const int warp = g_block->current / 32, lane = g_block->current % 32;
  MmaSlots& s = g_mma[warp];
  std::memcpy(s.a[lane], a, sizeof(a));
  std::memcpy(s.b[lane], b, sizeof(b));
  barrier_wait(g_block->warp_barriers[warp], 32);
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int r = 0; r < 4; ++r) {
      const float2 v = unpack_reg<P>(s.a[l][r]);
      A[rows[r]][cols[r]] = v.x;
      A[rows[r]][cols[r] + 1] = v.y;
    }
    for (int r = 0; r < 2; ++r) {
      const float2 v = unpack_reg<P>(s.b[l][r]);
      B[2 * t + 8 * r][g] = v.x;
      B[2 * t + 8 * r + 1][g] = v.y;
    }
  }
  const int g = lane / 4, t = lane % 4;
  for (int k = 0; k < 16; ++k) {
    d[0] += A[g][k] * B[k][2 * t];
    d[1] += A[g][k] * B[k][2 * t + 1];
    d[2] += A[g + 8][k] * B[k][2 * t];
    d[3] += A[g + 8][k] * B[k][2 * t + 1];
  }
  barrier_wait(g_block->warp_barriers[warp], 32);
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) {
  const std::function<void()> body = [&] { kernel(args...); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g_block_idx = uint3{x, y, z};
        run_block(static_cast<int>(block.x * block.y * block.z), body);
      }
}

}  // namespace distllm::emulate

#define threadIdx (::distllm::emulate::thread_index())
#define blockIdx (::distllm::emulate::g_block_idx)

inline void __syncthreads() {
  auto* b = ::distllm::emulate::g_block;
  ::distllm::emulate::barrier_wait(b->block_barrier, b->num_threads);
}

inline float __shfl_xor_sync(unsigned mask, float value, int lane_mask) {
  auto* b = ::distllm::emulate::g_block;
  if (mask != 0xffffffffu) std::abort();  // the kernels only use full-warp shuffles
  const int warp = b->current / 32, lane = b->current % 32;
  b->warp_slots[warp][lane] = value;
  ::distllm::emulate::barrier_wait(b->warp_barriers[warp], 32);
  const float result = b->warp_slots[warp][lane ^ lane_mask];
  ::distllm::emulate::barrier_wait(b->warp_barriers[warp], 32);
  return result;
}

inline uint4 __ldcs(const uint4* ptr) { return *ptr; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
