// The AVX-512 convolution epilogue: one map's 16 pixels per vector, masked loads and stores at the
// block's end, and the 32-bit requantization where the saturation thresholds allow it.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "backends/cpu/conv_task_avx2.h"

#define NIBBLE_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))

// GCC 12 reports the intrinsics' deliberately undefined pass-through operands as maybe-uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace nibble::cpu {

namespace {

// quant::requantize of 16 lanes with a 64-bit product (any factor and shift).
NIBBLE_AVX512 inline __m512i requantize_wide_avx512(__m512i mag, uint16_t factor, int shift, int64_t hi) {
  const __m512i f = _mm512_set1_epi64(factor);
  const __m512i round = _mm512_set1_epi64(shift > 0 ? int64_t{1} << (shift - 1) : 0);
  const __m128i s = _mm_cvtsi32_si128(shift);
  const __m512i top = _mm512_set1_epi64(hi);
  __m512i even = _mm512_mul_epu32(mag, f);
  __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(mag, 32), f);
  even = _mm512_min_epu64(_mm512_srl_epi64(_mm512_add_epi64(even, round), s), top);
  odd = _mm512_min_epu64(_mm512_srl_epi64(_mm512_add_epi64(odd, round), s), top);
  return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// One requantization's constants, formed once per tile.
struct RequantAvx512 {
  __m512i round, hi;
  __m128i shift;
  int shift_bits;
  int64_t hi_value;
  bool is_signed;
};
NIBBLE_AVX512 inline RequantAvx512 requant_consts_avx512(int shift, int64_t hi, bool is_signed) {
  return {_mm512_set1_epi32(shift > 0 ? static_cast<int32_t>(1u << (shift - 1)) : 0),
          _mm512_set1_epi32(static_cast<int32_t>(hi)), _mm_cvtsi32_si128(shift), shift, hi, is_signed};
}

// quant::requantize of 16 lanes into the symmetric (is_signed) or unsigned range of hi: in 32 bits
// with the map's saturation threshold where `sat` is given, else with 64-bit products.
NIBBLE_AVX512 inline __m512i requantize_avx512(__m512i v, const uint16_t* factor, const uint32_t* sat,
                                               const RequantAvx512& k) {
  const __mmask16 neg = _mm512_cmplt_epi32_mask(v, _mm512_setzero_si512());
  const __m512i mag = _mm512_abs_epi32(v);  // INT32_MIN gives 2^31 as an unsigned value
  __m512i q;
  if (sat) {
    const __m512i x = _mm512_min_epu32(mag, _mm512_set1_epi32(static_cast<int32_t>(*sat)));
    const __m512i f = _mm512_cvtepu16_epi32(_mm256_set1_epi16(static_cast<int16_t>(*factor)));
    q = _mm512_srl_epi32(_mm512_add_epi32(_mm512_mullo_epi32(x, f), k.round), k.shift);
    q = _mm512_min_epu32(q, k.hi);
  } else {
    q = requantize_wide_avx512(mag, *factor, k.shift_bits, k.hi_value);
  }
  // The range is symmetric (signed) or starts at 0 (unsigned): the sign goes on after the clamp.
  return k.is_signed ? _mm512_mask_sub_epi32(q, neg, _mm512_setzero_si512(), q) : _mm512_maskz_mov_epi32(~neg, q);
}

}  // namespace

void prefetch_epilogue(const ConvEpilogue& ep, const Segment* segs, int nsegs, int64_t plane, int64_t m0, int rows) {
  const int64_t out_size = ep.out_dtype == DType::s32 ? 4 : 1;
  for (int r = 0; r < rows; ++r) {
    const int64_t at = segs[0].first + (m0 + r) * plane;
    if (ep.res_src) __builtin_prefetch(ep.res_src + at, 0, 3);
    if (ep.residual) __builtin_prefetch(ep.residual + at, 0, 3);
    __builtin_prefetch(static_cast<uint8_t*>(ep.out) + at * out_size, 1, 3);
  }
  (void)nsegs;
}

namespace {

enum class ResKind { none, s32, folded };

// The common cases without per-row branches: lanes map 1:1 onto consecutive outputs, and either
// 8-bit outputs with 32-bit requantizations (the saturation thresholds exist) or s32 outputs.
enum class OutKind { u8, s8, s32 };
template <ResKind kRes, OutKind kOut>
NIBBLE_AVX512 void epilogue_direct_avx512(const ConvEpilogue& ep, const Segment& seg, int64_t plane, int64_t m0,
                                          int rows, const int32_t* acc) {
  const __mmask16 lanes = static_cast<__mmask16>((1u << seg.lane_end) - 1);
  const RequantAvx512 kq = requant_consts_avx512(ep.shift, ep.hi, ep.is_signed);
  const RequantAvx512 kr = requant_consts_avx512(ep.res_shift, ep.res_hi, ep.res_is_signed);
  const __m512i floor = ep.relu ? _mm512_setzero_si512() : _mm512_set1_epi32(INT32_MIN);
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    const int64_t at = seg.first + m * plane;
    __m512i v = _mm512_add_epi32(_mm512_loadu_si512(acc + r * kPanelNr), _mm512_set1_epi32(ep.bias[m]));
    if constexpr (kRes == ResKind::s32) {
      v = _mm512_add_epi32(v, _mm512_maskz_loadu_epi32(lanes, ep.residual + at));
    } else if constexpr (kRes == ResKind::folded) {
      const __m128i bytes = _mm_maskz_loadu_epi8(lanes, ep.res_src + at);
      const __m512i x = ep.res_src_signed ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes);
      v = _mm512_add_epi32(v, requantize_avx512(x, ep.res_factor + m, ep.res_sat + m, kr));
    }
    v = _mm512_max_epi32(v, floor);
    if constexpr (kOut == OutKind::s32) {
      _mm512_mask_storeu_epi32(static_cast<int32_t*>(ep.out) + at, lanes, v);
    } else {
      v = requantize_avx512(v, ep.factor + m, ep.sat + m, kq);
      uint8_t* y = static_cast<uint8_t*>(ep.out) + at;
      if constexpr (kOut == OutKind::s8) {
        _mm512_mask_cvtsepi32_storeu_epi8(y, lanes, v);
      } else {
        _mm512_mask_cvtusepi32_storeu_epi8(y, lanes, v);
      }
    }
  }
}

