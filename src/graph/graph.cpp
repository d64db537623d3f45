// Attribute access and lookups on the graph IR.
#include "nibble/graph.h"

#include <fmt/format.h>

#include <stdexcept>

namespace nibble {

namespace {
template <typename T>
const T* get_attr(const Node& n, const std::string& key) {
  auto it = n.attrs.find(key);
  if (it == n.attrs.end()) return nullptr;
  const T* v = std::get_if<T>(&it->second);
  if (!v) throw std::invalid_argument(fmt::format("{}: attribute '{}' has the wrong type", n.label(), key));
  return v;
}
}  // namespace

int64_t Node::attr_int(const std::string& key, int64_t def) const {
  const int64_t* v = get_attr<int64_t>(*this, key);
  return v ? *v : def;
}

float Node::attr_float(const std::string& key, float def) const {
  const float* v = get_attr<float>(*this, key);
  return v ? *v : def;
}

std::string Node::attr_string(const std::string& key, const std::string& def) const {
  const std::string* v = get_attr<std::string>(*this, key);
  return v ? *v : def;
}

std::vector<int64_t> Node::attr_ints(const std::string& key, const std::vector<int64_t>& def) const {
  const auto* v = get_attr<std::vector<int64_t>>(*this, key);
  return v ? *v : def;
}

std::vector<float> Node::attr_floats(const std::string& key) const {
  const auto* v = get_attr<std::vector<float>>(*this, key);
  return v ? *v : std::vector<float>{};
}

const Tensor* Node::attr_tensor(const std::string& key) const { return get_attr<Tensor>(*this, key); }

std::string Node::label() const { return name.empty() ? op_type : fmt::format("{} '{}'", op_type, name); }

const ValueInfo* Graph::find_value(const std::string& name) const {
  for (const auto& v : inputs) {
    if (v.name == name) return &v;
  }
  for (const auto& v : outputs) {
    if (v.name == name) return &v;
  }
  auto it = value_info.find(name);
  return it == value_info.end() ? nullptr : &it->second;
}

std::optional<Shape> known_shape(const Graph& g, const std::string& name) {
  if (auto it = g.initializers.find(name); it != g.initializers.end()) return it->second.shape();
  const ValueInfo* vi = g.find_value(name);
  if (!vi || !vi->shape) return std::nullopt;
  return vi->shape;
}

// Multiply-accumulates of one node (0 for ops that do none, or whose shapes are unknown).
int64_t node_macs(const Graph& g, const Node& n) {
  if (n.outputs.empty()) return 0;
  const auto out = known_shape(g, n.outputs[0]);
  if (!out) return 0;
  const int64_t out_numel = shape_numel(*out);
  auto in_shape = [&](size_t i) { return i < n.inputs.size() ? known_shape(g, n.inputs[i]) : std::nullopt; };
  if (n.op_type == "Conv" || n.op_type == "ConvInteger" || n.op_type == "QLinearConv" ||
      n.op_type == "nibble:IntConv" || n.op_type == "nibble:IntConvFused" || n.op_type == "nibble:Fp8Conv") {
    const auto w = in_shape(n.op_type == "QLinearConv" ? 3 : 1);
    if (!w || w->size() < 2) return 0;
    return out_numel * shape_numel(Shape(w->begin() + 1, w->end()));
  }
  if (n.op_type == "Gemm") {
    const auto a = in_shape(0);
    if (!a || a->size() != 2) return 0;
    return out_numel * (*a)[n.attr_int("transA", 0) ? 0 : 1];
  }
  if (n.op_type == "nibble:IntLinear") {
    const auto w = in_shape(1);
    return w && w->size() == 2 ? out_numel * (*w)[1] : 0;
  }
  if (n.op_type == "MatMul" || n.op_type == "MatMulInteger" || n.op_type == "QLinearMatMul") {
    const auto a = in_shape(0);
    if (!a || a->empty()) return 0;
    return out_numel * a->back();
  }
  return 0;
}

}  // namespace nibble
