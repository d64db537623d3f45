// Runs an integer graph (the seed's INT4 model, PTQ INT8/INT4 models) on a CUDA GPU: weights
// uploaded once, activations in one planned arena, the whole network replayed as a CUDA graph.
// Results are bit-identical to the CPU engine.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nibble/graph.h"

namespace nibble {

struct CudaEngineOptions {
  // Store 4-bit activations and weights in bytes too: the same values, so the same outputs, at
  // 8-bit traffic. This is the INT8 baseline of a 4-bit model.
  bool int8_storage = false;
  // The largest batch one submission carries; run() splits larger inputs.
  int64_t max_batch = 64;
  // Independent execution contexts (stream, activation arena, pinned buffers). With two or more,
  // bench() overlaps one context's copies with another's compute.
  int contexts = 1;
  // Convolution kernel family: "auto" (the fastest that fits each layer on this device),
  // "wgmma" (Hopper's TMA + warpgroup MMA kernels where they fit, else mma) or "mma" (the
  // mma.sync kernels everywhere). Every family computes the same outputs.
  std::string conv_kernels = "auto";
};

struct CudaBenchOptions {
  int64_t batch = 1;
  bool single_stream = false;  // one query at a time (latency); otherwise keep every context busy
  double seconds = 3.0;
  int min_queries = 10;
  double warmup_seconds = 0.5;
  const Tensor* input = nullptr;  // the batch to replay (NCHW, `batch` images); random when null
};

struct CudaBenchResult {
  int64_t queries = 0;
  int64_t images = 0;
  double wall_seconds = 0;
  std::vector<double> latency_ms;  // per query: host-to-device copy + compute + device-to-host copy
  std::vector<double> compute_ms;  // per query: the CUDA graph alone
  std::vector<double> h2d_ms, d2h_ms;
};

struct CudaLayerProfile {
  std::string name, op, kernel;
  double ms = 0;          // median over the repetitions
  int64_t macs = 0;       // for the whole batch
  int64_t bytes = 0;      // fewest bytes moved: inputs once, outputs once (weights included)
};

class CudaEngine {
 public:
  // Plans the graph and uploads its weights to device 0. Throws nibble::Error when the build
  // has no CUDA backend, no device is usable, or the graph uses what the backend cannot run.
  CudaEngine(const Graph& graph, const CudaEngineOptions& options = {});
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  std::string device_name() const;
  const Graph& graph() const;
  int64_t weight_bytes() const;
  int64_t activation_bytes(int64_t batch) const;  // the arena of one context
  // One line per activation storage kind, e.g. "u4 x52, s8 x4, ...".
  std::string storage_summary() const;
  // The convolution kernel family chosen per conv layer, counted, e.g. "wgmma x52, mma x2".
  std::string conv_kernel_summary() const;

  // Inputs in graph order (NCHW, as the CPU engine takes them); outputs in graph order.
  std::vector<Tensor> run(const std::vector<Tensor>& inputs);

  // Random (or the given) inputs of `batch`, replayed for the requested time after a warm-up.
  CudaBenchResult bench(const CudaBenchOptions& options);

  // For callers that issue queries themselves (the Server scenario): prepare_inputs() puts
  // `batch` images (random, or `input`) in every context's pinned buffer; infer(n) runs the first
  // n of them on one context, copies in and out included, and waits.
  void prepare_inputs(int64_t batch, const Tensor* input = nullptr);
  void infer(int64_t batch);

  // Each step timed alone (device events around its kernel), median of `repetitions`.
  std::vector<CudaLayerProfile> profile(int64_t batch, int repetitions);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nibble
