// ONNX LayerNormalization (opset 17): over the axes from `axis` on, y = (x - mean) /
// sqrt(var + epsilon) * scale + bias, with the optional Mean and InvStdDev outputs (the reduced
// axes kept as 1). Computed in double.
#include <cmath>

#include "backends/ref/broadcast.h"
#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void layer_normalization(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& scale = required_input(node, in, 1);
  const Tensor* bias = optional_input(in, 2);
  if (x.dtype() != DType::f32 && x.dtype() != DType::f64) kernel_fail("LayerNormalization expects a float input, got {}", dtype_name(x.dtype()));
  const int64_t rank = x.rank();
  const int64_t axis = normalize_axis(node.attr_int("axis", -1), rank, "LayerNormalization");
  const double eps = node.attr_float("epsilon", 1e-5f);
  const Shape norm(x.shape().begin() + axis, x.shape().end());
  const int64_t inner = shape_numel(norm);
  const int64_t outer = inner == 0 ? 0 : x.numel() / inner;
  const auto is = broadcast_index(scale.shape(), norm);
  std::vector<int64_t> ib;
  if (bias) ib = broadcast_index(bias->shape(), norm);
  Shape stat_shape(x.shape().begin(), x.shape().begin() + axis);
  stat_shape.resize(static_cast<size_t>(rank), 1);
  Tensor y(x.dtype(), x.shape()), mean(x.dtype(), stat_shape), inv(x.dtype(), stat_shape);
  for (int64_t o = 0; o < outer; ++o) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < inner; ++i) m += x.get(o * inner + i);
    m /= static_cast<double>(inner);
    for (int64_t i = 0; i < inner; ++i) {
      const double d = x.get(o * inner + i) - m;
      v += d * d;
    }
    v /= static_cast<double>(inner);
    const double r = 1.0 / std::sqrt(v + eps);
    for (int64_t i = 0; i < inner; ++i) {
      double t = (x.get(o * inner + i) - m) * r * scale.get(is[static_cast<size_t>(i)]);
      if (bias) t += bias->get(ib[static_cast<size_t>(i)]);
      y.set(o * inner + i, t);
    }
    mean.set(o, m);
    inv.set(o, r);
  }
  out[0] = std::move(y);
  if (out.size() > 1) out[1] = std::move(mean);
  if (out.size() > 2) out[2] = std::move(inv);
}

}  // namespace nibble::ref
