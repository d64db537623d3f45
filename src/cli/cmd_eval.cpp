// `nibble eval MODEL --data D`: top-1 accuracy and throughput on labelled inputs.
#include <fmt/format.h>

#include <chrono>

#include "cli/batch_runner.h"
#include "cli/commands.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/model_loader.h"
#include "nibble/npy.h"

namespace nibble::cli {

namespace {

struct EvalArgs {
  std::string model;
  DataArgs data;
  std::string predictions;
};

void eval(const EvalArgs& args) {
  const Engine engine(load_model(args.model));
  const InputData data = load_data(args.data, engine.graph(), args.model);
  if (data.labels.empty()) fail(data.name, "has no labels (a directory of images needs one subfolder per class)");
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int64_t> predictions = predict(engine, data, args.data, "eval", args.model);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t n = data.size();
  const int64_t correct = count_correct(predictions, data);
  if (!args.predictions.empty()) {
    Tensor pred(DType::s64, {n});
    std::copy(predictions.begin(), predictions.end(), pred.data<int64_t>());
    write_npy(args.predictions, pred);
  }
  fmt::print("model: {}\n", args.model);
  fmt::print("data: {} ({} images, mean {}, std {})\n", data.name, n, args.data.mean, args.data.std);
  fmt::print("top-1: {:.2f}% ({}/{})\n", 100.0 * static_cast<double>(correct) / static_cast<double>(n), correct, n);
  fmt::print("throughput: {:.1f} images/s (batch {}, {:.2f} s)\n", static_cast<double>(n) / secs, args.data.batch, secs);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Top-1 accuracy and throughput of a model on labelled inputs");
  auto args = std::make_shared<EvalArgs>();
  cmd->add_option("model", args->model, "ONNX model file or model directory")->required();
  add_data_flags(*cmd, args->data, "fashion-mnist:test", "--limit", "Evaluate only the first N inputs (0: all)");
  cmd->add_option("--predictions", args->predictions, "Write the predicted class of every input to this .npy (s64)");
  cmd->callback([args] { eval(*args); });
}

}  // namespace nibble::cli
