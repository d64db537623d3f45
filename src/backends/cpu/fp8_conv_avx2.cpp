// nibble:Fp8Conv on AVX2: the exact integer operands (units of 2^-9) as doubles, multiplied and
// summed by FMA in 4 x 12 register tiles over im2col panels of 12 output pixels.
//
// Each product is an integer below 2^53 and so is every partial sum while K x max|x| x max|w|
// (in units) stays below 2^53: double arithmetic is then exact, in any order, and the results
// equal the reference's 64-bit integer sums bit for bit. Layers past that bound (none in
// practice: a 3 x 3 x 512 conv of 4-bit weights uses 2^34) take the reference kernel.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "backends/cpu/avx2_common.h"
#include "backends/cpu/isa_kernels.h"
#include "backends/cpu/parallel.h"
#include "backends/ref/fp8_common.h"

namespace nibble::cpu {

namespace {

constexpr int64_t kMr = 4;        // output maps per tile
constexpr int64_t kNr = 12;       // pixels per panel (3 vectors of 4 doubles)
constexpr int64_t kPanels = 4;    // panels per task

// acc[i][j] = sum over k of w[i][k] * panel[k][j], for kMr rows of w (stride ldw) and one panel.
// The twelve accumulators are named variables: held in an array, GCC stored all of them to the
// stack on every step (four times the time).
NIBBLE_AVX2 void tile_4x12(const double* w, int64_t ldw, const double* panel, int64_t k_count, double* out) {
  __m256d c00 = _mm256_setzero_pd(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
  __m256d c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
  const double* w0 = w;
  const double* w1 = w + ldw;
  const double* w2 = w + 2 * ldw;
  const double* w3 = w + 3 * ldw;
  for (int64_t k = 0; k < k_count; ++k) {
    const double* x = panel + k * kNr;
    const __m256d x0 = _mm256_loadu_pd(x), x1 = _mm256_loadu_pd(x + 4), x2 = _mm256_loadu_pd(x + 8);
    const __m256d a0 = _mm256_broadcast_sd(w0 + k), a1 = _mm256_broadcast_sd(w1 + k);
    const __m256d a2 = _mm256_broadcast_sd(w2 + k), a3 = _mm256_broadcast_sd(w3 + k);
    c00 = _mm256_fmadd_pd(a0, x0, c00);
    c01 = _mm256_fmadd_pd(a0, x1, c01);
    c02 = _mm256_fmadd_pd(a0, x2, c02);
    c10 = _mm256_fmadd_pd(a1, x0, c10);
    c11 = _mm256_fmadd_pd(a1, x1, c11);
    c12 = _mm256_fmadd_pd(a1, x2, c12);
    c20 = _mm256_fmadd_pd(a2, x0, c20);
    c21 = _mm256_fmadd_pd(a2, x1, c21);
    c22 = _mm256_fmadd_pd(a2, x2, c22);
    c30 = _mm256_fmadd_pd(a3, x0, c30);
    c31 = _mm256_fmadd_pd(a3, x1, c31);
    c32 = _mm256_fmadd_pd(a3, x2, c32);
  }
  const __m256d all[kMr][3] = {{c00, c01, c02}, {c10, c11, c12}, {c20, c21, c22}, {c30, c31, c32}};
  for (int64_t i = 0; i < kMr; ++i) {
    for (int64_t j = 0; j < 3; ++j) _mm256_storeu_pd(out + i * kNr + 4 * j, all[i][j]);
  }
}

// The epilogue, in plain (non-FMA) code so the multiply and the add round separately, as the
// reference's do: y = f32(sum * unit) * scale + bias, then ReLU (unit = 2^-9 or 2^-18: exact).
float finish(double sum, double unit, float scale, float bias, bool relu) {
  const float s = static_cast<float>(sum * unit);
  const float v = s * scale + bias;
  return relu && v < 0.0f ? 0.0f : v;
}

}  // namespace

void fp8_conv_avx2(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  const ref::Fp8Operands op = ref::fp8_operands(node, in);
  const ref::ConvProblem& p = op.problem;
  const ref::Window& win = p.window3d;
  const int64_t c_in = p.in_channels, m_out = p.out_channels;
  const int64_t ih = win.input[1], iw = win.input[2], oh = win.output[1], ow = win.output[2];
  const int64_t kh = win.kernel[1], kw = win.kernel[2];
  const int64_t sh = win.strides[1], sw = win.strides[2], dh = win.dilations[1], dw = win.dilations[2];
  const int64_t ph = win.pad_begin[1], pw = win.pad_begin[2];
  const int64_t k_count = c_in * kh * kw, pixels = oh * ow;
  if (static_cast<double>(k_count) * 229376.0 * static_cast<double>(op.w_max) >= 9007199254740992.0) {  // 2^53
    ref::fp8_conv(node, in, out);
    return;
  }
  // Weights as doubles, rows padded to a multiple of kMr with zeros.
  const int64_t m_pad = (m_out + kMr - 1) / kMr * kMr;
  std::vector<double> w(static_cast<size_t>(m_pad * k_count), 0.0);
  for (int64_t i = 0; i < m_out * k_count; ++i) w[static_cast<size_t>(i)] = op.w_units[static_cast<size_t>(i)];
  // The input as doubles with its padding written out (zeros), so that every window reads
  // inside: hp x wp planes, the image at row ph, column pw.
  const int64_t hp = std::max(ih + ph, (oh - 1) * sh + (kh - 1) * dh + 1);
  const int64_t wp = std::max(iw + pw, (ow - 1) * sw + (kw - 1) * dw + 1);
  const int64_t plane_size = hp * wp;
  std::unique_ptr<double[]> padded(new double[static_cast<size_t>(p.batch * c_in * plane_size)]);
  parallel_for(p.batch * c_in, [&](int64_t plane) {
    double* dst = padded.get() + plane * plane_size;
    const int32_t* src = op.x_units.data() + plane * ih * iw;
    std::fill(dst, dst + ph * wp, 0.0);
    for (int64_t yy = 0; yy < ih; ++yy) {
      double* row = dst + (ph + yy) * wp;
      std::fill(row, row + pw, 0.0);
      for (int64_t xx = 0; xx < iw; ++xx) row[pw + xx] = src[yy * iw + xx];
      std::fill(row + pw + iw, row + wp, 0.0);
    }
    std::fill(dst + (ph + ih) * wp, dst + plane_size, 0.0);
  });
  // Tap k = (c, r, s): its offset from a window's top-left element.
  std::vector<int64_t> tap_offset(static_cast<size_t>(k_count));
  for (int64_t k = 0; k < k_count; ++k) {
    tap_offset[static_cast<size_t>(k)] = k / (kh * kw) * plane_size + (k / kw) % kh * dh * wp + k % kw * dw;
  }
  Tensor y(DType::f32, p.output_shape());
  float* py = y.data<float>();
  const double unit = std::ldexp(1.0, -9 - op.w_shift);
  // Per output pixel: the top-left element of its window in the padded plane.
  std::vector<int64_t> window(static_cast<size_t>(pixels));
  for (int64_t pix = 0; pix < pixels; ++pix) window[static_cast<size_t>(pix)] = (pix / ow) * sh * wp + (pix % ow) * sw;
  const int64_t per_task = kPanels * kNr;
  const int64_t tasks_per_image = (pixels + per_task - 1) / per_task;
  parallel_for(p.batch * tasks_per_image, [&](int64_t task) {
    const int64_t n = task / tasks_per_image;
    const int64_t first = (task % tasks_per_image) * per_task;
    const int64_t count = std::min(per_task, pixels - first);
    const int64_t panels = (count + kNr - 1) / kNr;
    const double* img = padded.get() + n * c_in * plane_size;
    // One buffer per worker, reused across calls; lanes past the last pixel are zeroed.
    thread_local std::vector<double> storage;
    const size_t need = static_cast<size_t>(panels * k_count * kNr);
    if (storage.size() < need) storage.resize(need);
    double* const panel = storage.data();
    for (int64_t pi = 0; pi < panels; ++pi) {
      const int64_t j0 = pi * kNr, valid = std::min(kNr, count - j0);
      const int64_t* win0 = window.data() + first + j0;
      double* dst = panel + pi * k_count * kNr;
      for (int64_t k = 0; k < k_count; ++k, dst += kNr) {
        const double* tap = img + tap_offset[static_cast<size_t>(k)];
        for (int64_t j = 0; j < valid; ++j) dst[j] = tap[win0[j]];
        for (int64_t j = valid; j < kNr; ++j) dst[j] = 0.0;
      }
    }
    double tile[kMr * kNr];
    for (int64_t m0 = 0; m0 < m_pad; m0 += kMr) {
      for (int64_t pi = 0; pi < panels; ++pi) {
        tile_4x12(w.data() + m0 * k_count, k_count, panel + pi * k_count * kNr, k_count, tile);
        for (int64_t i = 0; i < kMr && m0 + i < m_out; ++i) {
          const int64_t m = m0 + i;
          float* dst = py + (n * m_out + m) * pixels + first + pi * kNr;
          const int64_t valid = std::min(kNr, count - pi * kNr);
          for (int64_t j = 0; j < valid; ++j) dst[j] = finish(tile[i * kNr + j], unit, op.scale[m], op.bias[m], op.relu);
        }
      }
    }
  });
  out.at(0) = std::move(y);
}

}  // namespace nibble::cpu
