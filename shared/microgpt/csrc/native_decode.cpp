// The native CPU decode step: one C++ call feeds one token to every row of a batch.
//
// A single stream is memory-bound: each token reads every weight once. A batch of streams is
// compute-bound: each weight serves every row. The design serves both with one product kernel:
// - every matrix is repacked once into panels of 16 outputs, each one sequential stream of
//   64-byte lines (16 outputs x 1 fp32, 2 bf16 or 4 int8 k-values), and a tile multiplies up to
//   4 panels by up to 4 batch rows in registers, so each line is loaded once for all its rows
//   and the panels' weights stay in cache while the rest of the batch runs through them;
// - fp32 weights: fp32 FMAs. bf16 weights: `vdpbf16ps` on inputs rounded to bf16 (what torch's
//   bf16 linear does), fp32 accumulation. int8 weights (per-output-channel fp32 scales,
//   microgpt/quantize.py) stream half the bytes of bf16: each input is turned into 16-bit
//   fixed point (one scale per vector, error <= 2^-16 of its largest entry) split into a high
//   and a low byte, so a product is exact integer arithmetic on `vpdpbusd` (two per 64
//   weights) and equals what fp32 arithmetic on the int8 weights gives to ~1e-5; on a CPU with
//   AMX, a batch of rows runs the same integer sums on the tile unit (16 rows at a time, the
//   panels' lines are already AMX's int8 weight layout), which gives the same bits faster;
//   bf16 products run on AMX's `tdpbf16ps` at every batch size (the panels' lines are its bf16
//   weight layout too), so a row's bits do not depend on how many rows run beside it;
// - a CPU with AVX2 but without AVX-512's dot products (AMD before Zen 4, Intel before Ice Lake)
//   reads the same panels half a line per register: fp32 FMAs, bf16 weights widened by a shift
//   or a mask, int8 weights widened to 16 bits and multiplied by 16-bit inputs (`vpmaddwd`,
//   exact integer sums as above);
// - a row's result never depends on the other rows of its batch (batched == single, bit for bit);
// - one job of the calling thread's own team (team.h: workers that stay awake between steps)
//   covers the whole step in phases whose items any thread may take, so a thread the OS puts
//   aside does not stall the others; the MLP activation is applied as products are stored, and
//   nothing returns to Python between layers;
// - attention streams each row's KV cache once per step (a batch's caches do not fit in cache):
//   bf16 rows are widened 32 values at a time and rows are prefetched ahead.
// Built at first use by microgpt/native.py with the machine's own instruction set.
#include <torch/extension.h>

#include <ATen/Parallel.h>
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
#include <string>
#include <type_traits>
#include <vector>

#include "fast_math.h"
#include "team.h"

namespace {

enum NormKind { LAYERNORM = 0, RMSNORM = 1 };
enum MlpKind { GELU = 0, GELU_TANH = 1, RELU = 2, RELU2 = 3, SWIGLU = 4 };

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

constexpr int64_t NO_ACTIVATION = -1;

// The MLP activation of n values in place (SwiGLU: silu(gate) * up), one vectorised loop per kind.
void activate(float* v, const float* up, int64_t n, int64_t kind) {
  switch (kind) {
    case GELU:
#pragma omp simd
      for (int64_t i = 0; i < n; i++) v[i] = 0.5f * v[i] * (1.f + fast_erf(v[i] * float(M_SQRT1_2)));
      return;
    case GELU_TANH:  // 0.5 v (1 + tanh(u)) = v * sigmoid(2u)
#pragma omp simd
      for (int64_t i = 0; i < n; i++) {
        const float u = 0.7978845608028654f * (v[i] + 0.044715f * v[i] * v[i] * v[i]);
        v[i] = v[i] * fast_sigmoid(2.f * u);
      }
      return;
    case RELU:
#pragma omp simd
      for (int64_t i = 0; i < n; i++) v[i] = v[i] > 0.f ? v[i] : 0.f;
      return;
    case RELU2:
#pragma omp simd
      for (int64_t i = 0; i < n; i++) v[i] = v[i] > 0.f ? v[i] * v[i] : 0.f;
      return;
    case SWIGLU:
#pragma omp simd
      for (int64_t i = 0; i < n; i++) v[i] = v[i] * fast_sigmoid(v[i]) * up[i];
      return;
    default: return;  // NO_ACTIVATION
  }
}

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
// Out of line, and the high sums stored before the low ones: inlined into `tile` ahead of its finish,
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
#endif

constexpr int AMX_ROWS = 16;      // input rows per tile
constexpr int64_t AMX_LINES = 16;  // panel lines (64 k values) per weight tile
constexpr int AMX_PANELS = 2;     // int8 panels per pass: 2 x (high, low) sums + 2 input + 2 weight tiles
constexpr int64_t AMX_MIN_BATCH = 4;  // int8: below, the AVX-512 tiles are as fast (measured)

#if MICROGPT_AMX
// AMX: 8 tile registers of up to 16 rows x 64 bytes; `tdpbusd` adds the int32 sums of a 16 x 64
// tile of unsigned input bytes times a (64 k) x (16 outputs) tile of signed weight bytes, stored
// as 16 lines of 16 outputs x 4 k values: exactly a panel's lines. Linux hands the tile state to
// a process only once asked (arch_prctl), and each thread loads the tile shapes before use.
// Tiles 0-5 hold sums and inputs, 16 rows or the batch's rows if fewer (a short batch costs the
// tile unit less); tiles 6 and 7 hold weights.

bool amx_permitted() {
  constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  static const bool permitted = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  return permitted;
}

void amx_configure(int64_t B) {
  struct {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t bytes_per_row[16] = {};
    uint8_t rows[16] = {};
  } config;
  for (int t = 0; t < 8; t++) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = t < 6 ? uint8_t(std::min<int64_t>(B, AMX_ROWS)) : AMX_ROWS;
  }
  _tile_loadconfig(&config);
}

