// The per-tensor / per-axis layout of scales and zero points shared by QuantizeLinear and DequantizeLinear.
#pragma once

#include <cstdint>

#include "backends/ref/kernels.h"

namespace nibble::ref {

// x seen as [outer, channels, inner] around the quantization axis: each (outer, channel) run of
// `inner` elements shares one scale and zero point. Per tensor, channels = outer = 1.
struct QuantAxisLayout {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
};

// Checks scale and zero point against x (a one-element scale is per tensor whatever its rank;
// anything else is per axis, which needs opset 13) and returns the layout. `scale_name` and
// `zp_name` are the ONNX input names used in messages.
QuantAxisLayout quant_axis_layout(const Node& node, const Tensor& x, const Tensor& scale, const Tensor* zp,
                                  const char* scale_name, const char* zp_name);

}  // namespace nibble::ref
