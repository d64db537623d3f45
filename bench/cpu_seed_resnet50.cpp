// Times the seed INT4 ResNet-50 with the CPU backend against the reference, per batch size and per op.
//
//   cpu_seed_resnet50 [--model DIR] [--batch N]... [--iters N] [--ref-iters N] [--no-ref]
//                     [--profile | --profile-nodes]
//
// Each batch repeats the golden image_a. --profile runs the graph node by node (same kernels as the
// engine picks) and prints the time per op type; --profile-nodes also prints every CPU node.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "backends/cpu/kernels.h"
#include "backends/cpu/parallel.h"
#include "backends/ref/kernels.h"
#include "nibble/engine.h"
#include "nibble/model_loader.h"
#include "nibble/npy.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

nibble::Tensor image_batch(const std::string& seed_dir, int64_t batch) {
  const nibble::Tensor one = nibble::read_npy(seed_dir + "/golden/image_a_input_s8.npy");
  nibble::Tensor x(nibble::DType::s8, {batch, 3, 224, 224});
  for (int64_t b = 0; b < batch; ++b) std::memcpy(x.bytes() + b * one.nbytes(), one.bytes(), one.nbytes());
  return x;
}

// Best and median of `iters` timed runs, after one warm-up run (which also fills the weight cache).
struct Timing {
  double best, median;
};
Timing time_engine(const nibble::Engine& engine, const nibble::Tensor& x, int iters) {
  engine.run({x});
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    engine.run({x});
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}

// Runs the nodes one by one with the kernels the engine would choose; seconds per op type.
std::map<std::string, double> profile(const nibble::Graph& g, const nibble::Tensor& x, bool cpu,
                                      bool per_node) {
  std::map<std::string, nibble::Tensor> values(g.initializers.begin(), g.initializers.end());
  values[g.inputs.at(0).name] = x;
  std::map<std::string, double> per_op;
  for (const auto& n : g.nodes) {
    nibble::ref::KernelFn fn = cpu ? nibble::cpu::find_kernel(n.op_type) : nullptr;
    if (!fn) fn = nibble::ref::find_kernel(n.op_type, n.opset);
    nibble::ref::Inputs in;
    for (const auto& name : n.inputs) in.push_back(name.empty() ? nullptr : &values.at(name));
    nibble::ref::Outputs out(n.outputs.size());
    const auto t0 = Clock::now();
    fn(n, in, out);
    const double s = seconds_since(t0);
    per_op[n.op_type] += s;
    if (per_node) {
      std::string shapes;
      for (const auto* t : in) shapes += t ? nibble::shape_str(t->shape()) + " " : "- ";
      std::printf("    %-28s %-20s %8.3f ms  %s\n", n.name.c_str(), n.op_type.c_str(), s * 1e3,
                  shapes.c_str());
    }
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      if (!n.outputs[i].empty()) values[n.outputs[i]] = std::move(out[i]);
    }
  }
  return per_op;
}

}  // namespace

int main(int argc, char** argv) {
  std::string seed_dir = std::string(NIBBLE_SOURCE_DIR) + "/models/mlperf-v0.5-int4-resnet50";
  std::vector<int64_t> batches;
  int iters = 10, ref_iters = 1;
  bool with_ref = true, with_profile = false, per_node = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") {
      seed_dir = next();
    } else if (a == "--batch") {
      batches.push_back(std::stoll(next()));
    } else if (a == "--iters") {
      iters = std::stoi(next());
    } else if (a == "--ref-iters") {
      ref_iters = std::stoi(next());
    } else if (a == "--no-ref") {
      with_ref = false;
    } else if (a == "--profile") {
      with_profile = true;
    } else if (a == "--profile-nodes") {
      with_profile = per_node = true;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (batches.empty()) batches = {1, 16};

  const nibble::Graph graph = nibble::load_model(seed_dir + "/model");
  std::printf("cpu isa: %s, threads: %d\n", nibble::cpu::isa_name(), nibble::cpu::thread_count());
  const nibble::Engine cpu(graph, nibble::Backend::cpu);
  const nibble::Engine ref(graph, nibble::Backend::ref);
  for (int64_t batch : batches) {
    const nibble::Tensor x = image_batch(seed_dir, batch);
    const Timing c = time_engine(cpu, x, iters);
    std::printf("batch %3lld  cpu: best %8.1f ms  median %8.1f ms  (%.1f ms/image, %d runs)\n",
                static_cast<long long>(batch), c.best * 1e3, c.median * 1e3, c.median * 1e3 / batch, iters);
    if (with_ref) {
      const Timing r = time_engine(ref, x, ref_iters);
      std::printf(
          "batch %3lld  ref: best %8.1f ms  median %8.1f ms  (%.1f ms/image, %d runs)  speed-up %.1fx\n",
          static_cast<long long>(batch), r.best * 1e3, r.median * 1e3, r.median * 1e3 / batch, ref_iters,
          r.median / c.median);
    }
    if (with_profile) {
      for (bool use_cpu : {true, false}) {
        if (!use_cpu && !with_ref) continue;
        profile(graph, x, use_cpu, false);  // warm-up
        const auto per_op = profile(graph, x, use_cpu, per_node && use_cpu);
        for (const auto& [op, s] : per_op) {
          std::printf("  %s %-22s %9.2f ms\n", use_cpu ? "cpu" : "ref", op.c_str(), s * 1e3);
        }
      }
    }
  }
  return 0;
}
