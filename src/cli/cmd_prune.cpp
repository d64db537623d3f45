// `nibble prune MODEL.onnx --pattern 2:4 -o pruned.onnx`: magnitude 2:4 pruning of every
// convolution and linear layer that can take it, with a per-layer report.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "cli/commands.h"
#include "cli/quant_common.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/model_loader.h"
#include "nibble/onnx_import.h"
#include "quant/sparsity.h"

namespace nibble::cli {

namespace {

struct PruneArgs {
  std::string model;
  std::string pattern = "2:4";
  std::string output;
  std::vector<std::string> exclude;
};

void prune(const PruneArgs& args) {
  if (args.pattern != "2:4") fail("--pattern", "'{}' is not supported (2:4 is: two of every four weights kept)", args.pattern);
  std::error_code ec;
  if (std::filesystem::is_directory(args.model, ec)) {
    fail(args.model, "prune reads FP32 ONNX models; prune before quantizing (the quantized model keeps the pattern)");
  }
  if (std::filesystem::equivalent(args.model, args.output, ec)) fail(args.output, "is the input model; write elsewhere");
  check_new_output(args.output);
  LoadOptions opts;
  opts.fixed_batch = 1;  // MACs per input
  const Graph g = load_model(args.model, opts);
  const std::vector<quant::SparsityPlan> plan = quant::plan_2to4(g, args.exclude);
  std::map<std::string, Tensor> pruned;
  int64_t macs = 0, sparse_macs = 0, zeroed = 0, weights = 0;
  size_t width = 5;
  for (const auto& p : plan) width = std::max(width, std::min<size_t>(p.node.size(), 48));
  fmt::print("{:<{}}  {:<6} {:<18} {:>12}  {}\n", "layer", width, "op", "weight", "MACs", "2:4");
  for (const auto& p : plan) {
    macs += p.macs;
    std::string what = p.reason;
    if (p.eligible) {
      auto it = pruned.find(p.weight);
      if (it == pruned.end()) {  // a weight shared by two nodes is pruned once
        Tensor w = g.initializers.at(p.weight).clone();
        zeroed += quant::prune_2to4(w, p);
        weights += w.numel();
        it = pruned.emplace(p.weight, std::move(w)).first;
      }
      sparse_macs += p.macs;
      what = "sparse";
    }
    fmt::print("{:<{}}  {:<6} {:<18} {:>12}  {}\n", p.node, width, p.op, shape_str(p.shape), p.macs, what);
  }
  const size_t sparse = static_cast<size_t>(std::count_if(plan.begin(), plan.end(), [](const auto& p) { return p.eligible; }));
  if (sparse == 0) fail(args.model, "no convolution or linear layer can be 2:4 sparse (see the reasons above)");
  write_onnx_with_initializers(args.model, args.output, pruned);
  fmt::print("{} of {} conv/linear layers 2:4 sparse, {:.1f}% of the MACs; {} of their {} weights set to zero\n",
             sparse, plan.size(), macs > 0 ? 100.0 * static_cast<double>(sparse_macs) / static_cast<double>(macs) : 0.0,
             zeroed, weights);
  fmt::print("wrote {}\n", args.output);
}

}  // namespace

void add_prune_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("prune", "Prune an FP32 ONNX model to 2:4 structured sparsity (magnitude, along input channels)");
  auto args = std::make_shared<PruneArgs>();
  cmd->add_option("model", args->model, "FP32 ONNX model")->required();
  cmd->add_option("--pattern", args->pattern, "Sparsity pattern: 2:4 keeps the two largest of every four weights along "
                                              "the input channels (what sparse tensor cores run)")
      ->default_val("2:4");
  cmd->add_option("--exclude", args->exclude, "NAME,... nodes (or weights) to keep dense")->delimiter(',');
  cmd->add_option("-o,--output", args->output, "ONNX file to write (must not exist)")->required();
  cmd->callback([args] { prune(*args); });
}

}  // namespace nibble::cli