// The products of NB panels (from p0) with 16 input rows (from b0) into out[i][j * 16 + lane]:
// the same integer sums as `tile`, on the tile unit. Rows past the batch are computed and ignored.
template <int NB>
void amx_tile(const Packed& W, int64_t p0, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES]) {
  const char* panel = W.lines + p0 * W.steps * 64;
  const uint32_t *hi = &in.words[b0 * in.stride], *lo = &in.low[b0 * in.stride];
  const int64_t row_bytes = in.stride * 4;
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (NB == 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t s = 0; s < W.steps; s += AMX_LINES) {
    _tile_loadd(4, hi + s, row_bytes);
    _tile_loadd(5, lo + s, row_bytes);
    _tile_loadd(6, panel + s * 64, 64);
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 5, 6);
    if constexpr (NB == 2) {
      _tile_loadd(7, panel + (W.steps + s) * 64, 64);
      _tile_dpbusd(2, 4, 7);
      _tile_dpbusd(3, 5, 7);
    }
  }
  alignas(64) int32_t sums[2 * NB][AMX_ROWS][LANES];
  _tile_stored(0, sums[0], 64);
  _tile_stored(1, sums[1], 64);
  if constexpr (NB == 2) {
    _tile_stored(2, sums[2], 64);
    _tile_stored(3, sums[3], 64);
  }
  for (int j = 0; j < NB; j++) {
    for (int i = 0; i < AMX_ROWS && b0 + i < int64_t(in.scale.size()); i++) {
      i8_finish(W, p0 + j, sums[2 * j][i], sums[2 * j + 1][i], in.scale[b0 + i], &out[i][j * LANES]);
    }
  }
}

