// ONNX Shape: the input's dimensions as s64, optionally the slice [start, end) (opset 15).
#include <algorithm>

#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void shape(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const int64_t rank = x.rank();
  auto clamp_axis = [&](int64_t a) { return std::clamp<int64_t>(a < 0 ? a + rank : a, 0, rank); };
  const int64_t start = clamp_axis(node.attr_int("start", 0));
  const int64_t end = clamp_axis(node.attr_int("end", rank));
  Tensor y(DType::s64, {std::max<int64_t>(0, end - start)});
  for (int64_t i = start; i < end; ++i) y.data<int64_t>()[i - start] = x.shape()[static_cast<size_t>(i)];
  out[0] = std::move(y);
}

}  // namespace nibble::ref
