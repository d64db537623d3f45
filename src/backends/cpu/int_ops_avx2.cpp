// AVX2 kernels of the seed model's smaller ops: nibble:Requantize and nibble:IntLinear.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/avx2_common.h"
#include "backends/cpu/conv_job.h"
#include "backends/cpu/isa_kernels.h"
#include "backends/cpu/parallel.h"
#include "backends/ref/int_ops.h"
#include "quant/requant.h"

namespace nibble::cpu {

namespace {

bool is_channel_vector(const Tensor& t, int64_t channels) {
  return (t.rank() == 1 && t.dim(0) == channels) ||
         (t.rank() == 4 && t.dim(0) == 1 && t.dim(1) == channels && t.dim(2) == 1 && t.dim(3) == 1);
}

// 16 elements of a u8, s8 or s32 tensor from element `at` as two s32 vectors; past `count` zeros.
NIBBLE_AVX2 void load_s32x16_avx2(const void* x, DType dtype, int64_t at, int count, __m256i& lo,
                                  __m256i& hi) {
  const size_t size = dtype == DType::s32 ? 4 : 1;
  alignas(32) uint8_t tmp[64] = {};
  const uint8_t* p = static_cast<const uint8_t*>(x) + at * static_cast<int64_t>(size);
  if (count < 16) {
    std::memcpy(tmp, p, size * static_cast<size_t>(count));
    p = tmp;
  }
  if (dtype == DType::s32) {
    lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    return;
  }
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (dtype == DType::u8) {
    lo = _mm256_cvtepu8_epi32(b);
    hi = _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8));
  } else {
    lo = _mm256_cvtepi8_epi32(b);
    hi = _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8));
  }
}

NIBBLE_AVX2 void requantize_planes_avx2(const Tensor& x, const uint16_t* factor, int shift, int64_t hi,
                                        bool is_signed, Tensor& y, int64_t channels, int64_t plane,
                                        int64_t first_plane, int64_t end_plane) {
  const EpilogueConstsAvx2 k = epilogue_consts_avx2(shift, hi);
  for (int64_t pl = first_plane; pl < end_plane; ++pl) {
    const uint16_t f = factor[pl % channels];
    for (int64_t i = 0; i < plane; i += 16) {
      const int64_t at = pl * plane + i;
      const int count = static_cast<int>(std::min<int64_t>(16, plane - i));
      __m256i lo, hi_v;
      load_s32x16_avx2(x.bytes(), x.dtype(), at, count, lo, hi_v);
      store_s32x16_as_avx2(requantize_s32_avx2(lo, f, k, is_signed),
                           requantize_s32_avx2(hi_v, f, k, is_signed), y.dtype(), y.bytes(), at, count);
    }
  }
}

// maddubs on u8 activations the caller bounded so that no pair sum saturates s16.
NIBBLE_AVX2 int32_t dot_u8s8_avx2(const uint8_t* x, const int8_t* w, int64_t k) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv), ones));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  uint32_t sum = 0;
  for (int32_t v : lanes) sum += static_cast<uint32_t>(v);
  for (; i < k; ++i) sum += static_cast<uint32_t>(x[i] * w[i]);
  return static_cast<int32_t>(sum);
}

// Activations widened to s16 (zero- or sign-extended): exact for any u8 or s8 input.
template <bool kSigned>
NIBBLE_AVX2 int32_t dot_s16s16_avx2(const void* xp, const int8_t* w, int64_t k) {
  __m256i acc = _mm256_setzero_si256();
  int64_t i = 0;
  const uint8_t* x = static_cast<const uint8_t*>(xp);
  for (; i + 16 <= k; i += 16) {
    const __m128i xb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
    const __m256i xv = kSigned ? _mm256_cvtepi8_epi16(xb) : _mm256_cvtepu8_epi16(xb);
    const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  uint32_t sum = 0;
  for (int32_t v : lanes) sum += static_cast<uint32_t>(v);
  for (; i < k; ++i) {
    const int32_t xv = kSigned ? static_cast<int8_t>(x[i]) : x[i];
    sum += static_cast<uint32_t>(xv * w[i]);
  }
  return static_cast<int32_t>(sum);
}

}  // namespace