// The products of NB (up to 4) panels (from p0) with 16 bf16 input rows (from b0), into
// out[i][j * 16 + lane]: 4 sums + 1 input + 2 weight tiles, a weight tile loaded while the
// other one multiplies. Rows past the batch are computed and ignored.
template <int NB>
void amx_bf16_tile(const Packed& W, int64_t p0, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES]) {
  static_assert(NB >= 1 && NB <= NB_MAX, "up to four panels");
  const char* panel = W.lines + p0 * W.steps * 64;
  const uint32_t* x = &in.words[b0 * in.stride];
  const int64_t row_bytes = in.stride * 4, panel_bytes = W.steps * 64;
  _tile_zero(0);
  if constexpr (NB > 1) _tile_zero(1);
  if constexpr (NB > 2) _tile_zero(2);
  if constexpr (NB > 3) _tile_zero(3);
  for (int64_t s = 0; s < W.steps; s += AMX_LINES) {
    const char* lines = panel + s * 64;
    _tile_loadd(4, x + s, row_bytes);
    _tile_loadd(6, lines, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NB > 1) {
      _tile_loadd(7, lines + panel_bytes, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if constexpr (NB > 2) {
      _tile_loadd(6, lines + 2 * panel_bytes, 64);
      _tile_dpbf16ps(2, 4, 6);
    }
    if constexpr (NB > 3) {
      _tile_loadd(7, lines + 3 * panel_bytes, 64);
      _tile_dpbf16ps(3, 4, 7);
    }
  }
  constexpr int64_t out_bytes = NB_MAX * LANES * sizeof(float);
  _tile_stored(0, out[0], out_bytes);
  if constexpr (NB > 1) _tile_stored(1, out[0] + LANES, out_bytes);
  if constexpr (NB > 2) _tile_stored(2, out[0] + 2 * LANES, out_bytes);
  if constexpr (NB > 3) _tile_stored(3, out[0] + 3 * LANES, out_bytes);
}
#endif

// Whether a product of B rows runs on AMX: a CPU and kernel that allow it, rows of whole weight
// tiles, and bf16 weights, or int8 weights and a batch (one row streams them either way; both
// int8 paths give the same bits).
bool on_amx(const Packed& W, int64_t B) {
#if MICROGPT_AMX
  if (W.steps % AMX_LINES != 0 || !amx_permitted()) return false;
  return W.kind == BF16 || (W.kind == I8 && B >= AMX_MIN_BATCH);
#else
  (void)W, (void)B;
  return false;
#endif
}

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

// One tile: the products of NB panels (16 * NB outputs, from panel p0) with MB input rows
// (from row b0), written to out[i][j * 16 + lane] in fp32 (bias and activation not applied).
// Each weight line is loaded once for all MB rows, which is what makes a batch cheaper than
// its rows one by one; a row's result does not depend on the other rows of the tile.
template <WeightKind K, int MB, int NB>
void tile(const Packed& W, int64_t p0, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES]) {
#if MICROGPT_AVX2
  avx2_tile<K, MB, NB>(W, p0, in, b0, out);
#else
  const int64_t steps = W.steps;
  const char* panel[NB];
  for (int j = 0; j < NB; j++) panel[j] = W.lines + (p0 + j) * steps * 64;
  const uint32_t* x[MB];
  for (int i = 0; i < MB; i++) x[i] = &in.words[(b0 + i) * in.stride];
#if MICROGPT_AVX512
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
#else  // portable: the same sums in plain C++ (bf16 pairs as two fp32 products, int8 exactly)
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
#endif
#endif
}

// `tile` for a run-time count of rows (mb) and panels (nb).
template <WeightKind K, int MB>
void tile_rows(const Packed& W, int64_t p0, int nb, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES]) {
  switch (nb) {
    case 1: return tile<K, MB, 1>(W, p0, in, b0, out);
    case 2: return tile<K, MB, 2>(W, p0, in, b0, out);
    case 3: return tile<K, MB, 3>(W, p0, in, b0, out);
    default: return tile<K, MB, 4>(W, p0, in, b0, out);
  }
}

template <WeightKind K>
void tile_any(const Packed& W, int64_t p0, int nb, const Inputs& in, int64_t b0, int mb, float (*out)[NB_MAX * LANES]) {
  // Only the row counts this kind's tiles use are compiled (int8: 1 or 2, others: 1 to 4).
  static_assert(mb_max(K) == 2 || mb_max(K) == 4, "tile_any dispatches 2 or 4 rows");
  if (mb == 1) return tile_rows<K, 1>(W, p0, nb, in, b0, out);
  if (mb == 2 || mb_max(K) == 2) return tile_rows<K, 2>(W, p0, nb, in, b0, out);
  if constexpr (mb_max(K) == 4) {
    if (mb == 3) return tile_rows<K, 3>(W, p0, nb, in, b0, out);
    return tile_rows<K, 4>(W, p0, nb, in, b0, out);
  }
}

void tile_of(const Packed& W, int64_t p0, int nb, const Inputs& in, int64_t b0, int mb, float (*out)[NB_MAX * LANES]) {
  switch (W.kind) {
    case F32: return tile_any<F32>(W, p0, nb, in, b0, mb, out);
    case BF16: return tile_any<BF16>(W, p0, nb, in, b0, mb, out);
    default: return tile_any<I8>(W, p0, nb, in, b0, mb, out);
  }
}

// out[b, :n] (+)= act(W . x[b] + bias) for B rows, run by every thread of the step's team in two
// phases (`PRODUCT_PHASES`): the inputs are prepared, then each item is a group of panels (their
// weights stay in cache while all the batch rows run through them). With `up` (SwiGLU),
// act(gate, up).
constexpr int64_t PRODUCT_PHASES = 2;

