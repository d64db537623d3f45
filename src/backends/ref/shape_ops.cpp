// Axis normalization and element sizes for the layout kernels.
#include "backends/ref/shape_ops.h"

namespace nibble::ref {

int64_t normalize_axis(int64_t axis, int64_t rank, const char* op, bool inclusive) {
  // Negative axes count from the end in both cases: Flatten's axis -1 means rank - 1.
  const int64_t limit = inclusive ? rank + 1 : rank;
  const int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= limit) kernel_fail("{}: axis {} is out of range for rank {}", op, axis, rank);
  return a;
}

size_t element_bytes(const Tensor& t, const char* op) {
  const int bits = traits(t.dtype()).bits;
  if (bits % 8 != 0) kernel_fail("{} does not support packed dtype {}", op, dtype_name(t.dtype()));
  return static_cast<size_t>(bits / 8);
}

}  // namespace nibble::ref
