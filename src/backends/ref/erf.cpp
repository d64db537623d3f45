// ONNX Erf: the error function, elementwise on floats.
#include <cmath>

#include "backends/ref/elementwise.h"

namespace nibble::ref {

void erf(const Node& node, const Inputs& in, Outputs& out) {
  unary_float(node, "Erf", in, out, [](double v) { return std::erf(v); });
}

}  // namespace nibble::ref
