// ONNX DequantizeLinear (opsets 10, 13): y = (x - x_zero_point) * x_scale in f32, per tensor or per axis.
#include "backends/ref/kernels.h"

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

  // A one-element scale is per tensor whatever its rank; anything else is per axis (opset 13).
  const bool per_axis = scale.numel() != 1;
  int64_t axis = 0;
  if (per_axis) {
    if (node.opset < 13) {
      kernel_fail("DequantizeLinear: x_scale is {}; opset {} allows only a scalar (per-axis needs opset 13)",
                  shape_str(scale.shape()), node.opset);
    }
    axis = node.attr_int("axis", 1);
    if (axis < -x.rank() || axis >= x.rank()) {
      kernel_fail("DequantizeLinear: axis {} is out of range for x of shape {}", axis, shape_str(x.shape()));
    }
    if (axis < 0) axis += x.rank();
    if (scale.rank() != 1 || scale.dim(0) != x.dim(static_cast<int>(axis))) {
      kernel_fail("DequantizeLinear: x_scale is {} but x is {}: a per-axis scale needs {} values (axis {})",
                  shape_str(scale.shape()), shape_str(x.shape()), x.dim(static_cast<int>(axis)), axis);
    }
  }
  if (zp && (zp->numel() != scale.numel() || (per_axis && zp->rank() != 1))) {
    kernel_fail("DequantizeLinear: x_zero_point is {} but x_scale is {}: they must have the same shape",
                shape_str(zp->shape()), shape_str(scale.shape()));
  }

  // View x as [outer, channels, inner] around the axis so that each (outer, channel) run is contiguous.
  const int64_t channels = per_axis ? x.dim(static_cast<int>(axis)) : 1;
  int64_t inner = 1;
  if (per_axis) {
    for (int d = static_cast<int>(axis) + 1; d < x.rank(); ++d) inner *= x.dim(d);
  } else {
    inner = x.numel();
  }
  const int64_t outer = channels * inner == 0 ? 0 : x.numel() / (channels * inner);

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
