// Causal prefill attention over a ragged batch, FlashAttention-2 style (see PrefillParams).
//
// grid: (ceil(num_tokens / 64) + num_seqs, num_heads), 128 threads. A block owns 64 query rows of
// one sequence and one head; warp w owns rows [16w, 16w + 16) and keeps its Q fragments, the
// scores S (16 x 64), the online-softmax state and O (16 x D) in registers. KV tiles of 64 tokens
// (cached prefix through the block table, then the new tokens) are staged in shared memory; tiles
// past the block's last query position are skipped (causal), and S = Q K^T and O += P V run on
// tensor cores (mma.sync m16n8k16, fp32 accumulate). Logits are in log2 units (exp2f).
#include <cfloat>
#include <cmath>

#include "common.cuh"
#include "kernels.h"

namespace distllm::cuda {
namespace {

constexpr int kRows = 64;      // query rows per block
constexpr int kCols = 64;      // KV tokens per tile
constexpr int kPThreads = 128;
constexpr float kLog2eP = 1.4426950408889634f;

// NOTE: rows are padded by 8 elements so the fragment loads are bank-conflict free; V is stored
// transposed so the P.V B fragments (two consecutive tokens of one dim) are 32-bit loads.
template <int D>
struct PrefillSmem {
  uint16_t k[kCols][D + 8];   // [token][dim]
  uint16_t vt[D][kCols + 8];  // [dim][token]
};

struct TileInfo {
  int seq, q_start, q_len, cached;  // q_start: first new token (global index) of this tile
};

// Which (sequence, 64-row tile) block bx serves; seq = -1 past the last tile.
__device__ __forceinline__ TileInfo find_tile(const PrefillParams& p, int bx) {
  for (int s = 0; s < p.num_seqs; ++s) {
    const int begin = p.cu_seqlens_q[s], len = p.cu_seqlens_q[s + 1] - begin;
    const int tiles = (len + kRows - 1) / kRows;
    if (bx < tiles) {
      // NOTE: a sequence's last (most expensive, causal) tiles get the lowest block ids, so
      // they are scheduled first and the cheap ones fill the tail.
      const int tile = tiles - 1 - bx;
      const int cached = p.num_cached_tokens ? p.num_cached_tokens[s] : 0;
      return {s, begin + tile * kRows, min(kRows, len - tile * kRows), cached};
    }
    bx -= tiles;
  }
  return {-1, 0, 0, 0};
}

// Stages KV tokens [kv0, kv0 + 64) of the tile's sequence into shared memory (zeros past kv_len).
template <int D>
__device__ __forceinline__ void load_kv_tile(const PrefillParams& p, const TileInfo& ti,
                                             int kv_head, int kv0, int kv_len,
                                             PrefillSmem<D>& sm) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  const int new_begin = p.cu_seqlens_q[ti.seq];
  for (int i = static_cast<int>(threadIdx.x); i < kCols * kChunks; i += kPThreads) {
    const int row = i / kChunks, chunk = i % kChunks, kv = kv0 + row;
    uint4 kval = make_uint4(0, 0, 0, 0), vval = make_uint4(0, 0, 0, 0);
    if (kv < ti.cached) {
      const int64_t blk = p.block_tables[static_cast<int64_t>(ti.seq) * p.max_blocks_per_seq +
                                         kv / p.block_size];
      const int64_t off =
          ((blk * p.num_kv_heads + kv_head) * p.block_size + kv % p.block_size) * D + chunk * 8;
      kval = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.key_cache) + off);
      vval = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.value_cache) + off);
    } else if (kv < kv_len) {
      const int64_t t = new_begin + (kv - ti.cached);
      kval = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.key) +
                                             t * p.k_stride_token + kv_head * p.k_stride_head +
                                             chunk * 8);
      vval = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.value) +
                                             t * p.v_stride_token + kv_head * p.v_stride_head +
                                             chunk * 8);
    }
    *reinterpret_cast<uint4*>(&sm.k[row][chunk * 8]) = kval;
    const uint16_t* v16 = reinterpret_cast<const uint16_t*>(&vval);
