// ONNX Identity: the output shares the input's storage.
#include "backends/ref/kernels.h"

namespace nibble::ref {

void identity(const Node& node, const Inputs& in, Outputs& out) { out[0] = required_input(node, in, 0); }

}  // namespace nibble::ref
