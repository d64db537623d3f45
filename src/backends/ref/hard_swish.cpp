// ONNX HardSwish: x * max(0, min(1, x / 6 + 1 / 2)).
#include <algorithm>

#include "backends/ref/elementwise.h"

namespace nibble::ref {

void hard_swish(const Node& node, const Inputs& in, Outputs& out) {
  unary_float(node, "HardSwish", in, out, [](double v) { return v * std::clamp(v / 6.0 + 0.5, 0.0, 1.0); });
}

}  // namespace nibble::ref