#pragma unroll
    for (int e = 0; e < 8; ++e) sm.vt[chunk * 8 + e][row] = v16[e];
  }
}

template <typename T, int D>
struct WarpState {
  uint32_t q[D / 16][4];  // A fragments of the warp's 16 query rows
  float o[D / 8][4];      // O accumulator: 16 rows x D
  float m[2], l[2];       // rows g and g + 8: running max (log2 units) and this lane's sum
};

// S = Q K^T for the warp's 16 rows and the tile's 64 KV tokens, scaled and causally masked.
template <typename T, int D>
__device__ __forceinline__ void tile_scores(const WarpState<T, D>& ws, const PrefillSmem<D>& sm,
                                            float (&s)[kCols / 8][4], int q_pos0, int kv0,
                                            int kv_len, float qscale) {
  const int lane = static_cast<int>(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < kCols / 8; ++j) {
    s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t b[2] = {
          *reinterpret_cast<const uint32_t*>(&sm.k[j * 8 + g][kk * 16 + 2 * t]),
          *reinterpret_cast<const uint32_t*>(&sm.k[j * 8 + g][kk * 16 + 2 * t + 8])};
      mma_m16n8k16<T>(s[j], ws.q[kk], b);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int kv = kv0 + j * 8 + 2 * t + (e & 1), q_pos = q_pos0 + g + (e >> 1) * 8;
      s[j][e] = (kv > q_pos || kv >= kv_len) ? -INFINITY : s[j][e] * qscale;
    }
  }
}

// Online softmax update of rows g, g + 8 with the tile's scores; s becomes P (unnormalised).
template <typename T, int D>
__device__ __forceinline__ void softmax_update(WarpState<T, D>& ws, float (&s)[kCols / 8][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float m_tile = -FLT_MAX;
#pragma unroll
    for (int j = 0; j < kCols / 8; ++j) m_tile = fmaxf(m_tile, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    m_tile = fmaxf(m_tile, __shfl_xor_sync(0xffffffffu, m_tile, 1));
    m_tile = fmaxf(m_tile, __shfl_xor_sync(0xffffffffu, m_tile, 2));
    const float m_new = fmaxf(ws.m[r], m_tile);  // finite: m starts at -FLT_MAX
    const float corr = exp2f(ws.m[r] - m_new);
    ws.m[r] = m_new;
    ws.l[r] *= corr;
#pragma unroll
    for (int jd = 0; jd < D / 8; ++jd) {
      ws.o[jd][2 * r] *= corr;
      ws.o[jd][2 * r + 1] *= corr;
    }
#pragma unroll
    for (int j = 0; j < kCols / 8; ++j) {
      s[j][2 * r] = exp2f(s[j][2 * r] - m_new);
      s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - m_new);
      ws.l[r] += s[j][2 * r] + s[j][2 * r + 1];
    }
  }
}

// O += P V: the score accumulators are re-packed as A fragments (FlashAttention-2 register trick).
template <typename T, int D>
__device__ __forceinline__ void accumulate_pv(WarpState<T, D>& ws, const PrefillSmem<D>& sm,
                                              const float (&s)[kCols / 8][4]) {
  const int lane = static_cast<int>(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int kk = 0; kk < kCols / 16; ++kk) {
    const uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                           pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                           pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                           pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
    const int r0 = kk * 16 + 2 * t;
#pragma unroll
    for (int jd = 0; jd < D / 8; ++jd) {
      const int c = jd * 8 + g;
      const uint32_t b[2] = {*reinterpret_cast<const uint32_t*>(&sm.vt[c][r0]),
                             *reinterpret_cast<const uint32_t*>(&sm.vt[c][r0 + 8])};
      mma_m16n8k16<T>(ws.o[jd], a, b);
    }
  }
}

template <typename T, int D>
__device__ __forceinline__ void load_q(const PrefillParams& p, WarpState<T, D>& ws, int row0,
                                       int rows, int head) {
  const int lane = static_cast<int>(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
  const uint16_t* q = static_cast<const uint16_t*>(p.query) + head * p.q_stride_head;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = g + (r & 1) * 8, col = kk * 16 + 2 * t + (r >> 1) * 8;
      ws.q[kk][r] = row < rows ? *reinterpret_cast<const uint32_t*>(
                                     q + (row0 + row) * p.q_stride_token + col)
                               : 0u;
    }
  }
}

