// ONNX MatMul for f32: numpy.matmul semantics (1-D promotion, broadcast batch dims), float accumulation.
#include "backends/ref/kernels.h"
#include "backends/ref/matmul_common.h"

namespace nibble::ref {

void matmul(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& a = required_input(node, in, 0);
  const Tensor& b = required_input(node, in, 1);
  if (a.dtype() != DType::f32 || b.dtype() != DType::f32) {
    kernel_fail("MatMul: A has dtype {} and B has dtype {}; the reference kernel supports f32",
                dtype_name(a.dtype()), dtype_name(b.dtype()));
  }
  const MatMulPlan plan = plan_matmul("MatMul", "A", a.shape(), "B", b.shape());
  Tensor y(DType::f32, plan.out_shape);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
  const int64_t a_size = plan.m * plan.k;
  const int64_t b_size = plan.k * plan.n;
  const int64_t y_size = plan.m * plan.n;
  for (int64_t i = 0; i < plan.batches(); ++i) {
    matmul_f32(pa + plan.a_batch[static_cast<size_t>(i)] * a_size,
               pb + plan.b_batch[static_cast<size_t>(i)] * b_size, py + i * y_size, plan.m, plan.k, plan.n);
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
