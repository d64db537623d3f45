// ONNX Flatten: a 2-D view, dimensions before `axis` form the rows.
#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void flatten(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const int64_t axis = normalize_axis(node.attr_int("axis", 1), x.rank(), "Flatten", /*inclusive=*/true);
  const Shape& s = x.shape();
  const int64_t rows = shape_numel(Shape(s.begin(), s.begin() + axis));
  const int64_t cols = shape_numel(Shape(s.begin() + axis, s.end()));
  out[0] = x.reshaped({rows, cols});
}

}  // namespace nibble::ref
