// ONNX Div: elementwise with numpy broadcasting; integer division truncates toward zero.
#include <type_traits>

#include "backends/ref/elementwise.h"

namespace nibble::ref {

void div(const Node&, const Inputs& in, Outputs& out) {
  binary_elementwise("Div", in, out, [](auto a, auto b) {
    if constexpr (std::is_integral_v<decltype(a)>) {
      if (b == 0) kernel_fail("Div: integer division by zero");
    }
    return a / b;
  });
}

}  // namespace nibble::ref
