// ONNX Pad: pads (or, negative, crops) each axis by [begin..., end...]; mode constant (with
// constant_value, 0 by default), reflect (mirrored, not repeating the edge) or edge. Pads and
// the value come as inputs from opset 11 (with optional axes from 18), as attributes before.
#include <cstring>

#include "backends/ref/shape_ops.h"

namespace nibble::ref {

void pad(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const int64_t rank = x.rank();
  std::vector<int64_t> pads = node.attr_ints("pads");
  if (const Tensor* p = optional_input(in, 1)) pads = int_values(*p, "Pad", "pads");
  std::vector<int64_t> axes;
  if (const Tensor* a = optional_input(in, 3)) axes = int_values(*a, "Pad", "axes");
  if (axes.empty()) {
    for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
  }
  if (pads.size() != 2 * axes.size()) kernel_fail("Pad: {} pads for {} axes", pads.size(), axes.size());
  std::vector<int64_t> begin(static_cast<size_t>(rank), 0), end(static_cast<size_t>(rank), 0);
  for (size_t i = 0; i < axes.size(); ++i) {
    const size_t a = static_cast<size_t>(normalize_axis(axes[i], rank, "Pad"));
    begin[a] = pads[i];
    end[a] = pads[i + axes.size()];
  }
  const std::string mode = node.has_attr("mode") ? node.attr_string("mode", "constant") : "constant";
  if (mode != "constant" && mode != "reflect" && mode != "edge") kernel_fail("Pad: mode '{}' is not supported", mode);
  Shape shape(static_cast<size_t>(rank));
  for (size_t d = 0; d < shape.size(); ++d) {
    const int64_t dim = x.shape()[d];
    shape[d] = dim + begin[d] + end[d];
    if (shape[d] < 0) kernel_fail("Pad: axis {} would have extent {}", d, shape[d]);
    if (mode != "constant" && shape[d] > 0 && dim == 0) kernel_fail("Pad: {} mode cannot pad an empty axis", mode);
    if (mode == "reflect" && (begin[d] >= dim || end[d] >= dim) && (begin[d] > 0 || end[d] > 0)) {
      kernel_fail("Pad: reflect pads must be smaller than the axis extent {}", dim);
    }
  }
  Tensor y(x.dtype(), shape);
  const size_t es = element_bytes(x, "Pad");
  std::vector<uint8_t> fill(es, 0);
  if (mode == "constant") {
    Tensor v(x.dtype(), {});
    if (const Tensor* c = optional_input(in, 2); c && c->numel() > 0) {
      v.set(0, c->get(0));
    } else if (node.has_attr("value")) {
      v.set(0, node.attr_float("value", 0.0f));
    }
    std::memcpy(fill.data(), v.bytes(), es);
  }
  const auto in_strides = strides_of(x.shape());
  std::vector<int64_t> coord(static_cast<size_t>(rank), 0);
  for (int64_t i = 0; i < y.numel(); ++i) {
    int64_t src = 0;
    bool inside = true;
    for (size_t d = 0; d < coord.size(); ++d) {
      int64_t c = coord[d] - begin[d];
      const int64_t dim = x.shape()[d];
      if (c < 0 || c >= dim) {
        if (mode == "constant") {
          inside = false;
          break;
        }
        if (mode == "edge") {
          c = c < 0 ? 0 : dim - 1;
        } else {
          c = c < 0 ? -c : 2 * (dim - 1) - c;
        }
      }
      src += c * in_strides[d];
    }
    uint8_t* dst = y.bytes() + i * static_cast<int64_t>(es);
    std::memcpy(dst, inside ? x.bytes() + src * static_cast<int64_t>(es) : fill.data(), es);
    for (size_t d = coord.size(); d-- > 0;) {
      if (++coord[d] < shape[d]) break;
      coord[d] = 0;
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
