// 2:4 structured sparsity: which layers can take it, and magnitude pruning along the
// reduction (input-channel) dimension, the pattern sparse tensor cores run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nibble/graph.h"
#include "nibble/tensor.h"

namespace nibble::quant {

// One conv or linear node of an FP32 graph and what 2:4 pruning does with it.
struct SparsityPlan {
  std::string node;    // ONNX node name (or op type when unnamed)
  std::string op;      // Conv, Gemm or MatMul
  std::string weight;  // the weight initializer's name
  Shape shape;         // the weight's shape
  int64_t macs = 0;    // per input, at the graph's shapes
  bool eligible = false;
  std::string reason;  // why not, when not eligible
  // Linear layers: the distance between consecutive input features in the weight (1 for a
  // Gemm with transB, the output count for an in x out weight).
  int64_t stride = 1;
};

// Every Conv, Gemm and MatMul with a constant f32 weight. Eligible when the reduction
// dimension (input channels per group for a conv, input features for a linear layer) is a
// multiple of 4 and the conv is not grouped (depthwise convolutions gain nothing); layers named
// in `exclude` (node or weight names) are not.
std::vector<SparsityPlan> plan_2to4(const Graph& fp32, const std::vector<std::string>& exclude = {});

// Whether weights laid out as rows x channels x inner (a conv's K x C x R*S, a linear layer's
// out x in x 1) keep at most 2 non-zeros in every group of 4 consecutive channels at each
// inner position; `at(i)` gives element i. False when channels is not a multiple of 4.
template <typename At>
bool rows_are_2to4(At&& at, int64_t rows, int64_t channels, int64_t inner) {
  if (channels % 4 != 0 || channels == 0) return false;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < channels; c += 4) {
      for (int64_t i = 0; i < inner; ++i) {
        int nonzero = 0;
        for (int64_t j = 0; j < 4; ++j) nonzero += at((r * channels + c + j) * inner + i) != 0;
        if (nonzero > 2) return false;
      }
    }
  }
  return true;
}

// Keeps the two largest magnitudes of every group of 4 along the reduction dimension (the
// lower index on ties) and zeroes the other two. Returns the number of values zeroed.
int64_t prune_2to4(Tensor& weight, const SparsityPlan& plan);

}  // namespace nibble::quant
