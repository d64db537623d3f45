// ONNX Reshape: 0 copies the input dimension (unless allowzero), -1 is inferred.
#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void reshape(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& spec = required_input(node, in, 1);
  if (spec.dtype() != DType::s64 || spec.rank() != 1) kernel_fail("Reshape: shape must be a 1-D s64 tensor");
  const bool allowzero = node.attr_int("allowzero", 0) != 0;
  Shape shape(spec.data<int64_t>(), spec.data<int64_t>() + spec.numel());
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) kernel_fail("Reshape: more than one -1 in the target shape");
      infer = static_cast<int>(i);
      continue;
    }
    if (shape[i] == 0 && !allowzero) {
      if (i >= x.shape().size()) kernel_fail("Reshape: 0 at position {} but the input has rank {}", i, x.rank());
      shape[i] = x.shape()[i];
    }
    if (shape[i] < 0) kernel_fail("Reshape: invalid dimension {}", shape[i]);
    if (shape[i] != 0 && known > kMaxElements / shape[i]) {
      kernel_fail("Reshape: target shape {} has more than 2^56 elements", shape_str(shape));
    }
    known *= shape[i];
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0) {
      kernel_fail("Reshape: cannot infer -1 when reshaping {} to {}", shape_str(x.shape()), shape_str(shape));
    }
    shape[static_cast<size_t>(infer)] = x.numel() / known;
  }
  if (shape_numel(shape) != x.numel()) {
    kernel_fail("Reshape: {} has {} elements, target {} has {}", shape_str(x.shape()), x.numel(), shape_str(shape),
                shape_numel(shape));
  }
  out[0] = x.reshaped(shape);
}

}  // namespace nibble::ref
