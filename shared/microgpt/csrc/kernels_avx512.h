// The AVX-512 kernels: product tiles with VNNI (`vpdpbusd`, int8) and bf16 dot products
// (`vdpbf16ps`), and attention with the query and output held in 16-wide registers.
// The product tiles need AVX-512 F, BW, VNNI and BF16 (MICROGPT_AVX512); attention needs only
// AVX-512 F, so a CPU with AVX-512 but without its dot products attends here and multiplies
// with the AVX2 tiles. Part of native_decode.cpp (see panels.h).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "attention.h"
#include "panels.h"

namespace {

#if MICROGPT_AVX512
// The 16 outputs of panel p of an int8 product from its exact integer sums over the high and the
// low input bytes (16 each, 64-byte aligned): the dot, then the two scales. Both int8 paths end
// here, so they agree bit for bit.
inline void i8_finish(const Packed& W, int64_t p, const int32_t* hi, const int32_t* lo, float in_scale, float* out) {
  const __m512i acc_hi = _mm512_load_si512(hi), acc_lo = _mm512_load_si512(lo);
  const __m512i sums = _mm512_loadu_si512(W.sums + p * LANES);
  const __m512 w_scale = _mm512_loadu_ps(W.scale + p * LANES);
  // 256 * (hi - 128 * sums) + lo overflows int32 for long rows: it is formed in fp64.
  const __m512i high = _mm512_sub_epi32(acc_hi, _mm512_slli_epi32(sums, 7));
  const __m512 s = _mm512_mul_ps(w_scale, _mm512_set1_ps(in_scale));
  for (int half = 0; half < 2; half++) {
    const __m256i h = half ? _mm512_extracti64x4_epi64(high, 1) : _mm512_castsi512_si256(high);
    const __m256i l = half ? _mm512_extracti64x4_epi64(acc_lo, 1) : _mm512_castsi512_si256(acc_lo);
    const __m512d dot = _mm512_fmadd_pd(_mm512_set1_pd(256.0), _mm512_cvtepi32_pd(h), _mm512_cvtepi32_pd(l));
    const __m256 sc = half ? _mm512_extractf32x8_ps(s, 1) : _mm512_castps512_ps256(s);
    _mm256_storeu_ps(out + half * 8, _mm512_cvtpd_ps(_mm512_mul_pd(dot, _mm512_cvtps_pd(sc))));
  }
}

// The exact integer sums of MB rows' high and low input bytes with NB panels, into sums[i][j][0 or 1].
// Out of line, and the high sums stored before the low ones: inlined into `avx512_tile` ahead of its finish,
// or storing each output's pair together, GCC 12 kept every accumulator in two registers and copied
// it twice per step (30 register moves for 16 products; the 32-row int8 step took 14-24% longer).
template <int MB, int NB>
__attribute__((noinline)) void i8_sums(const char* const (&panel)[NB], int64_t steps, const uint32_t* const (&x)[MB],
                                       const uint32_t* const (&lo)[MB], int32_t (*sums)[NB][2][LANES]) {
  __m512i acc_hi[MB][NB], acc_lo[MB][NB];
  for (int i = 0; i < MB; i++)
    for (int j = 0; j < NB; j++) acc_hi[i][j] = acc_lo[i][j] = _mm512_setzero_si512();
  for (int64_t s = 0; s < steps; s++) {
    __m512i w[NB];
    for (int j = 0; j < NB; j++) w[j] = _mm512_loadu_si512(panel[j] + s * 64);
    for (int i = 0; i < MB; i++) {
      const __m512i h = _mm512_set1_epi32(int(x[i][s])), l = _mm512_set1_epi32(int(lo[i][s]));
      for (int j = 0; j < NB; j++) {
        acc_hi[i][j] = _mm512_dpbusd_epi32(acc_hi[i][j], h, w[j]);
        acc_lo[i][j] = _mm512_dpbusd_epi32(acc_lo[i][j], l, w[j]);
      }
    }
  }
  for (int i = 0; i < MB; i++)
    for (int j = 0; j < NB; j++) _mm512_store_si512(sums[i][j][0], acc_hi[i][j]);
  for (int i = 0; i < MB; i++)
    for (int j = 0; j < NB; j++) _mm512_store_si512(sums[i][j][1], acc_lo[i][j]);
}

// One tile (see `tile` in native_decode.cpp) with AVX-512: fp32 FMAs, bf16 `vdpbf16ps`, int8 exact
// integer sums on `vpdpbusd` (`i8_sums`, then `i8_finish`).
template <WeightKind K, int MB, int NB>
void avx512_tile(const Packed& W, int64_t p0, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES]) {
  const int64_t steps = W.steps;
  const char* panel[NB];
  for (int j = 0; j < NB; j++) panel[j] = W.lines + (p0 + j) * steps * 64;
  const uint32_t* x[MB];
  for (int i = 0; i < MB; i++) x[i] = &in.words[(b0 + i) * in.stride];
  if constexpr (K == I8) {
    const uint32_t* lo[MB];
    for (int i = 0; i < MB; i++) lo[i] = &in.low[(b0 + i) * in.stride];
    alignas(64) int32_t sums[MB][NB][2][LANES];
    i8_sums<MB, NB>(panel, steps, x, lo, sums);
    for (int i = 0; i < MB; i++)
      for (int j = 0; j < NB; j++)
        i8_finish(W, p0 + j, sums[i][j][0], sums[i][j][1], in.scale[b0 + i], &out[i][j * LANES]);
  } else {
    __m512 acc[MB][NB];
    for (int i = 0; i < MB; i++)
      for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t s = 0; s < steps; s++) {
      __m512i w[NB];
      for (int j = 0; j < NB; j++) w[j] = _mm512_loadu_si512(panel[j] + s * 64);
      for (int i = 0; i < MB; i++) {
        const __m512i xs = _mm512_set1_epi32(int(x[i][s]));
        for (int j = 0; j < NB; j++) {
          if constexpr (K == BF16) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)w[j], (__m512bh)xs);
          else acc[i][j] = _mm512_fmadd_ps(_mm512_castsi512_ps(w[j]), _mm512_castsi512_ps(xs), acc[i][j]);
        }
      }
    }
    for (int i = 0; i < MB; i++)
      for (int j = 0; j < NB; j++) _mm512_storeu_ps(&out[i][j * LANES], acc[i][j]);
  }
}
#endif

