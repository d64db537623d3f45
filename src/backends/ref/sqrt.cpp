// ONNX Sqrt, elementwise on floats (NaN for negative inputs).
#include <cmath>

#include "backends/ref/elementwise.h"

namespace nibble::ref {

void sqrt(const Node& node, const Inputs& in, Outputs& out) {
  unary_float(node, "Sqrt", in, out, [](double v) { return std::sqrt(v); });
}

}  // namespace nibble::ref
