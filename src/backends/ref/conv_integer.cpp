// The reference ConvInteger: exact int32 convolution of u8/s8 inputs around their zero points.
#include <cstdint>
#include <vector>

#include "backends/ref/conv_common.h"
#include "backends/ref/kernels.h"

namespace nibble::ref {

void conv_integer(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& w = required_input(node, in, 1);
  const Tensor* x_zero_point = optional_input(in, 2);
  const Tensor* w_zero_point = optional_input(in, 3);
  if (!is_8bit_integer(x.dtype()))
    kernel_fail("ConvInteger expects u8 or s8 input X, got {}", dtype_name(x.dtype()));
  if (!is_8bit_integer(w.dtype())) {
    kernel_fail("ConvInteger expects u8 or s8 weight W, got {}", dtype_name(w.dtype()));
  }
  const ConvProblem p = make_conv_problem(node, x, w);

  const int32_t x_zero = scalar_zero_point(node, x_zero_point, x.dtype(), "x_zero_point");
  std::vector<int32_t> w_zero(static_cast<size_t>(p.out_channels), 0);
  if (w_zero_point) {
    if (w_zero_point->dtype() != w.dtype()) {
      kernel_fail("ConvInteger expects w_zero_point of type {} like W, got {}", dtype_name(w.dtype()),
                  dtype_name(w_zero_point->dtype()));
    }
    const std::vector<double> values =
        per_channel_values(node, *w_zero_point, p.out_channels, "w_zero_point");
    for (size_t m = 0; m < values.size(); ++m) w_zero[m] = static_cast<int32_t>(values[m]);
  }
  out.at(0) = integer_conv(p, x, x_zero, w, w_zero);
}

}  // namespace nibble::ref