template <ResKind kRes>
NIBBLE_AVX512 void epilogue_direct_any(const ConvEpilogue& ep, const Segment& seg, int64_t plane, int64_t m0,
                                       int rows, const int32_t* acc) {
  if (!ep.factor) {
    epilogue_direct_avx512<kRes, OutKind::s32>(ep, seg, plane, m0, rows, acc);
  } else if (ep.out_dtype == DType::s8) {
    epilogue_direct_avx512<kRes, OutKind::s8>(ep, seg, plane, m0, rows, acc);
  } else {
    epilogue_direct_avx512<kRes, OutKind::u8>(ep, seg, plane, m0, rows, acc);
  }
}

}  // namespace

NIBBLE_AVX512 void epilogue_tile_avx512(const ConvEpilogue& ep, const Segment* segs, int nsegs, int64_t plane,
                                        int64_t m0, int rows, const int32_t* acc) {
  // Lanes map 1:1 onto consecutive outputs: masked loads and stores in place.
  const bool direct = nsegs == 1 && segs[0].lane_begin == 0;
  const bool requant32 = ep.factor && ep.sat && ep.out_dtype != DType::s32;
  const bool plain32 = !ep.factor && ep.out_dtype == DType::s32;
  if (direct && (requant32 || plain32) && (!ep.res_src || ep.res_sat)) {
    if (ep.residual) return epilogue_direct_any<ResKind::s32>(ep, segs[0], plane, m0, rows, acc);
    if (ep.res_src) return epilogue_direct_any<ResKind::folded>(ep, segs[0], plane, m0, rows, acc);
    return epilogue_direct_any<ResKind::none>(ep, segs[0], plane, m0, rows, acc);
  }
  const __mmask16 lanes = direct ? static_cast<__mmask16>((1u << segs[0].lane_end) - 1) : 0xFFFF;
  const size_t out_size = ep.out_dtype == DType::s32 ? 4 : 1;
  const RequantAvx512 kq = requant_consts_avx512(ep.shift, ep.hi, ep.is_signed);
  const RequantAvx512 kr = requant_consts_avx512(ep.res_shift, ep.res_hi, ep.res_is_signed);
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    __m512i v = _mm512_add_epi32(_mm512_loadu_si512(acc + r * kPanelNr), _mm512_set1_epi32(ep.bias[m]));
    if (ep.residual) {
      if (direct) {
        v = _mm512_add_epi32(v, _mm512_maskz_loadu_epi32(lanes, ep.residual + segs[0].first + m * plane));
      } else {
        alignas(64) int32_t res[kPanelNr] = {};
        gather_segments(res, ep.residual, sizeof(int32_t), segs, nsegs, m * plane);
        v = _mm512_add_epi32(v, _mm512_load_si512(res));
      }
    } else if (ep.res_src) {
      __m128i bytes;
      if (direct) {
        bytes = _mm_maskz_loadu_epi8(lanes, ep.res_src + segs[0].first + m * plane);
      } else {
        alignas(16) uint8_t res[kPanelNr] = {};
        gather_segments(res, ep.res_src, 1, segs, nsegs, m * plane);
        bytes = _mm_load_si128(reinterpret_cast<const __m128i*>(res));
      }
      const __m512i x = ep.res_src_signed ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes);
      v = _mm512_add_epi32(v, requantize_avx512(x, ep.res_factor + m, ep.res_sat ? ep.res_sat + m : nullptr, kr));
    }
    if (ep.relu) v = _mm512_max_epi32(v, _mm512_setzero_si512());
    if (ep.factor) v = requantize_avx512(v, ep.factor + m, ep.sat ? ep.sat + m : nullptr, kq);
    if (direct) {
      uint8_t* y = static_cast<uint8_t*>(ep.out) + (segs[0].first + m * plane) * static_cast<int64_t>(out_size);
      if (ep.out_dtype == DType::s32) {
        _mm512_mask_storeu_epi32(y, lanes, v);
      } else if (ep.out_dtype == DType::u8) {
        _mm512_mask_cvtusepi32_storeu_epi8(y, lanes, v);
      } else {
        _mm512_mask_cvtsepi32_storeu_epi8(y, lanes, v);
      }
    } else {
      alignas(64) uint8_t tmp[kPanelNr * 4];
      if (ep.out_dtype == DType::s32) {
        _mm512_store_si512(tmp, v);
      } else if (ep.out_dtype == DType::u8) {
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), _mm512_cvtusepi32_epi8(v));
      } else {
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), _mm512_cvtsepi32_epi8(v));
      }
      scatter_segments(ep.out, tmp, out_size, segs, nsegs, m * plane);
    }
  }
}

}  // namespace nibble::cpu
