// Dropout keep-masks from a counter-based hash: mask[i] depends only on (seed, i).
//
// torch's CPU bernoulli_ draws one Mersenne-Twister number per element on one stream,
// which made dropout a quarter of a CPU training step. Here each element's 16-bit draw is
// a hash of (seed, i), computed in parallel: the same mask for any thread count, applied in
// the same pass that reads x (one read and one write per element).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <type_traits>

#include "fast_math.h"

static inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// 32-bit integer mixer (lowbias32, Chris Wellons): multiplies and shifts only, so the
// loop below vectorizes with AVX2/AVX-512.
static inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// Whether element i is kept: the top 16 bits of hash(seed, i) >= threshold (threshold in
// [0, 65536]). Two keyed rounds, so masks of different seeds are not shifted copies of each other.
static inline bool kept(int64_t i, uint32_t k1, uint32_t k2, uint32_t limit) {
  const uint32_t h = mix32(mix32(static_cast<uint32_t>(i) ^ k1) + k2 + static_cast<uint32_t>(i >> 32));
  return (h >> 16) >= limit;
}

// out[i] = kept(i) ? x[i] * scale : 0 in one pass, where `scale` is already in x's dtype: the
// same bits as torch's `x * factors` with the factors written out (one rounding per element).
// T is float, double, or uint16_t holding bf16 bits (fast_math.h's conversions vectorise;
// c10's do not).
template <typename T>
static void drop(const T* x, T* out, int64_t numel, uint64_t key, uint32_t limit, double scale) {
  using Scale = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const uint32_t k1 = static_cast<uint32_t>(key), k2 = static_cast<uint32_t>(key >> 32);
  at::parallel_for(0, numel, 1 << 14, [&](int64_t begin, int64_t end) {
    // Locals, not captures: a store through `out` could alias a captured value, forcing a
    // reload per element and no vectorization (measured: 20x slower).
    const T* const in = x;
    T* const dst = out;
    const uint32_t a = k1, b = k2, lim = limit;
    const Scale s = static_cast<Scale>(scale);
    for (int64_t i = begin; i < end; ++i) {
      if constexpr (std::is_same_v<T, uint16_t>) {
        const float v = widen(in[i]) * s;
        narrow(kept(i, a, b, lim) ? v : 0.f, &dst[i]);
      } else {
        dst[i] = kept(i, a, b, lim) ? in[i] * s : T(0);
      }
    }
  });
}

// x times its dropout mask and scale. The backward pass calls this on the gradient with the
// same seed, so the mask is regenerated rather than stored.
torch::Tensor hash_dropout(const torch::Tensor& input, int64_t threshold, int64_t seed, double scale) {
  TORCH_CHECK(threshold >= 0 && threshold <= 65536, "dropout threshold must be in [0, 65536]");
  TORCH_CHECK(input.device().is_cpu(), "hash_dropout runs on the CPU");
  const auto x = input.contiguous();
  auto out = torch::empty_like(x);
  const uint64_t key = splitmix64(static_cast<uint64_t>(seed));
  const uint32_t limit = static_cast<uint32_t>(threshold);
  const int64_t n = x.numel();
  switch (x.scalar_type()) {
    case at::kFloat:
      drop(x.data_ptr<float>(), out.data_ptr<float>(), n, key, limit, scale);
      break;
    case at::kDouble:
      drop(x.data_ptr<double>(), out.data_ptr<double>(), n, key, limit, scale);
      break;
    case at::kBFloat16: {
      const double rounded = static_cast<float>(static_cast<c10::BFloat16>(scale));  // the factor's bf16 value
      drop(reinterpret_cast<const uint16_t*>(x.data_ptr()), reinterpret_cast<uint16_t*>(out.data_ptr()), n, key,
           limit, rounded);
      break;
    }
    default:
      TORCH_CHECK(false, "hash_dropout takes fp32, fp64 or bf16, not ", x.scalar_type());
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hash_dropout", &hash_dropout, "x times a dropout mask hashed from (seed, index), scaled");
}
