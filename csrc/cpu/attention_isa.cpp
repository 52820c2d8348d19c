// CPU paged attention (decode and ragged causal prefill), compiled once per ISA level.
//
// CMake builds this file three times with -DDISTLLM_ISA=base|avx2|avx512 and matching -m flags;
// cpu_attention.cpp picks one at runtime. Everything here has internal linkage (anonymous
// namespace) except the two entry points, and only C headers are included (see the header).
//
// One task = (sequence, KV head, context split | query tile). A task holds the R query rows that
// share its KV head (decode: the G heads of the group; prefill: G heads x q_tile tokens) and walks
// the keys in tiles of kTile positions with an online softmax (running max m, running sum l,
// unnormalised accumulator acc), so every K/V row is read once per task. Scores use one of:
//   rows path (R >= 8): SIMD lanes over query rows, q transposed to [D, R]: s[t, r:r+W] +=
//     k[t, d] * qt[d, r:r+W]; no horizontal sums; the softmax is vectorised over rows too;
//   dot path (R < 8, e.g. MHA decode): SIMD over head_dim with a horizontal sum per (row, key).
// Both accumulate P.V per row with the accumulator slice held in registers; with a bf16 cache and
// query on AVX-512-BF16, K is scored and V accumulated straight from the raw bf16 rows by
// vdpbf16ps (V as pairs of keys, probabilities rounded to bf16), with no conversion pass.
// The next tile's K/V rows are prefetched a line at a time from inside the loops (rows path:
// K in the score loop, V in the P.V loop; dot path: both in the score loop).
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>  // NOTE: intrinsics are always-inline: nothing is emitted out of line
#endif

#include "cpu/attention_kernels.h"

#ifndef DISTLLM_ISA
#error "DISTLLM_ISA must be defined (base, avx2 or avx512)"
#endif

