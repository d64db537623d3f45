// ONNX QLinearMatMul (opset 10): an int32 numpy.matmul of u8/s8 operands, requantized to y's scale.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "backends/ref/kernels.h"
#include "backends/ref/matmul_common.h"

namespace nibble::ref {

namespace {

bool is_8bit(DType t) { return t == DType::u8 || t == DType::s8; }

const Tensor& named_input(const Inputs& in, size_t i, const char* name) {
  const Tensor* t = optional_input(in, i);
  if (!t) kernel_fail("QLinearMatMul: input {} ({}) is missing", i, name);
  return *t;
}

}  // namespace

void qlinear_matmul(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& a = named_input(in, 0, "a");
  const Tensor& a_scale = named_input(in, 1, "a_scale");
  const Tensor& a_zp = named_input(in, 2, "a_zero_point");
  const Tensor& b = named_input(in, 3, "b");
  const Tensor& b_scale = named_input(in, 4, "b_scale");
  const Tensor& b_zp = named_input(in, 5, "b_zero_point");
  const Tensor& y_scale = named_input(in, 6, "y_scale");
  const Tensor& y_zp = named_input(in, 7, "y_zero_point");
  for (const auto& [name, t] : {std::pair{"a", &a}, std::pair{"b", &b}, std::pair{"y_zero_point", &y_zp}}) {
    if (!is_8bit(t->dtype())) {
      kernel_fail("QLinearMatMul: {} has dtype {}; it must be u8 or s8", name, dtype_name(t->dtype()));
    }
  }
  for (const auto& [name, zp, x] :
       {std::tuple{"a_zero_point", &a_zp, &a}, std::tuple{"b_zero_point", &b_zp, &b}}) {
    if (zp->dtype() != x->dtype()) {
      kernel_fail("QLinearMatMul: {} has dtype {} but its operand has dtype {}", name,
                  dtype_name(zp->dtype()), dtype_name(x->dtype()));
    }
  }
  for (const auto& [name, t] :
       {std::pair{"a_scale", &a_scale}, std::pair{"b_scale", &b_scale}, std::pair{"y_scale", &y_scale}}) {
    if (t->dtype() != DType::f32) {
      kernel_fail("QLinearMatMul: {} has dtype {}; it must be f32", name, dtype_name(t->dtype()));
    }
  }

  const MatMulPlan plan = plan_matmul("QLinearMatMul", "a", a.shape(), "b", b.shape());
  const int64_t m = plan.m, k = plan.k, n = plan.n;
  // a's parameters are per tensor or per row, b's per tensor or per column, y's per tensor or per row.
  const auto as = expand_quant_param("QLinearMatMul", "a_scale", a_scale, plan.a_shape, true);
  const auto az = expand_quant_param("QLinearMatMul", "a_zero_point", a_zp, plan.a_shape, true);
  const auto bs = expand_quant_param("QLinearMatMul", "b_scale", b_scale, plan.b_shape, false);
  const auto bz = expand_quant_param("QLinearMatMul", "b_zero_point", b_zp, plan.b_shape, false);
  const auto ys = expand_quant_param("QLinearMatMul", "y_scale", y_scale, plan.out_full, true);
  const auto yz = expand_quant_param("QLinearMatMul", "y_zero_point", y_zp, plan.out_full, true);
  const std::vector<int32_t> av = subtract_zero_point(a, plan.a_shape, az, true);
  const std::vector<int32_t> bv = subtract_zero_point(b, plan.b_shape, bz, false);

  const double lo = traits(y_zp.dtype()).min;
  const double hi = traits(y_zp.dtype()).max;
  Tensor y(y_zp.dtype(), plan.out_shape);
  std::vector<int64_t> acc(static_cast<size_t>(m * n));
  for (int64_t bi = 0; bi < plan.batches(); ++bi) {
    const int64_t ab = plan.a_batch[static_cast<size_t>(bi)];
    const int64_t bb = plan.b_batch[static_cast<size_t>(bi)];
    matmul_s64(av.data() + ab * m * k, bv.data() + bb * k * n, acc.data(), m, k, n);
    for (int64_t i = 0; i < m; ++i) {
      const float sa = static_cast<float>(as[static_cast<size_t>(ab * m + i)]);
      const float sy = static_cast<float>(ys[static_cast<size_t>(bi * m + i)]);
      const double zy = yz[static_cast<size_t>(bi * m + i)];
      for (int64_t j = 0; j < n; ++j) {
        const int32_t acc32 = wrap_s32(acc[static_cast<size_t>(i * n + j)]);
        // As the ONNX reference: the multiplier a_scale * b_scale / y_scale in f32, the product
        // with the int32 accumulator in f64, then round half to even and saturate.
        const float mult = sa * static_cast<float>(bs[static_cast<size_t>(bb * n + j)]) / sy;
        const double r = std::nearbyint(static_cast<double>(acc32) * static_cast<double>(mult));
        // A NaN (a zero or NaN scale) has no quantized value; the zero point stands in for it.
        const double q = std::isnan(r) ? zy : std::clamp(r + zy, lo, hi);
        y.set((bi * m + i) * n + j, q);
      }
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
