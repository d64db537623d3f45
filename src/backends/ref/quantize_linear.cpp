// ONNX QuantizeLinear (opsets 10, 13): y = saturate(round_half_to_even(x / y_scale) + y_zero_point).
#include <algorithm>
#include <cmath>

#include "backends/ref/kernels.h"
#include "backends/ref/quant_axis.h"

namespace nibble::ref {

void quantize_linear(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& scale = required_input(node, in, 1);
  const Tensor* zp = optional_input(in, 2);
  if (x.dtype() != DType::f32 && x.dtype() != DType::s32) {
    kernel_fail("QuantizeLinear: x has dtype {}; it must be f32 or s32", dtype_name(x.dtype()));
  }
  if (scale.dtype() != DType::f32) {
    kernel_fail("QuantizeLinear: y_scale has dtype {}; it must be f32", dtype_name(scale.dtype()));
  }
  if (zp && zp->dtype() != DType::u8 && zp->dtype() != DType::s8) {
    kernel_fail("QuantizeLinear: y_zero_point has dtype {}; it must be u8 or s8", dtype_name(zp->dtype()));
  }
  // Without a zero point the output is u8 with zero point 0.
  const DType out_type = zp ? zp->dtype() : DType::u8;

  const QuantAxisLayout layout = quant_axis_layout(node, x, scale, zp, "y_scale", "y_zero_point");
  const int64_t outer = layout.outer, channels = layout.channels, inner = layout.inner;
  const double lo = traits(out_type).min;
  const double hi = traits(out_type).max;

  const float* xf = x.dtype() == DType::f32 ? x.data<float>() : nullptr;
  const int32_t* xi = x.dtype() == DType::s32 ? x.data<int32_t>() : nullptr;
  Tensor y(out_type, x.shape());
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < channels; ++c) {
      const float s = scale.data<float>()[c];
      const double z = zp ? zp->get(c) : 0.0;
      const int64_t base = (o * channels + c) * inner;
      for (int64_t i = base; i < base + inner; ++i) {
        // f32 input divides in f32, as the ONNX reference does; s32 input divides in f64, as numpy
        // promotes int32 / float32. Either way the quotient rounds half to even.
        const double r = xf ? std::nearbyint(xf[i] / s) : std::nearbyint(static_cast<double>(xi[i]) / s);
        // NaN has no quantized value; the zero point stands in for it.
        y.set(i, std::isnan(r) ? z : std::clamp(r + z, lo, hi));
      }
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
