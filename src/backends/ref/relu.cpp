// ONNX Relu: max(x, 0).
#include "backends/ref/elementwise.h"

namespace nibble::ref {

void relu(const Node& node, const Inputs& in, Outputs& out) {
  unary_elementwise(node, "Relu", in, out, [](auto x) { return x > decltype(x)(0) ? x : decltype(x)(0); });
}

}  // namespace nibble::ref
