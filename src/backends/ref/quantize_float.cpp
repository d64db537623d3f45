// nibble:QuantizeFloat: f32 -> integer activations, q = clamp(round_half_even(x / scale)).
#include <cmath>

#include "backends/ref/kernels.h"
#include "quant/requant.h"

namespace nibble::ref {

// Inputs: x (f32), scale (f32: one value, or one per channel of axis 1). Attributes: bits,
// signed. The output uses the narrowest storage dtype of the range (quant::storage_dtype):
// unsigned [0, 2^b - 1], signed [-(2^b - 1), 2^b - 1]. The quotient is formed in f32 and rounded
// half to even, as ONNX QuantizeLinear does; NaN becomes 0.
void quantize_float(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& scale = required_input(node, in, 1);
  if (x.dtype() != DType::f32) kernel_fail("{} expects f32 input, got {}", node.op_type, dtype_name(x.dtype()));
  if (scale.dtype() != DType::f32) kernel_fail("{} expects f32 scales, got {}", node.op_type, dtype_name(scale.dtype()));
  const int bits = static_cast<int>(node.attr_int("bits", 8));
  const bool is_signed = node.attr_int("signed", 0) != 0;
  if (bits < 1 || bits > 31) kernel_fail("{}: bits={} is outside 1..31", node.op_type, bits);
  int64_t channels = 1, inner = x.numel(), outer = 1;
  if (scale.numel() != 1) {
    if (x.rank() < 2 || x.dim(1) != scale.numel()) {
      kernel_fail("{}: {} scales do not match input {} (one per channel of axis 1)", node.op_type, scale.numel(),
                  shape_str(x.shape()));
    }
    channels = x.dim(1);
    outer = x.dim(0);
    inner = x.numel() / (outer * channels);
  }
  // With e4m3=1 the output is FP8: the quotient rounded to the e4m3 grid (nearest even,
  // saturating at +-448).
  const bool fp8 = node.attr_int("e4m3", 0) != 0;
  const quant::IntRange range = quant::output_range(bits, is_signed);
  Tensor y(fp8 ? DType::e4m3 : quant::storage_dtype(bits, is_signed), x.shape());
  const float* px = x.data<float>();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < channels; ++c) {
      const float s = scale.data<float>()[c];
      if (!(s > 0.0f) || !std::isfinite(s)) kernel_fail("{}: scale {} is not a positive finite number", node.op_type, s);
      const int64_t base = (o * channels + c) * inner;
      for (int64_t i = base; i < base + inner; ++i) {
        if (fp8) {
          y.bytes()[i] = f32_to_e4m3_bits(px[i] / s);
          continue;
        }
        const float q = std::nearbyint(px[i] / s);
        double v = std::isnan(q) ? 0.0 : static_cast<double>(q);
        v = v < static_cast<double>(range.lo) ? static_cast<double>(range.lo)
                                               : (v > static_cast<double>(range.hi) ? static_cast<double>(range.hi) : v);
        y.set(i, v);
      }
    }
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
