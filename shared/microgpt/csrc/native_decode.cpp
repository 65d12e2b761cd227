// The native CPU decode step: one C++ call feeds one token to every row of a batch.
//
// Decoding is memory-bound: each token reads every weight once, so the design is about
// streaming weights at memory bandwidth and paying nothing else per token:
// - weights keep the model's dtype (fp32 or bf16) and are widened to fp32 in registers;
//   activations and accumulation are fp32;
// - int8 weights (per-output-channel fp32 scales, microgpt/quantize.py) stream half the bytes
//   of bf16. Their products run on integer dot-product instructions (AVX-512 VNNI): each input
//   vector is turned into 16-bit fixed point (one scale per vector, error <= 2^-16 of its
//   largest entry) split into a high and a low byte, so one product is two `vpdpbusd` per 64
//   weights instead of eight widen-and-FMA steps, and the result is what fp32 arithmetic on the
//   int8 weights gives to ~1e-5;
// - every matrix is repacked once into blocks of R rows stored as R x 16 tiles, so a
//   block is one sequential stream (prefetched ahead) that serves R outputs and all
//   batch rows with one read;
// - one OpenMP parallel region covers the whole step (threads meet at spinning barriers,
//   they are not forked per product), the MLP activation is applied inside its product's
//   loop, and nothing returns to Python between layers.
// Built at first use by microgpt/native.py with the machine's own instruction set.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

enum NormKind { LAYERNORM = 0, RMSNORM = 1 };
enum MlpKind { GELU = 0, GELU_TANH = 1, RELU = 2, RELU2 = 3, SWIGLU = 4 };

constexpr int64_t R = 8;                // output rows per block
constexpr int64_t W16 = 16;             // columns per tile (one AVX-512 register of fp32)
constexpr int64_t W64 = 64;             // columns per int8 tile (one AVX-512 register of bytes)
constexpr int64_t PREFETCH_BYTES = 2048;  // how far ahead a block's stream is prefetched

// The step's threads meet at this barrier, not at OpenMP's: libgomp's barriers sleep in futexes
// (tens of microseconds a wake-up) as soon as the process holds more OpenMP threads than cores,
// which a serving process does (every thread that ran a parallel torch op keeps its own pool).
// A waiter spins briefly, then yields its core, so other threads (the server's) still run.
struct SpinBarrier {
  std::atomic<int> threads{0}, arrived{0}, phase{0};

  void wait() {
    const int p = phase.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == threads.load(std::memory_order_relaxed)) {
      arrived.store(0, std::memory_order_relaxed);
      phase.store(p + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; phase.load(std::memory_order_acquire) == p; spins++) {
      if (spins < 4000) _mm_pause();
      else sched_yield();
    }
  }
};

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

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

// exp and erf in plain arithmetic, so that `omp simd` loops vectorise them (libm's do not):
// exp by 2^x = 2^floor(x) * p(frac(x)) with a degree-6 polynomial (relative error ~2e-7),
// erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7).
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.f), 88.f);
  const float t = x * 1.4426950408889634f;
  const float whole = std::floor(t), f = t - whole;
  const float p = 1.f + f * (0.6931471825f + f * (0.2402264923f + f * (0.0555040733f +
                  f * (0.0096183574f + f * (0.0013327543f + f * 0.0001540353f)))));
  const uint32_t bits = uint32_t(int32_t(whole) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}
inline float fast_erf(float x) {
  const float a = std::fabs(x), t = 1.f / (1.f + 0.3275911f * a);
  const float y = 1.f - t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f +
                  t * 1.061405429f)))) * fast_exp(-a * a);
  return std::copysign(y, x);
}

inline float activate(float v, int64_t kind) {
  switch (kind) {
    case GELU: return 0.5f * v * (1.f + fast_erf(v * float(M_SQRT1_2)));
    case GELU_TANH: {  // 0.5 v (1 + tanh(u)) = v * sigmoid(2u)
      const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
      return v / (1.f + fast_exp(-2.f * u));
    }
    case RELU: return v > 0.f ? v : 0.f;
    default: return v > 0.f ? v * v : 0.f;  // RELU2
  }
}

