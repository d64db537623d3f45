// The seed model's integer requantization: THE definition every backend and the Python QAT code follow.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "nibble/dtype.h"

namespace nibble::quant {

// The clamp range of a `bits`-bit output: unsigned [0, 2^b - 1], signed [-(2^b - 1), 2^b - 1]
// (symmetric: the most negative two's-complement value is never produced).
struct IntRange {
  int64_t lo;
  int64_t hi;
};
inline IntRange output_range(int bits, bool is_signed) {
  const int64_t top = (int64_t{1} << bits) - 1;
  return {is_signed ? -top : 0, top};
}

// The narrowest byte-addressable dtype that holds a `bits`-bit value: u8 / s8 up to 8 (7)
// bits, else s32. Activations of 4 and 7 bits travel unpacked in bytes between kernels.
inline DType storage_dtype(int bits, bool is_signed) {
  if (!is_signed && bits <= 8) return DType::u8;
  if (is_signed && bits <= 7) return DType::s8;
  return DType::s32;
}

// Per channel: q = sign(x) * ((|x| * factor + 2^(shift-1)) >> shift), rounding half away from
// zero, for shift > 0; q = x * factor for shift == 0. The product is formed in 64 bits. Then q
// is clamped to `range`.
inline int64_t requantize(int64_t x, uint32_t factor, int shift, IntRange range) {
  int64_t q;
  if (shift == 0) {
    q = x * static_cast<int64_t>(factor);
  } else {
    const int64_t mag = (std::llabs(x) * static_cast<int64_t>(factor) + (int64_t{1} << (shift - 1))) >> shift;
    q = x < 0 ? -mag : mag;
  }
  return q < range.lo ? range.lo : (q > range.hi ? range.hi : q);
}

// Per factor, the smallest |x| whose requantization with `shift` leaves [lo, hi] on its side (it
// reaches max(hi, -lo) + 1 or more), for requantizing in 32 bits: clamp |x| to it first, then
// (|x| x factor + 2^(shift-1)) >> shift fits 32 bits and clamping the result to the range gives
// requantize's value. Empty when some factor's product at its threshold would not fit 32 bits.
inline std::vector<uint32_t> saturation_thresholds(const std::vector<uint16_t>& factor, int shift, int64_t lo,
                                                   int64_t hi) {
  const uint64_t top = static_cast<uint64_t>(std::max(hi, -lo));
  const uint64_t round = shift > 0 ? uint64_t{1} << (shift - 1) : 0;
  const uint64_t need = (top + 1) << shift;  // mag >= top + 1 once |x| * f + round >= need
  std::vector<uint32_t> sat;
  for (uint16_t f : factor) {
    uint64_t t = 0xFFFFFFFFu;
    if (f != 0) t = need > round ? (need - round + f - 1) / f : 0;
    if (t > 0xFFFFFFFFu || (f != 0 && t * f + round >= (uint64_t{1} << 32))) return {};
    sat.push_back(static_cast<uint32_t>(t));
  }
  return sat;
}

// The largest shift (0..31) for which saturation_thresholds exist with every 16-bit factor and
// `range`: ((max(hi, -lo) + 1) << shift) + 65535 < 2^32. 23 for u8, 24 for s8, 27 for u4.
inline int saturation_shift_limit(IntRange range) {
  const uint64_t top = static_cast<uint64_t>(std::max(range.hi, -range.lo));
  int shift = 0;
  while (shift < 31 && ((top + 1) << (shift + 1)) + 65535 < (uint64_t{1} << 32)) ++shift;
  return shift;
}

// The seed's average pool rounding: (sum + n / 2) / n for non-negative sums (n = 49 gives
// (sum + 24) / 49).
inline int64_t average_round(int64_t sum, int64_t n) { return (sum + n / 2) / n; }

}  // namespace nibble::quant
