// MaxPool on u8 activations (the seed's 3x3 stride-2 pool after the stem) with AVX2 byte maxima.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/avx2_common.h"
#include "backends/cpu/isa_kernels.h"
#include "backends/cpu/parallel.h"
#include "backends/ref/window.h"

namespace nibble::cpu {

namespace {

struct PoolGeometry {
  int64_t in_h, in_w, out_h, out_w;
  int64_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_t, pad_l;
  int64_t padded_h, padded_w;  // the zero-padded plane covers every window
};

// Zero padding is exact for u8: padding never wins over real values (all >= 0), and a window of
// padding alone gives 0, which is the reference's "lowest value" for u8.
NIBBLE_AVX2 void max_pool_plane_u8_avx2(const PoolGeometry& g, const uint8_t* x, uint8_t* y,
                                        std::vector<uint8_t>& padded, std::vector<uint8_t>& rows) {
  padded.assign(static_cast<size_t>(g.padded_h * g.padded_w + 32), 0);
  for (int64_t i = 0; i < g.in_h; ++i) {
    std::memcpy(padded.data() + (i + g.pad_t) * g.padded_w + g.pad_l, x + i * g.in_w,
                static_cast<size_t>(g.in_w));
  }
  rows.assign(static_cast<size_t>(g.padded_w + 32), 0);
  const int64_t span_w = (g.out_w - 1) * g.stride_w + 1;  // columns whose horizontal max is needed
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    // Column maxima over the window's rows, then maxima over the window's columns.
    const uint8_t* top = padded.data() + oh * g.stride_h * g.padded_w;
    int64_t j = 0;
    for (; j + 32 <= g.padded_w; j += 32) {
      __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(top + j));
      for (int64_t kh = 1; kh < g.k_h; ++kh) {
        m = _mm256_max_epu8(
            m, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(top + kh * g.dil_h * g.padded_w + j)));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(rows.data() + j), m);
    }
    for (; j < g.padded_w; ++j) {
      uint8_t m = top[j];
      for (int64_t kh = 1; kh < g.k_h; ++kh) m = std::max(m, top[kh * g.dil_h * g.padded_w + j]);
      rows[static_cast<size_t>(j)] = m;
    }
    alignas(32) uint8_t wide[32];
    uint8_t* out = y + oh * g.out_w;
    for (int64_t c = 0; c < span_w; c += 32) {
      __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows.data() + c));
      for (int64_t kw = 1; kw < g.k_w; ++kw) {
        m = _mm256_max_epu8(
            m, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows.data() + c + kw * g.dil_w)));
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(wide), m);
      for (int64_t ow = (c + g.stride_w - 1) / g.stride_w; ow * g.stride_w < std::min(span_w, c + 32); ++ow) {
        out[ow] = wide[ow * g.stride_w - c];
      }
    }
  }
}

}  // namespace

void max_pool_u8_avx2(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  const Tensor* x = ref::optional_input(in, 0);
  const bool want_indices = node.outputs.size() > 1 && out.size() > 1 && !node.outputs[1].empty();
  if (!x || x->dtype() != DType::u8 || x->rank() != 4 || want_indices || x->numel() == 0) {
    return ref::max_pool(node, in, out);
  }
  const std::vector<int64_t> spatial(x->shape().begin() + 2, x->shape().end());
  const std::vector<int64_t> kernel = ref::pool_kernel_shape(node, 2);
  const ref::Window win =
      ref::make_window(node, spatial, kernel, ref::WindowRules{.ceil_mode_allowed = true});
  const int64_t storage_order = node.attr_int("storage_order", 0);
  if (storage_order != 0 && storage_order != 1) return ref::max_pool(node, in, out);
  PoolGeometry g{};
  g.in_h = spatial[0];
  g.in_w = spatial[1];
  g.out_h = win.output[0];
  g.out_w = win.output[1];
  g.k_h = kernel[0];
  g.k_w = kernel[1];
  g.stride_h = win.strides[0];
  g.stride_w = win.strides[1];
  g.dil_h = win.dilations[0];
  g.dil_w = win.dilations[1];
  g.pad_t = win.pad_begin[0];
  g.pad_l = win.pad_begin[1];
  g.padded_h = std::max(g.pad_t + g.in_h, (g.out_h - 1) * g.stride_h + (g.k_h - 1) * g.dil_h + 1);
  g.padded_w = std::max(g.pad_l + g.in_w, (g.out_w - 1) * g.stride_w + (g.k_w - 1) * g.dil_w + 1);
  if (g.pad_t < 0 || g.pad_l < 0 || g.out_h <= 0 || g.out_w <= 0) return ref::max_pool(node, in, out);

  Tensor y(DType::u8, {x->dim(0), x->dim(1), g.out_h, g.out_w});
  const int64_t planes = x->dim(0) * x->dim(1);
  const uint8_t* px = x->data<uint8_t>();
  uint8_t* py = y.data<uint8_t>();
  constexpr int64_t kPlanesPerTask = 8;
  parallel_for((planes + kPlanesPerTask - 1) / kPlanesPerTask, [&](int64_t t) {
    std::vector<uint8_t> padded, rows;
    for (int64_t pl = t * kPlanesPerTask; pl < std::min(planes, (t + 1) * kPlanesPerTask); ++pl) {
      max_pool_plane_u8_avx2(g, px + pl * g.in_h * g.in_w, py + pl * g.out_h * g.out_w, padded, rows);
    }
  });
  out.at(0) = std::move(y);
}

}  // namespace nibble::cpu
