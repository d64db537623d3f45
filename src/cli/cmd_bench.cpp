// `nibble bench MODEL --device cpu|cuda`: throughput and latency on random inputs, in the style
// of trtexec's performance summary, optionally as JSON and with a per-layer profile (CUDA).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/commands.h"
#include "nibble/cuda_engine.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/model_loader.h"

namespace nibble::cli {

namespace {

struct BenchArgs {
  std::string model;
  std::string device = "cpu";
  std::string backend = "cpu";
  std::string scenario = "offline";
  std::vector<int64_t> batches;
  double duration = 3.0;
  int min_iterations = 10;
  std::string json;
  bool int8_storage = false;
  std::string kernels = "auto";
  int contexts = 2;
  bool profile = false;
  int profile_reps = 20;
  double peak_tops = 0;
  double peak_gbs = 0;
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

struct Stats {
  double min = 0, max = 0, mean = 0, median = 0, p90 = 0, p95 = 0, p99 = 0, total = 0;
};

Stats stats_of(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) {
    const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
    return v[i];
  };
  for (double x : v) s.total += x;
  s.min = v.front();
  s.max = v.back();
  s.mean = s.total / static_cast<double>(v.size());
  s.median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  s.p90 = pct(90);
  s.p95 = pct(95);
  s.p99 = pct(99);
  return s;
}

std::string stats_line(const Stats& s) {
  return fmt::format("min = {:.5f} ms, max = {:.5f} ms, mean = {:.5f} ms, median = {:.5f} ms, percentile(90%) = {:.5f} ms, "
                     "percentile(95%) = {:.5f} ms, percentile(99%) = {:.5f} ms",
                     s.min, s.max, s.mean, s.median, s.p90, s.p95, s.p99);
}

nlohmann::json stats_json(const Stats& s) {
  return {{"min", s.min}, {"max", s.max}, {"mean", s.mean}, {"median", s.median},
          {"p90", s.p90}, {"p95", s.p95}, {"p99", s.p99}};
}

struct Measured {
  int64_t batch = 0;
  int64_t queries = 0, images = 0;
  double wall_s = 0;
  std::vector<double> latency, compute, h2d, d2h;
};

nlohmann::json report(const Measured& m, bool gpu) {
  const Stats lat = stats_of(m.latency), comp = stats_of(m.compute);
  const double ips = static_cast<double>(m.images) / m.wall_s;
  fmt::print("=== Performance summary (batch {}) ===\n", m.batch);
  fmt::print("Throughput: {:.2f} qps, {:.1f} images/s\n", static_cast<double>(m.queries) / m.wall_s, ips);
  fmt::print("Latency: {}\n", stats_line(lat));
  nlohmann::json j = {{"batch", m.batch},         {"queries", m.queries},     {"images", m.images},
                      {"wall_seconds", m.wall_s}, {"images_per_second", ips}, {"latency_ms", stats_json(lat)}};
  if (gpu) {
    const Stats h = stats_of(m.h2d), d = stats_of(m.d2h);
    fmt::print("H2D Latency: {}\n", stats_line(h));
    fmt::print("GPU Compute Time: {}\n", stats_line(comp));
    fmt::print("D2H Latency: {}\n", stats_line(d));
    fmt::print("Total GPU Compute Time: {:.5f} s\n", comp.total / 1000.0);
    j["gpu_compute_ms"] = stats_json(comp);
    j["h2d_ms"] = stats_json(h);
    j["d2h_ms"] = stats_json(d);
    j["gpu_images_per_second"] = static_cast<double>(m.batch) / comp.median * 1000.0;
  }
  fmt::print("Total Host Walltime: {:.5f} s\n\n", m.wall_s);
  return j;
}

// Dense INT8 tensor-core rate and memory bandwidth by the vendor's datasheets, for the profile's
// fraction of peak when not given on the command line.
void default_peaks(const std::string& device, double& tops, double& gbs) {
  if (tops <= 0) tops = device.find("H100") != std::string::npos || device.find("H200") != std::string::npos ? 1979 : 0;
  if (gbs <= 0) {
    if (device.find("H200") != std::string::npos) gbs = 4800;
    else if (device.find("H100") != std::string::npos) gbs = 3350;
  }
}

nlohmann::json print_profile(CudaEngine& engine, int64_t batch, const BenchArgs& args) {
  double tops = args.peak_tops, gbs = args.peak_gbs;
  default_peaks(engine.device_name(), tops, gbs);
  const auto layers = engine.profile(batch, args.profile_reps);
  fmt::print("=== Per-layer profile (batch {}, median of {} runs, each step alone) ===\n", batch, args.profile_reps);
  fmt::print("{:<26} {:<20} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7}\n", "layer", "kernel", "ms", "GOP", "MB", "TOP/s",
             "GB/s", "%ops", "%bw");
  double total_ms = 0;
  int64_t total_ops = 0, total_bytes = 0;
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& l : layers) {
    const double ops = 2.0 * static_cast<double>(l.macs);
    const double top_s = ops / (l.ms * 1e-3) / 1e12, gb_s = static_cast<double>(l.bytes) / (l.ms * 1e-3) / 1e9;
    fmt::print("{:<26} {:<20} {:>9.4f} {:>9.3f} {:>9.2f} {:>8.1f} {:>8.1f} {:>6.1f}% {:>6.1f}%\n", l.name.substr(0, 26), l.kernel,
               l.ms, ops / 1e9, static_cast<double>(l.bytes) / 1e6, top_s, gb_s, tops > 0 ? 100 * top_s / tops : 0.0,
               gbs > 0 ? 100 * gb_s / gbs : 0.0);
    total_ms += l.ms;
    total_ops += 2 * l.macs;
    total_bytes += l.bytes;
    rows.push_back({{"name", l.name}, {"op", l.op}, {"kernel", l.kernel}, {"ms", l.ms}, {"ops", 2 * l.macs},
                    {"bytes", l.bytes}, {"tops", top_s}, {"gbs", gb_s},
                    {"fraction_of_peak_ops", tops > 0 ? top_s / tops : 0.0},
                    {"fraction_of_peak_bandwidth", gbs > 0 ? gb_s / gbs : 0.0}});
  }
  fmt::print("{:<26} {:<20} {:>9.4f} {:>9.3f} {:>9.2f}   sum of steps: {:.1f} images/s; peaks used: {} TOP/s, {} GB/s\n\n",
             "total", "", total_ms, static_cast<double>(total_ops) / 1e9, static_cast<double>(total_bytes) / 1e6,
             static_cast<double>(batch) / total_ms * 1000.0, tops, gbs);
  return {{"batch", batch}, {"peak_tops", tops}, {"peak_gbs", gbs}, {"total_ms", total_ms}, {"layers", rows}};
}

void bench(const BenchArgs& args) {
  if (!args.json.empty()) check_writable(args.json);
  const bool single = args.scenario == "singlestream";
  std::vector<int64_t> batches = args.batches;
  if (batches.empty()) batches = single ? std::vector<int64_t>{1} : (args.device == "cuda" ? std::vector<int64_t>{256} : std::vector<int64_t>{1, 16});
  if (single && (batches.size() != 1 || batches[0] != 1)) fail("--batch", "the singlestream scenario runs batch 1");
  for (int64_t b : batches) {
    if (b < 1) fail("--batch", "batch sizes must be at least 1, got {}", b);
  }
  nlohmann::json out = {{"model", args.model}, {"device", args.device}, {"scenario", args.scenario}};
  nlohmann::json results = nlohmann::json::array();
  const Graph graph = load_model(args.model);
  if (args.device == "cuda") {
    CudaEngineOptions opts;
    opts.int8_storage = args.int8_storage;
    opts.max_batch = *std::max_element(batches.begin(), batches.end());
    opts.contexts = single ? 1 : args.contexts;
    opts.conv_kernels = args.kernels;
    CudaEngine engine(graph, opts);
    fmt::print("model: {}\ndevice: cuda, {}\nscenario: {}, storage: {} ({}), contexts: {}\nconvolution kernels: {}\n",
               args.model, engine.device_name(), args.scenario, args.int8_storage ? "int8" : "native",
               engine.storage_summary(), opts.contexts, engine.conv_kernel_summary());
    fmt::print("weights: {:.2f} MB on the device; activations: {:.2f} MB per context at batch {}\n\n",
               static_cast<double>(engine.weight_bytes()) / 1e6,
               static_cast<double>(engine.activation_bytes(opts.max_batch)) / 1e6, opts.max_batch);
    out["device_name"] = engine.device_name();
    out["storage"] = args.int8_storage ? "int8" : "native";
    out["conv_kernels"] = engine.conv_kernel_summary();
    out["weight_bytes"] = engine.weight_bytes();
    for (int64_t b : batches) {
      CudaBenchOptions bo;
      bo.batch = b;
      bo.single_stream = single;
      bo.seconds = args.duration;
      bo.min_queries = args.min_iterations;
      const CudaBenchResult r = engine.bench(bo);
      Measured m{b, r.queries, r.images, r.wall_seconds, r.latency_ms, r.compute_ms, r.h2d_ms, r.d2h_ms};
      nlohmann::json j = report(m, true);
      j["activation_bytes"] = engine.activation_bytes(b);
      if (args.profile) j["profile"] = print_profile(engine, b, args);
      results.push_back(j);
    }
  } else {
    if (args.profile) fail("--profile", "the per-layer profile needs --device cuda");
    const Backend backend = args.backend == "ref" ? Backend::ref : Backend::cpu;
    const Engine engine(graph, backend);
    std::mt19937 rng(1234);
    fmt::print("model: {}\ndevice: cpu, backend: {}\nscenario: {}\n\n", args.model, args.backend, args.scenario);
    for (int64_t b : batches) {
      std::vector<Tensor> inputs;
      for (const auto& vi : engine.graph().inputs) inputs.push_back(random_input(vi, b, rng, args.model));
      engine.run(inputs);  // warm-up: first-touch allocations and weight layouts
      Measured m;
      m.batch = b;
      const auto start = std::chrono::steady_clock::now();
      for (;;) {
        const auto t0 = std::chrono::steady_clock::now();
        engine.run(inputs);
        const auto t1 = std::chrono::steady_clock::now();
        m.latency.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        m.queries += 1;
        m.images += b;
        m.wall_s = std::chrono::duration<double>(t1 - start).count();
        if (m.queries >= args.min_iterations && m.wall_s >= args.duration) break;
      }
      results.push_back(report(m, false));
    }
  }
  out["results"] = results;
  if (!args.json.empty()) {
    write_file_atomic(args.json, out.dump(2) + "\n");
    fmt::print("wrote {}\n", args.json);
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure throughput and latency of a model on random inputs");
  auto args = std::make_shared<BenchArgs>();
  cmd->add_option("model", args->model, "ONNX model file or model directory")->required();
  cmd->add_option("--device", args->device, "cpu, or cuda (GPU 0)")->default_val("cpu")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--backend", args->backend, "CPU kernels: cpu (vectorized where available) or ref (reference only)")
      ->default_val("cpu")
      ->check(CLI::IsMember({"cpu", "ref"}));
  cmd->add_option("--scenario", args->scenario,
                  "offline: batches back to back, copies overlapped with compute (throughput); "
                  "singlestream: one image at a time, each waited for (latency)")
      ->default_val("offline")
      ->check(CLI::IsMember({"offline", "singlestream"}));
  cmd->add_option("--batch", args->batches, "Batch sizes to measure (default: 256 on cuda, 1,16 on cpu; 1 for singlestream)")
      ->delimiter(',');
  cmd->add_option("--duration", args->duration, "Seconds to measure each batch size (after a short warm-up)")
      ->default_val(3.0)
      ->check(CLI::PositiveNumber);
  cmd->add_option("--min-runs", args->min_iterations, "Queries per batch size at least")->default_val(10)->check(CLI::PositiveNumber);
  cmd->add_option("--json", args->json, "Also write the results to this JSON file");
  cmd->add_flag("--int8-storage", args->int8_storage,
                "cuda: keep 4-bit tensors in bytes (same outputs, 8-bit traffic): the INT8 baseline of a 4-bit model");
  cmd->add_option("--kernels", args->kernels,
                  "cuda: convolution kernels: auto (fastest that fits), wgmma (Hopper TMA + warpgroup MMA, "
                  "mma where it does not fit) or mma (mma.sync everywhere); same outputs")
      ->default_val("auto")
      ->check(CLI::IsMember({"auto", "wgmma", "mma"}));
  cmd->add_option("--contexts", args->contexts, "cuda offline: streams with their own buffers, run overlapped")
      ->default_val(2)
      ->check(CLI::Range(1, 8));
  cmd->add_flag("--profile", args->profile, "cuda: also time every layer alone and print its share of peak");
  cmd->add_option("--profile-runs", args->profile_reps, "Repetitions per layer for --profile")->default_val(20)->check(CLI::PositiveNumber);
  cmd->add_option("--peak-tops", args->peak_tops, "Peak INT8 TOP/s for --profile (default: 1979 on H100/H200)");
  cmd->add_option("--peak-gbs", args->peak_gbs, "Peak memory GB/s for --profile (default: H100 3350, H200 4800)");
  cmd->callback([args] { bench(*args); });
}

}  // namespace nibble::cli
