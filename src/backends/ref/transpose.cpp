// ONNX Transpose: permutes dimensions (reverses them when perm is absent).
#include <cstring>

#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void transpose(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const size_t rank = x.shape().size();
  std::vector<int64_t> perm = node.attr_ints("perm");
  if (perm.empty()) {
    for (size_t i = 0; i < rank; ++i) perm.push_back(static_cast<int64_t>(rank - 1 - i));
  }
  if (perm.size() != rank) kernel_fail("Transpose: perm has {} entries for rank {}", perm.size(), rank);
  std::vector<bool> seen(rank, false);
  Shape shape(rank);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t p = normalize_axis(perm[i], static_cast<int64_t>(rank), "Transpose");
    if (seen[static_cast<size_t>(p)]) kernel_fail("Transpose: perm repeats axis {}", p);
    seen[static_cast<size_t>(p)] = true;
    perm[i] = p;
    shape[i] = x.shape()[static_cast<size_t>(p)];
  }
  const size_t esize = element_bytes(x, "Transpose");
  // Input strides, visited in output order.
  std::vector<int64_t> in_stride(rank, 1);
  for (size_t i = rank; i-- > 1;) in_stride[i - 1] = in_stride[i] * x.shape()[i];
  std::vector<int64_t> stride(rank);
  for (size_t i = 0; i < rank; ++i) stride[i] = in_stride[static_cast<size_t>(perm[i])];

  Tensor y(x.dtype(), shape);
  const uint8_t* src = x.bytes();
  uint8_t* dst = y.bytes();
  std::vector<int64_t> coord(rank, 0);
  int64_t offset = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    std::memcpy(dst + i * static_cast<int64_t>(esize), src + offset * static_cast<int64_t>(esize), esize);
    for (size_t d = rank; d-- > 0;) {
      if (++coord[d] < shape[d]) {
        offset += stride[d];
        break;
      }
      offset -= stride[d] * (shape[d] - 1);
      coord[d] = 0;
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
