// Paged decode attention (one query token per sequence) over the paged KV cache.
//
// grid: (num_kv_heads * head_chunks, num_seqs, num_splits), 128 threads (4 warps). A block serves
// up to GT query heads of one KV head (GQA reads each K/V byte once per block) over one split of
// the context. A token group of D / 8 lanes owns one token at a time: every lane loads 16 bytes
// of K and of V, the group reduces q.k with shuffles, and each lane keeps an online softmax
// (running max m, sum l, accumulator over its 8 dims) in registers, rescaled once per UNROLL
// tokens. The token groups are combined through shared memory at the end. Logits are in log2
// units (q pre-scaled by scale * log2(e)) so the kernel uses exp2f.
// With num_splits > 1, blocks write fp32 partials and merge_kernel combines them by log-sum-exp.
#include <cfloat>

#include "common.cuh"
#include "decode_plan.h"
#include "kernels.h"

namespace distllm::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;

template <typename T, int D, int GT>
struct DecodeTile {
  static constexpr int kLanes = D / kVec;                      // lanes per token: 8, 16, 32
  static constexpr int kTokensPerWarp = 32 / kLanes;           // tokens per warp step
  static constexpr int kGroups = kWarps * kTokensPerWarp;      // token groups per block
  static constexpr int kUnroll = GT >= 8 ? 2 : 4;              // tokens per group per step
  static constexpr int kStep = kGroups * kUnroll;              // tokens per block step
};

// Online-softmax state of one lane: GT heads x its 8 dims.
template <int GT>
struct SoftmaxState {
  float m[GT];
  float l[GT];
  float acc[GT][kVec];
};

template <typename T, int D, int GT>
__device__ __forceinline__ void attend_step(const DecodeParams& p, const float (&q)[GT][kVec],
                                            SoftmaxState<GT>& st, const int* table, int kvh,
                                            int group, int sub, int base, int end) {
  using Tile = DecodeTile<T, D, GT>;
  const int64_t block_stride = static_cast<int64_t>(p.num_kv_heads) * p.block_size * D;
  const int64_t head_off = static_cast<int64_t>(kvh) * p.block_size * D + sub * kVec;
  const T* kc = static_cast<const T*>(p.key_cache);
  const T* vc = static_cast<const T*>(p.value_cache);
  uint4 kraw[Tile::kUnroll], vraw[Tile::kUnroll];
  bool valid[Tile::kUnroll];
#pragma unroll
  for (int u = 0; u < Tile::kUnroll; ++u) {
    const int t = base + group + u * Tile::kGroups;
    valid[u] = t < end;
    kraw[u] = vraw[u] = make_uint4(0, 0, 0, 0);
    if (valid[u]) {
      const int64_t blk = table[t >> p.block_size_log2];
      const int64_t off = blk * block_stride + head_off + (t & (p.block_size - 1)) * D;
      kraw[u] = load_stream16(kc + off);
      vraw[u] = load_stream16(vc + off);
    }
  }
  float s[Tile::kUnroll][GT];
#pragma unroll
  for (int u = 0; u < Tile::kUnroll; ++u) {
    float kf[kVec];
    unpack8<T>(kraw[u], kf);
#pragma unroll
    for (int h = 0; h < GT; ++h) {
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < kVec; ++i) dot = fmaf(q[h][i], kf[i], dot);
#pragma unroll
      for (int o = Tile::kLanes / 2; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      s[u][h] = valid[u] ? dot : -FLT_MAX;
    }
  }
  // NOTE: a lane with no valid token keeps m = -FLT_MAX (finite: no inf - inf NaN), l = 0.
#pragma unroll
  for (int h = 0; h < GT; ++h) {
    float m_new = st.m[h];
#pragma unroll
    for (int u = 0; u < Tile::kUnroll; ++u) m_new = fmaxf(m_new, s[u][h]);
    const float corr = exp2f(st.m[h] - m_new);
    st.m[h] = m_new;
    st.l[h] *= corr;
#pragma unroll
    for (int i = 0; i < kVec; ++i) st.acc[h][i] *= corr;
#pragma unroll
    for (int u = 0; u < Tile::kUnroll; ++u) s[u][h] = valid[u] ? exp2f(s[u][h] - m_new) : 0.f;
  }
#pragma unroll
  for (int u = 0; u < Tile::kUnroll; ++u) {
    float vf[kVec];
    unpack8<T>(vraw[u], vf);
#pragma unroll
    for (int h = 0; h < GT; ++h) {
      st.l[h] += s[u][h];
#pragma unroll
      for (int i = 0; i < kVec; ++i) st.acc[h][i] = fmaf(s[u][h], vf[i], st.acc[h][i]);
    }
  }
}

