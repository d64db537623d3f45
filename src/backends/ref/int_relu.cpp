// nibble:IntRelu: the seed's ReLU, s32 -> u31 values kept in s32.
#include "backends/ref/int_ops.h"

namespace nibble::ref {

void int_relu(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  if (x.dtype() != DType::s32) kernel_fail("{} expects s32, got {}", node.op_type, dtype_name(x.dtype()));
  out.at(0) = int_relu_s32(x);
}

}  // namespace nibble::ref
