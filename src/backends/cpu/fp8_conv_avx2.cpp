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
NIBBLE_AVX2 void tile_4x12(const double* w, int64_t ldw, const double* panel, int64_t k_count, double* out) {
  __m256d acc[kMr][3];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm256_setzero_pd();
  }
  const double* w0 = w;
  const double* w1 = w + ldw;
  const double* w2 = w + 2 * ldw;
  const double* w3 = w + 3 * ldw;
  for (int64_t k = 0; k < k_count; ++k) {
    const double* x = panel + k * kNr;
    const __m256d x0 = _mm256_loadu_pd(x), x1 = _mm256_loadu_pd(x + 4), x2 = _mm256_loadu_pd(x + 8);
    const __m256d a0 = _mm256_broadcast_sd(w0 + k), a1 = _mm256_broadcast_sd(w1 + k);
    const __m256d a2 = _mm256_broadcast_sd(w2 + k), a3 = _mm256_broadcast_sd(w3 + k);
    acc[0][0] = _mm256_fmadd_pd(a0, x0, acc[0][0]);
    acc[0][1] = _mm256_fmadd_pd(a0, x1, acc[0][1]);
    acc[0][2] = _mm256_fmadd_pd(a0, x2, acc[0][2]);
    acc[1][0] = _mm256_fmadd_pd(a1, x0, acc[1][0]);
    acc[1][1] = _mm256_fmadd_pd(a1, x1, acc[1][1]);
    acc[1][2] = _mm256_fmadd_pd(a1, x2, acc[1][2]);
    acc[2][0] = _mm256_fmadd_pd(a2, x0, acc[2][0]);
    acc[2][1] = _mm256_fmadd_pd(a2, x1, acc[2][1]);
    acc[2][2] = _mm256_fmadd_pd(a2, x2, acc[2][2]);
    acc[3][0] = _mm256_fmadd_pd(a3, x0, acc[3][0]);
    acc[3][1] = _mm256_fmadd_pd(a3, x1, acc[3][1]);
    acc[3][2] = _mm256_fmadd_pd(a3, x2, acc[3][2]);
  }
  for (int64_t i = 0; i < kMr; ++i) {
    for (int64_t j = 0; j < 3; ++j) _mm256_storeu_pd(out + i * kNr + 4 * j, acc[i][j]);
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
  // Tap k = (c, r, s): its offset in the image and its kernel row and column.
  std::vector<int64_t> tap_c(static_cast<size_t>(k_count)), tap_r(static_cast<size_t>(k_count)), tap_s(static_cast<size_t>(k_count));
  for (int64_t k = 0; k < k_count; ++k) {
    tap_c[static_cast<size_t>(k)] = k / (kh * kw);
    tap_r[static_cast<size_t>(k)] = (k / kw) % kh;
    tap_s[static_cast<size_t>(k)] = k % kw;
  }
  Tensor y(DType::f32, p.output_shape());
  float* py = y.data<float>();
  const double unit = std::ldexp(1.0, -9 - op.w_shift);
  // Per output pixel: the top-left input position of its window.
  std::vector<int64_t> base_y(static_cast<size_t>(pixels)), base_x(static_cast<size_t>(pixels));
  for (int64_t pix = 0; pix < pixels; ++pix) {
    base_y[static_cast<size_t>(pix)] = (pix / ow) * sh - ph;
    base_x[static_cast<size_t>(pix)] = (pix % ow) * sw - pw;
  }
  const int64_t per_task = kPanels * kNr;
  const int64_t tasks_per_image = (pixels + per_task - 1) / per_task;
  parallel_for(p.batch * tasks_per_image, [&](int64_t task) {
    const int64_t n = task / tasks_per_image;
    const int64_t first = (task % tasks_per_image) * per_task;
    const int64_t count = std::min(per_task, pixels - first);
    const int64_t panels = (count + kNr - 1) / kNr;
    const int32_t* img = op.x_units.data() + n * c_in * ih * iw;
    std::vector<double> panel(static_cast<size_t>(panels * k_count * kNr), 0.0);  // padding pixels stay 0
    for (int64_t pi = 0; pi < panels; ++pi) {
      const int64_t j0 = pi * kNr, valid = std::min(kNr, count - j0);
      const int64_t* by = base_y.data() + first + j0;
      const int64_t* bx = base_x.data() + first + j0;
      double* dst = panel.data() + pi * k_count * kNr;
      for (int64_t k = 0; k < k_count; ++k, dst += kNr) {
        const int32_t* plane = img + tap_c[static_cast<size_t>(k)] * ih * iw;
        const int64_t dy = tap_r[static_cast<size_t>(k)] * dh, dx = tap_s[static_cast<size_t>(k)] * dw;
        for (int64_t j = 0; j < valid; ++j) {
          const int64_t yy = by[j] + dy, xx = bx[j] + dx;
          dst[j] = (static_cast<uint64_t>(yy) < static_cast<uint64_t>(ih) && static_cast<uint64_t>(xx) < static_cast<uint64_t>(iw))
                       ? plane[yy * iw + xx]
                       : 0.0;
        }
      }
    }
    double tile[kMr * kNr];
    for (int64_t m0 = 0; m0 < m_pad; m0 += kMr) {
      for (int64_t pi = 0; pi < panels; ++pi) {
        tile_4x12(w.data() + m0 * k_count, k_count, panel.data() + pi * k_count * kNr, k_count, tile);
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
