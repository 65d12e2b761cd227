// The portable product tile: the same sums as the vector kernels in plain C++ (bf16 pairs as two
// fp32 products, int8 exactly), for a CPU with neither AVX-512 nor AVX2. Its attention is the plain
// loop of `attend` in native_decode.cpp. Part of native_decode.cpp (see panels.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "panels.h"

namespace {

#if !MICROGPT_AVX512 && !MICROGPT_AVX2
template <WeightKind K, int MB, int NB>
void portable_tile(const Packed& W, int64_t p0, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES]) {
  const int64_t steps = W.steps;
  const char* panel[NB];
  for (int j = 0; j < NB; j++) panel[j] = W.lines + (p0 + j) * steps * 64;
  const uint32_t* x[MB];
  for (int i = 0; i < MB; i++) x[i] = &in.words[(b0 + i) * in.stride];
  for (int i = 0; i < MB; i++) {
    for (int j = 0; j < NB; j++) {
      for (int64_t lane = 0; lane < LANES; lane++) {
        double exact = 0.0;  // int8
        float acc = 0.f;
        for (int64_t s = 0; s < steps; s++) {
          const char* line = panel[j] + s * 64;
          const uint32_t word = x[i][s];
          if constexpr (K == F32) {
            float xv;
            std::memcpy(&xv, &word, 4);
            acc += reinterpret_cast<const float*>(line)[lane] * xv;
          } else if constexpr (K == BF16) {
            const uint16_t* wv = reinterpret_cast<const uint16_t*>(line) + lane * 2;
            acc += widen(wv[0]) * widen(uint16_t(word)) + widen(wv[1]) * widen(uint16_t(word >> 16));
          } else {
            const int8_t* wv = reinterpret_cast<const int8_t*>(line) + lane * 4;
            const uint32_t low = in.low[(b0 + i) * in.stride + s];
            for (int q = 0; q < 4; q++) {
              const int32_t v = 256 * (int32_t((word >> (8 * q)) & 255) - 128) + int32_t((low >> (8 * q)) & 255);
              exact += double(v) * wv[q];
            }
          }
        }
        if constexpr (K == I8) {
          const int64_t o = (p0 + j) * LANES + lane;
          acc = float(exact * double(in.scale[b0 + i]) * double(W.scale[o]));
        }
        out[i][j * LANES + lane] = acc;
      }
    }
  }
}
#endif

}  // namespace
