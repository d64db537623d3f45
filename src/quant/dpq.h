// Dual Precision Quantization (DPQ): 4-bit integer weights that the layer computes with in FP8.
//
// Each weight is stored as an integer level l in [-7, 7] of its group of `group_size`
// consecutive inputs (along the flattened C x R x S reduction of a conv, the input features of
// a linear layer), with one scale g per output channel and group. At inference the layer
// widens each level to FP8 once: w8 = e4m3(l * g), and computes in FP8 with one scale s for the
// whole tensor: w = s * w8. The scale s is a power of two that maps the largest |w| into
// (224, 448]; the levels are chosen by GPTQ's Hessian-guided error compensation through that
// composite rounding (INT4 then FP8), so the error it compensates is the one the layer really
// makes, and each group's scale is fitted when the loop reaches the group, on its weights as
// compensated so far: of max|e4m3(w / s)| / 7 times 1, 0.95, ..., 0.5, the one with the least
// squared rounding error.
// With `reorder` (group-aware reordering), columns are processed most important first as far
// as groups allow: groups by their largest Hessian diagonal entry, columns inside a group by
// theirs. A column never leaves its group, so the stored layout is plain and inference pays
// nothing for the order.
#pragma once

#include <cstdint>
#include <vector>

namespace nibble::quant {

struct DpqWeights {
  std::vector<double> levels;      // K x D integers in [-7, 7]
  std::vector<float> group_scale;  // K x G (G = ceil(D / group_size)), FP8-domain scales
  double tensor_scale = 1.0;       // s, a power of two
  int64_t group_size = 0;
};

// The weight the layer computes with for level l in a group of scale g: s * e4m3(l * g).
double dpq_weight(double level, float group_scale, double tensor_scale);

// W: K x D (row-major); H: D x D, sum of x x^T over the layer's inputs (empty: plain rounding
// through the composite quantizer, no compensation). `keep_zeros` keeps zero weights at level 0
// (pruned 2:4 layers). `threads`: the linear algebra's (0: one per core).
//
// With `cross` (D x D, sum of x x8^T), H is sum of x8 x8^T of the layer's inputs in FP8 form x8
// and the aim is the FP32 output through FP8 inputs: min ||W X - W_hat X8||. Its unrounded
// solution, regularized toward W by GPTQ's damping lambda, is W* = W + W (C - H8)(H8 + lambda
// I)^-1, which GPTQ then rounds with H8: ||W X - W_hat X8||^2 = ||(W* - W_hat) X8||^2 + const.
DpqWeights dpq_quantize(const std::vector<double>& w, int64_t rows, int64_t cols, const std::vector<double>& hessian,
                        int64_t group_size, bool reorder, int threads = 0, bool keep_zeros = false,
                        const std::vector<double>& cross = {});

// The group-aware order of D columns in groups of `group_size` for Hessian diagonal `diag`:
// groups by descending largest entry, columns inside each group by descending entry (ties
// keep their index order).
std::vector<int64_t> group_aware_order(const std::vector<double>& diag, int64_t group_size);

}  // namespace nibble::quant
