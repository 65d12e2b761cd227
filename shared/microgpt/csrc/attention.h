// Attention helpers that every instruction set's attention kernel uses: the softmax and the
// prefetch of KV cache rows. `key_scores` (q . k for every key, built on the instruction set's
// `key_dot` and `sum4`) is defined in native_decode.cpp after the kernels_*.h headers that
// supply those; it is declared here so that their `attend_registers` can call it.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "fast_math.h"

namespace {

// exp(s - max) in place; returns their sum.
inline float softmax_in_place(float* scores, int64_t n) {
  float top = -INFINITY;
#pragma omp simd reduction(max : top)
  for (int64_t t = 0; t < n; t++) top = std::max(top, scores[t]);
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t t = 0; t < n; t++) {
    scores[t] = fast_exp(scores[t] - top);
    total += scores[t];
  }
  return total;
}

// A batch's attention streams its KV cache from memory (every row has its own), and the hardware
// prefetcher restarts at every 4 KiB page: rows this far ahead are asked for in advance.
constexpr int64_t PREFETCH_BYTES = 4096;

inline void prefetch(const void* from, int64_t bytes) {
  const char* p = static_cast<const char*>(from) + PREFETCH_BYTES;
  for (int64_t at = 0; at < bytes; at += 64) _mm_prefetch(p + at, _MM_HINT_T0);
}

template <typename T, int CH, typename Vector>
void key_scores(const Vector (&qv)[CH], const T* keys, int64_t n, float* scores);

}  // namespace
