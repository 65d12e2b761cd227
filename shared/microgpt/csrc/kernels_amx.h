// The AMX kernels: int8 and bf16 products of 16 batch rows at a time on the tile unit, whose
// weight tiles are exactly the panels' lines. A CPU with AMX has AVX-512 too: the int8 tiles end
// with the AVX-512 `i8_finish`, so both int8 paths give the same bits. Part of native_decode.cpp
// (see panels.h).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels_avx512.h"
#include "panels.h"

namespace {

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

}  // namespace
