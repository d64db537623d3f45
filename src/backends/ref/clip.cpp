// ONNX Clip: bounds from attributes (opset < 11) or optional scalar inputs (opset >= 11).
#include <limits>

#include "backends/ref/elementwise.h"

namespace nibble::ref {

void clip(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  dispatch_arithmetic(x.dtype(), "Clip", [&](auto tag) {
    using T = decltype(tag);
    T lo = std::numeric_limits<T>::lowest();
    T hi = std::numeric_limits<T>::max();
    if (node.opset < 11) {
      lo = static_cast<T>(node.attr_float("min", static_cast<float>(lo)));
      hi = static_cast<T>(node.attr_float("max", static_cast<float>(hi)));
    } else {
      for (size_t i = 1; i <= 2; ++i) {
        const Tensor* bound = optional_input(in, i);
        if (!bound) continue;
        if (bound->dtype() != x.dtype() || bound->numel() != 1) {
          kernel_fail("Clip: {} must be a scalar of dtype {}", i == 1 ? "min" : "max", dtype_name(x.dtype()));
        }
        (i == 1 ? lo : hi) = bound->data<T>()[0];
      }
    }
    Tensor y(x.dtype(), x.shape());
    const T* px = x.data<T>();
    T* py = y.data<T>();
    // ONNX defines Clip as min(max(x, lo), hi): when lo > hi every element becomes hi.
    for (int64_t i = 0; i < x.numel(); ++i) {
      T v = px[i] < lo ? lo : px[i];
      py[i] = v > hi ? hi : v;
    }
    out[0] = std::move(y);
  });
}

}  // namespace nibble::ref
