// The reference GlobalAveragePool: the mean of each N x C plane over all spatial dims.
#include <cstdint>

#include "backends/ref/kernels.h"

namespace nibble::ref {

void global_average_pool(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  if (x.dtype() != DType::f32)
    kernel_fail("GlobalAveragePool expects f32 input X, got {}", dtype_name(x.dtype()));
  if (x.rank() < 3) {
    kernel_fail("GlobalAveragePool expects X of rank >= 3 (N x C x spatial), got shape {}",
                shape_str(x.shape()));
  }
  Shape out_shape(x.shape().size(), 1);
  out_shape[0] = x.dim(0);
  out_shape[1] = x.dim(1);
  const int64_t planes = x.dim(0) * x.dim(1);
  const int64_t plane_size = shape_numel(Shape(x.shape().begin() + 2, x.shape().end()));
  if (plane_size == 0)
    kernel_fail("GlobalAveragePool cannot average an empty spatial shape {}", shape_str(x.shape()));

  Tensor y(DType::f32, out_shape);
  const float* xd = x.data<float>();
  float* yd = y.data<float>();
  for (int64_t p = 0; p < planes; ++p) {
    // Summing in double and rounding once keeps the mean exact to float precision.
    double sum = 0.0;
    const float* plane = xd + p * plane_size;
    for (int64_t i = 0; i < plane_size; ++i) sum += plane[i];
    yd[p] = static_cast<float>(sum / static_cast<double>(plane_size));
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
