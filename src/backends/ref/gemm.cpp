// ONNX Gemm (opsets 7..13): Y = alpha * A' * B' + beta * C for f32, C broadcast unidirectionally to (M, N).
#include <utility>
#include <vector>

#include "backends/ref/kernels.h"
#include "backends/ref/matmul_common.h"

namespace nibble::ref {

namespace {

// The (rows x cols) matrix stored in `t`, transposed first when `trans`, copied row-major.
std::vector<float> as_row_major(const Tensor& t, bool trans) {
  const int64_t r = t.dim(0);
  const int64_t c = t.dim(1);
  const float* p = t.data<float>();
  std::vector<float> out(static_cast<size_t>(r * c));
  if (!trans) {
    for (int64_t i = 0; i < r * c; ++i) out[static_cast<size_t>(i)] = p[i];
    return out;
  }
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t j = 0; j < c; ++j) out[static_cast<size_t>(j * r + i)] = p[i * c + j];
  }
  return out;
}

}  // namespace

void gemm(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& a = required_input(node, in, 0);
  const Tensor& b = required_input(node, in, 1);
  const Tensor* c = optional_input(in, 2);
  for (const auto& [name, t] : {std::pair{"A", &a}, std::pair{"B", &b}, std::pair{"C", c}}) {
    if (t && t->dtype() != DType::f32) {
      kernel_fail("Gemm: {} has dtype {}; the reference kernel supports f32", name, dtype_name(t->dtype()));
    }
  }
  if (a.rank() != 2 || b.rank() != 2) {
    kernel_fail("Gemm: A is {} and B is {}: both must be 2-D", shape_str(a.shape()), shape_str(b.shape()));
  }
  const bool trans_a = node.attr_int("transA", 0) != 0;
  const bool trans_b = node.attr_int("transB", 0) != 0;
  const float alpha = node.attr_float("alpha", 1.0f);
  const float beta = node.attr_float("beta", 1.0f);

  const int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const int64_t ka = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0);
  const int64_t n = trans_b ? b.dim(0) : b.dim(1);
  if (ka != kb) {
    kernel_fail("Gemm: A is {} (transA={}) and B is {} (transB={}): inner dimensions {} and {} differ",
                shape_str(a.shape()), int(trans_a), shape_str(b.shape()), int(trans_b), ka, kb);
  }

  // C broadcasts unidirectionally: right-aligned, each of its dims 1 or equal to M (N).
  int64_t c_row_stride = 0;
  int64_t c_col_stride = 0;
  if (c) {
    const Shape& cs = c->shape();
    const int64_t c_rows = cs.size() == 2 ? cs[0] : 1;
    const int64_t c_cols = cs.empty() ? 1 : cs.back();
    if (cs.size() > 2 || (c_rows != 1 && c_rows != m) || (c_cols != 1 && c_cols != n)) {
      kernel_fail("Gemm: C is {} and does not broadcast to the output shape [{}, {}]", shape_str(cs), m, n);
    }
    c_row_stride = c_rows == 1 ? 0 : c_cols;
    c_col_stride = c_cols == 1 ? 0 : 1;
  }

  const std::vector<float> am = as_row_major(a, trans_a);
  const std::vector<float> bm = as_row_major(b, trans_b);
  Tensor y(DType::f32, {m, n});
  float* py = y.data<float>();
  matmul_f32(am.data(), bm.data(), py, m, ka, n);
  // Scaling after the sum and adding beta * C even when beta is 0 follows the ONNX reference
  // (alpha * dot(A, B) + beta * C in f32), so infinities and NaNs in C propagate the same way.
  const float* pc = c ? c->data<float>() : nullptr;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const float prod = alpha * py[i * n + j];
      py[i * n + j] = pc ? prod + beta * pc[i * c_row_stride + j * c_col_stride] : prod;
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
