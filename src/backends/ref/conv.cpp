// The reference float32 Conv: grouped, dilated, strided N-d convolution with optional bias.
#include <cstdint>

#include "backends/ref/conv_common.h"
#include "backends/ref/kernels.h"

namespace nibble::ref {

void conv(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& w = required_input(node, in, 1);
  const Tensor* bias = optional_input(in, 2);
  if (x.dtype() != DType::f32) kernel_fail("Conv expects f32 input X, got {}", dtype_name(x.dtype()));
  if (w.dtype() != DType::f32) kernel_fail("Conv expects f32 weight W, got {}", dtype_name(w.dtype()));
  const ConvProblem p = make_conv_problem(node, x, w);
  if (bias) {
    if (bias->dtype() != DType::f32)
      kernel_fail("Conv expects f32 bias B, got {}", dtype_name(bias->dtype()));
    if (bias->rank() != 1 || bias->dim(0) != p.out_channels) {
      kernel_fail("Conv expects bias B of shape [{}], got {}", p.out_channels, shape_str(bias->shape()));
    }
  }

  Tensor y(DType::f32, p.output_shape());
  float* y_data = y.data<float>();
  conv_accumulate<float, float>(p, x.data<float>(), 0.0f, w.data<float>(), y_data);
  // The bias joins after the products, as a typical engine's epilogue adds it.
  if (bias) {
    const float* b = bias->data<float>();
    const int64_t plane = p.window.output_size();
    for (int64_t n = 0; n < p.batch; ++n) {
      for (int64_t m = 0; m < p.out_channels; ++m) {
        float* y_map = y_data + (n * p.out_channels + m) * plane;
        for (int64_t i = 0; i < plane; ++i) y_map[i] += b[m];
      }
    }
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
