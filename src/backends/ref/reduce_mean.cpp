// ONNX ReduceMean: the mean over `axes` (an attribute up to opset 17, an input from 18; all
// axes when absent, unless noop_with_empty_axes), keeping reduced axes as 1 when keepdims.
// Sums in double.
#include <cmath>
#include <set>

#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void reduce_mean(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  if (x.dtype() != DType::f32 && x.dtype() != DType::f64) kernel_fail("ReduceMean expects a float input, got {}", dtype_name(x.dtype()));
  const int64_t rank = x.rank();
  std::vector<int64_t> axes = node.attr_ints("axes");
  if (const Tensor* a = optional_input(in, 1)) axes = int_values(*a, "ReduceMean", "axes");
  if (axes.empty() && node.attr_int("noop_with_empty_axes", 0)) {
    out[0] = x;
    return;
  }
  std::set<int64_t> reduced;
  for (int64_t a : axes) reduced.insert(normalize_axis(a, rank, "ReduceMean"));
  if (axes.empty()) {
    for (int64_t d = 0; d < rank; ++d) reduced.insert(d);
  }
  const bool keep = node.attr_int("keepdims", 1) != 0;
  Shape kept_shape, out_shape;
  for (int64_t d = 0; d < rank; ++d) {
    const bool r = reduced.count(d) != 0;
    kept_shape.push_back(r ? 1 : x.shape()[static_cast<size_t>(d)]);
    if (!r || keep) out_shape.push_back(r ? 1 : x.shape()[static_cast<size_t>(d)]);
  }
  const int64_t n_out = shape_numel(kept_shape);
  const int64_t count = n_out == 0 ? 0 : x.numel() / n_out;
  std::vector<double> sum(static_cast<size_t>(n_out), 0.0);
  const auto in_strides = strides_of(x.shape()), out_strides = strides_of(kept_shape);
  for (int64_t i = 0; i < x.numel(); ++i) {
    int64_t o = 0, rem = i;
    for (int64_t d = 0; d < rank; ++d) {
      const int64_t c = rem / in_strides[static_cast<size_t>(d)];
      rem -= c * in_strides[static_cast<size_t>(d)];
      if (!reduced.count(d)) o += c * out_strides[static_cast<size_t>(d)];
    }
    sum[static_cast<size_t>(o)] += x.get(i);
  }
  Tensor y(x.dtype(), out_shape);
  for (int64_t i = 0; i < n_out; ++i) y.set(i, count ? sum[static_cast<size_t>(i)] / static_cast<double>(count) : std::nan(""));
  out[0] = std::move(y);
}

}  // namespace nibble::ref
