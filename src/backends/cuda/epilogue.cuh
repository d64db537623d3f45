// The fused convolution epilogue shared by every convolution kernel: for 8 consecutive maps of one
// output pixel, s32 accumulators -> + bias -> + residual (requantized if folded) -> ReLU ->
// requantize -> store as the output's storage. The same integer arithmetic as quant::requantize.
#pragma once

#include <cstdint>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

__device__ __forceinline__ int32_t wrap_add(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
}

// Stores eight consecutive elements as `s` (values already in range).
__device__ __forceinline__ void store8(uint8_t* row, int c0, Storage s, const int32_t (&v)[8]) {
  switch (s) {
    case Storage::u4:
    case Storage::s4: {
      uint32_t w = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) w |= (static_cast<uint32_t>(v[j]) & 0xFu) << (4 * j);
      *reinterpret_cast<uint32_t*>(row + c0 / 2) = w;
      break;
    }
    case Storage::u8:
    case Storage::s8: {
      uint32_t w0 = 0, w1 = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        w0 |= (static_cast<uint32_t>(v[j]) & 0xFFu) << (8 * j);
        w1 |= (static_cast<uint32_t>(v[j + 4]) & 0xFFu) << (8 * j);
      }
      // Rows are padded to words only: two word stores.
      *reinterpret_cast<uint32_t*>(row + c0) = w0;
      *reinterpret_cast<uint32_t*>(row + c0 + 4) = w1;
      break;
    }
    default: {
      int32_t* p = reinterpret_cast<int32_t*>(row) + c0;
#pragma unroll
      for (int j = 0; j < 8; ++j) p[j] = v[j];
      break;
    }
  }
}

// One element of an NHWC row as `s` (the tail of a map range that is not a multiple of 8).
__device__ __forceinline__ void store1(uint8_t* row, int c, Storage s, int32_t v) {
  switch (s) {
    case Storage::u4:
    case Storage::s4: {
      uint8_t& b = row[c >> 1];
      const int sh = (c & 1) * 4;
      b = static_cast<uint8_t>((b & ~(0xF << sh)) | ((v & 0xF) << sh));
      break;
    }
    case Storage::u8:
    case Storage::s8: row[c] = static_cast<uint8_t>(v); break;
    default: reinterpret_cast<int32_t*>(row)[c] = v; break;
  }
}

// The per-map constants of 8 consecutive maps from c0 (bias, factors and thresholds are padded
// to whole map blocks, so 8 entries from any c0 < m are readable).
struct MapGroup {
  int32_t bias[8];
  uint32_t fac[8], rfac[8], sat[8];
};

__device__ __forceinline__ void load_map_group(const ConvArgs& a, int c0, MapGroup& g) {
  const int4 b0 = __ldg(reinterpret_cast<const int4*>(a.bias + c0)), b1 = __ldg(reinterpret_cast<const int4*>(a.bias + c0 + 4));
  g.bias[0] = b0.x; g.bias[1] = b0.y; g.bias[2] = b0.z; g.bias[3] = b0.w;
  g.bias[4] = b1.x; g.bias[5] = b1.y; g.bias[6] = b1.z; g.bias[7] = b1.w;
  const uint4 f = a.factor ? __ldg(reinterpret_cast<const uint4*>(a.factor + c0)) : make_uint4(0, 0, 0, 0);
  const uint4 rf = a.res_factor ? __ldg(reinterpret_cast<const uint4*>(a.res_factor + c0)) : make_uint4(0, 0, 0, 0);
  const uint32_t fw[4] = {f.x, f.y, f.z, f.w}, rw[4] = {rf.x, rf.y, rf.z, rf.w};
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    g.fac[j] = (fw[j / 2] >> (16 * (j & 1))) & 0xFFFF;
    g.rfac[j] = (rw[j / 2] >> (16 * (j & 1))) & 0xFFFF;
  }
  if (a.sat) {
    const uint4 t0 = __ldg(reinterpret_cast<const uint4*>(a.sat + c0)), t1 = __ldg(reinterpret_cast<const uint4*>(a.sat + c0 + 4));
    g.sat[0] = t0.x; g.sat[1] = t0.y; g.sat[2] = t0.z; g.sat[3] = t0.w;
    g.sat[4] = t1.x; g.sat[5] = t1.y; g.sat[6] = t1.z; g.sat[7] = t1.w;
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) g.sat[j] = 0;
  }
}

