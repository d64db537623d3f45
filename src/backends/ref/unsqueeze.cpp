// ONNX Unsqueeze and Squeeze: insert or remove dimensions of extent 1 (axes as an input from
// opset 13, an attribute before). Squeeze without axes removes every dimension of extent 1.
#include <set>

#include "backends/ref/shape_ops.h"

namespace nibble::ref {

namespace {
std::vector<int64_t> axes_of(const Node& node, const Inputs& in, const char* op) {
  if (const Tensor* a = optional_input(in, 1)) return int_values(*a, op, "axes");
  return node.attr_ints("axes");
}
}  // namespace

void unsqueeze(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const std::vector<int64_t> axes = axes_of(node, in, "Unsqueeze");
  const int64_t rank = x.rank() + static_cast<int64_t>(axes.size());
  std::set<int64_t> at;
  for (int64_t a : axes) {
    if (!at.insert(normalize_axis(a, rank, "Unsqueeze")).second) kernel_fail("Unsqueeze: axis {} given twice", a);
  }
  Shape shape;
  size_t next = 0;
  for (int64_t d = 0; d < rank; ++d) shape.push_back(at.count(d) ? 1 : x.shape()[next++]);
  out[0] = x.reshaped(shape);
}

void squeeze(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const std::vector<int64_t> axes = axes_of(node, in, "Squeeze");
  std::set<int64_t> drop;
  for (int64_t a : axes) {
    const int64_t d = normalize_axis(a, x.rank(), "Squeeze");
    if (x.shape()[static_cast<size_t>(d)] != 1) kernel_fail("Squeeze: axis {} has extent {}, not 1", a, x.shape()[static_cast<size_t>(d)]);
    drop.insert(d);
  }
  Shape shape;
  for (int64_t d = 0; d < x.rank(); ++d) {
    const bool gone = axes.empty() ? x.shape()[static_cast<size_t>(d)] == 1 : drop.count(d) != 0;
    if (!gone) shape.push_back(x.shape()[static_cast<size_t>(d)]);
  }
  out[0] = x.reshaped(shape);
}

}  // namespace nibble::ref
