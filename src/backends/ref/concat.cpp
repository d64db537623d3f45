// ONNX Concat: joins tensors of one dtype along an axis.
#include <cstring>

#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void concat(const Node& node, const Inputs& in, Outputs& out) {
  if (in.empty()) kernel_fail("Concat needs at least one input");
  const Tensor& first = required_input(node, in, 0);
  const int64_t rank = first.rank();
  const int64_t axis = normalize_axis(node.attr_int("axis", 0), rank, "Concat");
  Shape shape = first.shape();
  shape[static_cast<size_t>(axis)] = 0;
  for (size_t k = 0; k < in.size(); ++k) {
    const Tensor& t = required_input(node, in, k);
    if (t.dtype() != first.dtype() || t.rank() != rank) {
      kernel_fail("Concat: input {} is {} {}, input 0 is {} {}", k, dtype_name(t.dtype()), shape_str(t.shape()),
                  dtype_name(first.dtype()), shape_str(first.shape()));
    }
    for (int64_t d = 0; d < rank; ++d) {
      if (d != axis && t.shape()[static_cast<size_t>(d)] != first.shape()[static_cast<size_t>(d)]) {
        kernel_fail("Concat: input {} has shape {}, which differs from {} outside axis {}", k, shape_str(t.shape()),
                    shape_str(first.shape()), axis);
      }
    }
    shape[static_cast<size_t>(axis)] += t.shape()[static_cast<size_t>(axis)];
  }
  const int64_t esize = static_cast<int64_t>(element_bytes(first, "Concat"));
  int64_t outer = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= shape[static_cast<size_t>(d)];
  int64_t inner = 1;
  for (int64_t d = axis + 1; d < rank; ++d) inner *= shape[static_cast<size_t>(d)];

  Tensor y(first.dtype(), shape);
  const int64_t out_row = shape[static_cast<size_t>(axis)] * inner * esize;
  int64_t col = 0;
  for (const Tensor* t : in) {
    const int64_t row = t->shape()[static_cast<size_t>(axis)] * inner * esize;
    for (int64_t o = 0; o < outer; ++o) {
      if (row > 0) std::memcpy(y.bytes() + o * out_row + col, t->bytes() + o * row, static_cast<size_t>(row));
    }
    col += row;
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
