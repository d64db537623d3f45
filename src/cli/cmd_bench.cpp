// `nibble bench MODEL --device cpu`: throughput and latency per batch size on random inputs.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "cli/commands.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/model_loader.h"

namespace nibble::cli {

namespace {

struct BenchArgs {
  std::string model;
  std::string device = "cpu";
  std::string backend = "cpu";
  std::vector<int64_t> batches = {1, 16};
  double duration = 5.0;
  int min_iterations = 3;
};

// A random input for the declared shape, the batch dimension set to `batch`.
Tensor random_input(const ValueInfo& vi, int64_t batch, std::mt19937& rng, const std::string& model) {
  if (!vi.dtype || !vi.shape) fail(model, "input '{}' has no declared dtype and shape", vi.name);
  Shape shape = *vi.shape;
  if (!shape.empty()) shape[0] = batch;
  for (int64_t d : shape) {
    if (d < 0) fail(model, "input '{}' has an unknown dimension besides the batch", vi.name);
  }
  Tensor t(*vi.dtype, shape);
  const auto& tr = traits(t.dtype());
  std::uniform_real_distribution<double> uniform(tr.is_float ? 0.0 : std::max(tr.min, -127.0),
                                                 tr.is_float ? 1.0 : std::min(tr.max, 127.0));
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, uniform(rng));
  return t;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
  return v[i];
}

void bench(const BenchArgs& args) {
  if (args.device != "cpu") fail(args.device, "unknown device (this build benchmarks: cpu)");
  const Backend backend = args.backend == "ref" ? Backend::ref : Backend::cpu;
  const Engine engine(load_model(args.model), backend);
  std::mt19937 rng(1234);
  fmt::print("model: {}\ndevice: cpu, backend: {}\n", args.model, args.backend);
  fmt::print("{:>6} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12}\n", "batch", "runs", "images/s", "mean ms", "median ms",
             "p90 ms", "p99 ms");
  for (int64_t batch : args.batches) {
    std::vector<Tensor> inputs;
    for (const auto& vi : engine.graph().inputs) inputs.push_back(random_input(vi, batch, rng, args.model));
    engine.run(inputs);  // warm-up: first-touch allocations and weight layouts
    std::vector<double> ms;
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      engine.run(inputs);
      const auto t1 = std::chrono::steady_clock::now();
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      const double elapsed = std::chrono::duration<double>(t1 - start).count();
      if (static_cast<int>(ms.size()) >= args.min_iterations && elapsed >= args.duration) break;
    }
    double total = 0;
    for (double m : ms) total += m;
    const double mean = total / static_cast<double>(ms.size());
    fmt::print("{:>6} {:>8} {:>12.2f} {:>12.2f} {:>12.2f} {:>12.2f} {:>12.2f}\n", batch, ms.size(),
               1000.0 * static_cast<double>(batch) / mean, mean, percentile(ms, 50), percentile(ms, 90),
               percentile(ms, 99));
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure throughput and latency of a model on random inputs");
  auto args = std::make_shared<BenchArgs>();
  cmd->add_option("model", args->model, "ONNX model file or model directory")->required();
  cmd->add_option("--device", args->device, "Device to run on")->default_val("cpu")->check(CLI::IsMember({"cpu"}));
  cmd->add_option("--backend", args->backend, "cpu: vectorized kernels where available; ref: reference only")
      ->default_val("cpu")
      ->check(CLI::IsMember({"cpu", "ref"}));
  cmd->add_option("--batch", args->batches, "Batch sizes to measure")->default_str("1 16")->delimiter(',');
  cmd->add_option("--duration", args->duration, "Seconds to measure each batch size (at least --min-runs runs)")
      ->default_val(5.0)
      ->check(CLI::PositiveNumber);
  cmd->add_option("--min-runs", args->min_iterations, "Runs per batch size at least")
      ->default_val(3)
      ->check(CLI::PositiveNumber);
  cmd->callback([args] { bench(*args); });
}

}  // namespace nibble::cli
