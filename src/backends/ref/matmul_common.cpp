// Shape planning and inner loops shared by the reference matrix-product kernels.
#include "backends/ref/matmul_common.h"

#include <algorithm>
#include <cstddef>
#include <optional>

#include "backends/ref/kernels.h"

namespace nibble::ref {

namespace {

// For each element of out_dims (row-major), the flat index of the element of a tensor of shape
// in_dims that broadcasts onto it (dims right-aligned, a dim of 1 stretches); nullopt when in_dims
// does not broadcast to out_dims.
std::optional<std::vector<int64_t>> broadcast_indices(const Shape& in_dims, const Shape& out_dims) {
  if (in_dims.size() > out_dims.size()) return std::nullopt;
  const size_t rank = out_dims.size();
  const size_t pad = rank - in_dims.size();
  // in_stride[d]: stride of out dim d in the input, 0 where the input broadcasts along it.
  std::vector<int64_t> in_stride(rank, 0);
  int64_t stride = 1;
  for (size_t d = rank; d-- > pad;) {
    const int64_t in_d = in_dims[d - pad];
    if (in_d != out_dims[d] && in_d != 1) return std::nullopt;
    in_stride[d] = in_d == 1 ? 0 : stride;
    stride *= in_d;
  }
  const int64_t total = shape_numel(out_dims);
  std::vector<int64_t> result(static_cast<size_t>(total));
  std::vector<int64_t> idx(rank, 0);
  int64_t in_flat = 0;
  for (int64_t i = 0; i < total; ++i) {
    result[static_cast<size_t>(i)] = in_flat;
    // Odometer increment of the output multi-index, keeping in_flat in step.
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < out_dims[d]) {
        in_flat += in_stride[d];
        break;
      }
      in_flat -= in_stride[d] * (out_dims[d] - 1);
      idx[d] = 0;
    }
  }
  return result;
}

Shape leading(const Shape& s, size_t drop) {
  return Shape(s.begin(), s.end() - static_cast<ptrdiff_t>(drop));
}

}  // namespace

MatMulPlan plan_matmul(std::string_view op, std::string_view a_name, const Shape& a, std::string_view b_name,
                       const Shape& b) {
  if (a.empty() || b.empty()) {
    kernel_fail("{}: {} is {} and {} is {}: matrix products need inputs of rank 1 or more", op, a_name,
                shape_str(a), b_name, shape_str(b));
  }
  MatMulPlan p;
  p.a_shape = a.size() == 1 ? Shape{1, a[0]} : a;
  p.b_shape = b.size() == 1 ? Shape{b[0], 1} : b;
  const int64_t ka = p.a_shape.back();
  const int64_t kb = p.b_shape[p.b_shape.size() - 2];
  if (ka != kb) {
    kernel_fail("{}: {} is {} and {} is {}: inner dimensions {} and {} differ", op, a_name, shape_str(a),
                b_name, shape_str(b), ka, kb);
  }
  p.m = p.a_shape[p.a_shape.size() - 2];
  p.k = ka;
  p.n = p.b_shape.back();

  const Shape a_batch_dims = leading(p.a_shape, 2);
  const Shape b_batch_dims = leading(p.b_shape, 2);
  const size_t rank = std::max(a_batch_dims.size(), b_batch_dims.size());
  Shape batch(rank, 1);
  for (size_t d = 0; d < rank; ++d) {
    const size_t from_end = rank - d;
    const int64_t da = from_end <= a_batch_dims.size() ? a_batch_dims[a_batch_dims.size() - from_end] : 1;
    const int64_t db = from_end <= b_batch_dims.size() ? b_batch_dims[b_batch_dims.size() - from_end] : 1;
    if (da != db && da != 1 && db != 1) {
      kernel_fail("{}: {} is {} and {} is {}: batch dimensions {} and {} do not broadcast", op, a_name,
                  shape_str(a), b_name, shape_str(b), shape_str(a_batch_dims), shape_str(b_batch_dims));
    }
    batch[d] = da == 1 ? db : da;
  }
  p.a_batch = *broadcast_indices(a_batch_dims, batch);
  p.b_batch = *broadcast_indices(b_batch_dims, batch);

  p.out_full = batch;
  p.out_full.push_back(p.m);
  p.out_full.push_back(p.n);
  p.out_shape = batch;
  if (a.size() > 1) p.out_shape.push_back(p.m);
  if (b.size() > 1) p.out_shape.push_back(p.n);
  return p;
}

