// `nibble bench MODEL --device cpu|cuda`: throughput and latency on random inputs, in the style
// of trtexec's performance summary, optionally as JSON and with a per-layer profile (CUDA).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <charconv>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "cli/commands.h"
#include "nibble/cuda_engine.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/model_loader.h"
#include "nibble/npy.h"

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
  double warmup_ms = 200;
  int threads = 0;
  std::vector<std::string> shapes;
  std::vector<std::string> load_inputs;
  bool dump_output = false;
  int samples_per_query = 8;
  double server_qps = 0;
  double latency_bound_ms = 15;
  std::string json;
  bool int8_storage = false;
  std::string kernels = "auto";
  int contexts = 2;
  bool profile = false;
  int profile_reps = 20;
  double peak_tops = 0;
  double peak_gbs = 0;
};

// A random input for `shape`: floats in [0, 1), integers in their range within [-127, 127].
Tensor random_tensor(DType dtype, const Shape& shape, std::mt19937& rng) {
  Tensor t(dtype, shape);
  const auto& tr = traits(t.dtype());
  std::uniform_real_distribution<double> uniform(tr.is_float ? 0.0 : std::max(tr.min, -127.0),
                                                 tr.is_float ? 1.0 : std::min(tr.max, 127.0));
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, uniform(rng));
  return t;
}

// "NAME:VALUE,NAME:VALUE" options (trtexec's --shapes and --loadInputs); a lone VALUE names the
// model's only input.
std::map<std::string, std::string> name_value_pairs(const std::vector<std::string>& items, const Graph& g,
                                                    const std::string& flag) {
  std::map<std::string, std::string> out;
  for (const std::string& item : items) {
    const auto colon = item.rfind(':');
    std::string name, value = item;
    if (colon != std::string::npos && colon > 0) {
      name = item.substr(0, colon);
      value = item.substr(colon + 1);
    } else if (g.inputs.size() == 1) {
      name = g.inputs[0].name;
    } else {
      fail(flag, "'{}': name the input (NAME:{}); the model has {} inputs", item, item, g.inputs.size());
    }
    bool known = false;
    for (const ValueInfo& vi : g.inputs) known = known || vi.name == name;
    if (!known) fail(flag, "the model has no input named '{}'", name);
    if (!out.emplace(name, value).second) fail(flag, "input '{}' is given twice", name);
  }
  return out;
}

Shape parse_dims(const std::string& text, const std::string& flag) {
  Shape shape;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t x = std::min(text.find('x', pos), text.size());
    const std::string part = text.substr(pos, x - pos);
    int64_t d = 0;
    const auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), d);
    if (part.empty() || ec != std::errc() || end != part.data() + part.size() || d < 1) {
      fail(flag, "'{}' is not a shape such as 16x3x224x224", text);
    }
    shape.push_back(d);
    pos = x + 1;
  }
  return shape;
}

// The inputs a benchmark replays: loaded (--loadInputs), or random in the shape of --shapes or
// the model's declaration with the batch dimension set.
class BenchInputs {
 public:
  BenchInputs(const Graph& g, const BenchArgs& args) : g_(g) {
    for (const auto& [name, file] : name_value_pairs(args.load_inputs, g, "--loadInputs")) loaded_[name] = read_npy(file);
    for (const auto& [name, text] : name_value_pairs(args.shapes, g, "--shapes")) shapes_[name] = parse_dims(text, "--shapes");
    for (const ValueInfo& vi : g.inputs) {
      if (!vi.dtype || !vi.shape) fail(g.source, "input '{}' has no declared dtype and shape", vi.name);
      const Shape& d = *vi.shape;
      auto check = [&](const Shape& s, const std::string& flag) {
        if (s.size() != d.size()) fail(flag, "input '{}' has rank {}, the model declares {}", vi.name, s.size(), shape_str(d));
        for (size_t i = 0; i < d.size(); ++i) {
          if (d[i] > 0 && s[i] != d[i]) {
            fail(flag, "input '{}' of shape {} does not fit the model's {}", vi.name, shape_str(s), shape_str(d));
          }
        }
      };
      if (auto it = loaded_.find(vi.name); it != loaded_.end()) {
        if (it->second.dtype() != *vi.dtype) {
          fail("--loadInputs", "input '{}' must be {}, the file holds {}", vi.name, dtype_name(*vi.dtype),
               dtype_name(it->second.dtype()));
        }
        check(it->second.shape(), "--loadInputs");
        given_batch(it->second.dim(0), "--loadInputs");
      } else if (auto s = shapes_.find(vi.name); s != shapes_.end()) {
        check(s->second, "--shapes");
        given_batch(s->second[0], "--shapes");
      } else {
        for (size_t i = 1; i < d.size(); ++i) {
          if (d[i] < 1) fail(g.source, "input '{}' has an unknown dimension besides the batch: give --shapes", vi.name);
        }
      }
      if (!d.empty() && d[0] > 0) model_batch_ = d[0];
    }
  }

