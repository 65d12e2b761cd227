// The AVX2 kernels, for a CPU with AVX2 and FMA but without AVX-512's dot products (AMD before
// Zen 4, Intel before Ice Lake): product tiles that read the same panels half a line per register,
// and attention with the query and output held in 8-wide registers. Part of native_decode.cpp
// (see panels.h).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "attention.h"
#include "panels.h"

namespace {

#if MICROGPT_AVX2
// Small loops over rows, panels and register halves, fully unrolled: only then do the accumulator
// arrays become registers. Otherwise GCC stores them at every step (a vector type may alias
// anything), which made the 32-row fp32 step 1.6x slower.
#define UNROLL _Pragma("GCC unroll 16")
// AVX2 holds half a panel's line in a register and has 16 registers: a pass multiplies J panels
// by MB rows with 8 accumulators (enough chains to hide the FMA latency), and a tile of more
// panels makes several passes over its rows (their inputs are in L1 by then).
template <int MB>
constexpr int avx2_panels = MB >= 4 ? 1 : 4 / MB;

// int8 sums of one 32-bit lane grow by at most 2 * 128 * 32767 per line: 256 lines (1,024 inputs)
// fit in int32.
constexpr int64_t AVX2_I8_LINES = 256;

// J int8 panels (from p) times MB rows (from b0): a line's 16 x 4 weights widen to four registers
// of 16-bit (output, k) pairs, `vpmaddwd` multiplies them by a row's four 16-bit inputs, and lane
// pairs (an output's k = 0, 1 and k = 2, 3) are added once per 256 lines, exactly, in fp64.
template <int MB, int J>
void avx2_i8_pass(const Packed& W, int64_t p, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES], int jo) {
  const int64_t steps = W.steps;
  const int16_t* x[MB];
  UNROLL for (int i = 0; i < MB; i++) x[i] = reinterpret_cast<const int16_t*>(&in.words[(b0 + i) * in.stride]);
  double exact[MB][J][LANES] = {};
  for (int64_t s0 = 0; s0 < steps; s0 += AVX2_I8_LINES) {
    __m256i acc[MB][J][4];
    UNROLL for (int i = 0; i < MB; i++)
      UNROLL for (int j = 0; j < J; j++)
        UNROLL for (int q = 0; q < 4; q++) acc[i][j][q] = _mm256_setzero_si256();
    for (int64_t s = s0; s < std::min(steps, s0 + AVX2_I8_LINES); s++) {
      __m256i xs[MB];
      UNROLL for (int i = 0; i < MB; i++) {
        int64_t four;
        std::memcpy(&four, x[i] + 4 * s, 8);
        xs[i] = _mm256_set1_epi64x(four);
      }
      UNROLL for (int j = 0; j < J; j++) {
        const auto* line = reinterpret_cast<const __m128i*>(W.lines + ((p + j) * steps + s) * 64);
        UNROLL for (int q = 0; q < 4; q++) {
          const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(line + q));
          UNROLL for (int i = 0; i < MB; i++) {
            acc[i][j][q] = _mm256_add_epi32(acc[i][j][q], _mm256_madd_epi16(w, xs[i]));
          }
        }
      }
    }
    UNROLL for (int i = 0; i < MB; i++)
      UNROLL for (int j = 0; j < J; j++)
        UNROLL for (int q = 0; q < 4; q++) {
          alignas(32) int32_t pairs[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(pairs), acc[i][j][q]);
          UNROLL for (int o = 0; o < 4; o++) exact[i][j][4 * q + o] += double(pairs[2 * o]) + double(pairs[2 * o + 1]);
        }
  }
  UNROLL for (int i = 0; i < MB; i++)
    UNROLL for (int j = 0; j < J; j++)
      for (int64_t lane = 0; lane < LANES; lane++) {
        const int64_t o = (p + j) * LANES + lane;
        out[i][(jo + j) * LANES + lane] = float(exact[i][j][lane] * double(in.scale[b0 + i]) * double(W.scale[o]));
      }
}

