// ONNX MatMulInteger: numpy.matmul of u8/s8 operands minus their zero points, exact into s32.
#include <vector>

#include "backends/ref/kernels.h"
#include "backends/ref/matmul_common.h"

namespace nibble::ref {

namespace {

bool is_8bit(DType t) { return t == DType::u8 || t == DType::s8; }

}  // namespace

void matmul_integer(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& a = required_input(node, in, 0);
  const Tensor& b = required_input(node, in, 1);
  const Tensor* a_zp = optional_input(in, 2);
  const Tensor* b_zp = optional_input(in, 3);
  if (!is_8bit(a.dtype()) || !is_8bit(b.dtype())) {
    kernel_fail("MatMulInteger: A has dtype {} and B has dtype {}; both must be u8 or s8",
                dtype_name(a.dtype()), dtype_name(b.dtype()));
  }
  if (a_zp && a_zp->dtype() != a.dtype()) {
    kernel_fail("MatMulInteger: a_zero_point has dtype {} but A has dtype {}", dtype_name(a_zp->dtype()),
                dtype_name(a.dtype()));
  }
  if (b_zp && b_zp->dtype() != b.dtype()) {
    kernel_fail("MatMulInteger: b_zero_point has dtype {} but B has dtype {}", dtype_name(b_zp->dtype()),
                dtype_name(b.dtype()));
  }
  const MatMulPlan plan = plan_matmul("MatMulInteger", "A", a.shape(), "B", b.shape());
  // A's zero point is per tensor or per row, B's per tensor or per column.
  std::vector<double> azp, bzp;
  if (a_zp) azp = expand_quant_param("MatMulInteger", "a_zero_point", *a_zp, plan.a_shape, /*per_row=*/true);
  if (b_zp) bzp = expand_quant_param("MatMulInteger", "b_zero_point", *b_zp, plan.b_shape, /*per_row=*/false);
  const std::vector<int32_t> av = subtract_zero_point(a, plan.a_shape, azp, /*per_row=*/true);
  const std::vector<int32_t> bv = subtract_zero_point(b, plan.b_shape, bzp, /*per_row=*/false);

  Tensor y(DType::s32, plan.out_shape);
  int32_t* py = y.data<int32_t>();
  const int64_t mn = plan.m * plan.n;
  std::vector<int64_t> acc(static_cast<size_t>(mn));
  for (int64_t i = 0; i < plan.batches(); ++i) {
    matmul_s64(av.data() + plan.a_batch[static_cast<size_t>(i)] * plan.m * plan.k,
               bv.data() + plan.b_batch[static_cast<size_t>(i)] * plan.k * plan.n, acc.data(), plan.m, plan.k,
               plan.n);
    for (int64_t j = 0; j < mn; ++j) py[i * mn + j] = wrap_s32(acc[static_cast<size_t>(j)]);
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