namespace distllm {
namespace cpu {
namespace DISTLLM_ISA {
namespace {

constexpr int kTile = 32;  // key positions per tile (a multiple of 8)
constexpr int kPrefetchTiles = 1;  // how many tiles ahead the paged K/V rows are prefetched

#include "cpu/attention_simd.inc"

// Per-thread scratch for one task with up to max_rows query rows (padded to rpad for SIMD).
struct Scratch {
  float* q;       // [R, D], prescaled by `scale`
  float* qt;      // [D, rpad], q transposed (rows path)
  float* acc;     // [rpad, D], unnormalised output
  float* s;       // rows path: [kTile, rpad]; dot path: [R, kTile]; scores then probabilities
  float* m;       // [rpad], running max
  float* l;       // [rpad], running sum of exp
  float* limf;    // [rpad], lim as float (rows path), -1 for padding rows
  int64_t* lim;   // [rpad], last key position the row may attend to (causal)
  float* kbuf;    // [kTile, D], converted K rows (non-fp32 caches)
  float* vbuf;    // [kTile, D], converted V rows; bf16 P.V: [kTile / 2, D] V row pairs
  uint32_t* pp;   // bf16 P.V: [kTile / 2, rpad], probabilities of key pairs as bf16 pairs
  const float* krow[kTile];  // row pointers of the current tile (into kbuf or the source)
  const float* vrow[kTile];
  uint32_t* qt2;  // [D / 2, rpad], unscaled q as bf16 pairs (d = 2i low, 2i + 1 high)
  const uint16_t* krow_raw[kTile];  // raw bf16 K rows of the tile (bf16 scores)
  const uint16_t* vrow_raw[kTile];  // raw bf16 V rows of the tile (bf16 P.V)
  const char* pfk[kTile];  // K / V rows of the tile after this one, prefetched while this one is
  const char* pfv[kTile];  // computed (prefetch_rows / prefetch_k / v_lines); the current rows
                           // when there is none
  int pf_lines;            // 64-byte lines per K (and V) row
  bool bf16_scores;    // task: scores of bf16 K tiles by bf16 dot products (exact products)
  bool tile_raw_bf16;  // tile: krow_raw is set and K was not converted
  bool bf16_pv;        // task: with bf16_scores, P.V of raw bf16 V by bf16 dot products too
  float scale;
  int64_t R;      // rows of the current task
  int64_t rpad;   // R rounded up to rw (rows path)
  int rw;         // SIMD lanes over rows (rows path), 0 = dot path
  void* base;
};

Scratch alloc_scratch(int64_t max_rows, int64_t D) {
  const int64_t rp = (max_rows + 15) / 16 * 16;
  const int64_t floats = rp * (4 * D + kTile + kTile / 2 + 3) + 2 * kTile * D;
  const size_t bytes = ((floats * 4 + rp * 8) / 64 + 1) * 64;
  Scratch sc;
  float* p = static_cast<float*>(aligned_alloc(64, bytes));
  sc.base = p;
  sc.q = p;
  sc.qt = sc.q + rp * D;
  sc.qt2 = reinterpret_cast<uint32_t*>(sc.qt + rp * D);
  sc.acc = sc.qt + 2 * rp * D;
  sc.kbuf = sc.acc + rp * D;
  sc.vbuf = sc.kbuf + kTile * D;
  sc.s = sc.vbuf + kTile * D;
  sc.pp = reinterpret_cast<uint32_t*>(sc.s + rp * kTile);
  sc.m = sc.s + rp * kTile + rp * kTile / 2;
  sc.l = sc.m + rp;
  sc.limf = sc.l + rp;
  sc.lim = reinterpret_cast<int64_t*>(sc.limf + rp);  // offset is even: 8-byte aligned
  return sc;
}

#if defined(__AVX512BF16__)
constexpr bool kHasBf16Dot = true;
#else
constexpr bool kHasBf16Dot = false;
#endif

// bf16 bits of x, which must be a bf16 value (exact: truncation).
inline uint32_t bf16_bits(float x) { return float_to_bits(x) >> 16; }

// Starts a task over the R rows whose unscaled q / lim are in sc.q / sc.lim: picks the path,
// pads, prescales q, resets the softmax state. q_is_bf16: q holds exact bf16 values.
void begin_rows(Scratch& sc, int64_t R, int64_t D, float scale, bool q_is_bf16) {
  sc.R = R;
  sc.scale = scale;
  sc.rw = R >= 16 && kVec >= 16 ? 16 : (R >= 8 ? (kVec >= 8 ? 8 : 4) : 0);
  sc.rpad = sc.rw ? (R + sc.rw - 1) / sc.rw * sc.rw : R;
  sc.bf16_scores = kHasBf16Dot && q_is_bf16 && sc.rw >= 8 && D % 2 == 0;
  sc.bf16_pv = sc.bf16_scores && D % 32 == 0;
  sc.tile_raw_bf16 = false;
  sc.pf_lines = 0;
  for (int64_t r = 0; r < sc.rpad; ++r) {
    sc.m[r] = kNegInf;
    sc.l[r] = 0.0f;
    sc.limf[r] = r < R ? static_cast<float>(sc.lim[r]) : -1.0f;
  }
  memset(sc.acc, 0, sizeof(float) * sc.rpad * D);
  for (int64_t i = 0; sc.bf16_scores && i < D / 2; ++i) {
    uint32_t* qt2 = sc.qt2 + i * sc.rpad;
    for (int64_t r = 0; r < sc.rpad; ++r) {
      const float* q = sc.q + r * D + 2 * i;
      qt2[r] = r < R ? (bf16_bits(q[0]) | (bf16_bits(q[1]) << 16)) : 0u;
    }
  }
  for (int64_t i = 0; i < R * D; ++i) sc.q[i] *= scale;
  if (!sc.rw) return;
  for (int64_t d = 0; d < D; ++d) {
    float* qt = sc.qt + d * sc.rpad;
    for (int64_t r = 0; r < R; ++r) qt[r] = sc.q[r * D + d];
    for (int64_t r = R; r < sc.rpad; ++r) qt[r] = 0.0f;
  }
}

// Prefetches (into L2) the 64-byte line at p. The loops issue a few lines of the next tile at a
// time, so the memory traffic of tile i + 1 overlaps the arithmetic of tile i instead of stalling
// in one burst of prefetches (which fills the miss buffers and serialises memory and compute).
inline void prefetch_l2(const char* p) {
#if defined(__x86_64__)
  // NOTE: a volatile asm, because GCC 12 deletes __builtin_prefetch calls inlined into these
  // loops (verified with objdump: not one prefetch instruction was left)
  asm volatile("prefetcht1 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// Line `line` of the next tile's K and V rows [t0, t0 + rows) (dot path).
inline void prefetch_rows(const Scratch& sc, int t0, int rows, int line) {
  if (line >= sc.pf_lines) return;
  for (int j = t0; j < t0 + rows; ++j) {
    prefetch_l2(sc.pfk[j] + line * 64);
    prefetch_l2(sc.pfv[j] + line * 64);
  }
}

// The rows path splits the work: the score loop prefetches the next tile's K rows, the P.V loop
// its V rows (lines [l0, l1) of V row t in pass `pass` of `passes`, see v_lines).
inline void prefetch_k(const Scratch& sc, int t0, int rows, int line) {
  if (line >= sc.pf_lines) return;
  for (int j = t0; j < t0 + rows; ++j) prefetch_l2(sc.pfk[j] + line * 64);
}

// Lines [l0, l1) of each V row that P.V pass `pass` of `passes` prefetches (all passes together
// cover the row once; the last pass takes the remainder).
inline void v_lines(const Scratch& sc, int64_t pass, int64_t passes, int& l0, int& l1) {
  const int per = static_cast<int>((sc.pf_lines + passes - 1) / passes);
  l0 = static_cast<int>(imin(sc.pf_lines, pass * per));
  l1 = static_cast<int>(imin(sc.pf_lines, l0 + per));
}

#include "cpu/attention_tile_pv.inc"
#include "cpu/attention_tile_dot.inc"
#include "cpu/attention_tile_rows.inc"

// Softmax update and P.V accumulation for all rows; positions of the tile are [p0, p0 + n).
template <int kD>
void tile_update(Scratch& sc, int64_t d_rt, int n, int64_t p0) {
  // NOTE: begin_rows never picks more lanes than this ISA's registers hold.
  if constexpr (kVec >= 16) {
    if (sc.rw == 16) return rows_tile_update<kD, 16>(sc, d_rt, n, p0);
  }
  if constexpr (kVec >= 8) {
    if (sc.rw == 8) return rows_tile_update<kD, 8>(sc, d_rt, n, p0);
  }
  if (sc.rw == 4) return rows_tile_update<kD, 4>(sc, d_rt, n, p0);
  return dot_tile_update<kD>(sc, d_rt, n, p0);
}

template <typename E>
inline void convert_row(const E* src, float* dst, int64_t D);

template <>
inline void convert_row<uint16_t>(const uint16_t* src, float* dst, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) dst[d] = bf16_to_float(src[d]);
}

struct Half16 {
  uint16_t x;
};

template <typename E>
constexpr bool kIsBf16 = false;  // uint16_t elements are bf16 (fp16 uses Half16)
template <>
constexpr bool kIsBf16<uint16_t> = true;

template <>
inline void convert_row<Half16>(const Half16* src, float* dst, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) dst[d] = fp16_to_float(src[d].x);
}

// Byte offset of (position pos, kv head h) in a paged cache with elements of `es` bytes.
inline int64_t paged_offset(const PagedKV& kv, const int32_t* table, int64_t h, int64_t pos,
                            int64_t row_bytes) {
  const int64_t blk = table[pos / kv.block_size];
  return ((blk * kv.num_kv_heads + h) * kv.block_size + pos % kv.block_size) * row_bytes;
}

// Points the tile's row pointers at paged-cache rows [p0, p0 + n) of (seq table, kv head),
// converting to fp32 when needed, and records the rows [pf, pf + kTile) of the next tile (pf < 0:
// none) for the prefetches of the tile loops. Blocks are scattered, so the hardware prefetcher cannot run ahead.
template <typename E>
void load_paged_tile(Scratch& sc, const PagedKV& kv, const int32_t* table, int64_t h,
                     int64_t p0, int n, int64_t pf, int64_t end, int64_t D) {
  const char* kc = static_cast<const char*>(kv.key_cache);
  const char* vc = static_cast<const char*>(kv.value_cache);
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(E));
  sc.tile_raw_bf16 = kIsBf16<E> && sc.bf16_scores;
  sc.pf_lines = static_cast<int>((row_bytes + 63) / 64);
  for (int t = 0; t < kTile; ++t) {
    const int64_t pos = pf >= 0 && pf + t < end ? pf + t : p0 + (t < n ? t : 0);
    const int64_t off = paged_offset(kv, table, h, pos, row_bytes);
    sc.pfk[t] = kc + off;
    sc.pfv[t] = vc + off;
  }
  for (int t = 0; t < n; ++t) {
    const int64_t off = paged_offset(kv, table, h, p0 + t, row_bytes);
    const E* krow = reinterpret_cast<const E*>(kc + off);
    const E* vrow = reinterpret_cast<const E*>(vc + off);
    if constexpr (sizeof(E) == 4) {
      sc.krow[t] = reinterpret_cast<const float*>(krow);
      sc.vrow[t] = reinterpret_cast<const float*>(vrow);
    } else if (kIsBf16<E> && sc.bf16_scores) {
      sc.krow_raw[t] = reinterpret_cast<const uint16_t*>(krow);  // scored as bf16
      if (sc.bf16_pv) {
        sc.vrow_raw[t] = reinterpret_cast<const uint16_t*>(vrow);  // paired in rows_pv_bf16
      } else {
        convert_row<E>(vrow, sc.vbuf + t * D, D);
        sc.vrow[t] = sc.vbuf + t * D;
      }
    } else {
      convert_row<E>(krow, sc.kbuf + t * D, D);
      convert_row<E>(vrow, sc.vbuf + t * D, D);
      sc.krow[t] = sc.kbuf + t * D;
      sc.vrow[t] = sc.vbuf + t * D;
    }
  }
}

// Runs the rows in `sc` over cached positions [begin, end) of one sequence's paged KV.
template <int kD, typename E>
void attend_paged(Scratch& sc, int64_t D, const PagedKV& kv, const int32_t* table,
                  int64_t h, int64_t begin, int64_t end) {
  for (int64_t p0 = begin; p0 < end; p0 += kTile) {
    const int n = static_cast<int>(imin(kTile, end - p0));
    const int64_t pf = p0 + kPrefetchTiles * kTile < end ? p0 + kPrefetchTiles * kTile : -1;
    load_paged_tile<E>(sc, kv, table, h, p0, n, pf, end, D);
    tile_update<kD>(sc, D, n, p0);
  }
}

template <int kD>
void attend_paged_any(Scratch& sc, int64_t D, const PagedKV& kv, const int32_t* table,
                      int64_t h, int64_t begin, int64_t end) {
  switch (kv.dtype) {
    case KVDtype::kFloat32:
      attend_paged<kD, float>(sc, D, kv, table, h, begin, end);
      break;
    case KVDtype::kBFloat16:
      attend_paged<kD, uint16_t>(sc, D, kv, table, h, begin, end);
      break;
    case KVDtype::kFloat16:
      attend_paged<kD, Half16>(sc, D, kv, table, h, begin, end);
      break;
  }
}

#include "cpu/attention_tasks.inc"

}  // namespace

void decode_attention(const DecodeParams& p) {
  if (p.head_dim == 64) {
    run_decode<64>(p);
  } else if (p.head_dim == 128) {
    run_decode<128>(p);
  } else {
    run_decode<0>(p);
  }
}

void prefill_attention(const PrefillParams& p) {
  if (p.head_dim == 64) {
    run_prefill<64>(p);
  } else if (p.head_dim == 128) {
    run_prefill<128>(p);
  } else {
    run_prefill<0>(p);
  }
}

}  // namespace DISTLLM_ISA
}  // namespace cpu
}  // namespace distllm