// Narrow residuals (4 or 8 bits) of a whole group come as raw words, fetched before they are used.
__device__ __forceinline__ bool narrow_residual(const ConvArgs& a, bool full) {
  return a.res && full && a.res_storage != Storage::s32;
}
__device__ __forceinline__ void load_residual_words(const ConvArgs& a, int64_t p, int c0, uint32_t (&rw)[2]) {
  const uint8_t* rrow = a.res + p * a.res_row;
  if (a.res_storage == Storage::u4 || a.res_storage == Storage::s4) {
    rw[0] = __ldg(reinterpret_cast<const uint32_t*>(rrow + c0 / 2));
    rw[1] = 0;
  } else {
    rw[0] = __ldg(reinterpret_cast<const uint32_t*>(rrow + c0));
    rw[1] = __ldg(reinterpret_cast<const uint32_t*>(rrow + c0 + 4));
  }
}

// Everything after the accumulation but the store, for the 8 maps c0.. of pixel p (`full`: all
// 8 are < m; `narrow_res`: the residual is narrow and its words are in `rw`).
__device__ __forceinline__ void group_math(const ConvArgs& a, const MapGroup& g, int64_t p, int c0, bool narrow_res,
                                           const uint32_t (&rw)[2], int32_t (&v)[8]) {
  const int32_t lo = static_cast<int32_t>(a.lo), hi = static_cast<int32_t>(a.hi);
  const int32_t rlo = static_cast<int32_t>(a.res_lo), rhi = static_cast<int32_t>(a.res_hi);
  const uint32_t round = a.shift > 0 ? 1u << (a.shift - 1) : 0u;
  const uint32_t res_round = a.res_shift > 0 ? 1u << (a.res_shift - 1) : 0u;
  // Each stage loops over the 8 maps with its condition tested once (uniform across the block).
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = wrap_add(v[j], g.bias[j]);
  if (a.res) {
    int32_t r[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (narrow_res) {
      switch (a.res_storage) {
        case Storage::u4:
#pragma unroll
          for (int j = 0; j < 8; ++j) r[j] = (rw[0] >> (4 * j)) & 0xF;
          break;
        case Storage::s4:
#pragma unroll
          for (int j = 0; j < 8; ++j) r[j] = static_cast<int32_t>(rw[0] << (28 - 4 * j)) >> 28;
          break;
        case Storage::u8:
#pragma unroll
          for (int j = 0; j < 8; ++j) r[j] = (rw[j / 4] >> (8 * (j & 3))) & 0xFF;
          break;
        default:
#pragma unroll
          for (int j = 0; j < 8; ++j) r[j] = static_cast<int32_t>(rw[j / 4] << (24 - 8 * (j & 3))) >> 24;
          break;
      }
      // |narrow residual| <= 255 and factor < 2^16: the product fits 32 bits.
      if (a.res_factor) {
        if (a.res_storage == Storage::u4 || a.res_storage == Storage::u8) {
          // Unsigned and below 2^8: (r x factor + round) >> shift fits 32 bits and is >= 0.
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            r[j] = static_cast<int32_t>(min((static_cast<uint32_t>(r[j]) * g.rfac[j] + res_round) >> a.res_shift,
                                            static_cast<uint32_t>(rhi)));
          }
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) r[j] = requantize_narrow(r[j], g.rfac[j], a.res_shift, rlo, rhi);
        }
      }
    } else {
      const uint8_t* rrow = a.res + p * a.res_row;
      for (int j = 0; j < 8 && c0 + j < a.m; ++j) r[j] = load_element(rrow, c0 + j, a.res_storage);
      if (a.res_factor) {
#pragma unroll
        for (int j = 0; j < 8; ++j) r[j] = requantize32(r[j], g.rfac[j], a.res_shift, rlo, rhi);
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = wrap_add(v[j], r[j]);
  }
  if (a.relu) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = v[j] > 0 ? v[j] : 0;
  }
  if (a.factor) {
    if (a.sat && a.relu) {
      // After ReLU nothing is negative: clamp, one multiply-add, shift, clamp.
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const uint32_t x = min(static_cast<uint32_t>(v[j]), g.sat[j]);
        v[j] = static_cast<int32_t>(min((x * g.fac[j] + round) >> a.shift, static_cast<uint32_t>(hi)));
      }
    } else if (a.sat) {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = requantize_saturating(v[j], g.fac[j], g.sat[j], a.shift, lo, hi);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = requantize32(v[j], g.fac[j], a.shift, lo, hi);
    }
  }
}

// group_math, then the store of the 8 maps into the output row of pixel p.
__device__ __forceinline__ void finish_group(const ConvArgs& a, const MapGroup& g, int64_t p, int c0, bool full,
                                             bool narrow_res, const uint32_t (&rw)[2], int32_t (&v)[8]) {
  group_math(a, g, p, c0, narrow_res, rw, v);
  uint8_t* yrow = a.y + p * a.y_row;
  if (full) {
    store8(yrow, c0, a.y_storage, v);
  } else {
    for (int j = 0; j < 8 && c0 + j < a.m; ++j) store1(yrow, c0 + j, a.y_storage, v[j]);
  }
}

}  // namespace nibble::cuda