// A (n, k) matrix in the kernel's layout: (n/R, k/W, R, W), zero-padded to whole tiles, with
// W = 16 for fp32/bf16 and 64 for int8. An int8 matrix also keeps its per-row scales and the
// sums of its rows (the correction for the offset of the high input byte), padded to n/R*R.
struct Packed {
  torch::Tensor data, scales, row_sums;
  int64_t n = 0, k = 0, chunks = 0;

  static Packed from(const torch::Tensor& w, const torch::Tensor& scales) {
    const bool int8 = w.scalar_type() == torch::kChar;
    TORCH_CHECK(int8 == scales.defined(), "int8 matrices, and only they, come with scales");
    const int64_t width = int8 ? W64 : W16;
    const int64_t n = w.size(0), k = w.size(1), np = round_up(n, R), kp = round_up(k, width);
    auto padded = torch::zeros({np, kp}, w.options());
    padded.narrow(0, 0, n).narrow(1, 0, k).copy_(w);
    Packed p{padded.view({np / R, R, kp / width, width}).permute({0, 2, 1, 3}).contiguous(), {}, {}, n, k,
             kp / width};
    if (int8) {
      TORCH_CHECK(scales.numel() == n && scales.scalar_type() == torch::kFloat32, "one fp32 scale per row");
      p.scales = torch::zeros({np}, torch::kFloat32);
      p.scales.narrow(0, 0, n).copy_(scales);
      p.row_sums = padded.to(torch::kInt).sum(1, false, torch::kInt).contiguous();
    }
    return p;
  }
  bool int8() const { return scales.defined(); }
};

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {  // 16 bf16 -> 16 fp32
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
#endif

// The R dot products of one packed block with one activation vector x (padded length).
template <typename T>
inline void dot_block(const T* block, int64_t chunks, const float* x, float* out) {
#if defined(__AVX512F__)
  __m512 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; c++) {
    const T* tile = block + c * R * W16;
    const char* ahead = reinterpret_cast<const char*>(tile) + PREFETCH_BYTES;
    for (int64_t line = 0; line < int64_t(R * W16 * sizeof(T)); line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
    const __m512 xv = _mm512_loadu_ps(x + c * W16);
    for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(load16(tile + r * W16), xv, acc[r]);
  }
  for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
#else
  float acc[R] = {};
  for (int64_t c = 0; c < chunks; c++) {
    const T* tile = block + c * R * W16;
    for (int r = 0; r < R; r++) {
#pragma omp simd reduction(+ : acc[r])
      for (int64_t i = 0; i < W16; i++) acc[r] += widen(tile[r * W16 + i]) * x[c * W16 + i];
    }
  }
  std::copy(acc, acc + R, out);
#endif
}

// An input vector in 16-bit fixed point, split into bytes for `vpdpbusd` (unsigned x signed):
// x ~= scale * (256 * (hi - 128) + lo), with hi and lo in [0, 255]; entries past k are zero.
inline float split_bytes(const float* x, int64_t k, int64_t kp, uint8_t* hi, uint8_t* lo) {
  float top = 0.f;
  for (int64_t i = 0; i < k; i++) top = std::max(top, std::fabs(x[i]));
  const float scale = top > 0.f ? top / 32767.f : 1.f, inv = 1.f / scale;
  for (int64_t i = 0; i < kp; i++) {
    const int32_t v = i < k ? int32_t(std::lrint(x[i] * inv)) : 0;  // |v| <= 32767
    hi[i] = uint8_t((v >> 8) + 128);  // arithmetic shift: floor(v / 256)
    lo[i] = uint8_t(v & 255);
  }
  return scale;
}

// The R integer dot products of one packed int8 block with the high and the low input bytes.
inline void dot_block_i8(const int8_t* block, int64_t chunks, const uint8_t* hi, const uint8_t* lo, int32_t* out_hi,
                         int32_t* out_lo) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  __m512i acc_hi[R], acc_lo[R];
  for (int r = 0; r < R; r++) acc_hi[r] = acc_lo[r] = _mm512_setzero_si512();
  for (int64_t c = 0; c < chunks; c++) {
    const int8_t* tile = block + c * R * W64;
    const char* ahead = reinterpret_cast<const char*>(tile) + PREFETCH_BYTES;
    for (int64_t line = 0; line < R * W64; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
    const __m512i h = _mm512_loadu_si512(hi + c * W64), l = _mm512_loadu_si512(lo + c * W64);
    for (int r = 0; r < R; r++) {
      const __m512i w = _mm512_loadu_si512(tile + r * W64);
      acc_hi[r] = _mm512_dpbusd_epi32(acc_hi[r], h, w);
      acc_lo[r] = _mm512_dpbusd_epi32(acc_lo[r], l, w);
    }
  }
  for (int r = 0; r < R; r++) {
    out_hi[r] = _mm512_reduce_add_epi32(acc_hi[r]);
    out_lo[r] = _mm512_reduce_add_epi32(acc_lo[r]);
  }
#else
  for (int r = 0; r < R; r++) out_hi[r] = out_lo[r] = 0;
  for (int64_t c = 0; c < chunks; c++) {
    const int8_t* tile = block + c * R * W64;
    for (int r = 0; r < R; r++) {
      int32_t sh = 0, sl = 0;
#pragma omp simd reduction(+ : sh, sl)
      for (int64_t i = 0; i < W64; i++) {
        sh += int32_t(hi[c * W64 + i]) * tile[r * W64 + i];
        sl += int32_t(lo[c * W64 + i]) * tile[r * W64 + i];
      }
      out_hi[r] += sh, out_lo[r] += sl;
    }
  }
#endif
}

// The R fp32 outputs of an int8 block: scales times the integer products, offset corrected.
inline void dot_block_q(const Packed& W, int64_t blk, const uint8_t* hi, const uint8_t* lo, float x_scale,
                        float* out) {
  int32_t dh[R], dl[R];
  dot_block_i8(reinterpret_cast<const int8_t*>(W.data.data_ptr()) + blk * W.chunks * R * W64, W.chunks, hi, lo,
               dh, dl);
  const float* scales = W.scales.data_ptr<float>() + blk * R;
  const int32_t* sums = W.row_sums.data_ptr<int32_t>() + blk * R;
  for (int r = 0; r < R; r++) {
    const double dot = 256.0 * (double(dh[r]) - 128.0 * double(sums[r])) + double(dl[r]);
    out[r] = float(dot * double(x_scale) * double(scales[r]));
  }
}

// Input vectors of an int8 product, split into bytes once per product and batch row.
struct SplitInput {
  std::vector<uint8_t> hi, lo;
  std::vector<float> scale;
  int64_t stride = 0;
};

// out[b, :n] (+)= W . x[b] + bias for int8 W, like `matvec` below; `in` holds the split inputs.
template <typename Post>
void matvec_q(const Packed& W, const float* bias, const SplitInput& in, float* out, int64_t out_stride, int64_t B,
              bool accumulate, const Packed* up, const float* up_bias, Post post) {
  float acc[R], acc_up[R];
#pragma omp for schedule(static) nowait
  for (int64_t blk = 0; blk < (W.n + R - 1) / R; blk++) {
    const int64_t n0 = blk * R, rows = std::min(R, W.n - n0);
    for (int64_t b = 0; b < B; b++) {
      const uint8_t *hi = &in.hi[b * in.stride], *lo = &in.lo[b * in.stride];
      dot_block_q(W, blk, hi, lo, in.scale[b], acc);
      if (up) dot_block_q(*up, blk, hi, lo, in.scale[b], acc_up);
      for (int64_t r = 0; r < rows; r++) {
        const float v = acc[r] + (bias ? bias[n0 + r] : 0.f);
        const float u = up ? acc_up[r] + (up_bias ? up_bias[n0 + r] : 0.f) : 0.f;
        float* o = out + b * out_stride + n0 + r;
        *o = post(v, u) + (accumulate ? *o : 0.f);
      }
    }
  }
}

// out[b, :n] (+)= W . x[b] + bias for B batch rows, inside the caller's parallel region.
// `post` (if any) maps each output (with `up`, SwiGLU's second product) before it is stored.
template <typename T, typename Post>
void matvec(const Packed& W, const float* bias, const float* x, int64_t x_stride, float* out, int64_t out_stride,
            int64_t B, bool accumulate, const Packed* up, const float* up_bias, Post post) {
  const T* data = reinterpret_cast<const T*>(W.data.data_ptr());
  const T* up_data = up ? reinterpret_cast<const T*>(up->data.data_ptr()) : nullptr;
  const int64_t block_size = W.chunks * R * W16;
  float acc[R], acc_up[R];
#pragma omp for schedule(static) nowait
  for (int64_t blk = 0; blk < (W.n + R - 1) / R; blk++) {
    const int64_t n0 = blk * R, rows = std::min(R, W.n - n0);
    for (int64_t b = 0; b < B; b++) {
      dot_block(data + blk * block_size, W.chunks, x + b * x_stride, acc);
      if (up_data) dot_block(up_data + blk * block_size, W.chunks, x + b * x_stride, acc_up);
      for (int64_t r = 0; r < rows; r++) {
        const float v = acc[r] + (bias ? bias[n0 + r] : 0.f);
        const float u = up_data ? acc_up[r] + (up_bias ? up_bias[n0 + r] : 0.f) : 0.f;
        float* o = out + b * out_stride + n0 + r;
        *o = post(v, u) + (accumulate ? *o : 0.f);
      }
    }
  }
}

const auto identity = [](float v, float) { return v; };

// LayerNorm or RMSNorm of one vector of length C, with optional gain and bias.
void norm(const float* x, float* out, int64_t C, int64_t kind, double eps, const float* gain, const float* bias) {
  float mean = 0.f;
  if (kind == LAYERNORM) {
    for (int64_t i = 0; i < C; i++) mean += x[i];
    mean /= C;
  }
  float var = 0.f;
  for (int64_t i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
  const float inv = 1.f / std::sqrt(var / C + float(eps));
  for (int64_t i = 0; i < C; i++) {
    float y = (x[i] - mean) * inv;
    if (gain) y *= gain[i];
    if (bias) y += bias[i];
    out[i] = y;
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

const float* f32_or_null(const torch::Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }

struct Layer {
  torch::Tensor attn_gain, attn_bias, qkv_bias, q_gain, q_bias, k_gain, k_bias, proj_bias;
  torch::Tensor mlp_gain, mlp_bias, fc_bias, up_bias, mlp_proj_bias;
  Packed qkv, proj, fc, up, mlp_proj;  // fc is SwiGLU's gate; up is empty otherwise
};

// A model's weights, packed once; `step` feeds one token per row of a batch.
class NativeModel {
 public:
  // `layers`: 16 tensors per layer in the order of microgpt/native.py; `globals`: wte, wpe,
  // rope cos, rope sin, embed-norm gain and bias, final-norm gain and bias, lm_head.
  // `scales`: empty for fp32/bf16 weights; for int8 weights the fp32 per-row scales of qkv, proj,
  // fc and mlp proj of every layer, then of wte and lm_head (the KV cache is then fp32).
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
    dtype_ = int8 ? torch::kFloat32 : globals[0].scalar_type();
    TORCH_CHECK(dtype_ == torch::kFloat32 || dtype_ == torch::kBFloat16, "weights must be fp32, bf16 or int8");
    const auto scale = [&](int64_t i) { return int8 ? scales[i] : torch::Tensor(); };
    for (int64_t l = 0; l < n_layer_; l++) {
      const torch::Tensor* w = &layers[l * 16];
      Layer layer{w[0], w[1], w[3], w[4], w[5], w[6], w[7], w[9], w[10], w[11], w[13], torch::Tensor(), w[15]};
      layer.qkv = Packed::from(w[2], scale(l * 4));
      layer.proj = Packed::from(w[8], scale(l * 4 + 1));
      const torch::Tensor fc_scale = scale(l * 4 + 2);
      const auto half = [&](const torch::Tensor& t, int64_t at) {
        return t.defined() ? t.narrow(0, at, hidden_) : t;
      };
      if (mlp_ == SWIGLU) {  // gate and up rows packed apart, so block i of each pairs up
        layer.fc = Packed::from(w[12].narrow(0, 0, hidden_), half(fc_scale, 0));
        layer.up = Packed::from(w[12].narrow(0, hidden_, hidden_), half(fc_scale, hidden_));
        layer.fc_bias = w[13].numel() ? w[13].narrow(0, 0, hidden_).contiguous() : w[13];
        layer.up_bias = w[13].numel() ? w[13].narrow(0, hidden_, hidden_).contiguous() : w[13];
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

  torch::Tensor step(const torch::Tensor& tokens, const torch::Tensor& positions,
                     const std::vector<torch::Tensor>& k_cache, const std::vector<torch::Tensor>& v_cache) const {
    TORCH_CHECK(tokens.scalar_type() == torch::kLong && positions.scalar_type() == torch::kLong, "ids must be int64");
    TORCH_CHECK(tokens.numel() == positions.numel(), "one position per token");
    TORCH_CHECK(int64_t(k_cache.size()) == n_layer_ && int64_t(v_cache.size()) == n_layer_, "one cache per layer");
    for (const auto* caches : {&k_cache, &v_cache}) {
      for (const auto& cache : *caches) {
        TORCH_CHECK(cache.is_contiguous() && cache.scalar_type() == dtype_ && cache.size(0) == tokens.numel(),
                    "caches must be contiguous (B, n_kv_head, L, head_size) in the weights' dtype");
      }
    }
    const auto tok = tokens.contiguous(), pos = positions.contiguous();
    if (dtype_ == torch::kBFloat16) return run<uint16_t>(tok, pos, k_cache, v_cache);
    return run<float>(tok, pos, k_cache, v_cache);
  }

 private:
  template <typename T>
  torch::Tensor run(const torch::Tensor& tokens, const torch::Tensor& positions,
                    const std::vector<torch::Tensor>& k_cache, const std::vector<torch::Tensor>& v_cache) const {
    const int64_t B = tokens.size(0), C = n_embd_, hs = head_size_, groups = n_head_ / n_kv_head_;
    const int64_t q_width = n_head_ * hs, kv_width = n_kv_head_ * hs, qkv_width = q_width + 2 * kv_width;
    const int64_t c_pad = round_up(C, W16), q_pad = round_up(q_width, W16), h_pad = round_up(hidden_, W16);
    const int64_t* tok = tokens.data_ptr<int64_t>();
    const int64_t* pos = positions.data_ptr<int64_t>();
    const float *cos = f32_or_null(cos_), *sin = f32_or_null(sin_);
    const float scale = 1.f / std::sqrt(float(hs));
    // Inputs of products are zero-padded to whole tiles; the padding is never written.
    std::vector<float> x(B * C), h(B * c_pad), qkv(B * qkv_width), att(B * q_pad), act(B * h_pad);
    SplitInput split;  // int8 products only
    if (wte_scales_.defined()) {
      split.stride = round_up(std::max({C, q_width, hidden_}), W64);
      split.hi.resize(B * split.stride), split.lo.resize(B * split.stride), split.scale.resize(B);
    }
    auto logits = torch::empty({B, vocab_}, torch::kFloat32);
    const int64_t kind = mlp_;
    const auto activation = [kind](float v, float up) {
      return kind == SWIGLU ? v / (1.f + fast_exp(-v)) * up : activate(v, kind);
    };

    SpinBarrier sync;
#pragma omp parallel num_threads(at::get_num_threads())
    {
      sync.threads.store(omp_get_num_threads(), std::memory_order_relaxed);  // before this thread's first wait
      std::vector<float> scores;
#pragma omp masked
      for (int64_t b = 0; b < B; b++) {  // token (+ learned position) embedding
        const T* pe = wpe_.numel() ? reinterpret_cast<const T*>(wpe_.data_ptr()) + pos[b] * C : nullptr;
        if (wte_scales_.defined()) {
          const int8_t* te = reinterpret_cast<const int8_t*>(wte_.data_ptr()) + tok[b] * C;
          const float s = wte_scales_.data_ptr<float>()[tok[b]];
          for (int64_t i = 0; i < C; i++) x[b * C + i] = float(te[i]) * s + (pe ? widen(pe[i]) : 0.f);
        } else {
          const T* te = reinterpret_cast<const T*>(wte_.data_ptr()) + tok[b] * C;
          for (int64_t i = 0; i < C; i++) x[b * C + i] = widen(te[i]) + (pe ? widen(pe[i]) : 0.f);
        }
        if (embed_norm_) norm(&x[b * C], &x[b * C], C, norm_, eps_, f32_or_null(embed_gain_), f32_or_null(embed_bias_));
      }
      sync.wait();
      for (int64_t l = 0; l < n_layer_; l++) {
        const Layer& w = layers_[l];
        T* kc = reinterpret_cast<T*>(k_cache[l].data_ptr());  // (B, n_kv_head, L, hs)
        T* vc = reinterpret_cast<T*>(v_cache[l].data_ptr());
        const int64_t L = k_cache[l].size(2);
#pragma omp masked
        for (int64_t b = 0; b < B; b++) {
          norm(&x[b * C], &h[b * c_pad], C, norm_, eps_, f32_or_null(w.attn_gain), f32_or_null(w.attn_bias));
        }
        sync.wait();
        product<T>(sync, split, w.qkv, f32_or_null(w.qkv_bias), h.data(), c_pad, qkv.data(), qkv_width, B, false,
                   nullptr, nullptr, identity);
#pragma omp masked
        for (int64_t b = 0; b < B; b++) {  // q/k norm, rotary, then store k and v at this row's position
          float* q = &qkv[b * qkv_width];
          float* k = q + q_width;
          const float* v = k + kv_width;
          for (int64_t hd = 0; hd < n_head_ + n_kv_head_; hd++) {
            float* head = q + hd * hs;  // query heads, then key heads (k follows q)
            const bool is_q = hd < n_head_;
            if (qk_norm_) {
              norm(head, head, hs, norm_, eps_, f32_or_null(is_q ? w.q_gain : w.k_gain),
                   f32_or_null(is_q ? w.q_bias : w.k_bias));
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
        }
        sync.wait();
#pragma omp for schedule(static) nowait
        for (int64_t bh = 0; bh < B * n_head_; bh++) {  // softmax attention of one head over positions 0..pos
          const int64_t b = bh / n_head_, hd = bh % n_head_, g = hd / groups, n = pos[b] + 1;
          const float* q = &qkv[b * qkv_width + hd * hs];
          const T* keys = kc + (b * n_kv_head_ + g) * L * hs;
          const T* vals = vc + (b * n_kv_head_ + g) * L * hs;
          scores.resize(n);
          for (int64_t t = 0; t < n; t++) {
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < hs; i++) dot += q[i] * widen(keys[t * hs + i]);
            scores[t] = dot * scale;
          }
          const float top = *std::max_element(scores.begin(), scores.end());
          float total = 0.f;
#pragma omp simd reduction(+ : total)
          for (int64_t t = 0; t < n; t++) {
            scores[t] = fast_exp(scores[t] - top);
            total += scores[t];
          }
          float* out = &att[b * q_pad + hd * hs];
          std::fill(out, out + hs, 0.f);
          for (int64_t t = 0; t < n; t++) {
            const float p = scores[t] / total;
#pragma omp simd
            for (int64_t i = 0; i < hs; i++) out[i] += p * widen(vals[t * hs + i]);
          }
        }
        sync.wait();
        product<T>(sync, split, w.proj, f32_or_null(w.proj_bias), att.data(), q_pad, x.data(), C, B, true, nullptr,
                   nullptr, identity);
#pragma omp masked
        for (int64_t b = 0; b < B; b++) {
          norm(&x[b * C], &h[b * c_pad], C, norm_, eps_, f32_or_null(w.mlp_gain), f32_or_null(w.mlp_bias));
        }
        sync.wait();
        const bool glu = mlp_ == SWIGLU;
        product<T>(sync, split, w.fc, f32_or_null(w.fc_bias), h.data(), c_pad, act.data(), h_pad, B, false,
                   glu ? &w.up : nullptr, glu ? f32_or_null(w.up_bias) : nullptr, activation);
        product<T>(sync, split, w.mlp_proj, f32_or_null(w.mlp_proj_bias), act.data(), h_pad, x.data(), C, B, true,
                   nullptr, nullptr, identity);
      }
#pragma omp masked
      for (int64_t b = 0; b < B; b++) {
        float* xb = &x[b * C];
        if (final_norm_) norm(xb, &h[b * c_pad], C, norm_, eps_, f32_or_null(final_gain_), f32_or_null(final_bias_));
        else std::copy(xb, xb + C, &h[b * c_pad]);
      }
      sync.wait();
      product<T>(sync, split, lm_head_, nullptr, h.data(), c_pad, logits.data_ptr<float>(), vocab_, B, false, nullptr,
                 nullptr, identity);
    }
    return logits;
  }

  // W . x for fp32/bf16 W (`matvec`), or for int8 W: split the inputs into bytes, then `matvec_q`;
  // the threads meet at `sync` once the output is complete.
  template <typename T, typename Post>
  static void product(SpinBarrier& sync, SplitInput& split, const Packed& W, const float* bias, const float* x,
                      int64_t x_stride, float* out, int64_t out_stride, int64_t B, bool accumulate, const Packed* up,
                      const float* up_bias, Post post) {
    if (!W.int8()) {
      matvec<T>(W, bias, x, x_stride, out, out_stride, B, accumulate, up, up_bias, post);
      sync.wait();
      return;
    }
#pragma omp for schedule(static) nowait
    for (int64_t b = 0; b < B; b++) {
      split.scale[b] = split_bytes(x + b * x_stride, W.k, W.chunks * W64, &split.hi[b * split.stride],
                                   &split.lo[b * split.stride]);
    }
    sync.wait();
    matvec_q(W, bias, split, out, out_stride, B, accumulate, up, up_bias, post);
    sync.wait();
  }

  std::vector<Layer> layers_;
  torch::Tensor wte_scales_;
  torch::Tensor wte_, wpe_, cos_, sin_, embed_gain_, embed_bias_, final_gain_, final_bias_;
  Packed lm_head_;
  torch::ScalarType dtype_;
  int64_t n_layer_, n_head_, n_kv_head_, head_size_, n_embd_, hidden_, vocab_, norm_, mlp_, rope_, qk_norm_;
  int64_t embed_norm_, final_norm_;
  double eps_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<NativeModel>(m, "NativeModel")
      .def(pybind11::init<const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&,
                          const std::vector<torch::Tensor>&, const std::vector<int64_t>&, double>())
      .def("step", &NativeModel::step, pybind11::call_guard<pybind11::gil_scoped_release>(),
           "Feed one token per row, write the KV caches, return fp32 logits (B, V)");
}
