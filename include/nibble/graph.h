// The graph IR: nodes in topological order, named values, initializers.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "nibble/tensor.h"

namespace nibble {

using Attribute = std::variant<int64_t, float, std::string, std::vector<int64_t>, std::vector<float>,
                               Tensor, std::vector<std::string>>;

struct Node {
  std::string op_type;
  std::string name;
  std::vector<std::string> inputs;   // "" marks an omitted optional input
  std::vector<std::string> outputs;  // "" marks an omitted optional output
  std::map<std::string, Attribute> attrs;
  int opset = 0;  // version of the operator set the node was written against

  bool has_attr(const std::string& key) const { return attrs.count(key) != 0; }
  int64_t attr_int(const std::string& key, int64_t def) const;
  float attr_float(const std::string& key, float def) const;
  std::string attr_string(const std::string& key, const std::string& def) const;
  std::vector<int64_t> attr_ints(const std::string& key, const std::vector<int64_t>& def = {}) const;
  std::vector<float> attr_floats(const std::string& key) const;
  const Tensor* attr_tensor(const std::string& key) const;
  // "Conv 'name'" for messages; the op type alone when the node has no name.
  std::string label() const;
};

// A value's static description. Unknown dimensions are -1 (a symbolic name, if any, is kept).
struct ValueInfo {
  std::string name;
  std::optional<DType> dtype;
  std::optional<Shape> shape;
  std::vector<std::string> dim_params;  // same length as shape; "" for fixed dims
};

struct Graph {
  std::string source;  // file it came from, for messages
  int opset = 0;
  std::vector<Node> nodes;
  std::map<std::string, Tensor> initializers;
  std::vector<ValueInfo> inputs;   // runtime inputs (initializers excluded)
  std::vector<ValueInfo> outputs;
  std::map<std::string, ValueInfo> value_info;  // inferred shapes of intermediate values

  const ValueInfo* find_value(const std::string& name) const;
};

// The shape of a value: an initializer's, or the value info's (nullopt when unknown).
std::optional<Shape> known_shape(const Graph& g, const std::string& name);

// Multiply-accumulates of one node at the shapes the graph records (0 for ops that do none,
// or whose shapes are unknown): convolutions, Gemm, MatMul and their integer forms.
int64_t node_macs(const Graph& g, const Node& n);

}  // namespace nibble
