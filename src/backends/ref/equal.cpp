// ONNX Equal: a == b elementwise with broadcasting, to bool (compared in the inputs' own type).
#include "backends/ref/elementwise.h"

namespace nibble::ref {

void equal(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& a = required_input(node, in, 0);
  const Tensor& b = required_input(node, in, 1);
  if (a.dtype() != b.dtype()) kernel_fail("Equal inputs have different dtypes {} and {}", dtype_name(a.dtype()), dtype_name(b.dtype()));
  const Shape shape = broadcast_shape(a.shape(), b.shape());
  const auto ia = broadcast_index(a.shape(), shape);
  const auto ib = broadcast_index(b.shape(), shape);
  Tensor y(DType::boolean, shape);
  uint8_t* py = y.bytes();
  const auto compare = [&](const auto* pa, const auto* pb) {
    for (int64_t i = 0; i < y.numel(); ++i) py[i] = pa[ia[static_cast<size_t>(i)]] == pb[ib[static_cast<size_t>(i)]];
  };
  if (a.dtype() == DType::boolean) {
    compare(a.bytes(), b.bytes());
  } else {
    dispatch_arithmetic(a.dtype(), "Equal", [&](auto tag) {
      using T = decltype(tag);
      compare(a.data<T>(), b.data<T>());
    });
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
