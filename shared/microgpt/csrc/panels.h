// The product kernels' shared ground: which instruction set this build uses, a matrix in the
// kernels' panel layout (`Packed`) and a product's input rows as the kernels read them (`Inputs`).
// Part of native_decode.cpp, the one translation unit that includes it: every kernel is a template
// or a small function the compiler inlines into the decode step, so the kernels are split by
// instruction set into headers rather than into separately compiled files.
#pragma once

#include <torch/extension.h>

#include <immintrin.h>

// The product kernels by instruction set: AVX-512 with VNNI and bf16 dot products (and AMX where
// the CPU has it), else AVX2 with FMA, else plain C++ (the same sums, slowly).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512BF16__)
#define MICROGPT_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define MICROGPT_AVX2 1
#endif

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AMX_BF16__)
#define MICROGPT_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fast_math.h"

namespace {

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// How a matrix stores its weights; the product kernel reads each kind its own way.
enum WeightKind { F32 = 0, BF16 = 1, I8 = 2 };

constexpr int64_t LANES = 16;  // outputs per panel: one AVX-512 register of fp32
constexpr int NB_MAX = 4;      // panels per tile

// k values per 32-bit input word, and per lane of a packed 64-byte line.
constexpr int64_t per_word(WeightKind kind) { return kind == F32 ? 1 : kind == BF16 ? 2 : 4; }
// Batch rows per tile: as many as the registers hold (int8 keeps two accumulators per output).
constexpr int mb_max(WeightKind kind) { return kind == I8 ? 2 : 4; }

// A (n, k) matrix in the kernel's layout: panels of 16 outputs, each one sequential stream of
// 64-byte lines, line s holding the k values [s * P, (s + 1) * P) of its 16 outputs
// (P = per_word): (n/16, k/P, 16, P), zero-padded. An int8 matrix also keeps its per-row
// scales and the sums of its rows (the correction for the offset of the high input byte).
struct Packed {
  torch::Tensor data, scales, row_sums;
  WeightKind kind = F32;
  int64_t n = 0, k = 0, panels = 0, steps = 0;
  // The tensors' memory, read in the innermost loops (a tensor's data_ptr checks its type each call).
  const char* lines = nullptr;
  const float* scale = nullptr;
  const int32_t* sums = nullptr;

  static Packed from(const torch::Tensor& w, const torch::Tensor& scales) {
    const WeightKind kind = w.scalar_type() == torch::kChar       ? I8
                            : w.scalar_type() == torch::kBFloat16 ? BF16
                                                                  : F32;
    TORCH_CHECK((kind == I8) == scales.defined(), "int8 matrices, and only they, come with scales");
    const int64_t P = per_word(kind), n = w.size(0), k = w.size(1);
    const int64_t np = round_up(n, LANES), kp = round_up(k, P);
    auto padded = torch::zeros({np, kp}, w.options());
    padded.narrow(0, 0, n).narrow(1, 0, k).copy_(w);
    Packed p{padded.view({np / LANES, LANES, kp / P, P}).permute({0, 2, 1, 3}).contiguous(), {}, {}, kind, n, k,
             np / LANES, kp / P};
    if (kind == I8) {
      TORCH_CHECK(scales.numel() == n && scales.scalar_type() == torch::kFloat32, "one fp32 scale per row");
      p.scales = torch::zeros({np}, torch::kFloat32);
      p.scales.narrow(0, 0, n).copy_(scales);
      p.row_sums = padded.to(torch::kInt).sum(1, false, torch::kInt).contiguous();
      p.scale = p.scales.data_ptr<float>();
      p.sums = p.row_sums.data_ptr<int32_t>();
    }
    p.lines = static_cast<const char*>(p.data.data_ptr());
    return p;
  }
};

// A product's input rows as its kernel reads them: one 32-bit word per line of the matrix.
// fp32: the value; bf16: two values rounded to bf16; int8: four inputs in 16-bit fixed point,
// their high bytes in `words` and low bytes in `low`, x ~= scale * (256 * (hi - 128) + lo),
// so that a product is exact integer arithmetic on `vpdpbusd` (unsigned x signed bytes); with
// AVX2, which multiplies 16-bit pairs (`vpmaddwd`), the 16-bit values themselves, in `words`.
struct Inputs {
  std::vector<uint32_t> words, low;
  std::vector<float> scale;
  int64_t stride = 0;  // words per row

  // Rows are allocated in whole tiles of 16, so a tile load of the last rows stays in bounds.
  void fit(int64_t B, int64_t max_k, bool int8) {
    words.resize(round_up(B, 16) * max_k);
#if MICROGPT_AVX2
    (void)int8;  // the 16-bit inputs fit in `words`
#else
    low.resize(int8 ? round_up(B, 16) * max_k : 0);
#endif
    scale.resize(B);
    stride = max_k;
  }

  void prepare(const Packed& W, const float* x, int64_t b) {
    uint32_t* out = &words[b * stride];
    const int64_t k = W.k, padded = W.steps * per_word(W.kind);
    if (W.kind == F32) {
      std::memcpy(out, x, k * sizeof(float));
    } else if (W.kind == BF16) {
      auto* halves = reinterpret_cast<uint16_t*>(out);
#pragma omp simd
      for (int64_t i = 0; i < k; i++) narrow(x[i], &halves[i]);
      std::fill(halves + k, halves + padded, uint16_t(0));
    } else {
      float top = 0.f;
#pragma omp simd reduction(max : top)
      for (int64_t i = 0; i < k; i++) top = std::max(top, std::fabs(x[i]));
      scale[b] = top > 0.f ? top / 32767.f : 1.f;
      const float inv = 1.f / scale[b];
#if MICROGPT_AVX2
      auto* fixed = reinterpret_cast<int16_t*>(out);
#pragma omp simd
      for (int64_t i = 0; i < k; i++) fixed[i] = int16_t(std::nearbyint(x[i] * inv));  // |v| <= 32767
      std::fill(fixed + k, fixed + padded, int16_t(0));
#else
      auto *hi = reinterpret_cast<uint8_t*>(out), *lo = reinterpret_cast<uint8_t*>(&low[b * stride]);
#pragma omp simd
      for (int64_t i = 0; i < k; i++) {
        const int32_t v = int32_t(std::nearbyint(x[i] * inv));  // |v| <= 32767, ties to even
        hi[i] = uint8_t((v >> 8) + 128);  // arithmetic shift: floor(v / 256)
        lo[i] = uint8_t(v & 255);
      }
      std::fill(hi + k, hi + padded, uint8_t(128));  // zero
      std::fill(lo + k, lo + padded, uint8_t(0));
#endif
    }
  }
};

}  // namespace
