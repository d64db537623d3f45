// ONNX Pow: x ^ y elementwise with broadcasting; the result has x's dtype, y may be of any
// arithmetic dtype. Computed in double (exact for integer results below 2^53).
#include <cmath>

#include "backends/ref/elementwise.h"

namespace nibble::ref {

void pow(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& e = required_input(node, in, 1);
  const Shape shape = broadcast_shape(x.shape(), e.shape());
  const auto ix = broadcast_index(x.shape(), shape);
  const auto ie = broadcast_index(e.shape(), shape);
  Tensor y(x.dtype(), shape);
  dispatch_arithmetic(x.dtype(), "Pow", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    for (int64_t i = 0; i < y.numel(); ++i) {
      const double r = std::pow(static_cast<double>(px[ix[static_cast<size_t>(i)]]), e.get(ie[static_cast<size_t>(i)]));
      py[i] = static_cast<T>(r);
    }
  });
  out[0] = std::move(y);
}

}  // namespace nibble::ref