void product(Member& me, Inputs& in, const Packed& W, const float* bias, const float* x, int64_t x_stride, float* out,
             int64_t out_stride, int64_t B, bool accumulate, const Packed* up = nullptr, const float* up_bias = nullptr,
             int64_t activation = NO_ACTIVATION) {
  me.each(B, [&](int64_t b) { in.prepare(W, x + b * x_stride, b); });
  const bool amx = on_amx(W, B) && (!up || on_amx(*up, B));
  // Rows and panels per tile, and the tile function for a run-time count of each.
  const int mb = amx ? AMX_ROWS : mb_max(W.kind), panels = amx && W.kind == I8 ? AMX_PANELS : NB_MAX;
  const auto products = [&](const Packed& M, int64_t p0, int nb, int64_t b0, int rows, float (*v)[NB_MAX * LANES]) {
#if MICROGPT_AMX
    if (amx && M.kind == I8) return nb == 1 ? amx_tile<1>(M, p0, in, b0, v) : amx_tile<2>(M, p0, in, b0, v);
    if (amx) {
      switch (nb) {
        case 1: return amx_bf16_tile<1>(M, p0, in, b0, v);
        case 2: return amx_bf16_tile<2>(M, p0, in, b0, v);
        case 3: return amx_bf16_tile<3>(M, p0, in, b0, v);
        default: return amx_bf16_tile<4>(M, p0, in, b0, v);
      }
    }
#endif
    tile_of(M, p0, nb, in, b0, rows, v);
  };
#if MICROGPT_AMX
  if (amx) amx_configure(B);
#endif
  float v[AMX_ROWS][NB_MAX * LANES], u[AMX_ROWS][NB_MAX * LANES];
  me.each((W.panels + panels - 1) / panels, [&](int64_t group) {
    const int64_t p0 = group * panels;
    const int nb = int(std::min<int64_t>(panels, W.panels - p0));
    const int64_t n0 = p0 * LANES, width = std::min(nb * LANES, W.n - n0);
    for (int64_t b0 = 0; b0 < B; b0 += mb) {
      const int rows = int(std::min<int64_t>(mb, B - b0));
      products(W, p0, nb, b0, rows, v);
      if (up) products(*up, p0, nb, b0, rows, u);
      for (int i = 0; i < rows; i++) {
        if (bias) {
#pragma omp simd
          for (int64_t c = 0; c < width; c++) v[i][c] += bias[n0 + c];
        }
        if (up_bias) {
#pragma omp simd
          for (int64_t c = 0; c < width; c++) u[i][c] += up_bias[n0 + c];
        }
        activate(v[i], u[i], width, activation);
        float* o = out + (b0 + i) * out_stride + n0;
#pragma omp simd
        for (int64_t c = 0; c < width; c++) o[c] = v[i][c] + (accumulate ? o[c] : 0.f);
      }
    }
  });
#if MICROGPT_AMX
  if (amx) _tile_release();  // a thread holding no tiles saves and restores less on a context switch
#endif
}

