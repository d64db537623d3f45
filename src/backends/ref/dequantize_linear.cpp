// ONNX DequantizeLinear (opsets 10, 13): y = (x - x_zero_point) * x_scale in f32, per tensor or per axis.
#include "backends/ref/kernels.h"
#include "backends/ref/quant_axis.h"

namespace nibble::ref {

void dequantize_linear(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& scale = required_input(node, in, 1);
  const Tensor* zp = optional_input(in, 2);
  if (x.dtype() != DType::u8 && x.dtype() != DType::s8 && x.dtype() != DType::s32) {
    kernel_fail("DequantizeLinear: x has dtype {}; it must be u8, s8 or s32", dtype_name(x.dtype()));
  }
  if (scale.dtype() != DType::f32) {
    kernel_fail("DequantizeLinear: x_scale has dtype {}; it must be f32", dtype_name(scale.dtype()));
  }
  if (zp && zp->dtype() != x.dtype()) {
    kernel_fail("DequantizeLinear: x_zero_point has dtype {} but x has dtype {}", dtype_name(zp->dtype()),
                dtype_name(x.dtype()));
  }

  const QuantAxisLayout layout = quant_axis_layout(node, x, scale, zp, "x_scale", "x_zero_point");
  const int64_t outer = layout.outer, channels = layout.channels, inner = layout.inner;

  Tensor y(DType::f32, x.shape());
  float* py = y.data<float>();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < channels; ++c) {
      const float s = scale.data<float>()[c];
      const int64_t z = zp ? static_cast<int64_t>(zp->get(c)) : 0;
      const int64_t base = (o * channels + c) * inner;
      for (int64_t i = base; i < base + inner; ++i) {
        // The difference is exact in int64; for 8-bit x it is also exact in f32, so only the
        // multiplication rounds.
        py[i] = static_cast<float>(static_cast<int64_t>(x.get(i)) - z) * s;
      }
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
