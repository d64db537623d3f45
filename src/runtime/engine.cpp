// Execution planning (value slots, lifetimes) and the run loop over reference kernels.
#include "nibble/engine.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <set>

#include "backends/cpu/kernels.h"
#include "backends/ref/kernels.h"
#include "nibble/error.h"
#include "nibble/model_loader.h"

namespace nibble {

std::vector<std::string> unsupported_ops(const Graph& graph) {
  std::set<std::string> missing;
  for (const auto& n : graph.nodes) {
    if (!ref::find_kernel(n.op_type, n.opset)) missing.insert(n.op_type);
  }
  return {missing.begin(), missing.end()};
}

Engine::Engine(Graph graph, Backend backend) : graph_(std::move(graph)) {
  // The CPU kernels requantize a residual as they read it, rather than a separate pass writing s32.
  if (backend == Backend::cpu && std::string(cpu::isa_name()) != "scalar") fold_residual_requantize(graph_);
  std::map<std::string, int> slot_of;
  auto new_slot = [&](const std::string& name) {
    const int s = static_cast<int>(slot_count_++);
    slot_of[name] = s;
    return s;
  };
  for (const auto& [name, t] : graph_.initializers) {
    new_slot(name);
    constants_.push_back(t);
  }
  for (const auto& in : graph_.inputs) {
    input_slots_.push_back(new_slot(in.name));
    constants_.emplace_back();
  }
  for (size_t i = 0; i < graph_.nodes.size(); ++i) {
    const Node& n = graph_.nodes[i];
    const ref::KernelFn fn = ref::find_kernel(n.op_type, n.opset);
    if (!fn) {
      const int oldest = ref::min_opset(n.op_type);
      if (oldest < 0) {
        fail(graph_.source, "unsupported op {} in node '{}'", n.op_type, n.name.empty() ? "(unnamed)" : n.name);
      }
      fail(graph_.source, "op {} in node '{}' is written for opset {}; nibble supports it from opset {}", n.op_type,
           n.name.empty() ? "(unnamed)" : n.name, n.opset, oldest);
    }
    Step step{i, {}, {}, {}};
    for (const auto& name : n.inputs) {
      if (name.empty()) {
        step.inputs.push_back(-1);
        continue;
      }
      auto it = slot_of.find(name);
      if (it == slot_of.end()) fail(graph_.source, "node {} reads '{}', which nothing produces", n.label(), name);
      step.inputs.push_back(it->second);
    }
    for (const auto& name : n.outputs) {
      step.outputs.push_back(name.empty() ? -1 : new_slot(name));
      if (!name.empty()) constants_.emplace_back();
    }
    steps_.push_back(std::move(step));
    const ref::KernelFn fast = backend == Backend::cpu ? cpu::find_kernel(n.op_type) : nullptr;
    kernels_.push_back(fast ? fast : fn);
  }
  for (const auto& out : graph_.outputs) {
    auto it = slot_of.find(out.name);
    if (it == slot_of.end()) fail(graph_.source, "graph output '{}' is never produced", out.name);
    output_slots_.push_back(it->second);
  }
  // Free each computed value after its last reader, unless it is a graph output.
  std::vector<int> last_reader(slot_count_, -1);
  for (size_t s = 0; s < steps_.size(); ++s) {
    for (int slot : steps_[s].inputs) {
      if (slot >= 0) last_reader[static_cast<size_t>(slot)] = static_cast<int>(s);
    }
  }
  const std::set<int> keep(output_slots_.begin(), output_slots_.end());
  for (size_t slot = 0; slot < slot_count_; ++slot) {
    if (last_reader[slot] >= 0 && !keep.count(static_cast<int>(slot))) {
      steps_[static_cast<size_t>(last_reader[slot])].release.push_back(static_cast<int>(slot));
    }
  }
}

std::optional<Engine::InputMismatch> Engine::check_inputs(const std::vector<Tensor>& inputs) const {
  if (inputs.size() != graph_.inputs.size()) {
    return InputMismatch{inputs.size(),
                         fmt::format("the model takes {} input(s), {} given", graph_.inputs.size(), inputs.size())};
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    const ValueInfo& vi = graph_.inputs[i];
    const Tensor& t = inputs[i];
    if (vi.dtype && *vi.dtype != t.dtype()) {
      return InputMismatch{i, fmt::format("input '{}' must be {}, got {}", vi.name, dtype_name(*vi.dtype),
                                          dtype_name(t.dtype()))};
    }
    if (!vi.shape) continue;
    bool ok = vi.shape->size() == t.shape().size();
    for (size_t d = 0; ok && d < t.shape().size(); ++d) {
      ok = (*vi.shape)[d] < 0 || (*vi.shape)[d] == t.shape()[d];
    }
    if (!ok) {
      std::vector<std::string> dims;
      for (size_t d = 0; d < vi.shape->size(); ++d) {
        dims.push_back((*vi.shape)[d] >= 0 ? std::to_string((*vi.shape)[d])
                                           : (vi.dim_params[d].empty() ? "?" : vi.dim_params[d]));
      }
      return InputMismatch{i, fmt::format("input '{}' must have shape [{}], got {}", vi.name, fmt::join(dims, ", "),
                                          shape_str(t.shape()))};
    }
  }
  return std::nullopt;
}

std::vector<Tensor> Engine::run(const std::vector<Tensor>& inputs) const {
  if (const auto bad = check_inputs(inputs)) fail(graph_.source, "{}", bad->problem);
  std::vector<Tensor> values = constants_;
  for (size_t i = 0; i < inputs.size(); ++i) values[static_cast<size_t>(input_slots_[i])] = inputs[i];

  ref::Inputs in;
  ref::Outputs out;
  for (size_t s = 0; s < steps_.size(); ++s) {
    const Step& step = steps_[s];
    const Node& node = graph_.nodes[step.node];
    in.clear();
    for (int slot : step.inputs) in.push_back(slot >= 0 ? &values[static_cast<size_t>(slot)] : nullptr);
    // Trailing omitted inputs are dropped so that kernels can count what they got.
    while (!in.empty() && !in.back()) in.pop_back();
    out.assign(step.outputs.size(), Tensor{});
    try {
      kernels_[s](node, in, out);
    } catch (const ref::KernelError& e) {
      fail(graph_.source, "node {}: {}", node.label(), e.what());
    } catch (const std::invalid_argument& e) {
      fail(graph_.source, "node {}: {}", node.label(), e.what());
    }
    for (size_t o = 0; o < step.outputs.size(); ++o) {
      if (step.outputs[o] < 0) continue;
      if (!out[o].defined()) fail(graph_.source, "node {} did not produce output {}", node.label(), o);
      values[static_cast<size_t>(step.outputs[o])] = std::move(out[o]);
    }
    for (int slot : step.release) values[static_cast<size_t>(slot)] = Tensor{};
  }
  std::vector<Tensor> result;
  for (int slot : output_slots_) result.push_back(values[static_cast<size_t>(slot)]);
  return result;
}

}  // namespace nibble
