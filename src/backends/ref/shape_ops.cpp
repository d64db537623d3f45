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

std::vector<int64_t> int_values(const Tensor& t, const char* op, const char* what) {
  if (t.dtype() != DType::s64 && t.dtype() != DType::s32) {
    kernel_fail("{}: {} must be int64 or int32, got {}", op, what, dtype_name(t.dtype()));
  }
  if (t.rank() > 1) kernel_fail("{}: {} must be 1-D, got {}", op, what, shape_str(t.shape()));
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    v[static_cast<size_t>(i)] = t.dtype() == DType::s64 ? t.data<int64_t>()[i] : t.data<int32_t>()[i];
  }
  return v;
}

// The row-major strides of `shape`.
std::vector<int64_t> strides_of(const Shape& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (size_t i = shape.size(); i-- > 1;) s[i - 1] = s[i] * shape[i];
  return s;
}

}  // namespace nibble::ref
