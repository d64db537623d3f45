// Numpy-style broadcasting: shapes and index maps.
#include "backends/ref/broadcast.h"

#include <algorithm>

#include "backends/ref/kernels.h"

namespace nibble::ref {

Shape broadcast_shape(const Shape& a, const Shape& b) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1) {
      kernel_fail("shapes {} and {} cannot be broadcast together", shape_str(a), shape_str(b));
    }
    out[i] = da == 1 ? db : da;
  }
  return out;
}

std::vector<int64_t> broadcast_index(const Shape& in_shape, const Shape& out_shape) {
  const size_t rank = out_shape.size();
  const size_t offset = rank - in_shape.size();
  // Strides of the input seen with out's rank; 0 along broadcast dimensions.
  std::vector<int64_t> stride(rank, 0);
  int64_t s = 1;
  for (size_t i = rank; i-- > offset;) {
    const int64_t d = in_shape[i - offset];
    stride[i] = d == 1 ? 0 : s;
    s *= d;
  }
  const int64_t n = shape_numel(out_shape);
  std::vector<int64_t> index(static_cast<size_t>(n));
  std::vector<int64_t> coord(rank, 0);
  int64_t flat = 0;
  for (int64_t i = 0; i < n; ++i) {
    index[static_cast<size_t>(i)] = flat;
    for (size_t d = rank; d-- > 0;) {  // odometer increment
      if (++coord[d] < out_shape[d]) {
        flat += stride[d];
        break;
      }
      flat -= stride[d] * (out_shape[d] - 1);
      coord[d] = 0;
    }
  }
  return index;
}

}  // namespace nibble::ref
