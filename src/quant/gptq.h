// Hessian-guided weight rounding (GPTQ): each column's rounding error is compensated on the
// columns not yet quantized, weighted by the inverse of the layer's input Hessian.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "nibble/engine.h"
#include "nibble/graph.h"
#include "nibble/tensor.h"
#include "quant/calibration.h"

namespace nibble::quant {

// Sets the linear algebra's (OpenBLAS's) thread count for a scope (0: one per core), then
// restores it. Code that runs batches on several threads sets 1.
class ScopedBlasThreads {
 public:
  explicit ScopedBlasThreads(int threads);
  ~ScopedBlasThreads();
  ScopedBlasThreads(const ScopedBlasThreads&) = delete;
  ScopedBlasThreads& operator=(const ScopedBlasThreads&) = delete;

 private:
  int saved_;
};

// The GPTQ loop with any rounding: quantize(row, column, value, level) returns the value the
// layer will compute with for `value` (the weight after the compensation so far) at
// (row, column) and sets `level` to what is stored. W is K x D and H is D x D (row-major, as
// below). `order`, when given, is the order the columns are processed in (a permutation of
// 0 .. D-1); the returned levels (K x D) are in the original column order.
// `before`, when given, is called before each element is rounded with the row's current values
// in processing order and the element's position in that order (so a rounding that depends on
// the compensated weights, such as a group's scale, can be fitted when its group begins).
using ElementQuantizer = std::function<double(int64_t row, int64_t column, double value, double& level)>;
using RowHook = std::function<void(int64_t row, int64_t position, const double* current)>;
std::vector<double> gptq_round(std::vector<double> w, int64_t rows, int64_t cols, std::vector<double> hessian,
                               const ElementQuantizer& quantize, int threads = 0, const std::vector<int64_t>& order = {},
                               const RowHook& before = {});

// W (K rows x D columns, row-major) quantized row by row with scale[k], to integers in
// [-levels, levels]; H (D x D, row-major) is sum(x x^T) over the layer's input columns. Returns
// the integers (K x D). Columns that never saw a non-zero input (H[i][i] == 0) are zeroed. A
// damping of 1% of the mean diagonal keeps H invertible. The columns go in blocks of 128 (the
// paper's lazy batch updates): errors are compensated inside a block column by column and on
// the later columns by one matrix product per block; LAPACK's Cholesky routines give the
// factor of H^-1. `threads` (0: one per core) is the linear algebra's parallelism.
// With `keep_zeros`, weights that are 0 stay 0 (a pruned 2:4 layer keeps its pattern): their
// error, the compensation they received, goes on to the later columns like any other.
std::vector<double> gptq_quantize(std::vector<double> w, int64_t rows, int64_t cols, std::vector<double> hessian,
                                  const std::vector<double>& scale, double levels, int threads = 0,
                                  bool keep_zeros = false);

// Accumulates, for Conv (group 1) and Gemm/MatMul nodes, the Hessian of each node's input:
// sum over positions of x x^T, x being the node's im2col column (C x R x S for a conv, the
// flattened row for a linear layer). At most `positions` output positions per input are taken,
// evenly spaced, to bound the cost. Thread-safe; batch sums are merged in input order, so a
// given batch size gives the same result whatever order the batches finish in (other batch
// sizes differ only by floating-point rounding).
class HessianCollector {
 public:
  HessianCollector(const Graph& fp32, int64_t positions = 64);

  // Runs the FP32 graph on a batch and accumulates. `first` is the index of the batch's first
  // input in the whole data set (results are merged in that order).
  void observe(const Tensor& input, int64_t first);

  // By ONNX node name: the D x D matrix (row-major) and the number of columns seen.
  // Batches observed after a gap (inputs never given) join in input order.
  std::map<std::string, std::vector<double>> hessians();

  // Layers whose input tensor has a range in `table` also accumulate, for the FP8 form of each
  // column x8 = a * e4m3(x / a) (a = fp8_activation_scale of that range), sum(x8 x8^T) and
  // sum(x x8^T): what DPQ needs to aim at the FP32 output through FP8 inputs. Call before the
  // first observe().
  void set_fp8_scales(const CalibTable& table);
  // By ONNX node name, for those layers: {sum(x8 x8^T), sum(x x8^T)}, each D x D row-major.
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> fp8_statistics();

 private:
  struct Layer {
    std::string node;
    std::string input;  // ONNX tensor read by the node
    bool conv;
    int64_t c = 0, r = 1, s = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
    int64_t dim = 0;  // D
    double fp8_scale = 0.0;  // > 0: also the FP8 statistics
  };
  // One layer's sums: H (upper triangle), and with an FP8 scale H8 (upper) and C (full).
  struct Sums {
    std::vector<double> h, h8, c;
  };
  std::map<std::string, std::vector<double>> symmetric(const std::vector<double> Sums::*part);
  // Adds batch sums to total_ in input order: a batch that arrives before an earlier one
  // waits in pending_ until the gap is filled (or until hessians()).
  void merge(std::vector<Sums>& sums);

  std::vector<Layer> layers_;
  std::unique_ptr<Engine> engine_;
  std::vector<std::string> outputs_;  // engine output names, in order
  int64_t positions_;
  std::mutex mu_;
  int64_t next_ = 0;  // the first input not yet merged
  std::map<int64_t, std::pair<int64_t, std::vector<Sums>>> pending_;  // first -> (count, sums)
  std::vector<Sums> total_;  // per layer
};

}  // namespace nibble::quant
