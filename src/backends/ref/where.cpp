// ONNX Where: cond ? x : y elementwise with three-way broadcasting.
#include <cstring>

#include "backends/ref/elementwise.h"
#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void where(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& c = required_input(node, in, 0);
  const Tensor& x = required_input(node, in, 1);
  const Tensor& y = required_input(node, in, 2);
  if (c.dtype() != DType::boolean) kernel_fail("Where: the condition must be bool, got {}", dtype_name(c.dtype()));
  if (x.dtype() != y.dtype()) kernel_fail("Where: x is {} but y is {}", dtype_name(x.dtype()), dtype_name(y.dtype()));
  const Shape shape = broadcast_shape(broadcast_shape(c.shape(), x.shape()), y.shape());
  const auto ic = broadcast_index(c.shape(), shape);
  const auto ix = broadcast_index(x.shape(), shape);
  const auto iy = broadcast_index(y.shape(), shape);
  const size_t es = element_bytes(x, "Where");
  Tensor r(x.dtype(), shape);
  const uint8_t* pc = c.bytes();
  for (int64_t i = 0; i < r.numel(); ++i) {
    const size_t k = static_cast<size_t>(i);
    const uint8_t* src = pc[ic[k]] ? x.bytes() + ix[k] * static_cast<int64_t>(es) : y.bytes() + iy[k] * static_cast<int64_t>(es);
    std::memcpy(r.bytes() + i * static_cast<int64_t>(es), src, es);
  }
  out[0] = std::move(r);
}

}  // namespace nibble::ref