template <typename T, int D>
__device__ __forceinline__ void store_o(const PrefillParams& p, WarpState<T, D>& ws, int row0,
                                        int rows, int head) {
  const int lane = static_cast<int>(threadIdx.x) % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = ws.l[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = g + r * 8;
    if (row >= rows) continue;
    uint16_t* out = static_cast<uint16_t*>(p.out) + (row0 + row) * p.out_stride_token +
                    head * p.out_stride_head;
#pragma unroll
    for (int jd = 0; jd < D / 8; ++jd) {
      *reinterpret_cast<uint32_t*>(out + jd * 8 + 2 * t) =
          pack2<T>(ws.o[jd][2 * r] / l, ws.o[jd][2 * r + 1] / l);
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kPThreads) prefill_kernel(PrefillParams p) {
  __shared__ PrefillSmem<D> sm;
  const TileInfo ti = find_tile(p, static_cast<int>(blockIdx.x));
  if (ti.seq < 0) return;  // NOTE: block-uniform
  const int head = static_cast<int>(blockIdx.y);
  const int kv_head = head / (p.num_heads / p.num_kv_heads);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int seq_len = p.cu_seqlens_q[ti.seq + 1] - p.cu_seqlens_q[ti.seq];
  const int kv_len = ti.cached + seq_len;
  const int q_tile0 = ti.q_start - p.cu_seqlens_q[ti.seq];  // index among the new tokens
  // causal: the block's last query row sees KV positions < cached + q_tile0 + q_len
  const int kv_end = ti.cached + q_tile0 + ti.q_len;
  const int warp_rows = max(0, min(16, ti.q_len - warp * 16));
  WarpState<T, D> ws;
  load_q<T, D>(p, ws, ti.q_start + warp * 16, warp_rows, head);
#pragma unroll
  for (int jd = 0; jd < D / 8; ++jd) ws.o[jd][0] = ws.o[jd][1] = ws.o[jd][2] = ws.o[jd][3] = 0.f;
  ws.m[0] = ws.m[1] = -FLT_MAX;
  ws.l[0] = ws.l[1] = 0.f;
  const float qscale = p.scale * kLog2eP;
  const int q_pos0 = ti.cached + q_tile0 + warp * 16;  // KV position of the warp's first row
  for (int kv0 = 0; kv0 < kv_end; kv0 += kCols) {
    __syncthreads();  // the previous tile is consumed
    load_kv_tile<D>(p, ti, kv_head, kv0, kv_len, sm);
    __syncthreads();
    float s[kCols / 8][4];
    tile_scores<T, D>(ws, sm, s, q_pos0, kv0, kv_len, qscale);
    softmax_update<T, D>(ws, s);
    accumulate_pv<T, D>(ws, sm, s);
  }
  store_o<T, D>(p, ws, ti.q_start + warp * 16, warp_rows, head);
}

template <typename T>
cudaError_t launch_prefill_dtype(const PrefillParams& p, cudaStream_t stream) {
  const dim3 grid((p.num_tokens + kRows - 1) / kRows + p.num_seqs, p.num_heads);
  switch (p.head_dim) {
    case 64: return launch_kernel(prefill_kernel<T, 64>, grid, dim3(kPThreads), stream, p);
    case 128: return launch_kernel(prefill_kernel<T, 128>, grid, dim3(kPThreads), stream, p);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool prefill_supported(int head_dim) { return head_dim == 64 || head_dim == 128; }

cudaError_t launch_prefill(const PrefillParams& p, DType dtype, cudaStream_t stream) {
  if (!prefill_supported(p.head_dim)) return cudaErrorInvalidValue;
  if (p.num_tokens == 0 || p.num_seqs == 0) return cudaSuccess;
  return dtype == DType::kHalf ? launch_prefill_dtype<__half>(p, stream)
                               : launch_prefill_dtype<__nv_bfloat16>(p, stream);
}

}  // namespace distllm::cuda
