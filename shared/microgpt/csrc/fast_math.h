// Scalar math written so that GCC vectorises loops over it (`omp simd`, -O3 -march=native,
// -fno-trapping-math): libm's exp and erf calls do not vectorise, and c10's bf16 conversions
// (with their NaN branches) do not either. Shared by the decode step and the GELU kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

inline float widen(float v) { return v; }
inline float widen(uint16_t v) {  // bf16 -> fp32 is a 16-bit shift
  const uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void narrow(float v, float* out) { *out = v; }
inline void narrow(float v, uint16_t* out) {  // fp32 -> bf16, round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits += 0x7fff + ((bits >> 16) & 1);
  *out = uint16_t(bits >> 16);
}

// exp of x <= 0 (every use: softmax, erf, sigmoid) by 2^x = 2^floor(x) * p(frac(x)) with a
// degree-6 polynomial (relative error ~2e-7); 0 below -87, where a float would go subnormal.
// erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7).
inline float fast_exp(float x) {
  const float t = std::max(x, -87.f) * 1.4426950408889634f;
  const float whole = std::floor(t), f = t - whole;
  const float p = 1.f + f * (0.6931471825f + f * (0.2402264923f + f * (0.0555040733f +
                  f * (0.0096183574f + f * (0.0013327543f + f * 0.0001540353f)))));
  const uint32_t bits = uint32_t(int32_t(whole) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return x < -87.f ? 0.f : p * scale;
}
inline float fast_erf(float x) {
  const float a = std::fabs(x), t = 1.f / (1.f + 0.3275911f * a);
  const float y = 1.f - t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f +
                  t * 1.061405429f)))) * fast_exp(-a * a);
  return std::copysign(y, x);
}
// 1 / (1 + e^-z) from e^-|z| only. No clamped tail may become a constant: GCC folds one into a
// product over every lane, and a subnormal one costs a microcode assist per vector (10x slower).
inline float fast_sigmoid(float z) {
  const float e = fast_exp(-std::fabs(z)), r = 1.f / (1.f + e);
  return z >= 0.f ? r : e * r;
}