void requantize_avx2(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  const Tensor* x = ref::optional_input(in, 0);
  const Tensor* factor = ref::optional_input(in, 1);
  if (!x || !factor || x->rank() < 2 || x->numel() == 0 ||
      (x->dtype() != DType::u8 && x->dtype() != DType::s8 && x->dtype() != DType::s32) ||
      factor->dtype() != DType::u16 || !is_channel_vector(*factor, x->dim(1))) {
    return ref::requantize(node, in, out);
  }
  const int64_t shift = node.attr_int("shift", -1);
  const int64_t bits = node.attr_int("bits", -1);
  if (shift < 0 || shift > 31 || bits < 1 || bits > 31) return ref::requantize(node, in, out);
  const bool is_signed = node.attr_int("signed", 0) != 0;
  Tensor y(quant::storage_dtype(static_cast<int>(bits), is_signed), x->shape());
  const int64_t channels = x->dim(1);
  const int64_t planes = x->dim(0) * channels;
  const int64_t plane = x->numel() / planes;
  const int64_t hi = quant::output_range(static_cast<int>(bits), is_signed).hi;
  // Tasks of at least ~16K elements: below that the wake-up costs more than the work.
  const int64_t per_task = std::max<int64_t>(1, (int64_t{1} << 14) / plane);
  const int64_t tasks = (planes + per_task - 1) / per_task;
  parallel_for(tasks, [&](int64_t t) {
    requantize_planes_avx2(*x, factor->data<uint16_t>(), static_cast<int>(shift), hi, is_signed, y, channels,
                           plane, t * per_task, std::min(planes, (t + 1) * per_task));
  });
  out.at(0) = std::move(y);
}

void int_linear_avx2(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  const Tensor* x = ref::optional_input(in, 0);
  const Tensor* w = ref::optional_input(in, 1);
  const Tensor* bias = ref::optional_input(in, 2);
  if (!x || !w || !bias || (x->dtype() != DType::u8 && x->dtype() != DType::s8) ||
      (w->dtype() != DType::s8 && w->dtype() != DType::s4) || w->rank() != 2 || x->rank() == 0 ||
      x->dim(0) == 0 || x->numel() != x->dim(0) * w->dim(1) || w->numel() == 0) {
    return ref::int_linear(node, in, out);
  }
  const int64_t batch = x->dim(0), k = w->dim(1), m = w->dim(0);
  ref::check_channel_vector(node, *bias, m, "bias");
  std::vector<int32_t> b(static_cast<size_t>(m));
  for (int64_t o = 0; o < m; ++o) b[static_cast<size_t>(o)] = static_cast<int32_t>(bias->get(o));
  // One map per block: the rows of W, unpacked to s8 and padded to a multiple of 4.
  const auto packed = packed_conv_weights(*w, 1, 1, ConvMode::u8s8);
  const int64_t row = packed->block_elems();
  bool narrow = false;
  if (x->dtype() == DType::u8) {
    const uint8_t* xp = x->data<uint8_t>();
    const uint8_t max_x = *std::max_element(xp, xp + x->numel());
    narrow = maddubs_is_exact(max_x, packed->max_abs);
  }
  Tensor y(DType::s32, {batch, m});
  int32_t* py = y.data<int32_t>();
  constexpr int64_t kMapsPerTask = 64;
  parallel_for((m + kMapsPerTask - 1) / kMapsPerTask, [&](int64_t t) {
    for (int64_t o = t * kMapsPerTask; o < std::min(m, (t + 1) * kMapsPerTask); ++o) {
      const int8_t* wr = packed->s8.data() + o * row;
      for (int64_t r = 0; r < batch; ++r) {
        const uint8_t* xr = x->bytes() + r * k;
        int32_t dot;
        if (narrow) {
          dot = dot_u8s8_avx2(xr, wr, k);
        } else if (x->dtype() == DType::u8) {
          dot = dot_s16s16_avx2<false>(xr, wr, k);
        } else {
          dot = dot_s16s16_avx2<true>(xr, wr, k);
        }
        py[r * m + o] = static_cast<int32_t>(static_cast<uint32_t>(b[static_cast<size_t>(o)]) +
                                             static_cast<uint32_t>(dot));
      }
    }
  });
  out.at(0) = std::move(y);
}

}  // namespace nibble::cpu
