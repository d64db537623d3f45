// The operands of nibble:Fp8Conv as exact integers, shared by the reference and CPU kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "backends/ref/conv_common.h"
#include "backends/ref/kernels.h"

namespace nibble::ref {

// Checked operands of one Fp8Conv call. Activations are e4m3 (multiples of 2^-9 below 448), so
// x_units[i] = x[i] * 512 is an integer. Weights are integer levels (s4 or s8); with the
// optional input 4 (group scales, f32, M x G, and attribute group_size) the layer computes with
// the FP8 weight e4m3(f32(level * g)) of the level's group instead, a multiple of 2^-9 too.
// w_units holds the weights in units of 2^-w_shift (0 for plain levels, 9 with group scales),
// so each sum of products is an integer in units of 2^-(9 + w_shift).
struct Fp8Operands {
  ConvProblem problem;
  std::vector<int32_t> x_units;
  std::vector<int32_t> w_units;  // M x C x KH x KW
  int w_shift = 0;
  int32_t w_max = 0;  // the largest |w_units|
  const float* bias = nullptr;
  const float* scale = nullptr;
  bool relu = false;
};

Fp8Operands fp8_operands(const Node& node, const Inputs& in);

}  // namespace nibble::ref
