// CPU paged attention (decode and ragged causal prefill), compiled once per ISA level.
//
// CMake builds this file three times with -DDISTLLM_ISA=base|avx2|avx512 and matching -m flags;
// cpu_attention.cpp picks one at runtime. Everything here has internal linkage (anonymous
// namespace) except the two entry points, and only C headers are included (see the header).
//
// One task = (sequence, KV head, context split | query tile). A task holds the R query rows that
// share its KV head (decode: the G heads of the group; prefill: G heads x q_tile tokens) and walks
// the keys in tiles of kTile positions with an online softmax (running max m, running sum l,
// unnormalised accumulator acc), so every K/V row is read once per task.
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/attention_kernels.h"

#ifndef DISTLLM_ISA
#error "DISTLLM_ISA must be defined (base, avx2 or avx512)"
#endif

namespace distllm {
namespace cpu {
namespace DISTLLM_ISA {
namespace {

constexpr int kTile = 32;  // key positions per tile
constexpr float kNegInf = -__builtin_inff();

inline float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

inline float to_float(float x) { return x; }
inline float bf16_to_float(uint16_t x) { return bits_to_float(uint32_t(x) << 16); }

inline float fp16_to_float(uint16_t h) {
  // NOTE: exponent rebias by a multiply handles normals and subnormals; inf/nan by a select.
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  uint32_t bits = float_to_bits(bits_to_float(em << 13) * 0x1p112f);
  bits = em >= 0x7c00u ? (0x7f800000u | (em << 13)) : bits;
  return bits_to_float(bits | sign);
}

inline float fmax2(float a, float b) { return a > b ? a : b; }
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// exp(x) for x <= ~88 (Cephes polynomial, ~2 ulp); exactly 0 below -87.3 (and for -inf).
inline float fast_exp(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float t = xc * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const float scale = bits_to_float(uint32_t(int32_t(n) + 127) << 23);
  return x < -87.0f ? 0.0f : y * scale;
}

// Per-thread scratch for one task with up to max_rows query rows.
struct Scratch {
  float* q;       // [R, D], prescaled by `scale`
  float* acc;     // [R, D], unnormalised output
  float* s;       // [R, kTile], scores then probabilities
  float* m;       // [R], running max
  float* l;       // [R], running sum of exp
  int64_t* lim;   // [R], last key position the row may attend to (causal)
  float* kbuf;    // [kTile, D], converted K rows (non-fp32 caches)
  float* vbuf;    // [kTile, D], converted V rows
  const float* krow[kTile];  // row pointers of the current tile (into kbuf or the source)
  const float* vrow[kTile];
  void* base;
};

Scratch alloc_scratch(int64_t max_rows, int64_t D) {
  const int64_t floats = max_rows * (2 * D + kTile + 2) + 2 * kTile * D + 16;
  const size_t bytes = ((floats * 4 + max_rows * 8) / 64 + 1) * 64;
  Scratch sc;
  char* p = static_cast<char*>(aligned_alloc(64, bytes));
  sc.base = p;
  sc.q = reinterpret_cast<float*>(p);
  sc.acc = sc.q + max_rows * D;
  sc.kbuf = sc.acc + max_rows * D;
  sc.vbuf = sc.kbuf + kTile * D;
  sc.s = sc.vbuf + kTile * D;
  sc.m = sc.s + max_rows * kTile;
  sc.l = sc.m + max_rows;
  sc.lim = reinterpret_cast<int64_t*>(sc.l + max_rows);  // offset is even: 8-byte aligned
  return sc;
}

void init_rows(Scratch& sc, int64_t R, int64_t D) {
  for (int64_t r = 0; r < R; ++r) {
    sc.m[r] = kNegInf;
    sc.l[r] = 0.0f;
  }
  memset(sc.acc, 0, sizeof(float) * R * D);
}

// Scores of row r against the tile's first n key rows: s[r, t] = <q[r], k[t]>.
template <int kD>
void tile_scores_row(Scratch& sc, int64_t r, int64_t d_rt, int n) {
  const int64_t D = kD ? kD : d_rt;
  const float* q = sc.q + r * D;
  float* s = sc.s + r * kTile;
  for (int t = 0; t < n; ++t) {
    const float* k = sc.krow[t];
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
    s[t] = dot;
  }
}

// Online-softmax update of row r with the first n_ok (unmasked) scores of the tile.
template <int kD>
void tile_softmax_row(Scratch& sc, int64_t r, int64_t d_rt, int n_ok) {
  const int64_t D = kD ? kD : d_rt;
  float* s = sc.s + r * kTile;
  float mx = sc.m[r];
  for (int t = 0; t < n_ok; ++t) mx = fmax2(mx, s[t]);
  const float corr = fast_exp(sc.m[r] - mx);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int t = 0; t < n_ok; ++t) {
    const float p = fast_exp(s[t] - mx);
    s[t] = p;
    sum += p;
  }
  sc.l[r] = sc.l[r] * corr + sum;
  sc.m[r] = mx;
  if (corr != 1.0f) {
    float* a = sc.acc + r * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) a[d] *= corr;
  }
}

// Softmax update and P.V accumulation for all rows; positions of the tile are [p0, p0 + T).
template <int kD>
void tile_update(Scratch& sc, int64_t R, int64_t d_rt, int T, int64_t p0) {
  const int64_t D = kD ? kD : d_rt;
  for (int64_t r = 0; r < R; ++r) {
    const int n_ok = static_cast<int>(imax(0, imin(T, sc.lim[r] - p0 + 1)));
    if (n_ok == 0) continue;
    tile_scores_row<kD>(sc, r, d_rt, n_ok);
    tile_softmax_row<kD>(sc, r, d_rt, n_ok);
    const float* p = sc.s + r * kTile;
    float* a = sc.acc + r * D;
    for (int t = 0; t < n_ok; ++t) {
      const float pt = p[t];
      const float* v = sc.vrow[t];
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += pt * v[d];
    }
  }
}

template <typename T>
inline void convert_row(const T* src, float* dst, int64_t D);

template <>
inline void convert_row<uint16_t>(const uint16_t* src, float* dst, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) dst[d] = bf16_to_float(src[d]);
}

struct Half16 {
  uint16_t x;
};

template <>
inline void convert_row<Half16>(const Half16* src, float* dst, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) dst[d] = fp16_to_float(src[d].x);
}

