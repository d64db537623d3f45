// ONNX HardSigmoid: max(0, min(1, alpha x + beta)), alpha 0.2 and beta 0.5 by default.
#include <algorithm>

#include "backends/ref/elementwise.h"

namespace nibble::ref {

void hard_sigmoid(const Node& node, const Inputs& in, Outputs& out) {
  const double alpha = node.attr_float("alpha", 0.2f), beta = node.attr_float("beta", 0.5f);
  unary_float(node, "HardSigmoid", in, out, [&](double v) { return std::clamp(alpha * v + beta, 0.0, 1.0); });
}

}  // namespace nibble::ref