// LayerNorm or RMSNorm of one vector of length C, with optional gain and bias.
void norm(const float* x, float* out, int64_t C, int64_t kind, double eps, const float* gain, const float* bias) {
  float mean = 0.f;
  if (kind == LAYERNORM) {
#pragma omp simd reduction(+ : mean)
    for (int64_t i = 0; i < C; i++) mean += x[i];
    mean /= C;
  }
  float var = 0.f;
#pragma omp simd reduction(+ : var)
  for (int64_t i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
  const float inv = 1.f / std::sqrt(var / C + float(eps));
#pragma omp simd
  for (int64_t i = 0; i < C; i++) out[i] = (x[i] - mean) * inv;
  if (gain) {
#pragma omp simd
    for (int64_t i = 0; i < C; i++) out[i] *= gain[i];
  }
  if (bias) {
#pragma omp simd
    for (int64_t i = 0; i < C; i++) out[i] += bias[i];
  }
}

// Rotate-half RoPE (HF Llama layout) of one head at one position.
void rope(float* x, const float* cos, const float* sin, int64_t hs) {
  const int64_t half = hs / 2;
  for (int64_t i = 0; i < half; i++) {
    const float x1 = x[i], x2 = x[i + half];
    x[i] = x1 * cos[i] - x2 * sin[i];
    x[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
  }
}

// An fp32 vector of the model (a gain, a bias, a rotary table) with its memory; null when absent.
struct Vector {
  torch::Tensor tensor;
  const float* data = nullptr;

  Vector() = default;
  Vector(torch::Tensor t) : tensor(std::move(t)), data(tensor.numel() ? tensor.data_ptr<float>() : nullptr) {}
};

// out = (or, with add, +=) row r of an fp32 or bf16 table of width C.
void table_row(const torch::Tensor& table, int64_t r, int64_t C, float* out, bool add) {
  if (table.scalar_type() == torch::kBFloat16) {
    const uint16_t* row = reinterpret_cast<const uint16_t*>(table.data_ptr()) + r * C;
    for (int64_t i = 0; i < C; i++) out[i] = widen(row[i]) + (add ? out[i] : 0.f);
  } else {
    const float* row = table.data_ptr<float>() + r * C;
    for (int64_t i = 0; i < C; i++) out[i] = row[i] + (add ? out[i] : 0.f);
  }
}

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

#elif MICROGPT_AVX2
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

#endif

#if defined(__AVX512F__) || MICROGPT_AVX2
// scores[t] = q . key t for n keys, four at a time (one reduction for four), keys prefetched ahead.
template <typename T, int CH, typename Vector>
void key_scores(const Vector (&qv)[CH], const T* keys, int64_t n, float* scores) {
  constexpr int64_t hs = CH * VECTOR;
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    const T* key = keys + t * hs;
    prefetch(key, 4 * hs * sizeof(T));
    _mm_storeu_ps(scores + t, sum4(key_dot<T, CH>(qv, key), key_dot<T, CH>(qv, key + hs),
                                   key_dot<T, CH>(qv, key + 2 * hs), key_dot<T, CH>(qv, key + 3 * hs)));
  }
  const Vector zero{};
  for (; t < n; t++) scores[t] = _mm_cvtss_f32(sum4(key_dot<T, CH>(qv, keys + t * hs), zero, zero, zero));
}

#if defined(__AVX512F__)
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
#else
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

// attend_registers<T, CH> for a head of `chunks` vectors, where CH = chunks is one of 1 .. 128 / VECTOR.
template <typename T, int CH = 1>
bool attend_in_registers(int64_t chunks, const float* q, const T* keys, const T* vals, int64_t n, float scale,
                         float* scores, float* out) {
  if constexpr (CH * VECTOR > 128) {
    return false;
  } else {
    if (chunks != CH) return attend_in_registers<T, CH + 1>(chunks, q, keys, vals, n, scale, scores, out);
    attend_registers<T, CH>(q, keys, vals, n, scale, scores, out);
    return true;
  }
}
#endif

// Softmax attention of one query head over the first n positions of its key/value head:
// out = softmax(scale * K q) V. With AVX-512 or AVX2 and a head size of up to 128 (in whole vectors)
// the query and the output live in registers for the whole pass; otherwise plain loops.
template <typename T>
void attend(const float* q, const T* keys, const T* vals, int64_t n, int64_t hs, float scale,
            std::vector<float>& scores, float* out) {
  scores.resize(n);
#if defined(__AVX512F__) || MICROGPT_AVX2
  if (hs % VECTOR == 0 && attend_in_registers<T>(hs / VECTOR, q, keys, vals, n, scale, scores.data(), out)) return;
#endif
  for (int64_t t = 0; t < n; t++) {
    float dot = 0.f;
    for (int64_t i = 0; i < hs; i++) dot += q[i] * widen(keys[t * hs + i]);
    scores[t] = dot * scale;
  }
  const float total = softmax_in_place(scores.data(), n);
  std::fill(out, out + hs, 0.f);
  for (int64_t t = 0; t < n; t++) {
    const float p = scores[t] / total;
#pragma omp simd
    for (int64_t i = 0; i < hs; i++) out[i] += p * widen(vals[t * hs + i]);
  }
}

// A step's activations and product inputs, reused from step to step by the thread that runs it.
struct Scratch {
  std::vector<float> x, h, qkv, att, act;
  Inputs in;

  void fit(int64_t B, int64_t C, int64_t qkv_width, int64_t q_width, int64_t hidden, bool int8) {
    x.resize(B * C), h.resize(B * C), qkv.resize(B * qkv_width), att.resize(B * q_width), act.resize(B * hidden);
    in.fit(B, std::max({C, q_width, hidden}), int8);
  }
};

struct Layer {
  Vector attn_gain, attn_bias, qkv_bias, q_gain, q_bias, k_gain, k_bias, proj_bias;
  Vector mlp_gain, mlp_bias, fc_bias, up_bias, mlp_proj_bias;
  Packed qkv, proj, fc, up, mlp_proj;  // fc is SwiGLU's gate; up is empty otherwise
};

// A model's weights, packed once; `step` feeds one token per row of a batch.
class NativeModel {
 public:
  // `layers`: 16 tensors per layer in the order of microgpt/native.py; `globals`: wte, wpe,
  // rope cos, rope sin, embed-norm gain and bias, final-norm gain and bias, lm_head.
  // `scales`: empty for fp32/bf16 weights; for int8 weights the fp32 per-row scales of qkv, proj,
  // fc and mlp proj of every layer, then of wte and lm_head (the KV cache is then bf16).
  NativeModel(const std::vector<torch::Tensor>& layers, const std::vector<torch::Tensor>& globals,
              const std::vector<torch::Tensor>& scales, const std::vector<int64_t>& ints, double eps) {
    TORCH_CHECK(ints.size() == 13, "expected 13 shape integers");
    n_layer_ = ints[0], n_head_ = ints[1], n_kv_head_ = ints[2], head_size_ = ints[3], n_embd_ = ints[4];
    hidden_ = ints[5], vocab_ = ints[6], norm_ = ints[7], mlp_ = ints[8], rope_ = ints[9], qk_norm_ = ints[10];
    embed_norm_ = ints[11], final_norm_ = ints[12], eps_ = eps;
    TORCH_CHECK(int64_t(layers.size()) == n_layer_ * 16 && globals.size() == 9, "unexpected tensor lists");
    const bool int8 = !scales.empty();
    TORCH_CHECK(!int8 || int64_t(scales.size()) == n_layer_ * 4 + 2, "expected 4 scales per layer and 2 more");
    TORCH_CHECK(int8 == (globals[0].scalar_type() == torch::kChar), "scales come with int8 weights only");
    // The KV cache: the weights' dtype, bf16 for int8 weights (as llama.cpp keeps f16 for Q8_0): a
    // batch's attention streams the cache, which in fp32 would outweigh the int8 weights.
    dtype_ = int8 ? torch::kBFloat16 : globals[0].scalar_type();
    TORCH_CHECK(dtype_ == torch::kFloat32 || dtype_ == torch::kBFloat16, "weights must be fp32, bf16 or int8");
    const auto scale = [&](int64_t i) { return int8 ? scales[i] : torch::Tensor(); };
    for (int64_t l = 0; l < n_layer_; l++) {
      const torch::Tensor* w = &layers[l * 16];
      Layer layer{w[0], w[1], w[3], w[4], w[5], w[6], w[7], w[9], w[10], w[11], w[13], Vector(), w[15]};
      layer.qkv = Packed::from(w[2], scale(l * 4));
      layer.proj = Packed::from(w[8], scale(l * 4 + 1));
      const torch::Tensor fc_scale = scale(l * 4 + 2);
      const auto half = [&](const torch::Tensor& t, int64_t at) {
        return t.defined() ? t.narrow(0, at, hidden_) : t;
      };
      if (mlp_ == SWIGLU) {  // gate and up rows packed apart, so block i of each pairs up
        layer.fc = Packed::from(w[12].narrow(0, 0, hidden_), half(fc_scale, 0));
        layer.up = Packed::from(w[12].narrow(0, hidden_, hidden_), half(fc_scale, hidden_));
        if (w[13].numel()) {
          layer.fc_bias = Vector(w[13].narrow(0, 0, hidden_).contiguous());
          layer.up_bias = Vector(w[13].narrow(0, hidden_, hidden_).contiguous());
        }
      } else {
        layer.fc = Packed::from(w[12], fc_scale);
      }
      layer.mlp_proj = Packed::from(w[14], scale(l * 4 + 3));
      layers_.push_back(std::move(layer));
    }
    wte_ = globals[0], wpe_ = globals[1], cos_ = globals[2], sin_ = globals[3];
    embed_gain_ = globals[4], embed_bias_ = globals[5], final_gain_ = globals[6], final_bias_ = globals[7];
    if (int8) wte_scales_ = scales[n_layer_ * 4];
    lm_head_ = Packed::from(globals[8], scale(n_layer_ * 4 + 1));
  }

  // `threads` <= 0: torch's intra-op thread count.
  torch::Tensor step(const torch::Tensor& tokens, const torch::Tensor& positions,
                     const std::vector<torch::Tensor>& k_cache, const std::vector<torch::Tensor>& v_cache,
                     int64_t threads) const {
    TORCH_CHECK(tokens.scalar_type() == torch::kLong && positions.scalar_type() == torch::kLong, "ids must be int64");
    TORCH_CHECK(tokens.numel() == positions.numel(), "one position per token");
    TORCH_CHECK(int64_t(k_cache.size()) == n_layer_ && int64_t(v_cache.size()) == n_layer_, "one cache per layer");
    for (const auto* caches : {&k_cache, &v_cache}) {
      for (const auto& cache : *caches) {
        TORCH_CHECK(cache.is_contiguous() && cache.scalar_type() == dtype_ && cache.size(0) == tokens.numel(),
                    "caches must be contiguous (B, n_kv_head, L, head_size) in the step's cache dtype");
      }
    }
    const auto tok = tokens.contiguous(), pos = positions.contiguous();
    const int team = int(threads > 0 ? threads : at::get_num_threads());
    if (dtype_ == torch::kBFloat16) return run<uint16_t>(tok, pos, k_cache, v_cache, team);
    return run<float>(tok, pos, k_cache, v_cache, team);
  }

 private:
  template <typename T>
  torch::Tensor run(const torch::Tensor& tokens, const torch::Tensor& positions,
                    const std::vector<torch::Tensor>& k_cache, const std::vector<torch::Tensor>& v_cache,
                    int team) const {
    const int64_t B = tokens.size(0), C = n_embd_, hs = head_size_, groups = n_head_ / n_kv_head_;
    const int64_t q_width = n_head_ * hs, kv_width = n_kv_head_ * hs, qkv_width = q_width + 2 * kv_width;
    const int64_t* tok = tokens.data_ptr<int64_t>();
    const int64_t* pos = positions.data_ptr<int64_t>();
    const float *cos = cos_.data, *sin = sin_.data;
    const float scale = 1.f / std::sqrt(float(hs));
    // Scratch that lives as long as the thread and only grows, so a step allocates nothing: freed and
    // allocated again every step, it came back as fresh pages to fault in whenever glibc had trimmed
    // the thread's arena, which cost a single-row step 100 of its 300 us off the main thread.
    thread_local Scratch scratch;
    scratch.fit(B, C, qkv_width, q_width, hidden_, wte_scales_.data != nullptr);
    float *x = scratch.x.data(), *h = scratch.h.data(), *qkv = scratch.qkv.data(), *att = scratch.att.data(),
          *act = scratch.act.data();
    Inputs& in = scratch.in;
    auto logits = torch::empty({B, vocab_}, torch::kFloat32);

    // The step's phases, in the order every thread goes through them: the embedding; per layer a
    // norm, qkv, rotary and cache writes, attention, proj, a norm, fc and mlp proj; the final norm
    // and the head.
    const int64_t phases = 1 + n_layer_ * (5 + 4 * PRODUCT_PHASES) + 1 + PRODUCT_PHASES;
    thread_local Team threads;  // the calling thread's own workers, kept between steps
    threads.run(team, phases, [&](Member& me) {
      thread_local std::vector<float> scores;  // each team thread's own, kept between steps
      me.each(B, [&](int64_t b) {  // token (+ learned position) embedding
        if (wte_scales_.data) {
          const int8_t* te = reinterpret_cast<const int8_t*>(wte_.data_ptr()) + tok[b] * C;
          const float s = wte_scales_.data[tok[b]];
          for (int64_t i = 0; i < C; i++) x[b * C + i] = float(te[i]) * s;
        } else {
          table_row(wte_, tok[b], C, &x[b * C], false);
        }
        if (wpe_.numel()) table_row(wpe_, pos[b], C, &x[b * C], true);
        if (embed_norm_) norm(&x[b * C], &x[b * C], C, norm_, eps_, embed_gain_.data, embed_bias_.data);
      });
      for (int64_t l = 0; l < n_layer_; l++) {
        const Layer& w = layers_[l];
        T* kc = reinterpret_cast<T*>(k_cache[l].data_ptr());  // (B, n_kv_head, L, hs)
        T* vc = reinterpret_cast<T*>(v_cache[l].data_ptr());
        const int64_t L = k_cache[l].size(2);
        me.each(B, [&](int64_t b) { norm(&x[b * C], &h[b * C], C, norm_, eps_, w.attn_gain.data, w.attn_bias.data); });
        product(me, in, w.qkv, w.qkv_bias.data, h, C, qkv, qkv_width, B, false);
        me.each(B, [&](int64_t b) {  // q/k norm, rotary, then store k and v at this row's position
          float* q = &qkv[b * qkv_width];
          float* k = q + q_width;
          const float* v = k + kv_width;
          for (int64_t hd = 0; hd < n_head_ + n_kv_head_; hd++) {
            float* head = q + hd * hs;  // query heads, then key heads (k follows q)
            const bool is_q = hd < n_head_;
            if (qk_norm_) {
              norm(head, head, hs, norm_, eps_, (is_q ? w.q_gain : w.k_gain).data,
                   (is_q ? w.q_bias : w.k_bias).data);
            }
            if (rope_) rope(head, cos + pos[b] * hs, sin + pos[b] * hs, hs);
          }
          for (int64_t g = 0; g < n_kv_head_; g++) {
            const int64_t at = ((b * n_kv_head_ + g) * L + pos[b]) * hs;
            for (int64_t i = 0; i < hs; i++) {
              narrow(k[g * hs + i], kc + at + i);
              narrow(v[g * hs + i], vc + at + i);
            }
          }
        });
        me.each(B * n_head_, [&](int64_t bh) {  // softmax attention of one head over positions 0..pos
          const int64_t b = bh / n_head_, hd = bh % n_head_, g = hd / groups;
          attend(&qkv[b * qkv_width + hd * hs], kc + (b * n_kv_head_ + g) * L * hs, vc + (b * n_kv_head_ + g) * L * hs,
                 pos[b] + 1, hs, scale, scores, &att[b * q_width + hd * hs]);
        });
        product(me, in, w.proj, w.proj_bias.data, att, q_width, x, C, B, true);
        me.each(B, [&](int64_t b) { norm(&x[b * C], &h[b * C], C, norm_, eps_, w.mlp_gain.data, w.mlp_bias.data); });
        const bool glu = mlp_ == SWIGLU;
        product(me, in, w.fc, w.fc_bias.data, h, C, act, hidden_, B, false, glu ? &w.up : nullptr,
                glu ? w.up_bias.data : nullptr, mlp_);
        product(me, in, w.mlp_proj, w.mlp_proj_bias.data, act, hidden_, x, C, B, true);
      }
      me.each(B, [&](int64_t b) {
        float* xb = &x[b * C];
        if (final_norm_) norm(xb, &h[b * C], C, norm_, eps_, final_gain_.data, final_bias_.data);
        else std::copy(xb, xb + C, &h[b * C]);
      });
      product(me, in, lm_head_, nullptr, h, C, logits.data_ptr<float>(), vocab_, B, false);
    });
    return logits;
  }

  std::vector<Layer> layers_;
  Vector wte_scales_, cos_, sin_, embed_gain_, embed_bias_, final_gain_, final_bias_;
  torch::Tensor wte_, wpe_;
  Packed lm_head_;
  torch::ScalarType dtype_;
  int64_t n_layer_, n_head_, n_kv_head_, head_size_, n_embd_, hidden_, vocab_, norm_, mlp_, rope_, qk_norm_;
  int64_t embed_norm_, final_norm_;
  double eps_;
};

// The instruction sets this build's kernels use (the machine's own, at first use).
std::string kernels() {
#if MICROGPT_AMX
  return "AVX-512 and AMX";
#elif MICROGPT_AVX512
  return "AVX-512";
#elif MICROGPT_AVX2
  return "AVX2";
#else
  return "portable C++";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<NativeModel>(m, "NativeModel")
      .def(pybind11::init<const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&,
                          const std::vector<torch::Tensor>&, const std::vector<int64_t>&, double>())
      .def("step", &NativeModel::step, pybind11::call_guard<pybind11::gil_scoped_release>(), pybind11::arg("tokens"),
           pybind11::arg("positions"), pybind11::arg("k_cache"), pybind11::arg("v_cache"), pybind11::arg("threads") = 0,
           "Feed one token per row, write the KV caches, return fp32 logits (B, V)");
  m.def("kernels", &kernels, "The instruction sets the kernels use");
}
