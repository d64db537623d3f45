// The reference QLinearConv: exact int32 convolution, then requantization to the output's 8-bit type.
#include <cmath>
#include <cstdint>
#include <vector>

#include "backends/ref/conv_common.h"
#include "backends/ref/kernels.h"

namespace nibble::ref {

namespace {

float scalar_scale(const Node& node, const Tensor& t, const char* what) {
  if (t.dtype() != DType::f32) kernel_fail("QLinearConv expects f32 {}, got {}", what, dtype_name(t.dtype()));
  if (t.numel() != 1)
    kernel_fail("QLinearConv expects {} to be a scalar, got shape {}", what, shape_str(t.shape()));
  return t.data<float>()[0];
}

}  // namespace

void qlinear_conv(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& x_scale_t = required_input(node, in, 1);
  const Tensor* x_zero_point = optional_input(in, 2);
  const Tensor& w = required_input(node, in, 3);
  const Tensor& w_scale_t = required_input(node, in, 4);
  const Tensor* w_zero_point = optional_input(in, 5);
  const Tensor& y_scale_t = required_input(node, in, 6);
  const Tensor& y_zero_point = required_input(node, in, 7);
  const Tensor* bias = optional_input(in, 8);

  if (!is_8bit_integer(x.dtype()))
    kernel_fail("QLinearConv expects u8 or s8 input x, got {}", dtype_name(x.dtype()));
  if (!is_8bit_integer(w.dtype())) {
    kernel_fail("QLinearConv expects u8 or s8 weight w, got {}", dtype_name(w.dtype()));
  }
  if (!is_8bit_integer(y_zero_point.dtype())) {
    kernel_fail("QLinearConv expects u8 or s8 y_zero_point, got {}", dtype_name(y_zero_point.dtype()));
  }
  const ConvProblem p = make_conv_problem(node, x, w);
  const int64_t maps = p.out_channels;

  const float x_scale = scalar_scale(node, x_scale_t, "x_scale");
  const float y_scale = scalar_scale(node, y_scale_t, "y_scale");
  if (w_scale_t.dtype() != DType::f32) {
    kernel_fail("QLinearConv expects f32 w_scale, got {}", dtype_name(w_scale_t.dtype()));
  }
  const std::vector<double> w_scale = per_channel_values(node, w_scale_t, maps, "w_scale");
  if (!std::isfinite(x_scale) || !std::isfinite(y_scale) || y_scale == 0.0f) {
    kernel_fail("QLinearConv expects finite scales and a non-zero y_scale, got x_scale {} and y_scale {}",
                x_scale, y_scale);
  }

  const int32_t x_zero = scalar_zero_point(node, x_zero_point, x.dtype(), "x_zero_point");
  const int32_t y_zero = scalar_zero_point(node, &y_zero_point, y_zero_point.dtype(), "y_zero_point");
  std::vector<int32_t> w_zero(static_cast<size_t>(maps), 0);
  if (w_zero_point) {
    if (w_zero_point->dtype() != w.dtype()) {
      kernel_fail("QLinearConv expects w_zero_point of type {} like w, got {}", dtype_name(w.dtype()),
                  dtype_name(w_zero_point->dtype()));
    }
    const std::vector<double> values = per_channel_values(node, *w_zero_point, maps, "w_zero_point");
    for (size_t m = 0; m < values.size(); ++m) w_zero[m] = static_cast<int32_t>(values[m]);
  }
  if (bias) {
    if (bias->dtype() != DType::s32)
      kernel_fail("QLinearConv expects s32 bias B, got {}", dtype_name(bias->dtype()));
    if (bias->rank() != 1 || bias->dim(0) != maps) {
      kernel_fail("QLinearConv expects bias B of shape [{}], got {}", maps, shape_str(bias->shape()));
    }
  }

  // The ONNX reference forms the multiplier in float32 (x_scale * w_scale / y_scale) and applies
  // it to the int32 sums in float64, rounding half to even; doing the same gives its exact bytes.
  std::vector<double> multiplier(static_cast<size_t>(maps));
  for (int64_t m = 0; m < maps; ++m) {
    const float wm = static_cast<float>(w_scale[static_cast<size_t>(m)]);
    multiplier[static_cast<size_t>(m)] = static_cast<double>((x_scale * wm) / y_scale);
  }

  const Tensor sums = integer_conv(p, x, x_zero, w, w_zero);
  const int32_t* acc = sums.data<int32_t>();
  const int32_t* b = bias ? bias->data<int32_t>() : nullptr;
  const double lo = traits(y_zero_point.dtype()).min;
  const double hi = traits(y_zero_point.dtype()).max;
  Tensor y(y_zero_point.dtype(), p.output_shape());
  uint8_t* y_bytes = y.bytes();  // u8 and s8 both store one byte per element
  const int64_t plane = p.window.output_size();
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t m = 0; m < maps; ++m) {
      const int64_t base = (n * maps + m) * plane;
      // The bias joins the int32 accumulator; unsigned addition wraps like the accumulator does.
      const uint32_t bias_bits = b ? static_cast<uint32_t>(b[m]) : 0u;
      const double scale = multiplier[static_cast<size_t>(m)];
      for (int64_t i = 0; i < plane; ++i) {
        const int32_t total = static_cast<int32_t>(static_cast<uint32_t>(acc[base + i]) + bias_bits);
        double v = std::nearbyint(static_cast<double>(total) * scale) + y_zero;
        if (!(v >= lo)) v = lo;  // also maps a NaN (0 * inf) to the low end
        if (v > hi) v = hi;
        const int32_t q = static_cast<int32_t>(v);
        y_bytes[base + i] = static_cast<uint8_t>(q);
      }
    }
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
