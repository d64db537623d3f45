// ONNX Constant: the value comes from exactly one attribute.
#include "backends/ref/kernels.h"

namespace nibble::ref {

void constant(const Node& node, const Inputs&, Outputs& out) {
  if (node.attrs.size() != 1) kernel_fail("Constant must have exactly one value attribute");
  if (const Tensor* t = node.attr_tensor("value")) {
    out[0] = *t;
  } else if (node.has_attr("value_float")) {
    Tensor y(DType::f32, {});
    y.data<float>()[0] = node.attr_float("value_float", 0.0f);
    out[0] = std::move(y);
  } else if (node.has_attr("value_int")) {
    Tensor y(DType::s64, {});
    y.data<int64_t>()[0] = node.attr_int("value_int", 0);
    out[0] = std::move(y);
  } else if (node.has_attr("value_floats")) {
    const std::vector<float> v = node.attr_floats("value_floats");
    Tensor y(DType::f32, {static_cast<int64_t>(v.size())});
    std::copy(v.begin(), v.end(), y.data<float>());
    out[0] = std::move(y);
  } else if (node.has_attr("value_ints")) {
    const std::vector<int64_t> v = node.attr_ints("value_ints");
    Tensor y(DType::s64, {static_cast<int64_t>(v.size())});
    std::copy(v.begin(), v.end(), y.data<int64_t>());
    out[0] = std::move(y);
  } else {
    kernel_fail("Constant attribute '{}' is not supported", node.attrs.begin()->first);
  }
}

}  // namespace nibble::ref