void matmul_f32(const float* a, const float* b, float* y, int64_t m, int64_t k, int64_t n) {
  // i-k-j order keeps the innermost loop on contiguous rows of b and y while every y[i][j] still
  // sums its products in ascending k, the order the specification is written in.
  for (int64_t i = 0; i < m; ++i) {
    float* yrow = y + i * n;
    for (int64_t j = 0; j < n; ++j) yrow[j] = 0.0f;
    for (int64_t kk = 0; kk < k; ++kk) {
      const float av = a[i * k + kk];
      const float* brow = b + kk * n;
      for (int64_t j = 0; j < n; ++j) yrow[j] += av * brow[j];
    }
  }
}

void matmul_s64(const int32_t* a, const int32_t* b, int64_t* y, int64_t m, int64_t k, int64_t n) {
  for (int64_t i = 0; i < m; ++i) {
    int64_t* yrow = y + i * n;
    for (int64_t j = 0; j < n; ++j) yrow[j] = 0;
    for (int64_t kk = 0; kk < k; ++kk) {
      const int64_t av = a[i * k + kk];
      const int32_t* brow = b + kk * n;
      for (int64_t j = 0; j < n; ++j) yrow[j] += av * brow[j];
    }
  }
}

std::vector<int32_t> subtract_zero_point(const Tensor& x, const Shape& x_shape, const std::vector<double>& zp,
                                         bool per_row) {
  const int64_t rows = x_shape[x_shape.size() - 2];
  const int64_t cols = x_shape.back();
  const int64_t total = x.numel();
  std::vector<int32_t> out(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) {
    const int32_t v = static_cast<int32_t>(x.get(i));
    if (zp.empty()) {
      out[static_cast<size_t>(i)] = v;
      continue;
    }
    const int64_t batch = i / (rows * cols);
    const int64_t within = per_row ? (i / cols) % rows : i % cols;
    const size_t zi = static_cast<size_t>(batch * (per_row ? rows : cols) + within);
    out[static_cast<size_t>(i)] = v - static_cast<int32_t>(zp[zi]);
  }
  return out;
}

std::vector<double> expand_quant_param(std::string_view op, std::string_view what, const Tensor& p,
                                       const Shape& x_shape, bool per_row) {
  const int64_t rows = x_shape[x_shape.size() - 2];
  const int64_t cols = x_shape.back();
  const int64_t count = per_row ? rows : cols;
  const Shape batch = leading(x_shape, 2);
  const int64_t batches = shape_numel(batch);
  std::vector<double> out(static_cast<size_t>(batches * count));

  if (p.numel() == 1) {
    const double v = p.get(0);
    for (double& o : out) o = v;
    return out;
  }
  if (p.rank() == 1 && p.dim(0) == count) {
    for (int64_t bi = 0; bi < batches; ++bi) {
      for (int64_t i = 0; i < count; ++i) out[static_cast<size_t>(bi * count + i)] = p.get(i);
    }
    return out;
  }
  // One value per row (column) of every matrix: the reduced dimension has extent 1.
  Shape target = batch;
  target.push_back(per_row ? rows : 1);
  target.push_back(per_row ? 1 : cols);
  if (p.rank() >= 2) {
    if (auto idx = broadcast_indices(p.shape(), target)) {
      for (size_t i = 0; i < out.size(); ++i) out[i] = p.get((*idx)[i]);
      return out;
    }
  }
  kernel_fail(
      "{}: {} has shape {} but its operand is {}: expected one element, {} values (one per {}) or a "
      "shape that broadcasts to {}",
      op, what, shape_str(p.shape()), shape_str(x_shape), count, per_row ? "row" : "column",
      shape_str(target));
}

}  // namespace nibble::ref
