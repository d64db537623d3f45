// Runs an FP32 graph and records the range and |x| histogram of every float tensor.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "nibble/engine.h"
#include "quant/calibration.h"

namespace nibble::quant {

// The graph with `names` appended to its outputs (values it already outputs are skipped).
Graph with_outputs(Graph graph, const std::vector<std::string>& names);

// The graph with every value's dtype and shape as a run shows them, where ONNX's shape
// inference left them unknown (shapes computed at run time from Shape ops, which folding turned
// into constants after inference ran): the graph runs on zeros at batch 1 and 2, and a
// dimension that follows the batch becomes -1. Graphs whose input has other unknown dimensions
// are returned unchanged, as are graphs the probe cannot run.
Graph with_probed_shapes(Graph graph);

// Two passes over the calibration data: observe_ranges() on every batch, then
// start_histograms(), then observe_histograms() on every batch. Both observe calls are
// thread-safe; their results do not depend on batch size or order.
class RangeObserver {
 public:
  // Observes the graph input and every f32 node output.
  explicit RangeObserver(const Graph& fp32, int bins = 8192);

  const std::vector<std::string>& tensors() const { return tensors_; }

  void observe_ranges(const Tensor& input);
  void start_histograms();
  void observe_histograms(const Tensor& input);

  // One entry per observed tensor: [0, T] when the tensor never went below 0, else [-T, T], with
  // T chosen by `spec` for activations of `bits` bits (unsigned 2^b - 1 levels, signed
  // 2^(b-1) - 1). With max, the observed [lo, hi] is kept as is.
  CalibTable table(const CalibSpec& spec, int bits, std::vector<std::string> comments) const;

 private:
  std::vector<Tensor> run_all(const Tensor& input) const;

  std::vector<std::string> tensors_;
  std::unique_ptr<Engine> engine_;
  size_t input_index_;   // tensors_ index of the graph input
  int bins_;
  std::vector<MinMax> ranges_;
  std::vector<AbsHistogram> hists_;
  std::mutex mu_;
};

}  // namespace nibble::quant
