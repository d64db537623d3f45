// `nibble inspect MODEL`: ops, shapes, parameters and multiply-accumulates per layer.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <map>
#include <optional>

#include "cli/commands.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/model_loader.h"
#include "quant/quantize.h"

namespace nibble::cli {

namespace {

std::string shape_text(const std::optional<Shape>& s) { return s ? shape_str(*s) : "?"; }

void print_quantize_plan(const Graph& g);

void inspect(const std::string& path, int64_t batch) {
  LoadOptions opts;
  opts.fixed_batch = batch;
  const Graph g = load_model(path, opts);

  fmt::print("model: {}\n", path);
  for (const auto& in : g.inputs) {
    fmt::print("input  {}: {} {}\n", in.name, in.dtype ? dtype_name(*in.dtype) : "?", shape_text(in.shape));
  }
  for (const auto& out : g.outputs) {
    fmt::print("output {}: {} {}\n", out.name, out.dtype ? dtype_name(*out.dtype) : "?", shape_text(out.shape));
  }
  fmt::print("shapes and MACs for batch {}\n\n", batch);

  size_t name_w = 4;
  for (const auto& n : g.nodes) name_w = std::max(name_w, n.name.size());
  name_w = std::min<size_t>(name_w, 40);
  fmt::print("{:>4}  {:<{}}  {:<20}  {:<5} {:<20}  {:>10}  {:>10}  {:>14}\n", "#", "node", name_w, "op", "type",
             "output", "params", "bytes", "MACs");
  int64_t total_params = 0;
  int64_t total_macs = 0;
  std::map<std::string, int> op_count;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    int64_t params = 0;
    int64_t bytes = 0;
    for (const auto& in : n.inputs) {
      if (auto it = g.initializers.find(in); it != g.initializers.end()) {
        params += it->second.numel();
        bytes += static_cast<int64_t>(it->second.nbytes());
      }
    }
    const int64_t macs = node_macs(g, n);
    total_params += params;
    total_macs += macs;
    ++op_count[n.op_type];
    const ValueInfo* out = n.outputs.empty() ? nullptr : g.find_value(n.outputs[0]);
    fmt::print("{:>4}  {:<{}}  {:<20}  {:<5} {:<20}  {:>10}  {:>10}  {:>14}\n", i, n.name.empty() ? "-" : n.name,
               name_w, n.op_type, out && out->dtype ? dtype_name(*out->dtype) : "?",
               n.outputs.empty() ? "" : shape_text(known_shape(g, n.outputs[0])), params, bytes, macs);
  }
  fmt::print("\n{} nodes; ops: ", g.nodes.size());
  std::vector<std::string> ops;
  for (const auto& [op, count] : op_count) ops.push_back(fmt::format("{} x{}", op, count));
  fmt::print("{}\n", fmt::join(ops, ", "));
  int64_t init_params = 0;
  int64_t init_bytes = 0;
  for (const auto& [name, t] : g.initializers) {
    init_params += t.numel();
    init_bytes += static_cast<int64_t>(t.nbytes());
  }
  fmt::print("parameters: {} ({} bytes of weights)\n", init_params, init_bytes);
  fmt::print("MACs: {} ({:.3f} GMAC) per batch of {}\n", total_macs, static_cast<double>(total_macs) / 1e9, batch);
  const auto missing = unsupported_ops(g);
  if (missing.empty()) {
    fmt::print("every op is supported by the reference backend\n");
  } else {
    fmt::print("unsupported ops: {}\n", fmt::join(missing, ", "));
  }
  std::error_code ec;
  // The plan reads the model as quantize does, with a free batch (a fixed one folds more).
  if (!std::filesystem::is_directory(path, ec)) print_quantize_plan(load_model(path));
}

// What `nibble quantize --precision int8` will do with an FP32 model.
void print_quantize_plan(const Graph& g) {
  quant::QuantizeResult plan;
  try {
    plan = quant::plan_quantization(g, quant::Precision::int8);
  } catch (const Error& e) {
    fmt::print("quantize: cannot quantize this model: {}\n", e.problem());
    return;
  }
  int integer = 0;
  std::vector<const quant::LayerReport*> floating;
  for (const auto& l : plan.layers) {
    if (l.precision == quant::Precision::f32) {
      floating.push_back(&l);
    } else {
      ++integer;
    }
  }
  std::map<std::string, int> ops;
  for (const auto& op : plan.float_ops) ++ops[op];
  std::vector<std::string> op_list;
  for (const auto& [op, count] : ops) op_list.push_back(fmt::format("{} x{}", op, count));
  fmt::print("quantize (int8): {} of {} conv/linear layers integer", integer, plan.layers.size());
  if (op_list.empty()) {
    fmt::print(", no other op kept in float\n");
  } else {
    fmt::print("; kept in float: {}\n", fmt::join(op_list, ", "));
  }
  for (const auto* l : floating) {
    fmt::print("  float  {} ({}): {}\n", l->layer, l->op, l->note.empty() ? "-" : l->note);
  }
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Show a model's ops, shapes, parameters and MACs per layer");
  auto path = std::make_shared<std::string>();
  auto batch = std::make_shared<int64_t>(1);
  cmd->add_option("model", *path, "ONNX model file or model directory")->required();
  cmd->add_option("--batch", *batch, "Batch size used for a symbolic batch dimension")
      ->default_val(1)
      ->check(CLI::PositiveNumber);
  cmd->callback([path, batch] { inspect(*path, *batch); });
}

}  // namespace nibble::cli
