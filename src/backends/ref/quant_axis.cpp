// Validation of per-tensor / per-axis scales and the [outer, channels, inner] view they imply.
#include "backends/ref/quant_axis.h"

namespace nibble::ref {

QuantAxisLayout quant_axis_layout(const Node& node, const Tensor& x, const Tensor& scale, const Tensor* zp,
                                  const char* scale_name, const char* zp_name) {
  const std::string& op = node.op_type;
  const bool per_axis = scale.numel() != 1;
  int64_t axis = 0;
  if (per_axis) {
    if (node.opset < 13) {
      kernel_fail("{}: {} is {}; opset {} allows only a scalar (per-axis needs opset 13)", op, scale_name,
                  shape_str(scale.shape()), node.opset);
    }
    axis = node.attr_int("axis", 1);
    if (axis < -x.rank() || axis >= x.rank()) {
      kernel_fail("{}: axis {} is out of range for x of shape {}", op, axis, shape_str(x.shape()));
    }
    if (axis < 0) axis += x.rank();
    if (scale.rank() != 1 || scale.dim(0) != x.dim(static_cast<int>(axis))) {
      kernel_fail("{}: {} is {} but x is {}: a per-axis scale needs {} values (axis {})", op, scale_name,
                  shape_str(scale.shape()), shape_str(x.shape()), x.dim(static_cast<int>(axis)), axis);
    }
  }
  if (zp && (zp->numel() != scale.numel() || (per_axis && zp->rank() != 1))) {
    kernel_fail("{}: {} is {} but {} is {}: they must have the same shape", op, zp_name, shape_str(zp->shape()),
                scale_name, shape_str(scale.shape()));
  }
  QuantAxisLayout l;
  if (per_axis) {
    l.channels = x.dim(static_cast<int>(axis));
    for (int d = static_cast<int>(axis) + 1; d < x.rank(); ++d) l.inner *= x.dim(d);
  } else {
    l.inner = x.numel();
  }
  l.outer = l.channels * l.inner == 0 ? 0 : x.numel() / (l.channels * l.inner);
  return l;
}

}  // namespace nibble::ref
