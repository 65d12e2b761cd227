// Dropout keep-masks from a counter-based hash: mask[i] depends only on (seed, i).
//
// torch's CPU bernoulli_ draws one Mersenne-Twister number per element on one stream,
// which made dropout a quarter of a CPU training step. Here each element's 16-bit draw is
// a hash of (seed, i), computed in parallel: the same mask for any thread count.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <type_traits>

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

// The factor of element i: scale where the top 16 bits of hash(seed, i) >= threshold, else 0
// (threshold in [0, 65536]). Two keyed rounds, so masks of different seeds are not shifted
// copies of each other. Written in the activation's dtype, as constants, so no element is
// converted; ATen's vectorized multiplication then applies it.
template <typename T>
static void fill_factors(T* out, int64_t numel, int64_t threshold, uint64_t key, T scale) {
  // Stored as raw bits of T's width: a plain integer select, with no float conversion per element.
  using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  static_assert(sizeof(Bits) == sizeof(T));
  Bits keep_bits;
  std::memcpy(&keep_bits, &scale, sizeof(T));
  Bits* bits = reinterpret_cast<Bits*>(out);
  const uint32_t k1 = static_cast<uint32_t>(key), k2 = static_cast<uint32_t>(key >> 32);
  const uint32_t limit = static_cast<uint32_t>(threshold);
  at::parallel_for(0, numel, 1 << 14, [&](int64_t begin, int64_t end) {
    // Locals, not captures: a store through `bits` could alias a captured Bits, forcing a
    // reload per element and no vectorization (measured: 20x slower).
    Bits* const dst = bits;
    const Bits keep = keep_bits;
    const uint32_t a = k1, b = k2, lim = limit;
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t h = mix32(mix32(static_cast<uint32_t>(i) ^ a) + b + static_cast<uint32_t>(i >> 32));
      dst[i] = (h >> 16) >= lim ? keep : Bits(0);  // all-zero bits are +0.0 in every float type
    }
  });
}

// x times its dropout factors. The backward pass calls this on the gradient with the same
// seed, so the mask is regenerated rather than stored.
torch::Tensor hash_dropout(const torch::Tensor& x, int64_t threshold, int64_t seed, double scale) {
  TORCH_CHECK(threshold >= 0 && threshold <= 65536, "dropout threshold must be in [0, 65536]");
  TORCH_CHECK(x.device().is_cpu(), "hash_dropout runs on the CPU");
  auto factors = torch::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const uint64_t key = splitmix64(static_cast<uint64_t>(seed));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "hash_dropout", [&] {
    fill_factors<scalar_t>(factors.data_ptr<scalar_t>(), x.numel(), threshold, key, static_cast<scalar_t>(scale));
  });
  return x * factors;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hash_dropout", &hash_dropout, "x times a dropout mask hashed from (seed, index), scaled");
}
