// ONNX Gather: entries of `data` along `axis` picked by `indices` (negative ones count from the
// end); the output shape is data[:axis] + indices + data[axis+1:].
#include <cstring>

#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void gather(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& data = required_input(node, in, 0);
  const Tensor& indices = required_input(node, in, 1);
  if (indices.dtype() != DType::s64 && indices.dtype() != DType::s32) {
    kernel_fail("Gather: indices must be int64 or int32, got {}", dtype_name(indices.dtype()));
  }
  const int64_t rank = data.rank();
  if (rank < 1) kernel_fail("Gather: data must have rank 1 or more");
  const int64_t axis = normalize_axis(node.attr_int("axis", 0), rank, "Gather");
  const int64_t extent = data.shape()[static_cast<size_t>(axis)];
  Shape shape(data.shape().begin(), data.shape().begin() + axis);
  shape.insert(shape.end(), indices.shape().begin(), indices.shape().end());
  shape.insert(shape.end(), data.shape().begin() + axis + 1, data.shape().end());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= data.shape()[static_cast<size_t>(d)];
  for (int64_t d = axis + 1; d < rank; ++d) inner *= data.shape()[static_cast<size_t>(d)];
  const size_t es = element_bytes(data, "Gather");
  const int64_t chunk = inner * static_cast<int64_t>(es);
  Tensor y(data.dtype(), shape);
  const int64_t n = indices.numel();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t k = 0; k < n; ++k) {
      int64_t j = indices.dtype() == DType::s64 ? indices.data<int64_t>()[k] : indices.data<int32_t>()[k];
      if (j < -extent || j >= extent) kernel_fail("Gather: index {} is out of range for axis {} of extent {}", j, axis, extent);
      if (j < 0) j += extent;
      std::memcpy(y.bytes() + (o * n + k) * chunk, data.bytes() + (o * extent + j) * chunk, static_cast<size_t>(chunk));
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
