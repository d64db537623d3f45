// ONNX Sigmoid: 1 / (1 + exp(-x)) on floats.
#include <cmath>

#include "backends/ref/elementwise.h"

namespace nibble::ref {

namespace {
template <typename T>
void sigmoid_typed(const Tensor& x, Tensor& y) {
  const T* px = x.data<T>();
  T* py = y.data<T>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    // Split by sign so that exp never overflows.
    const T v = px[i];
    if (v >= T(0)) {
      py[i] = T(1) / (T(1) + std::exp(-v));
    } else {
      const T e = std::exp(v);
      py[i] = e / (T(1) + e);
    }
  }
}
}  // namespace

void sigmoid(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  Tensor y(x.dtype(), x.shape());
  switch (x.dtype()) {
    case DType::f32: sigmoid_typed<float>(x, y); break;
    case DType::f64: sigmoid_typed<double>(x, y); break;
    default: kernel_fail("Sigmoid expects a float input, got {}", dtype_name(x.dtype()));
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