// Shared memory of the cross-group combine: 4096 * GT bytes of accumulators (32 KB at GT = 8).
template <int D, int GT, int G>
struct CombineSmem {
  float acc[G][GT][D];
  float m[G][GT];
  float l[G][GT];
};

template <typename T, int D, int GT>
__device__ __forceinline__ void combine_and_store(const DecodeParams& p, const SoftmaxState<GT>& st,
                                                  int seq, int split, int h0, int nh, int group,
                                                  int sub) {
  using Tile = DecodeTile<T, D, GT>;
  __shared__ CombineSmem<D, GT, Tile::kGroups> sm;
#pragma unroll
  for (int h = 0; h < GT; ++h) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) sm.acc[group][h][sub * kVec + i] = st.acc[h][i];
    if (sub == 0) {
      sm.m[group][h] = st.m[h];
      sm.l[group][h] = st.l[h];
    }
  }
  __syncthreads();
  for (int idx = static_cast<int>(threadIdx.x); idx < nh * D; idx += kThreads) {
    const int h = idx / D, d = idx % D;
    float m_max = -FLT_MAX;
#pragma unroll
    for (int g = 0; g < Tile::kGroups; ++g) m_max = fmaxf(m_max, sm.m[g][h]);
    float l_sum = 0.f, a_sum = 0.f;
#pragma unroll
    for (int g = 0; g < Tile::kGroups; ++g) {
      // NOTE: a group that saw no token has l = 0 and acc = 0, so its weight does not matter.
      const float w = exp2f(sm.m[g][h] - m_max);
      l_sum = fmaf(w, sm.l[g][h], l_sum);
      a_sum = fmaf(w, sm.acc[g][h][d], a_sum);
    }
    const float value = a_sum / l_sum;
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + seq * p.out_stride_seq + (h0 + h) * p.out_stride_head;
      out[d] = Packed2<T>::from_float(value);
    } else {
      const int64_t row = (static_cast<int64_t>(seq) * p.num_splits + split) * p.num_heads + h0 + h;
      p.tmp_out[row * D + d] = value;
      if (d == 0) p.tmp_lse[row] = m_max + log2f(l_sum);
    }
  }
}

template <typename T, int D, int GT>
__global__ void __launch_bounds__(kThreads) decode_kernel(DecodeParams p) {
  using Tile = DecodeTile<T, D, GT>;
  const int group_size = p.num_heads / p.num_kv_heads;
  const int chunks = (group_size + GT - 1) / GT;
  const int bx = static_cast<int>(blockIdx.x);
  const int kvh = bx / chunks;
  const int h0 = kvh * group_size + (bx % chunks) * GT;
  const int nh = min(GT, group_size - (bx % chunks) * GT);
  const int seq = static_cast<int>(blockIdx.y), split = static_cast<int>(blockIdx.z);
  const int ctx = p.context_lens[seq];
  const int start = split * p.split_tokens;
  const int end = min(ctx, start + p.split_tokens);
  if (start >= end) {
    // NOTE: block-uniform exit. The merge kernel never reads splits past the context; an empty
    // context (padding) gets zeros.
    if (ctx <= 0 && split == 0) {
      T* out = static_cast<T*>(p.out) + seq * p.out_stride_seq + h0 * p.out_stride_head;
      for (int idx = static_cast<int>(threadIdx.x); idx < nh * D; idx += kThreads)
        out[(idx / D) * p.out_stride_head + idx % D] = Packed2<T>::from_float(0.f);
    }
    return;
  }
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32;
  const int group = (tid / 32) * Tile::kTokensPerWarp + lane / Tile::kLanes;
  const int sub = lane % Tile::kLanes;
  const float qscale = p.scale * kLog2e;
  float q[GT][kVec];
  SoftmaxState<GT> st;
#pragma unroll
  for (int h = 0; h < GT; ++h) {
    st.m[h] = -FLT_MAX;
    st.l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < kVec; ++i) q[h][i] = st.acc[h][i] = 0.f;
    if (h < nh) {
      const T* qp = static_cast<const T*>(p.query) + seq * p.q_stride_seq +
                    (h0 + h) * p.q_stride_head + sub * kVec;
      unpack8<T>(*reinterpret_cast<const uint4*>(qp), q[h]);
#pragma unroll
      for (int i = 0; i < kVec; ++i) q[h][i] *= qscale;
    }
  }
  const int* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  // NOTE: the loop bounds are block-uniform: every lane of a warp reaches the shuffles.
  for (int base = start; base < end; base += Tile::kStep)
    attend_step<T, D, GT>(p, q, st, table, kvh, group, sub, base, end);
  combine_and_store<T, D, GT>(p, st, seq, split, h0, nh, group, sub);
}

