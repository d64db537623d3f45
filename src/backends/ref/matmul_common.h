// Shape planning and inner loops shared by the matrix-product kernels (Gemm, MatMul, MatMulInteger,
// QLinearMatMul): numpy matmul semantics and per-row / per-column quantization parameters.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "nibble/tensor.h"

namespace nibble::ref {

// How a numpy-style matmul of A and B runs: a 1-D A is promoted to [1, K] and a 1-D B to [K, 1]
// (the added dimension is dropped from the result), and the leading "batch" dimensions broadcast.
struct MatMulPlan {
  int64_t m = 0, k = 0, n = 0;
  Shape a_shape;    // A after 1-D promotion (rank >= 2)
  Shape b_shape;    // B after 1-D promotion (rank >= 2)
  Shape out_full;   // broadcast batch dims + [M, N], before the promoted dims are dropped
  Shape out_shape;  // the result's shape as numpy.matmul reports it
  // For output matrix i (row-major over the broadcast batch dims): which matrix of A and of B it
  // multiplies, counted in A's and B's own batch dims.
  std::vector<int64_t> a_batch;
  std::vector<int64_t> b_batch;

  int64_t batches() const { return static_cast<int64_t>(a_batch.size()); }
};

// Plans op's product of a (named a_name in messages) and b; throws KernelError for scalars,
// mismatched inner dimensions and batch dimensions that do not broadcast.
MatMulPlan plan_matmul(std::string_view op, std::string_view a_name, const Shape& a, std::string_view b_name,
                       const Shape& b);

// y[M, N] = a[M, K] * b[K, N], all row-major, accumulating in float with k ascending.
void matmul_f32(const float* a, const float* b, float* y, int64_t m, int64_t k, int64_t n);

// y[M, N] = a[M, K] * b[K, N] over integers, exact in int64 (row-major, same loop order as matmul_f32).
void matmul_s64(const int32_t* a, const int32_t* b, int64_t* y, int64_t m, int64_t k, int64_t n);

// The elements of 8-bit x (promoted shape x_shape) minus their zero points, as int32; zp comes
// from expand_quant_param with the same per_row, or is empty for no zero point.
std::vector<int32_t> subtract_zero_point(const Tensor& x, const Shape& x_shape, const std::vector<double>& zp,
                                         bool per_row);

// The spec accumulates integer products in int32; where the exact sum leaves that range, this
// wraps it as int32 arithmetic would.
inline int32_t wrap_s32(int64_t v) {
  return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(v)));
}

// A quantization parameter (scale or zero point) of operand x, shape x_shape (rank >= 2, promoted),
// expanded to one value per (matrix, row) when per_row, else per (matrix, column); the result has
// batches(x) * rows or batches(x) * columns entries. Accepted forms, following the ONNX
// MatMulInteger / QLinearMatMul specs: one element (per tensor), a 1-D vector with one entry per
// row (or column), or an N-D tensor that broadcasts to x_shape with a 1 in the reduced dimension
// (e.g. [D1, D2, M, 1] for per-row, [D1, D2, 1, N] for per-column).
std::vector<double> expand_quant_param(std::string_view op, std::string_view what, const Tensor& p,
                                       const Shape& x_shape, bool per_row);

}  // namespace nibble::ref
