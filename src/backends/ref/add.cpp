// ONNX Add: elementwise with numpy broadcasting, computed in the inputs' dtype.
#include "backends/ref/elementwise.h"

namespace nibble::ref {

void add(const Node&, const Inputs& in, Outputs& out) {
  binary_elementwise("Add", in, out, [](auto a, auto b) { return a + b; });
}

}  // namespace nibble::ref
