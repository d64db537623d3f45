// ONNX Mul: elementwise with numpy broadcasting, computed in the inputs' dtype.
#include "backends/ref/elementwise.h"

namespace nibble::ref {

void mul(const Node&, const Inputs& in, Outputs& out) {
  binary_elementwise("Mul", in, out, [](auto a, auto b) { return a * b; });
}

}  // namespace nibble::ref
