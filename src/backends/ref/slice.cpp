// ONNX Slice (opset 10+): per axis, elements start, start + step, ... before end, with
// negative starts and ends counting from the end and out-of-range ones clamped.
#include <algorithm>
#include <cstring>

#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void slice(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const std::vector<int64_t> starts = int_values(required_input(node, in, 1), "Slice", "starts");
  const std::vector<int64_t> ends = int_values(required_input(node, in, 2), "Slice", "ends");
  std::vector<int64_t> axes, steps;
  if (const Tensor* a = optional_input(in, 3)) axes = int_values(*a, "Slice", "axes");
  if (const Tensor* s = optional_input(in, 4)) steps = int_values(*s, "Slice", "steps");
  if (axes.empty()) {
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  }
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size()) {
    kernel_fail("Slice: starts, ends, axes and steps must have the same length");
  }
  const int64_t rank = x.rank();
  std::vector<int64_t> first(static_cast<size_t>(rank), 0), step(static_cast<size_t>(rank), 1);
  Shape shape = x.shape();
  std::vector<bool> seen(static_cast<size_t>(rank), false);
  for (size_t i = 0; i < starts.size(); ++i) {
    const int64_t a = normalize_axis(axes[i], rank, "Slice");
    if (seen[static_cast<size_t>(a)]) kernel_fail("Slice: axis {} given twice", a);
    seen[static_cast<size_t>(a)] = true;
    const int64_t dim = x.shape()[static_cast<size_t>(a)];
    const int64_t st = steps[i];
    if (st == 0) kernel_fail("Slice: step 0");
    int64_t b = starts[i] < 0 ? starts[i] + dim : starts[i];
    int64_t e = ends[i] < 0 ? ends[i] + dim : ends[i];
    int64_t len = 0;
    if (st > 0) {
      b = std::clamp<int64_t>(b, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      len = e > b ? (e - b + st - 1) / st : 0;
    } else {
      b = std::clamp<int64_t>(b, -1, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      len = b > e ? (b - e + (-st) - 1) / (-st) : 0;
    }
    first[static_cast<size_t>(a)] = b;
    step[static_cast<size_t>(a)] = st;
    shape[static_cast<size_t>(a)] = len;
  }
  const size_t es = element_bytes(x, "Slice");
  const auto in_strides = strides_of(x.shape());
  Tensor y(x.dtype(), shape);
  std::vector<int64_t> coord(static_cast<size_t>(rank), 0);
  for (int64_t i = 0; i < y.numel(); ++i) {
    int64_t src = 0;
    for (size_t d = 0; d < coord.size(); ++d) src += (first[d] + coord[d] * step[d]) * in_strides[d];
    std::memcpy(y.bytes() + i * static_cast<int64_t>(es), x.bytes() + src * static_cast<int64_t>(es), es);
    for (size_t d = coord.size(); d-- > 0;) {
      if (++coord[d] < shape[d]) break;
      coord[d] = 0;
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
