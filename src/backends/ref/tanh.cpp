// ONNX Tanh, elementwise on floats.
#include <cmath>

#include "backends/ref/elementwise.h"

namespace nibble::ref {

void tanh(const Node& node, const Inputs& in, Outputs& out) {
  unary_float(node, "Tanh", in, out, [](double v) { return std::tanh(v); });
}

}  // namespace nibble::ref
