// ONNX DequantizeLinear (opsets 10, 13, 19): y = (x - x_zero_point) * x_scale in f32, per tensor or
// per axis; x is u8, s8, s32 or float8e4m3fn (opset 19: its value times the scale).
#include "backends/ref/kernels.h"
#include "backends/ref/quant_axis.h"

namespace nibble::ref {

void dequantize_linear(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& scale = required_input(node, in, 1);
  const Tensor* zp = optional_input(in, 2);
  const bool fp8 = x.dtype() == DType::e4m3;
  if (x.dtype() != DType::u8 && x.dtype() != DType::s8 && x.dtype() != DType::s32 && !fp8) {
    kernel_fail("DequantizeLinear: x has dtype {}; it must be u8, s8, s32 or e4m3", dtype_name(x.dtype()));
  }
  if (scale.dtype() != DType::f32) {
    kernel_fail("DequantizeLinear: x_scale has dtype {}; it must be f32", dtype_name(scale.dtype()));
  }
  if (zp && zp->dtype() != x.dtype()) {
    kernel_fail("DequantizeLinear: x_zero_point has dtype {} but x has dtype {}", dtype_name(zp->dtype()),
                dtype_name(x.dtype()));
  }

  if (fp8 && zp) {
    for (int64_t i = 0; i < zp->numel(); ++i) {
      if ((zp->bytes()[i] & 0x7F) != 0) kernel_fail("DequantizeLinear: an e4m3 x_zero_point must be zero");
    }
  }
  const QuantAxisLayout layout = quant_axis_layout(node, x, scale, zp, "x_scale", "x_zero_point");
  const int64_t outer = layout.outer, channels = layout.channels, inner = layout.inner;

  Tensor y(DType::f32, x.shape());
  float* py = y.data<float>();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < channels; ++c) {
      const float s = scale.data<float>()[c];
      if (fp8) {
        // ONNX's float8 zero point is 0 (checked above); each code's value times the scale.
        for (int64_t i = (o * channels + c) * inner, end = i + inner; i < end; ++i) py[i] = e4m3_bits_to_f32(x.bytes()[i]) * s;
        continue;
      }
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
