// `nibble eval MODEL --data D`: top-1 accuracy and throughput on labelled inputs.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "cli/batch_runner.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "nibble/cuda_engine.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/model_loader.h"
#include "nibble/npy.h"

namespace nibble::cli {

namespace {

struct EvalArgs {
  std::string model;
  DataArgs data;
  std::string predictions;
  std::string device = "cpu";
};

// The argmax of every row of the first f32 N x classes output.
void take_argmax(const std::vector<Tensor>& outputs, const std::string& model, int64_t* out) {
  for (const auto& t : outputs) {
    if (t.dtype() != DType::f32 || t.rank() != 2) continue;
    const int64_t k = t.dim(1);
    const float* p = t.data<float>();
    for (int64_t r = 0; r < t.dim(0); ++r) out[r] = std::max_element(p + r * k, p + (r + 1) * k) - (p + r * k);
    return;
  }
  fail(model, "the model has no f32 N x classes output to take the class from");
}

// Batches in order on the GPU (one engine, its own streams).
std::vector<int64_t> predict_cuda(const Graph& graph, const InputData& data, const EvalArgs& args) {
  CudaEngineOptions opts;
  opts.max_batch = args.data.batch;
  CudaEngine engine(graph, opts);
  fmt::print("device: cuda, {}\n", engine.device_name());
  const int64_t n = data.size();
  std::vector<int64_t> out(static_cast<size_t>(n), -1);
  ProgressBar bar("eval", n);
  for (int64_t lo = 0; lo < n; lo += args.data.batch) {
    const int64_t hi = std::min(n, lo + args.data.batch);
    take_argmax(engine.run({data.batch(lo, hi)}), args.model, out.data() + lo);
    bar.advance(hi - lo);
  }
  bar.finish();
  return out;
}

void eval(const EvalArgs& args) {
  if (!args.predictions.empty()) check_writable(args.predictions);
  if (args.device != "cpu" && args.device != "cuda") fail("--device", "expected cpu or cuda, got '{}'", args.device);
  Graph graph = load_model(args.model);
  const InputData data = load_data(args.data, graph, args.model);
  if (data.labels.empty()) fail(data.name, "has no labels (a directory of images needs one subfolder per class)");
  const auto start = std::chrono::steady_clock::now();
  std::vector<int64_t> predictions;
  if (args.device == "cuda") {
    predictions = predict_cuda(graph, data, args);
  } else {
    const Engine engine(std::move(graph));
    predictions = predict(engine, data, args.data, "eval", args.model);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t n = data.size();
  const int64_t correct = count_correct(predictions, data);
  if (!args.predictions.empty()) {
    Tensor pred(DType::s64, {n});
    std::copy(predictions.begin(), predictions.end(), pred.data<int64_t>());
    write_npy(args.predictions, pred);
  }
  fmt::print("model: {}\n", args.model);
  fmt::print("data: {} ({} images, {})\n", data.name, n, args.data.pre.describe());
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
  cmd->add_option("--device", args->device, "cpu, or cuda: the GPU backend (integer model directories)")
      ->default_val("cpu");
  cmd->callback([args] { eval(*args); });
}

}  // namespace nibble::cli
