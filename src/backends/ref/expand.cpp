// ONNX Expand: broadcasts the input to the shape given (bidirectionally: the result has the
// broadcast of both shapes).
#include <cstring>

#include "backends/ref/broadcast.h"
#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void expand(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const std::vector<int64_t> dims = int_values(required_input(node, in, 1), "Expand", "the shape");
  const Shape shape = broadcast_shape(x.shape(), Shape(dims.begin(), dims.end()));
  const auto idx = broadcast_index(x.shape(), shape);
  const size_t es = element_bytes(x, "Expand");
  Tensor y(x.dtype(), shape);
  for (int64_t i = 0; i < y.numel(); ++i) {
    std::memcpy(y.bytes() + i * static_cast<int64_t>(es), x.bytes() + idx[static_cast<size_t>(i)] * static_cast<int64_t>(es), es);
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
