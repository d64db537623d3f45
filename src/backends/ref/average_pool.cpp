// The reference AveragePool: N-d mean over windows, with the ONNX count_include_pad and ceil_mode rules.
#include <cstdint>
#include <limits>
#include <vector>

#include "backends/ref/kernels.h"
#include "backends/ref/window.h"

namespace nibble::ref {

void average_pool(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  if (x.dtype() != DType::f32) kernel_fail("AveragePool expects f32 input X, got {}", dtype_name(x.dtype()));
  if (x.rank() < 3 || x.rank() > 2 + kMaxSpatialRank) {
    kernel_fail("AveragePool expects X of rank 3 to {} (N x C x spatial), got shape {}", 2 + kMaxSpatialRank,
                shape_str(x.shape()));
  }
  const std::vector<int64_t> spatial(x.shape().begin() + 2, x.shape().end());
  const std::vector<int64_t> kernel = pool_kernel_shape(node, static_cast<int>(spatial.size()));
  const Window window = make_window(node, spatial, kernel, WindowRules{.ceil_mode_allowed = true});
  const int64_t count_include_pad = node.attr_int("count_include_pad", 0);
  if (count_include_pad != 0 && count_include_pad != 1) {
    kernel_fail("AveragePool attribute count_include_pad must be 0 or 1, got {}", count_include_pad);
  }

  Shape out_shape{x.dim(0), x.dim(1)};
  out_shape.insert(out_shape.end(), window.output.begin(), window.output.end());
  Tensor y(DType::f32, out_shape);

  const Window g = window.as_3d();
  const int64_t in_d = g.input[0], in_h = g.input[1], in_w = g.input[2];
  const int64_t out_d = g.output[0], out_h = g.output[1], out_w = g.output[2];
  const int64_t in_plane = in_d * in_h * in_w;
  const int64_t out_plane = out_d * out_h * out_w;
  const int64_t planes = x.dim(0) * x.dim(1);
  const float* xd = x.data<float>();
  float* yd = y.data<float>();

  // The divisor counts the window's taps on real input, or with count_include_pad also those on
  // the pads; taps that ceil_mode pushes past the end padding never count. The window is a
  // product of per-dim runs, so the count is a product of per-dim counts.
  auto divisor_taps = [&](int dim, int64_t start) {
    const int64_t lo = count_include_pad ? -g.pad_begin[dim] : 0;
    const int64_t hi = g.input[dim] + (count_include_pad ? g.pad_end[dim] : 0);
    const auto [first, last] = taps_within(start, g.dilations[dim], g.kernel[dim], lo, hi);
    return last - first;
  };

  for (int64_t plane = 0; plane < planes; ++plane) {
    const float* x_plane = xd + plane * in_plane;
    for (int64_t od = 0; od < out_d; ++od) {
      const int64_t id0 = od * g.strides[0] - g.pad_begin[0];
      const auto [kd_first, kd_last] = taps_within(id0, g.dilations[0], g.kernel[0], 0, in_d);
      const int64_t count_d = divisor_taps(0, id0);
      for (int64_t oh = 0; oh < out_h; ++oh) {
        const int64_t ih0 = oh * g.strides[1] - g.pad_begin[1];
        const auto [kh_first, kh_last] = taps_within(ih0, g.dilations[1], g.kernel[1], 0, in_h);
        const int64_t count_dh = count_d * divisor_taps(1, ih0);
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const int64_t iw0 = ow * g.strides[2] - g.pad_begin[2];
          const auto [kw_first, kw_last] = taps_within(iw0, g.dilations[2], g.kernel[2], 0, in_w);
          const int64_t count = count_dh * divisor_taps(2, iw0);
          // Summing in double and rounding once keeps the mean exact to float precision.
          double sum = 0.0;
          for (int64_t kd = kd_first; kd < kd_last; ++kd) {
            const int64_t id = id0 + kd * g.dilations[0];
            for (int64_t kh = kh_first; kh < kh_last; ++kh) {
              const int64_t ih = ih0 + kh * g.dilations[1];
              const float* x_row = x_plane + (id * in_h + ih) * in_w;
              for (int64_t kw = kw_first; kw < kw_last; ++kw) sum += x_row[iw0 + kw * g.dilations[2]];
            }
          }
          // A window with nothing to count (only padding, count_include_pad = 0) averages to NaN.
          const double mean =
              count > 0 ? sum / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
          yd[plane * out_plane + (od * out_h + oh) * out_w + ow] = static_cast<float>(mean);
        }
      }
    }
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
