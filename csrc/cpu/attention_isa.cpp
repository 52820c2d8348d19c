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
#if defined(__AVX512F__)
#define DISTLLM_VEC 16  // floats per SIMD register of this ISA level
#elif defined(__AVX2__)
#define DISTLLM_VEC 8
#else
#define DISTLLM_VEC 4
#endif
constexpr int kVec = DISTLLM_VEC;

// GCC vector extensions: portable SIMD that lowers to the -m flags of this translation unit.
typedef float vfloat __attribute__((vector_size(kVec * 4)));
typedef float vfloat_unaligned __attribute__((vector_size(kVec * 4), aligned(4)));

inline vfloat vload(const float* p) { return *reinterpret_cast<const vfloat_unaligned*>(p); }
inline void vstore(float* p, vfloat v) { *reinterpret_cast<vfloat_unaligned*>(p) = v; }

typedef float v4float __attribute__((vector_size(16)));
typedef float v4float_unaligned __attribute__((vector_size(16), aligned(4)));

// Folds the lanes of v into 4 partial sums (tree order).
inline v4float fold4(vfloat v) {
#if DISTLLM_VEC == 16
  typedef float v8float __attribute__((vector_size(32)));
  const v8float h8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                     __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  return __builtin_shufflevector(h8, h8, 0, 1, 2, 3) + __builtin_shufflevector(h8, h8, 4, 5, 6, 7);
#elif DISTLLM_VEC == 8
  return __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
  return v;
#endif
}

// out[i] = sum of the lanes of a_i, by a 4x4 transpose-and-add.
inline void hsum4(vfloat a0, vfloat a1, vfloat a2, vfloat a3, float* out) {
  const v4float b0 = fold4(a0), b1 = fold4(a1), b2 = fold4(a2), b3 = fold4(a3);
  const v4float u0 = __builtin_shufflevector(b0, b1, 0, 4, 1, 5) +
                     __builtin_shufflevector(b0, b1, 2, 6, 3, 7);
  const v4float u1 = __builtin_shufflevector(b2, b3, 0, 4, 1, 5) +
                     __builtin_shufflevector(b2, b3, 2, 6, 3, 7);
  const v4float w = __builtin_shufflevector(u0, u1, 0, 1, 4, 5) +
                    __builtin_shufflevector(u0, u1, 2, 3, 6, 7);
  *reinterpret_cast<v4float_unaligned*>(out) = w;
}
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

// Scores of row r against the tile's first n key rows: s[r, t] = <q[r], k[t]>. Four keys per
// pass share the loads of q and give four independent FMA chains.
template <int kD>
void tile_scores_row(Scratch& sc, int64_t r, int64_t d_rt, int n) {
  const int64_t D = kD ? kD : d_rt;
  const float* __restrict q = sc.q + r * D;
  float* s = sc.s + r * kTile;
  int t = 0;
  if constexpr (kD != 0) {
    for (; t + 4 <= n; t += 4) {
      const float* k0 = sc.krow[t];
      const float* k1 = sc.krow[t + 1];
      const float* k2 = sc.krow[t + 2];
      const float* k3 = sc.krow[t + 3];
      vfloat a0 = {}, a1 = {}, a2 = {}, a3 = {};
#pragma GCC unroll 32
      for (int c = 0; c < kD; c += kVec) {
        const vfloat qv = vload(q + c);
        a0 += qv * vload(k0 + c);
        a1 += qv * vload(k1 + c);
        a2 += qv * vload(k2 + c);
        a3 += qv * vload(k3 + c);
      }
      hsum4(a0, a1, a2, a3, s + t);
    }
  }
  for (; t < n; ++t) {
    const float* __restrict k = sc.krow[t];
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
    s[t] = dot;
  }
}

// a[0, D) += sum_t p[t] * v[t][0, D); for a known D the accumulator stays in registers.
template <int kD>
void pv_row(float* __restrict a, const float* __restrict p, const float* const* vrow, int n,
            int64_t d_rt) {
  if constexpr (kD != 0) {
    constexpr int kChunks = kD / kVec;
    constexpr int kGroup = kChunks % 8 == 0 ? 8 : 4;
    static_assert(kD % (4 * kVec) == 0, "head_dim must be a multiple of 4 vectors");
    for (int c0 = 0; c0 < kChunks; c0 += kGroup) {
      vfloat acc[kGroup];
#pragma GCC unroll 8
      for (int j = 0; j < kGroup; ++j) acc[j] = vload(a + (c0 + j) * kVec);
      for (int t = 0; t < n; ++t) {
        const float pt = p[t];
        const float* v = vrow[t] + c0 * kVec;
#pragma GCC unroll 8
        for (int j = 0; j < kGroup; ++j) acc[j] += pt * vload(v + j * kVec);
      }
#pragma GCC unroll 8
      for (int j = 0; j < kGroup; ++j) vstore(a + (c0 + j) * kVec, acc[j]);
    }
  } else {
    for (int t = 0; t < n; ++t) {
      const float pt = p[t];
      const float* __restrict v = vrow[t];
#pragma omp simd
      for (int64_t d = 0; d < d_rt; ++d) a[d] += pt * v[d];
    }
  }
}

// Online-softmax update of row r with the first n_ok (unmasked) scores of the tile.
template <int kD>
void tile_softmax_row(Scratch& sc, int64_t r, int64_t d_rt, int n_ok) {
  const int64_t D = kD ? kD : d_rt;
  float* s = sc.s + r * kTile;
  float mx = sc.m[r];
#pragma omp simd reduction(max : mx)
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
    pv_row<kD>(sc.acc + r * D, sc.s + r * kTile, sc.vrow, n_ok, d_rt);
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

// Prefetches (into L2) the K/V rows of the tile at p0: blocks are scattered, so the hardware
// prefetcher cannot run ahead across block boundaries.
template <typename E>
void prefetch_paged_tile(const PagedKV& kv, const int32_t* table, int64_t h, int64_t p0,
                         int64_t end, int64_t D) {
  const int64_t last = imin(p0 + kTile, end);
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(E));
  for (int64_t pos = p0; pos < last;) {
    const int64_t blk = table[pos / kv.block_size], off = pos % kv.block_size;
    const int64_t rows = imin(kv.block_size - off, last - pos);
    const int64_t start = ((blk * kv.num_kv_heads + h) * kv.block_size + off) * row_bytes;
    const char* k = static_cast<const char*>(kv.key_cache) + start;
    const char* v = static_cast<const char*>(kv.value_cache) + start;
    for (int64_t b = 0; b < rows * row_bytes; b += 64) {
      __builtin_prefetch(k + b, 0, 2);
      __builtin_prefetch(v + b, 0, 2);
    }
    pos += rows;
  }
}

// Runs the rows in `sc` over cached positions [begin, end) of one sequence's paged KV.
template <int kD, typename E>
void attend_paged(Scratch& sc, int64_t R, int64_t D, const PagedKV& kv, const int32_t* table,
                  int64_t h, int64_t begin, int64_t end) {
  for (int64_t p0 = begin; p0 < end; p0 += kTile) {
    const int n = static_cast<int>(imin(kTile, end - p0));
    if (p0 + kTile < end) prefetch_paged_tile<E>(kv, table, h, p0 + kTile, end, D);
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