// grid: (num_heads, num_seqs), 128 threads: out = sum_s w_s * tmp_out_s / sum_s w_s with
// w_s = 2^(lse_s - max lse) over the splits that hold tokens of this sequence.
template <typename T>
__global__ void __launch_bounds__(kThreads) merge_kernel(DecodeParams p) {
  __shared__ float weights[kMaxSplits];
  const int head = static_cast<int>(blockIdx.x), seq = static_cast<int>(blockIdx.y);
  const int n = min(p.num_splits, (p.context_lens[seq] + p.split_tokens - 1) / p.split_tokens);
  T* out = static_cast<T*>(p.out) + seq * p.out_stride_seq + head * p.out_stride_head;
  const int64_t row0 = static_cast<int64_t>(seq) * p.num_splits * p.num_heads + head;
  float m_max = -FLT_MAX;
  for (int s = 0; s < n; ++s) m_max = fmaxf(m_max, p.tmp_lse[row0 + s * p.num_heads]);
  for (int s = static_cast<int>(threadIdx.x); s < n; s += kThreads)
    weights[s] = exp2f(p.tmp_lse[row0 + s * p.num_heads] - m_max);
  __syncthreads();
  float w_sum = 0.f;
  for (int s = 0; s < n; ++s) w_sum += weights[s];
  for (int d = static_cast<int>(threadIdx.x); d < p.head_dim; d += kThreads) {
    float a = 0.f;
    for (int s = 0; s < n; ++s)
      a = fmaf(weights[s], p.tmp_out[(row0 + s * p.num_heads) * p.head_dim + d], a);
    out[d] = Packed2<T>::from_float(n > 0 ? a / w_sum : 0.f);
  }
}

template <typename T, int D>
cudaError_t launch_head_dim(const DecodeParams& p, cudaStream_t stream) {
  const int group = p.num_heads / p.num_kv_heads;
  const dim3 grid(p.num_kv_heads * ((group + p.heads_per_block - 1) / p.heads_per_block),
                  p.num_seqs, p.num_splits);
  void (*kernel)(DecodeParams) = nullptr;
  switch (p.heads_per_block) {
    case 1: kernel = decode_kernel<T, D, 1>; break;
    case 2: kernel = decode_kernel<T, D, 2>; break;
    case 4: kernel = decode_kernel<T, D, 4>; break;
    case 8: kernel = decode_kernel<T, D, 8>; break;
    default: return cudaErrorInvalidValue;
  }
  cudaError_t err = launch_kernel(kernel, grid, dim3(kThreads), stream, p);
  if (err == cudaSuccess && p.num_splits > 1)
    err = launch_kernel(merge_kernel<T>, dim3(p.num_heads, p.num_seqs), dim3(kThreads), stream, p);
  return err;
}

template <typename T>
cudaError_t launch_dtype(const DecodeParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return launch_head_dim<T, 64>(p, stream);
    case 128: return launch_head_dim<T, 128>(p, stream);
    case 256: return launch_head_dim<T, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool decode_supported(int head_dim, int block_size) {
  const bool dim_ok = head_dim == 64 || head_dim == 128 || head_dim == 256;
  return dim_ok && (block_size == 8 || block_size == 16 || block_size == 32);
}

cudaError_t launch_paged_decode(const DecodeParams& p, DType dtype, cudaStream_t stream) {
  if (!decode_supported(p.head_dim, p.block_size) || p.num_splits > kMaxSplits ||
      p.num_splits < 1 || (1 << p.block_size_log2) != p.block_size) {
    return cudaErrorInvalidValue;
  }
  if (p.num_seqs == 0) return cudaSuccess;
  return dtype == DType::kHalf ? launch_dtype<__half>(p, stream)
                               : launch_dtype<__nv_bfloat16>(p, stream);
}

}  // namespace distllm::cuda
