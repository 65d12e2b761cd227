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
// The kernels by instruction set: kernels_avx512.h, kernels_amx.h, kernels_avx2.h and
// kernels_portable.h (product tiles, and attention in registers); panels.h holds the weight layout
// they share and selects the instruction set, attention.h the softmax and prefetch. This file holds
// what does not depend on the instruction set: the dispatch, the step's phases and the model.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "fast_math.h"
#include "kernels_amx.h"
#include "kernels_avx2.h"
#include "kernels_avx512.h"
#include "kernels_portable.h"
#include "panels.h"
#include "team.h"

namespace {

enum NormKind { LAYERNORM = 0, RMSNORM = 1 };
enum MlpKind { GELU = 0, GELU_TANH = 1, RELU = 2, RELU2 = 3, SWIGLU = 4 };

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

// One tile: the products of NB panels (16 * NB outputs, from panel p0) with MB input rows
// (from row b0), written to out[i][j * 16 + lane] in fp32 (bias and activation not applied).
// Each weight line is loaded once for all MB rows, which is what makes a batch cheaper than
// its rows one by one; a row's result does not depend on the other rows of the tile.
template <WeightKind K, int MB, int NB>
void tile(const Packed& W, int64_t p0, const Inputs& in, int64_t b0, float (*out)[NB_MAX * LANES]) {
#if MICROGPT_AVX2
  avx2_tile<K, MB, NB>(W, p0, in, b0, out);
#elif MICROGPT_AVX512
  avx512_tile<K, MB, NB>(W, p0, in, b0, out);
#else
  portable_tile<K, MB, NB>(W, p0, in, b0, out);
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
