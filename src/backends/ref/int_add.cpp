// nibble:IntAdd: the bottleneck's residual add of two s32 tensors.
#include "backends/ref/int_ops.h"

namespace nibble::ref {

void int_add(const Node& node, const Inputs& in, Outputs& out) {
  out.at(0) = int_add_s32(node, required_input(node, in, 0), required_input(node, in, 1));
}

}  // namespace nibble::ref