#if defined(__AVX512F__)
constexpr int64_t VECTOR = LANES;  // fp32 values per vector register

// A head's row of keys or values as CH vectors of 16 fp32 (CH = head size / 16). fp32 rows load
// as they are. bf16 rows load 32 values at a time: a shift of each 32-bit word gives the 16 even-
// indexed values, a mask the 16 odd-indexed ones (exact, and half the work of widening 16 values
// at a time); the query and the output use the same order (`arrange`, `restore`), so a dot
// product or a weighted sum of rows is the one of the natural order, summed in another order.
template <typename T, int CH>
constexpr bool in_pairs = std::is_same_v<T, uint16_t> && CH % 2 == 0;

template <typename T, int CH>
inline void row_vectors(const T* row, __m512 (&v)[CH]) {
  if constexpr (in_pairs<T, CH>) {
    const __m512i odd = _mm512_set1_epi32(int(0xFFFF0000u));
    for (int c = 0; c < CH; c += 2) {
      const __m512i w = _mm512_loadu_si512(row + c * LANES);
      v[c] = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
      v[c + 1] = _mm512_castsi512_ps(_mm512_and_si512(w, odd));
    }
  } else if constexpr (std::is_same_v<T, uint16_t>) {
    for (int c = 0; c < CH; c++) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c * LANES));
      v[c] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    }
  } else {
    for (int c = 0; c < CH; c++) v[c] = _mm512_loadu_ps(row + c * LANES);
  }
}

