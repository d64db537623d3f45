// `nibble run MODEL --input X.npy -o Y.npy`: one inference on arrays from .npy files.
#include <fmt/format.h>

#include "cli/commands.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/npy.h"
#include "nibble/model_loader.h"

namespace nibble::cli {

namespace {

struct RunArgs {
  std::string model;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
};

void run(const RunArgs& args) {
  for (const std::string& o : args.outputs) check_writable(o);
  const Engine engine(load_model(args.model));
  const Graph& g = engine.graph();
  if (args.inputs.size() != g.inputs.size()) {
    fail(args.model, "the model takes {} input(s), {} --input given", g.inputs.size(), args.inputs.size());
  }
  // Inputs are given in order, or as NAME=FILE.
  std::vector<Tensor> inputs(g.inputs.size());
  std::vector<std::string> files(g.inputs.size());
  for (size_t i = 0; i < args.inputs.size(); ++i) {
    const std::string& spec = args.inputs[i];
    size_t slot = i;
    std::string file = spec;
    if (const auto eq = spec.find('='); eq != std::string::npos) {
      const std::string name = spec.substr(0, eq);
      file = spec.substr(eq + 1);
      slot = g.inputs.size();
      for (size_t k = 0; k < g.inputs.size(); ++k) {
        if (g.inputs[k].name == name) slot = k;
      }
      if (slot == g.inputs.size()) fail(args.model, "the model has no input named '{}'", name);
    }
    if (!files[slot].empty()) fail(file, "input '{}' is given twice", g.inputs[slot].name);
    files[slot] = file;
    inputs[slot] = read_npy(file);
    // A single example without its batch dimension runs as a batch of one.
    const auto& declared = g.inputs[slot].shape;
    if (declared && inputs[slot].rank() + 1 == static_cast<int>(declared->size())) {
      Shape batched = inputs[slot].shape();
      batched.insert(batched.begin(), 1);
      inputs[slot] = inputs[slot].reshaped(batched);
    }
  }
  if (const auto bad = engine.check_inputs(inputs)) fail(files.at(bad->index), "{} (model {})", bad->problem, args.model);
  const std::vector<Tensor> outputs = engine.run(inputs);
  if (args.outputs.size() > outputs.size()) {
    fail(args.model, "the model has {} output(s), {} -o given", outputs.size(), args.outputs.size());
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& t = outputs[i];
    if (i < args.outputs.size()) {
      write_npy(args.outputs[i], t);
      fmt::print("{}: {} {} -> {}\n", g.outputs[i].name, dtype_name(t.dtype()), shape_str(t.shape()), args.outputs[i]);
    } else {
      fmt::print("{}: {} {} (not written: no -o)\n", g.outputs[i].name, dtype_name(t.dtype()), shape_str(t.shape()));
    }
  }
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "Run a model once on inputs from .npy files, write outputs as .npy");
  auto args = std::make_shared<RunArgs>();
  cmd->add_option("model", args->model, "ONNX model file or model directory")->required();
  cmd->add_option("--input,-i", args->inputs, "Input .npy file, in model input order, or NAME=FILE")->required();
  cmd->add_option("--output,-o", args->outputs, "Output .npy file, one per model output in order");
  cmd->callback([args] { run(*args); });
}

}  // namespace nibble::cli
