// AVX2 helpers shared by the CPU kernels: the target attribute and the vector requantization.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "nibble/dtype.h"

// Code built for AVX2 inside a binary that must still start on older processors: only functions
// carrying this attribute use AVX2, and the dispatch table calls them only where the CPU has it.
#define NIBBLE_AVX2 __attribute__((target("avx2,fma")))

namespace nibble::cpu {

struct EpilogueConstsAvx2 {
  __m256i round;  // 2^(shift-1) per 64-bit lane, 0 for shift 0
  __m128i shift;
  __m256i hi;  // the clamp bound per 64-bit lane
};

NIBBLE_AVX2 inline EpilogueConstsAvx2 epilogue_consts_avx2(int shift, int64_t hi) {
  EpilogueConstsAvx2 k;
  k.round = _mm256_set1_epi64x(shift > 0 ? int64_t{1} << (shift - 1) : 0);
  k.shift = _mm_cvtsi32_si128(shift);
  k.hi = _mm256_set1_epi64x(hi);
  return k;
}

// quant::requantize on 8 s32 lanes: q = sign(x) * ((|x| * f + 2^(s-1)) >> s), clamped to
// [-hi, hi] (signed) or [0, hi]. With shift 0 the same formula is x * f. |x| is taken as an
// unsigned 32-bit value, so INT32_MIN gives 2^31 like llabs; the products (< 2^48) are formed in
// 64-bit lanes, and the clamp to hi < 2^31 happens before the sign, which is exact because the
// range is symmetric (signed) or everything negative becomes 0 (unsigned).
NIBBLE_AVX2 inline __m256i requantize_s32_avx2(__m256i x, uint16_t factor, const EpilogueConstsAvx2& k,
                                               bool is_signed) {
  const __m256i f = _mm256_set1_epi64x(factor);
  const __m256i mag = _mm256_abs_epi32(x);
  __m256i even = _mm256_mul_epu32(mag, f);
  __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(mag, 32), f);
  even = _mm256_srl_epi64(_mm256_add_epi64(even, k.round), k.shift);
  odd = _mm256_srl_epi64(_mm256_add_epi64(odd, k.round), k.shift);
  even = _mm256_blendv_epi8(even, k.hi, _mm256_cmpgt_epi64(even, k.hi));
  odd = _mm256_blendv_epi8(odd, k.hi, _mm256_cmpgt_epi64(odd, k.hi));
  const __m256i q = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  const __m256i neg = _mm256_cmpgt_epi32(_mm256_setzero_si256(), x);
  return is_signed ? _mm256_sub_epi32(_mm256_xor_si256(q, neg), neg) : _mm256_andnot_si256(neg, q);
}

// Stores 16 s32 values (lo: 0-7, hi: 8-15) as elements at .. at + count - 1 of `out` (s32, or u8 /
// s8 when the values are already clamped into the byte type's range).
NIBBLE_AVX2 inline void store_s32x16_as_avx2(__m256i lo, __m256i hi, DType dtype, void* out, int64_t at,
                                             int count) {
  if (dtype == DType::s32) {
    int32_t* y = static_cast<int32_t*>(out) + at;
    if (count == 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + 8), hi);
    } else {
      alignas(32) int32_t tmp[16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), lo);
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8), hi);
      std::memcpy(y, tmp, sizeof(int32_t) * static_cast<size_t>(count));
    }
    return;
  }
  // packs keeps the order within 128-bit lanes; the 64-bit permute restores 0-7, 8-15.
  const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
  const __m128i w_lo = _mm256_castsi256_si128(w), w_hi = _mm256_extracti128_si256(w, 1);
  const __m128i b = dtype == DType::u8 ? _mm_packus_epi16(w_lo, w_hi) : _mm_packs_epi16(w_lo, w_hi);
  uint8_t* y = static_cast<uint8_t*>(out) + at;
  if (count == 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y), b);
  } else {
    alignas(16) uint8_t tmp[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), b);
    std::memcpy(y, tmp, static_cast<size_t>(count));
  }
}

}  // namespace nibble::cpu
