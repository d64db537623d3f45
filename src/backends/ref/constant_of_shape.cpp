// ONNX ConstantOfShape: a tensor of the given shape filled with `value` (one element; f32 0
// by default).
#include <cstring>

#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void constant_of_shape(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& s = required_input(node, in, 0);
  const std::vector<int64_t> dims = int_values(s, "ConstantOfShape", "the shape");
  for (int64_t d : dims) {
    if (d < 0) kernel_fail("ConstantOfShape: negative dimension {}", d);
  }
  const Tensor* value = node.attr_tensor("value");
  if (value && value->numel() != 1) kernel_fail("ConstantOfShape: value must hold one element, got {}", value->numel());
  Tensor y(value ? value->dtype() : DType::f32, Shape(dims.begin(), dims.end()));
  if (value) {
    const size_t es = element_bytes(y, "ConstantOfShape");
    for (int64_t i = 0; i < y.numel(); ++i) std::memcpy(y.bytes() + i * static_cast<int64_t>(es), value->bytes(), es);
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