  // Whether the inputs come from --loadInputs or --shapes (else any random ones will do).
  bool given() const { return !loaded_.empty() || !shapes_.empty(); }

  // The one batch size the inputs allow, or 0 when any will do.
  int64_t required_batch() const { return batch_ ? batch_ : model_batch_; }
  std::string batch_reason() const {
    return batch_ ? "the given inputs have" : "the model's inputs are declared with";
  }

  // Inputs of `batch` images in graph order (the loaded ones as they are).
  const std::vector<Tensor>& of(int64_t batch) {
    auto it = cache_.find(batch);
    if (it != cache_.end()) return it->second;
    std::vector<Tensor> v;
    for (const ValueInfo& vi : g_.inputs) {
      if (auto l = loaded_.find(vi.name); l != loaded_.end()) {
        v.push_back(l->second);
        continue;
      }
      Shape shape = shapes_.count(vi.name) ? shapes_.at(vi.name) : *vi.shape;
      if (!shape.empty()) shape[0] = batch;
      v.push_back(random_tensor(*vi.dtype, shape, rng_));
    }
    return cache_[batch] = std::move(v);
  }

 private:
  void given_batch(int64_t b, const std::string& flag) {
    if (batch_ && b != batch_) fail(flag, "the inputs disagree on the batch size ({} and {})", batch_, b);
    batch_ = b;
  }
  const Graph& g_;
  std::map<std::string, Tensor> loaded_;
  std::map<std::string, Shape> shapes_;
  int64_t batch_ = 0, model_batch_ = 0;
  std::map<int64_t, std::vector<Tensor>> cache_;
  std::mt19937 rng_{1234};
};

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