// J fp32 or bf16 panels (from p) times MB rows (from b0). A bf16 line's 32-bit words hold the
// weights of k = 0 (low half) and k = 1 (high half): a shift and a mask widen them exactly.
template <WeightKind K, int MB, int J>
void avx2_float_pass(const Packed& W, int64_t p, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES], int jo) {
  const int64_t steps = W.steps;
  const uint32_t* x[MB];
  UNROLL for (int i = 0; i < MB; i++) x[i] = &in.words[(b0 + i) * in.stride];
  const __m256i high = _mm256_set1_epi32(int(0xFFFF0000u));
  __m256 acc[MB][J][2];
  UNROLL for (int i = 0; i < MB; i++)
    UNROLL for (int j = 0; j < J; j++) acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
  for (int64_t s = 0; s < steps; s++) {
    UNROLL for (int j = 0; j < J; j++) {
      const char* line = W.lines + ((p + j) * steps + s) * 64;
      if constexpr (K == F32) {
        const __m256 w0 = _mm256_loadu_ps(reinterpret_cast<const float*>(line));
        const __m256 w1 = _mm256_loadu_ps(reinterpret_cast<const float*>(line + 32));
        UNROLL for (int i = 0; i < MB; i++) {
          const __m256 xs = _mm256_broadcast_ss(reinterpret_cast<const float*>(x[i] + s));
          acc[i][j][0] = _mm256_fmadd_ps(w0, xs, acc[i][j][0]);
          acc[i][j][1] = _mm256_fmadd_ps(w1, xs, acc[i][j][1]);
        }
      } else {
        __m256 even[2], odd[2];
        UNROLL for (int h = 0; h < 2; h++) {
          const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + 32 * h));
          even[h] = _mm256_castsi256_ps(_mm256_slli_epi32(words, 16));
          odd[h] = _mm256_castsi256_ps(_mm256_and_si256(words, high));
        }
        UNROLL for (int i = 0; i < MB; i++) {
          const __m256i word = _mm256_set1_epi32(int(x[i][s]));
          const __m256 x0 = _mm256_castsi256_ps(_mm256_slli_epi32(word, 16));
          const __m256 x1 = _mm256_castsi256_ps(_mm256_and_si256(word, high));
          UNROLL for (int h = 0; h < 2; h++) {
            acc[i][j][h] = _mm256_fmadd_ps(odd[h], x1, _mm256_fmadd_ps(even[h], x0, acc[i][j][h]));
          }
        }
      }
    }
  }
  UNROLL for (int i = 0; i < MB; i++)
    UNROLL for (int j = 0; j < J; j++)
      UNROLL for (int h = 0; h < 2; h++) _mm256_storeu_ps(&out[i][(jo + j) * LANES + 8 * h], acc[i][j][h]);
}

template <WeightKind K, int MB, int NB>
void avx2_tile(const Packed& W, int64_t p0, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES]) {
  constexpr int J = std::min(NB, avx2_panels<K == I8 ? 2 * MB : MB>);  // int8 keeps 4 accumulators a panel
  int j = 0;
  for (; j + J <= NB; j += J) {
    if constexpr (K == I8) avx2_i8_pass<MB, J>(W, p0 + j, in, b0, out, j);
    else avx2_float_pass<K, MB, J>(W, p0 + j, in, b0, out, j);
  }
  for (; j < NB; j++) {
    if constexpr (K == I8) avx2_i8_pass<MB, 1>(W, p0 + j, in, b0, out, j);
    else avx2_float_pass<K, MB, 1>(W, p0 + j, in, b0, out, j);
  }
}
#endif

#if MICROGPT_AVX2 && !defined(__AVX512F__)
constexpr int64_t VECTOR = 8;  // fp32 values per vector register

// Attention with AVX2: the query and the output in CH registers of 8 fp32 (CH = head size / 8);
// bf16 rows widen 8 values at a time, and rows are prefetched ahead as with AVX-512.
template <typename T>
inline __m256 eight(const T* row) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  } else {
    return _mm256_loadu_ps(row);
  }
}

// The four horizontal sums of a, b, c, d (the scores of four keys) in one 128-bit vector.
inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

template <typename T, int CH>
inline __m256 key_dot(const __m256 (&qv)[CH], const T* key) {
  __m256 even = _mm256_mul_ps(qv[0], eight(key)), odd = _mm256_setzero_ps();
  for (int c = 1; c < CH; c++) {  // two chains, to hide the FMA latency
    if (c % 2) odd = _mm256_fmadd_ps(qv[c], eight(key + 8 * c), odd);
    else even = _mm256_fmadd_ps(qv[c], eight(key + 8 * c), even);
  }
  return _mm256_add_ps(even, odd);
}

template <typename T, int CH>
void attend_registers(const float* q, const T* keys, const T* vals, int64_t n, float scale, float* scores,
                      float* out) {
  constexpr int64_t hs = CH * 8;
  __m256 qv[CH], acc[CH];
  for (int c = 0; c < CH; c++) qv[c] = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * c), _mm256_set1_ps(scale));
  key_scores<T, CH>(qv, keys, n, scores);
  const float total = softmax_in_place(scores, n);
  for (int c = 0; c < CH; c++) acc[c] = _mm256_setzero_ps();
  for (int64_t t = 0; t < n; t++) {  // CH independent chains
    const __m256 weight = _mm256_set1_ps(scores[t]);
    const T* val = vals + t * hs;
    prefetch(val, hs * sizeof(T));
    for (int c = 0; c < CH; c++) acc[c] = _mm256_fmadd_ps(weight, eight(val + 8 * c), acc[c]);
  }
  const __m256 inv = _mm256_set1_ps(1.f / total);
  for (int c = 0; c < CH; c++) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], inv));
}
#endif

}  // namespace
