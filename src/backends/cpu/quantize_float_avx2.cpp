// nibble:QuantizeFloat to FP8 (e4m3=1) on AVX2: eight values per step, the same rounding as
// f32_to_e4m3_bits (nearest even on the e4m3 grid, saturating at +-448, NaN to 0x7F). Integer
// outputs take the reference kernel.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>

#include "backends/cpu/avx2_common.h"
#include "backends/cpu/isa_kernels.h"
#include "backends/cpu/parallel.h"

namespace nibble::cpu {

namespace {

// The e4m3 codes of eight f32 values, in the low byte of each 32-bit lane.
NIBBLE_AVX2 inline __m256i e4m3_codes(__m256 q) {
  const __m256i bits = _mm256_castps_si256(q);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(bits, 24), _mm256_set1_epi32(0x80));
  const __m256i x = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
  // Below 2^-6: multiples of 2^-9, rounded to nearest even (|q| x 512 is exact).
  const __m256 units =
      _mm256_round_ps(_mm256_mul_ps(_mm256_castsi256_ps(x), _mm256_set1_ps(512.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256i small_code = _mm256_cvtps_epi32(units);
  // Normal: round the f32 mantissa to 3 bits (nearest even), then rebias the exponent.
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 20), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7FFFF)), odd);
  const __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(r, 23), _mm256_set1_epi32(127));
  const __m256i mant = _mm256_and_si256(_mm256_srli_epi32(r, 20), _mm256_set1_epi32(7));
  const __m256i normal_code =
      _mm256_or_si256(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(7)), 3), mant);
  // Saturate past 448 (e > 8, or e == 8 with mantissa 7; infinities too).
  const __m256i over = _mm256_or_si256(
      _mm256_cmpgt_epi32(e, _mm256_set1_epi32(8)),
      _mm256_and_si256(_mm256_cmpeq_epi32(e, _mm256_set1_epi32(8)), _mm256_cmpeq_epi32(mant, _mm256_set1_epi32(7))));
  __m256i code = _mm256_blendv_epi8(normal_code, _mm256_set1_epi32(0x7E), over);
  // x < 0x3C800000 (both non-negative as signed 32-bit values).
  const __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3C800000), x);
  code = _mm256_blendv_epi8(code, small_code, small);
  code = _mm256_or_si256(code, sign);
  const __m256i nan = _mm256_cmpgt_epi32(x, _mm256_set1_epi32(0x7F800000));
  return _mm256_blendv_epi8(code, _mm256_set1_epi32(0x7F), nan);
}

// dst[i] = e4m3(src[i] / s) for i < n.
NIBBLE_AVX2 void quantize_e4m3_run(const float* src, uint8_t* dst, int64_t n, float s) {
  const __m256 sv = _mm256_set1_ps(s);
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // Division, not multiplication by 1/s: the reference divides, and the quotient must match.
    const __m256i c = _mm256_shuffle_epi8(e4m3_codes(_mm256_div_ps(_mm256_loadu_ps(src + i), sv)), pick);
    const uint32_t lo = static_cast<uint32_t>(_mm256_cvtsi256_si32(c));
    const uint32_t hi = static_cast<uint32_t>(_mm256_extract_epi32(c, 4));
    const uint64_t both = lo | (static_cast<uint64_t>(hi) << 32);
    std::memcpy(dst + i, &both, 8);
  }
  for (; i < n; ++i) dst[i] = f32_to_e4m3_bits(src[i] / s);
}

}  // namespace

void quantize_float_avx2(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  const int64_t bits = node.attr_int("bits", 8);
  if (node.attr_int("e4m3", 0) == 0 || bits < 1 || bits > 31) {
    ref::quantize_float(node, in, out);
    return;
  }
  const Tensor& x = ref::required_input(node, in, 0);
  const Tensor& scale = ref::required_input(node, in, 1);
  if (x.dtype() != DType::f32 || scale.dtype() != DType::f32 || (scale.numel() != 1 && (x.rank() < 2 || x.dim(1) != scale.numel()))) {
    ref::quantize_float(node, in, out);  // its checks name the problem
    return;
  }
  const float* sc = scale.data<float>();
  for (int64_t c = 0; c < scale.numel(); ++c) {
    if (!(sc[c] > 0.0f) || !std::isfinite(sc[c])) {
      ref::kernel_fail("{}: scale {} is not a positive finite number", node.op_type, sc[c]);
    }
  }
  const int64_t channels = scale.numel();
  const int64_t outer = channels == 1 ? 1 : x.dim(0);
  const int64_t inner = x.numel() / (outer * channels);
  Tensor y(DType::e4m3, x.shape());
  const float* px = x.data<float>();
  uint8_t* py = y.bytes();
  // Runs of one scale, split into pieces of at least 16K values for the workers.
  constexpr int64_t kPiece = 16384;
  const int64_t pieces_per_run = std::max<int64_t>(1, inner / kPiece);
  parallel_for(outer * channels * pieces_per_run, [&](int64_t task) {
    const int64_t run = task / pieces_per_run, piece = task % pieces_per_run;
    const int64_t begin = inner * piece / pieces_per_run, end = inner * (piece + 1) / pieces_per_run;
    const int64_t base = run * inner;
    quantize_e4m3_run(px + base + begin, py + base + begin, end - begin, sc[run % channels]);
  });
  out.at(0) = std::move(y);
}

}  // namespace nibble::cpu
