// The seed engine's fusion: an integer conv absorbs its residual add, ReLU and requantization.
#include <map>
#include <set>

#include "nibble/model_loader.h"

namespace nibble {

int fuse_int_conv_epilogues(Graph& g) {
  std::map<std::string, std::vector<size_t>> readers;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    for (const auto& in : g.nodes[i].inputs) readers[in].push_back(i);
  }
  std::set<std::string> graph_outputs;
  for (const auto& o : g.outputs) graph_outputs.insert(o.name);
  // The node that alone reads `value`, of type `op`; nullopt otherwise.
  auto sole_reader = [&](const std::string& value, const char* op) -> std::optional<size_t> {
    if (graph_outputs.count(value)) return std::nullopt;
    const auto it = readers.find(value);
    if (it == readers.end() || it->second.size() != 1) return std::nullopt;
    return g.nodes[it->second[0]].op_type == op ? std::optional<size_t>(it->second[0]) : std::nullopt;
  };

  std::vector<bool> absorbed(g.nodes.size(), false);
  std::map<size_t, Node> replacement;  // fused node, placed where its last absorbed node was
  int fused = 0;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& conv = g.nodes[i];
    if (conv.op_type != "nibble:IntConv") continue;
    Node f = conv;
    f.op_type = "nibble:IntConvFused";
    f.inputs.resize(5);  // x, W, B, residual, factor
    std::string value = conv.outputs[0];
    size_t last = i;
    std::vector<size_t> chain;
    if (auto add = sole_reader(value, "nibble:IntAdd")) {
      const Node& a = g.nodes[*add];
      f.inputs[3] = a.inputs[0] == value ? a.inputs[1] : a.inputs[0];
      value = a.outputs[0];
      chain.push_back(last = *add);
    }
    f.attrs["relu"] = int64_t{0};
    if (auto relu = sole_reader(value, "nibble:IntRelu")) {
      f.attrs["relu"] = int64_t{1};
      value = g.nodes[*relu].outputs[0];
      chain.push_back(last = *relu);
    }
    if (auto q = sole_reader(value, "nibble:Requantize")) {
      const Node& r = g.nodes[*q];
      f.inputs[4] = r.inputs[1];
      for (const char* key : {"shift", "bits", "signed"}) f.attrs[key] = r.attrs.at(key);
      value = r.outputs[0];
      chain.push_back(last = *q);
    }
    if (chain.empty()) continue;
    while (!f.inputs.empty() && f.inputs.back().empty()) f.inputs.pop_back();
    f.outputs = {value};
    absorbed[i] = true;
    for (size_t c : chain) absorbed[c] = true;
    replacement[last] = std::move(f);
    ++fused;
  }
  std::vector<Node> nodes;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (auto it = replacement.find(i); it != replacement.end()) {
      nodes.push_back(std::move(it->second));
    } else if (!absorbed[i]) {
      nodes.push_back(std::move(g.nodes[i]));
    }
  }
  g.nodes = std::move(nodes);
  return fused;
}

int fold_residual_requantize(Graph& g) {
  std::map<std::string, int> reader_count;
  for (const auto& n : g.nodes) {
    for (const auto& in : n.inputs) ++reader_count[in];
  }
  for (const auto& o : g.outputs) ++reader_count[o.name];
  std::map<std::string, size_t> producer;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    for (const auto& out : g.nodes[i].outputs) producer[out] = i;
  }
  std::vector<bool> folded(g.nodes.size(), false);
  int count = 0;
  for (Node& conv : g.nodes) {
    if (conv.op_type != "nibble:IntConvFused" || conv.inputs.size() < 4 || conv.inputs[3].empty()) continue;
    const std::string& residual = conv.inputs[3];
    const auto it = producer.find(residual);
    if (it == producer.end() || reader_count[residual] != 1) continue;
    const Node& q = g.nodes[it->second];
    if (q.op_type != "nibble:Requantize" || q.inputs.size() != 2 || q.outputs.size() != 1) continue;
    if (!q.has_attr("shift") || !q.has_attr("bits")) continue;
    conv.inputs.resize(7);
    conv.inputs[5] = q.inputs[0];
    conv.inputs[6] = q.inputs[1];
    conv.inputs[3].clear();
    conv.attrs["res_shift"] = q.attrs.at("shift");
    conv.attrs["res_bits"] = q.attrs.at("bits");
    conv.attrs["res_signed"] = int64_t{q.attr_int("signed", 0)};
    folded[it->second] = true;
    ++count;
  }
  std::vector<Node> nodes;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (!folded[i]) nodes.push_back(std::move(g.nodes[i]));
  }
  g.nodes = std::move(nodes);
  return count;
}

}  // namespace nibble
