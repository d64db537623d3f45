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

// Keeps the two largest magnitudes of every group of 4 along the reduction dimension (the
// lower index on ties) and zeroes the other two. Returns the number of values zeroed.
int64_t prune_2to4(Tensor& weight, const SparsityPlan& plan);

}  // namespace nibble::quant