// Points the tile's row pointers at paged-cache rows [p0, p0 + T) of (seq table, kv head).
template <typename E>
void load_paged_tile(Scratch& sc, const PagedKV& kv, const int32_t* table, int64_t h,
                     int64_t p0, int n, int64_t D) {
  const E* kc = static_cast<const E*>(kv.key_cache);
  const E* vc = static_cast<const E*>(kv.value_cache);
  for (int t = 0; t < n; ++t) {
    const int64_t pos = p0 + t;
    const int64_t blk = table[pos / kv.block_size];
    const int64_t off = ((blk * kv.num_kv_heads + h) * kv.block_size + pos % kv.block_size) * D;
    if constexpr (sizeof(E) == 4) {
      sc.krow[t] = reinterpret_cast<const float*>(kc + off);
      sc.vrow[t] = reinterpret_cast<const float*>(vc + off);
    } else {
      convert_row<E>(kc + off, sc.kbuf + t * D, D);
      convert_row<E>(vc + off, sc.vbuf + t * D, D);
      sc.krow[t] = sc.kbuf + t * D;
      sc.vrow[t] = sc.vbuf + t * D;
    }
  }
}

// Runs the rows in `sc` over cached positions [begin, end) of one sequence's paged KV.
template <int kD, typename E>
void attend_paged(Scratch& sc, int64_t R, int64_t D, const PagedKV& kv, const int32_t* table,
                  int64_t h, int64_t begin, int64_t end) {
  for (int64_t p0 = begin; p0 < end; p0 += kTile) {
    const int n = static_cast<int>(imin(kTile, end - p0));
    load_paged_tile<E>(sc, kv, table, h, p0, n, D);
    tile_update<kD>(sc, R, D, n, p0);
  }
}

template <int kD>
void attend_paged_any(Scratch& sc, int64_t R, int64_t D, const PagedKV& kv,
                      const int32_t* table, int64_t h, int64_t begin, int64_t end) {
  switch (kv.dtype) {
    case KVDtype::kFloat32:
      attend_paged<kD, float>(sc, R, D, kv, table, h, begin, end);
      break;
    case KVDtype::kBFloat16:
      attend_paged<kD, uint16_t>(sc, R, D, kv, table, h, begin, end);
      break;
    case KVDtype::kFloat16:
      attend_paged<kD, Half16>(sc, R, D, kv, table, h, begin, end);
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
