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

}  // namespace nibble