// `x` (natural order) times `scale` in the order of `row_vectors`.
template <typename T, int CH>
inline void arrange(const float* x, float scale, __m512 (&v)[CH]) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int c = 0; c < CH; c++) v[c] = _mm512_mul_ps(_mm512_loadu_ps(x + c * LANES), s);
  if constexpr (in_pairs<T, CH>) {
    const __m512i even_lanes = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd_lanes = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int c = 0; c < CH; c += 2) {
      const __m512 lo = v[c], hi = v[c + 1];
      v[c] = _mm512_permutex2var_ps(lo, even_lanes, hi);
      v[c + 1] = _mm512_permutex2var_ps(lo, odd_lanes, hi);
    }
  }
}

// The inverse of `arrange` (without a scale), stored to `out`.
template <typename T, int CH>
inline void restore(const __m512 (&v)[CH], float* out) {
  if constexpr (in_pairs<T, CH>) {
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int c = 0; c < CH; c += 2) {
      _mm512_storeu_ps(out + c * LANES, _mm512_permutex2var_ps(v[c], first, v[c + 1]));
      _mm512_storeu_ps(out + (c + 1) * LANES, _mm512_permutex2var_ps(v[c], second, v[c + 1]));
    }
  } else {
    for (int c = 0; c < CH; c++) _mm512_storeu_ps(out + c * LANES, v[c]);
  }
}

// The four horizontal sums of a, b, c, d (the scores of four keys) in one 128-bit vector:
// three shuffle-and-add rounds for all four instead of four for each.
inline __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
  abcd = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, 0x4E));
  abcd = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, 0xB1));
  return _mm512_castps512_ps128(abcd);
}

template <typename T, int CH>
inline __m512 key_dot(const __m512 (&qv)[CH], const T* key) {
  __m512 k[CH];
  row_vectors<T, CH>(key, k);
  __m512 even = _mm512_mul_ps(qv[0], k[0]), odd = CH > 1 ? _mm512_mul_ps(qv[1], k[1]) : _mm512_setzero_ps();
  for (int c = 2; c < CH; c++) {  // two chains, to hide the FMA latency
    if (c % 2) odd = _mm512_fmadd_ps(qv[c], k[c], odd);
    else even = _mm512_fmadd_ps(qv[c], k[c], even);
  }
  return _mm512_add_ps(even, odd);
}

template <typename T, int CH>
void attend_registers(const float* q, const T* keys, const T* vals, int64_t n, float scale, float* scores,
                      float* out) {
  constexpr int64_t hs = CH * LANES;
  __m512 qv[CH], even[CH], odd[CH], v0[CH], v1[CH];
  arrange<T, CH>(q, scale, qv);
  key_scores<T, CH>(qv, keys, n, scores);
  const float total = softmax_in_place(scores, n);
  for (int c = 0; c < CH; c++) even[c] = odd[c] = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 2 <= n; t += 2) {  // two chains per output vector, to hide the FMA latency
    const __m512 p0 = _mm512_set1_ps(scores[t]), p1 = _mm512_set1_ps(scores[t + 1]);
    const T* val = vals + t * hs;
    prefetch(val, 2 * hs * sizeof(T));
    row_vectors<T, CH>(val, v0);
    row_vectors<T, CH>(val + hs, v1);
    for (int c = 0; c < CH; c++) {
      even[c] = _mm512_fmadd_ps(p0, v0[c], even[c]);
      odd[c] = _mm512_fmadd_ps(p1, v1[c], odd[c]);
    }
  }
  if (t < n) {
    const __m512 p = _mm512_set1_ps(scores[t]);
    row_vectors<T, CH>(vals + t * hs, v0);
    for (int c = 0; c < CH; c++) even[c] = _mm512_fmadd_ps(p, v0[c], even[c]);
  }
  const __m512 inv = _mm512_set1_ps(1.f / total);
  for (int c = 0; c < CH; c++) even[c] = _mm512_mul_ps(_mm512_add_ps(even[c], odd[c]), inv);
  restore<T, CH>(even, out);
}
#endif

}  // namespace
