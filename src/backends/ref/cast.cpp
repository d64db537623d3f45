// ONNX Cast to the dtype `to`: floats to integers truncate toward zero (then clamp to the
// target's range), integers convert exactly where the target holds them, anything to bool is
// x != 0. 4-bit and FP8 targets are not ONNX Cast targets nibble supports.
#include <cmath>

#include "backends/ref/kernels.h"

namespace nibble::ref {

void cast(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const auto to = dtype_from_onnx(static_cast<int>(node.attr_int("to", 0)));
  if (!to || *to == DType::s4 || *to == DType::u4 || *to == DType::e4m3) {
    kernel_fail("Cast: target type {} is not supported", node.attr_int("to", 0));
  }
  const bool from_float = traits(x.dtype()).is_float;
  Tensor y(*to, x.shape());
  const int64_t n = x.numel();
  if (*to == DType::s64 && x.dtype() == DType::s64) {
    y = x.clone();
  } else if (*to == DType::s64 && !from_float) {
    for (int64_t i = 0; i < n; ++i) y.data<int64_t>()[i] = static_cast<int64_t>(x.get(i));
  } else {
    for (int64_t i = 0; i < n; ++i) {
      double v = x.dtype() == DType::s64 ? static_cast<double>(x.data<int64_t>()[i]) : x.get(i);
      if (*to == DType::boolean) {
        v = v != 0.0 ? 1.0 : 0.0;
      } else if (from_float && !traits(*to).is_float) {
        v = std::isnan(v) ? 0.0 : std::trunc(v);
      }
      y.set(i, v);
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
