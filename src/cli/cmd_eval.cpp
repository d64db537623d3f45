// `nibble eval MODEL --data fashion-mnist[:split]`: top-1 accuracy and throughput on a dataset.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <thread>

#include "cli/commands.h"
#include "cli/progress.h"
#include "nibble/dataset.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/npy.h"
#include "nibble/model_loader.h"

namespace nibble::cli {

namespace {

struct EvalArgs {
  std::string model;
  std::string data = "fashion-mnist:test";
  std::string data_dir;
  int64_t limit = 0;
  int64_t batch = 50;
  int threads = 0;
  float mean = 0.0f;
  float std = 1.0f;
  std::string predictions;
};

// Index of the largest logit of each row (the first one on ties).
void argmax_rows(const Tensor& logits, int64_t* out, const std::string& model) {
  if (logits.rank() != 2 || logits.dtype() != DType::f32) {
    fail(model, "eval needs an f32 N x classes output, the model gives {} {}", dtype_name(logits.dtype()),
         shape_str(logits.shape()));
  }
  const int64_t classes = logits.dim(1);
  const float* p = logits.data<float>();
  for (int64_t r = 0; r < logits.dim(0); ++r) {
    out[r] = std::max_element(p + r * classes, p + (r + 1) * classes) - (p + r * classes);
  }
}

void eval(const EvalArgs& args) {
  const Engine engine(load_model(args.model));
  if (engine.graph().inputs.size() != 1) {
    fail(args.model, "eval needs a model with one input, this one has {}", engine.graph().inputs.size());
  }
  const Dataset data = load_dataset(args.data, args.data_dir, args.limit);
  const int64_t n = data.size();
  const int64_t batches = (n + args.batch - 1) / args.batch;
  const int threads = std::max(1, static_cast<int>(std::min<int64_t>(
                                      args.threads > 0 ? args.threads : std::thread::hardware_concurrency(), batches)));

  // Check the input shape once, on the first batch, so a mismatch reads as one clear line.
  if (const auto bad = engine.check_inputs({image_batch_f32(data, 0, std::min<int64_t>(1, n), args.mean, args.std)})) {
    fail(args.model, "{} (dataset {} gives f32 N x 1 x {} x {})", bad->problem, data.name, data.images.dim(1),
         data.images.dim(2));
  }

  std::vector<int64_t> predictions(static_cast<size_t>(n), -1);
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
  ProgressBar bar("eval", n);
  const auto start = std::chrono::steady_clock::now();
  auto worker = [&] {
    try {
      for (int64_t b = next++; b < batches; b = next++) {
        const int64_t lo = b * args.batch;
        const int64_t hi = std::min(n, lo + args.batch);
        const auto outputs = engine.run({image_batch_f32(data, lo, hi, args.mean, args.std)});
        argmax_rows(outputs.at(0), predictions.data() + lo, args.model);
        bar.advance(hi - lo);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      next = batches;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  bar.finish();
  if (error) std::rethrow_exception(error);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  int64_t correct = 0;
  const uint8_t* labels = data.labels.data<uint8_t>();
  for (int64_t i = 0; i < n; ++i) correct += predictions[static_cast<size_t>(i)] == labels[i];
  if (!args.predictions.empty()) {
    Tensor pred(DType::s64, {n});
    std::copy(predictions.begin(), predictions.end(), pred.data<int64_t>());
    write_npy(args.predictions, pred);
  }
  fmt::print("model: {}\n", args.model);
  fmt::print("data: {} ({} images, mean {}, std {})\n", data.name, n, args.mean, args.std);
  fmt::print("top-1: {:.2f}% ({}/{})\n", 100.0 * static_cast<double>(correct) / static_cast<double>(n), correct, n);
  fmt::print("throughput: {:.1f} images/s (reference backend, batch {}, {} threads, {:.2f} s)\n",
             static_cast<double>(n) / secs, args.batch, threads, secs);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Top-1 accuracy and throughput of a model on a labelled dataset");
  auto args = std::make_shared<EvalArgs>();
  cmd->add_option("model", args->model, "ONNX model file or model directory")->required();
  cmd->add_option("--data", args->data, "Dataset: fashion-mnist[:test|:train]")->default_val("fashion-mnist:test");
  cmd->add_option("--data-dir", args->data_dir, "Directory with the dataset's IDX files")
      ->default_str(kFashionMnistDir);
  cmd->add_option("--limit", args->limit, "Evaluate only the first N images (0: all)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", args->batch, "Images per inference")->default_val(50)->check(CLI::PositiveNumber);
  cmd->add_option("--threads", args->threads, "Worker threads (0: one per core)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--predictions", args->predictions, "Write the predicted class of every image to this .npy (s64)");
  add_normalization_flags(*cmd, args->mean, args->std);
  cmd->callback([args] { eval(*args); });
}

}  // namespace nibble::cli
