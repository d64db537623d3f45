// The seed model's integer requantization: THE definition every backend and the Python QAT code follow.
#pragma once

#include <cstdint>
#include <cstdlib>

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

// The seed's average pool rounding: (sum + n / 2) / n for non-negative sums (n = 49 gives
// (sum + 24) / 49).
inline int64_t average_round(int64_t sum, int64_t n) { return (sum + n / 2) / n; }

}  // namespace nibble::quant