nlohmann::json report(const Measured& m, bool gpu, const std::string& scenario) {
  const Stats lat = stats_of(m.latency), comp = stats_of(m.compute);
  const double ips = static_cast<double>(m.images) / m.wall_s;
  fmt::print("=== Performance summary ({}, batch {}) ===\n", scenario, m.batch);
  fmt::print("Queries: {} of {} image(s) in {:.3f} s\n", m.queries, m.batch, m.wall_s);
  fmt::print("Throughput: {:.2f} qps, {:.1f} images/s\n", static_cast<double>(m.queries) / m.wall_s, ips);
  fmt::print("Latency: {}\n", stats_line(lat));
  if (scenario == "singlestream") fmt::print("SingleStream latency (p90): {:.5f} ms\n", lat.p90);
  if (scenario == "multistream") fmt::print("MultiStream latency (p99, {} samples per query): {:.5f} ms\n", m.batch, lat.p99);
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

using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

// Runs of `batch` images for --warmup milliseconds (one at least).
void warm_up(const std::function<void(int64_t)>& run, int64_t batch, const BenchArgs& args) {
  const auto start = Clock::now();
  do run(batch);
  while (ms_between(start, Clock::now()) < args.warmup_ms);
}

// Queries of `batch` images back to back, each waited for, after the warm-up: the Offline,
// SingleStream and MultiStream scenarios on a synchronous runner (the CPU engine).
Measured back_to_back(const std::function<void(int64_t)>& run, int64_t batch, const BenchArgs& args) {
  warm_up(run, batch, args);
  Measured m;
  m.batch = batch;
  const auto start = Clock::now();
  for (;;) {
    const auto t0 = Clock::now();
    run(batch);
    const auto t1 = Clock::now();
    m.latency.push_back(ms_between(t0, t1));
    m.queries += 1;
    m.images += batch;
    m.wall_s = ms_between(start, t1) / 1000.0;
    if (m.queries >= args.min_iterations && m.wall_s >= args.duration) break;
  }
  return m;
}

// MLPerf's Server scenario: single-image queries arrive at random (Poisson) times at `qps` a
// second; whenever the runner is free it takes every query that has arrived (at most
// `max_batch`) as one batch. A query's latency runs from its arrival to the end of its batch,
// waiting included. The run is valid when the 99th percentile is within the bound.
struct ServerRun {
  double qps = 0, achieved = 0;
  Stats latency;
  int64_t queries = 0, batches = 0;
  bool valid = false;
};

ServerRun serve(const std::function<void(int64_t)>& run, double qps, int64_t max_batch, const BenchArgs& args,
                uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(qps);
  std::vector<double> lat;
  std::deque<Clock::time_point> waiting;
  const auto start = Clock::now();
  auto next = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
  int64_t issued = 0, batches = 0;
  const int64_t min_queries = std::max<int64_t>(args.min_iterations, 100);
  for (;;) {
    auto now = Clock::now();
    const bool issuing = ms_between(start, now) < args.duration * 1000.0 || issued < min_queries;
    while (issuing && next <= now) {
      waiting.push_back(next);
      ++issued;
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    }
    if (waiting.empty()) {
      if (!issuing) break;
      std::this_thread::sleep_until(next);
      continue;
    }
    const int64_t n = std::min<int64_t>(max_batch, static_cast<int64_t>(waiting.size()));
    run(n);
    const auto done = Clock::now();
    for (int64_t i = 0; i < n; ++i) {
      lat.push_back(ms_between(waiting.front(), done));
      waiting.pop_front();
    }
    ++batches;
  }
  ServerRun r;
  r.qps = qps;
  r.queries = static_cast<int64_t>(lat.size());
  r.batches = batches;
  r.achieved = static_cast<double>(r.queries) / (ms_between(start, Clock::now()) / 1000.0);
  r.latency = stats_of(lat);
  r.valid = r.latency.p99 <= args.latency_bound_ms;
  return r;
}

nlohmann::json server_json(const ServerRun& r) {
  return {{"target_qps", r.qps}, {"achieved_qps", r.achieved}, {"queries", r.queries}, {"batches", r.batches},
          {"latency_ms", stats_json(r.latency)}, {"valid", r.valid}};
}

// The Server scenario at --server-qps, or (0) the highest rate whose p99 latency stays within the
// bound: from the Offline throughput at the largest batch, by bisection.
nlohmann::json server_scenario(const std::function<void(int64_t)>& run, int64_t max_batch, const BenchArgs& args) {
  fmt::print("=== Server scenario (dynamic batches of up to {}, p99 latency bound {} ms) ===\n", max_batch,
             args.latency_bound_ms);
  auto show = [&](const ServerRun& r) {
    fmt::print("target {:.1f} qps: achieved {:.1f} qps, {} queries in {} batches, latency p50 {:.3f} ms, p99 {:.3f} ms: {}\n",
               r.qps, r.achieved, r.queries, r.batches, r.latency.median, r.latency.p99, r.valid ? "valid" : "INVALID");
  };
  nlohmann::json j = {{"max_batch", max_batch}, {"latency_bound_ms", args.latency_bound_ms}};
  warm_up(run, max_batch, args);
  if (args.server_qps > 0) {
    const ServerRun r = serve(run, args.server_qps, max_batch, args, 7);
    show(r);
    j["runs"] = nlohmann::json::array({server_json(r)});
    fmt::print("\n");
    return j;
  }
  // A query alone takes at least one single-image run: a bound below that no rate can meet, and
  // the search would only halve the rate into runs whose 100 queries take minutes.
  std::vector<double> alone;
  for (int i = 0; i < 3; ++i) {
    const auto a = Clock::now();
    run(1);
    alone.push_back(ms_between(a, Clock::now()));
  }
  const double single_ms = *std::min_element(alone.begin(), alone.end());
  j["single_query_ms"] = single_ms;
  if (single_ms > args.latency_bound_ms) {
    fmt::print("Server: one single-image query takes {:.3f} ms, above the {} ms bound: no rate can be valid "
               "(raise --latency-bound)\n\n",
               single_ms, args.latency_bound_ms);
    j["peak_qps"] = 0.0;
    j["runs"] = nlohmann::json::array();
    return j;
  }
  // The search: the Offline rate at the largest batch bounds what the runner can serve.
  const auto t0 = Clock::now();
  int reps = 0;
  do {
    run(max_batch);
    ++reps;
  } while (ms_between(t0, Clock::now()) < 500 || reps < 3);
  const double offline = static_cast<double>(reps * max_batch) / (ms_between(t0, Clock::now()) / 1000.0);
  double lo = 0, hi = offline;
  nlohmann::json runs = nlohmann::json::array();
  ServerRun best;
  for (int step = 0; step < 7; ++step) {
    const double qps = step == 0 ? 0.5 * offline : 0.5 * (lo + hi);
    const ServerRun r = serve(run, qps, max_batch, args, 7 + static_cast<uint32_t>(step));
    show(r);
    runs.push_back(server_json(r));
    if (r.valid) {
      lo = qps;
      if (qps > best.qps) best = r;
    } else {
      hi = qps;
      // Queries that seldom meet (the runner busy under 5% of the time) wait for nothing: a
      // lower rate cannot bring the latency down, and its runs only take longer.
      if (qps * single_ms / 1000.0 < 0.05) {
        fmt::print("Server: p99 above the bound while the runner is idle 95% of the time: stopping the search\n");
        break;
      }
    }
  }
  if (best.valid) {
    fmt::print("Server: peak {:.1f} qps with p99 latency {:.3f} ms (bound {} ms; offline {:.1f} images/s)\n\n", best.qps,
               best.latency.p99, args.latency_bound_ms, offline);
  } else {
    fmt::print("Server: no rate tried kept the p99 latency within {} ms\n\n", args.latency_bound_ms);
  }
  j["offline_images_per_second"] = offline;
  j["peak_qps"] = best.valid ? best.qps : 0.0;
  j["runs"] = runs;
  return j;
}

// --dumpOutput: every output of one run, trtexec-style (name, shape, values).
void dump_outputs(const Graph& g, const std::vector<Tensor>& outputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& t = outputs[i];
    fmt::print("Output '{}': {} {}\n", g.outputs[i].name, dtype_name(t.dtype()), shape_str(t.shape()));
    const int64_t shown = std::min<int64_t>(t.numel(), 4096);
    std::string line;
    for (int64_t k = 0; k < shown; ++k) {
      line += fmt::format("{}{:g}", k % 10 ? " " : "", t.get(k));
      if (k % 10 == 9 || k + 1 == shown) {
        fmt::print("  {}\n", line);
        line.clear();
      }
    }
    if (shown < t.numel()) fmt::print("  ... ({} more values)\n", t.numel() - shown);
  }
  fmt::print("\n");
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
  const std::string& sc = args.scenario;
  const Graph graph = load_model(args.model);
  BenchInputs inputs(graph, args);
  // The batch sizes: one per scenario that fixes it, the inputs' own when given or declared.
  std::vector<int64_t> batches = args.batches;
  const int64_t required = inputs.required_batch();
  int64_t fixed = sc == "singlestream" ? 1 : (sc == "multistream" ? args.samples_per_query : 0);
  if (fixed && required && required != fixed) {
    fail(args.model, "the {} scenario runs batches of {}, but {} batch {}", sc, fixed, inputs.batch_reason(), required);
  }
  if (!fixed) fixed = required;
  if (fixed) {
    for (int64_t b : batches) {
      if (b != fixed) fail("--batch", "{} batches of {}", required ? inputs.batch_reason() : "the scenario runs", fixed);
    }
    batches = {fixed};
  }
  if (batches.empty()) {
    if (sc == "server") batches = {args.device == "cuda" ? 64 : 8};
    else batches = args.device == "cuda" ? std::vector<int64_t>{256} : std::vector<int64_t>{1, 16};
  }
  for (int64_t b : batches) {
    if (b < 1) fail("--batch", "batch sizes must be at least 1, got {}", b);
  }
  if (sc == "server" && batches.size() != 1) fail("--batch", "the server scenario takes one batch size: the largest dynamic batch");
  nlohmann::json out = {{"model", args.model}, {"device", args.device}, {"scenario", sc}};
  nlohmann::json results = nlohmann::json::array();
  if (args.device == "cuda") {
    if (args.threads) fail("--threads", "sets the CPU backend's threads; the CUDA engine runs on the GPU");
    CudaEngineOptions opts;
    opts.int8_storage = args.int8_storage;
    opts.max_batch = *std::max_element(batches.begin(), batches.end());
    const bool one_at_a_time = sc == "singlestream" || sc == "multistream";
    opts.contexts = one_at_a_time || sc == "server" ? 1 : args.contexts;
    opts.conv_kernels = args.kernels;
    CudaEngine engine(graph, opts);
    fmt::print("model: {}\ndevice: cuda, {}\nscenario: {}, storage: {} ({}), contexts: {}\nconvolution kernels: {}\n",
               args.model, engine.device_name(), sc, args.int8_storage ? "int8" : "native", engine.storage_summary(),
               opts.contexts, engine.conv_kernel_summary());
    fmt::print("weights: {:.2f} MB on the device; activations: {:.2f} MB per context at batch {}\n\n",
               static_cast<double>(engine.weight_bytes()) / 1e6,
               static_cast<double>(engine.activation_bytes(opts.max_batch)) / 1e6, opts.max_batch);
    out["device_name"] = engine.device_name();
    out["storage"] = args.int8_storage ? "int8" : "native";
    out["conv_kernels"] = engine.conv_kernel_summary();
    out["weight_bytes"] = engine.weight_bytes();
    if (graph.inputs.size() != 1) fail(args.model, "the CUDA engine runs models of one input");
    for (int64_t b : batches) {
      // Random inputs are drawn by the engine straight into its pinned buffers.
      const Tensor* x = inputs.given() ? &inputs.of(b).front() : nullptr;
      if (sc == "server") {
        engine.prepare_inputs(b, x);
        results.push_back(server_scenario([&](int64_t n) { engine.infer(n); }, b, args));
        continue;
      }
      CudaBenchOptions bo;
      bo.batch = b;
      bo.single_stream = one_at_a_time;
      bo.seconds = args.duration;
      bo.min_queries = args.min_iterations;
      bo.warmup_seconds = args.warmup_ms / 1000.0;
      bo.input = x;
      const CudaBenchResult r = engine.bench(bo);
      Measured m{b, r.queries, r.images, r.wall_seconds, r.latency_ms, r.compute_ms, r.h2d_ms, r.d2h_ms};
      nlohmann::json j = report(m, true, sc);
      j["activation_bytes"] = engine.activation_bytes(b);
      if (args.profile) j["profile"] = print_profile(engine, b, args);
      results.push_back(j);
    }
    if (args.dump_output) dump_outputs(graph, engine.run(inputs.of(batches.front())));
  } else {
    if (args.profile) fail("--profile", "the per-layer profile needs --device cuda");
    if (args.threads) set_cpu_threads(args.threads);
    const Backend backend = args.backend == "ref" ? Backend::ref : Backend::cpu;
    const Engine engine(graph, backend);
    fmt::print("model: {}\ndevice: cpu, backend: {}, threads: {}\nscenario: {}\n\n", args.model, args.backend,
               cpu_threads(), sc);
    out["threads"] = cpu_threads();
    auto run = [&](int64_t n) { engine.run(inputs.of(n)); };
    for (int64_t b : batches) {
      if (const auto bad = engine.check_inputs(inputs.of(b))) fail(args.model, "input {}", bad->problem);
      if (sc == "server") {
        results.push_back(server_scenario(run, b, args));
      } else {
        results.push_back(report(back_to_back(run, b, args), false, sc));
      }
    }
    if (args.dump_output) dump_outputs(graph, engine.run(inputs.of(batches.front())));
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
                  "MLPerf's scenarios. offline: batches back to back, copies overlapped with compute (throughput); "
                  "singlestream: one image at a time, each waited for (latency, p90); multistream: queries of "
                  "--samples-per-query images, each waited for (latency, p99); server: single-image queries at "
                  "random (Poisson) times, batched as they wait (the highest rate whose p99 latency is within "
                  "--latency-bound, or --server-qps)")
      ->default_val("offline")
      ->check(CLI::IsMember({"offline", "singlestream", "multistream", "server"}));
  cmd->add_option("--batch", args->batches,
                  "Batch sizes to measure (default: 256 on cuda, 1,16 on cpu; a model's fixed batch; server: the "
                  "largest dynamic batch, default 64 on cuda, 8 on cpu)")
      ->delimiter(',');
  cmd->add_option("--shapes", args->shapes,
                  "Input shapes, NAME:16x3x224x224 (trtexec's syntax; the name may be left out for a model of one "
                  "input): the batch and any dimension the model leaves open")
      ->delimiter(',');
  cmd->add_option("--loadInputs", args->load_inputs,
                  "Replay these inputs instead of random ones: NAME:FILE.npy (or FILE.npy for a model of one input)")
      ->delimiter(',');
  cmd->add_flag("--dumpOutput", args->dump_output, "Print the outputs of one run of the (first) batch after measuring");
  cmd->add_option("--duration", args->duration, "Seconds to measure each batch size (after the warm-up)")
      ->default_val(3.0)
      ->check(CLI::PositiveNumber);
  cmd->add_option("--iterations,--min-runs", args->min_iterations, "Queries per batch size at least")
      ->default_val(10)
      ->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", args->warmup_ms, "Milliseconds of warm-up runs before measuring each batch size")
      ->default_val(200)
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", args->threads, "cpu: threads of the CPU backend's kernels (0: one per core)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--samples-per-query", args->samples_per_query, "multistream: images per query (MLPerf: 8)")
      ->default_val(8)
      ->check(CLI::PositiveNumber);
  cmd->add_option("--server-qps", args->server_qps,
                  "server: the query rate to run at (0: search for the highest valid rate)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--latency-bound", args->latency_bound_ms,
                  "server: the 99th-percentile latency (ms) a valid run stays within (MLPerf ResNet-50: 15)")
      ->default_val(15)
      ->check(CLI::PositiveNumber);
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
