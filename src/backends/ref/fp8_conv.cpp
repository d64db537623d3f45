// nibble:Fp8Conv: FP8 (e4m3) activations x 4- or 8-bit integer weights, the W4A8 compute of the
// Dual Precision Quantization scheme, defined exactly.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "backends/ref/conv_common.h"
#include "backends/ref/fp8_common.h"
#include "backends/ref/int_ops.h"
#include "backends/ref/kernels.h"

namespace nibble::ref {

// Inputs: x (e4m3, N x C x H x W), w (s4 or s8, M x C x KH x KW), bias (f32 [M]), scale (f32 [M]:
// input scale x weight scale), optionally group scales (f32, M x G, with attribute group_size:
// the layer computes with e4m3(f32(w * g)) for a weight in group g, G = ceil(C KH KW /
// group_size) along each output channel's flattened C x KH x KW). Attributes: the Conv ones
// (2-D, group 1), relu.
Fp8Operands fp8_operands(const Node& node, const Inputs& in) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& w = required_input(node, in, 1);
  const Tensor& bias = required_input(node, in, 2);
  const Tensor& scale = required_input(node, in, 3);
  if (x.dtype() != DType::e4m3) kernel_fail("{} expects e4m3 activations, got {}", node.op_type, dtype_name(x.dtype()));
  if (w.dtype() != DType::s4 && w.dtype() != DType::s8) {
    kernel_fail("{} expects s4 or s8 weights, got {}", node.op_type, dtype_name(w.dtype()));
  }
  Fp8Operands op;
  op.problem = make_conv_problem(node, x, w);
  const ConvProblem& p = op.problem;
  if (p.group != 1 || x.rank() != 4) kernel_fail("{} supports 2-D convolutions with group 1", node.op_type);
  check_channel_vector(node, bias, p.out_channels, "bias");
  check_channel_vector(node, scale, p.out_channels, "scale");
  if (bias.dtype() != DType::f32 || scale.dtype() != DType::f32) kernel_fail("{} expects f32 bias and scale", node.op_type);
  op.bias = bias.data<float>();
  op.scale = scale.data<float>();
  op.relu = node.attr_int("relu", 0) != 0;
  int32_t units[256];  // every e4m3 code (NaN codes too: they are refused below)
  for (int b = 0; b < 256; ++b) {
    const float v = e4m3_bits_to_f32(static_cast<uint8_t>(b));
    units[b] = std::isfinite(v) ? static_cast<int32_t>(v * 512.0f) : INT32_MIN;
  }
  op.x_units.resize(static_cast<size_t>(x.numel()));
  const uint8_t* xb = static_cast<const uint8_t*>(x.bytes());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int32_t u = units[xb[i]];
    if (u == INT32_MIN) kernel_fail("{} input holds an e4m3 NaN at element {}", node.op_type, i);
    op.x_units[static_cast<size_t>(i)] = u;
  }
  op.w_units.resize(static_cast<size_t>(w.numel()));
  const Tensor* groups = optional_input(in, 4);
  const int64_t per = p.out_channels > 0 ? w.numel() / p.out_channels : 0;
  if (groups) {
    const int64_t size = node.attr_int("group_size", 0);
    if (size < 1) kernel_fail("{} has group scales but no positive group_size", node.op_type);
    const int64_t count = (per + size - 1) / size;
    if (groups->dtype() != DType::f32 || groups->rank() != 2 || groups->dim(0) != p.out_channels || groups->dim(1) != count) {
      kernel_fail("{} expects f32 group scales of shape [{}, {}], got {} {}", node.op_type, p.out_channels, count,
                  dtype_name(groups->dtype()), shape_str(groups->shape()));
    }
    const float* g = groups->data<float>();
    for (int64_t i = 0; i < w.numel(); ++i) {
      const float gv = g[(i / per) * count + (i % per) / size];
      if (!(gv > 0.0f) || !std::isfinite(gv)) kernel_fail("{} group scale {} is not a positive finite number", node.op_type, gv);
      const float product = static_cast<float>(w.get(i)) * gv;
      const double fp8 = e4m3_bits_to_f32(f32_to_e4m3_bits(product));
      op.w_units[static_cast<size_t>(i)] = static_cast<int32_t>(fp8 * 512.0);
    }
    op.w_shift = 9;
  } else {
    for (int64_t i = 0; i < w.numel(); ++i) op.w_units[static_cast<size_t>(i)] = static_cast<int32_t>(w.get(i));
  }
  for (int32_t v : op.w_units) op.w_max = std::max(op.w_max, v < 0 ? -v : v);
  return op;
}

// Every product is an integer in units of 2^-(9 + w_shift), and the sum over a window (below
// 2^20 terms of at most 448 x 448 x 2^18 < 2^36) is exact in 64-bit integers: the accumulation
// has no rounding and no order. y = f32(sum) * scale[m] + bias[m] (each step rounded to f32),
// then max(y, 0) with relu.
void fp8_conv(const Node& node, const Inputs& in, Outputs& out) {
  const Fp8Operands op = fp8_operands(node, in);
  const ConvProblem& p = op.problem;
  const Window& win = p.window3d;
  const int64_t c_in = p.in_channels, m_out = p.out_channels;
  const int64_t ih = win.input[1], iw = win.input[2], oh = win.output[1], ow = win.output[2];
  const int64_t kh = win.kernel[1], kw = win.kernel[2];
  const int64_t sh = win.strides[1], sw = win.strides[2], dh = win.dilations[1], dw = win.dilations[2];
  const int64_t ph = win.pad_begin[1], pw = win.pad_begin[2];
  const std::vector<int32_t>& xi = op.x_units;
  const std::vector<int32_t>& wi = op.w_units;
  const bool relu = op.relu;
  Tensor y(DType::f32, p.output_shape());
  float* py = y.data<float>();
  // Per input channel the taps are summed in 32 bits (exact while taps x max|w| x 448 x 512
  // stays below 2^31), then added to the 64-bit total.
  const bool narrow = kh * kw * int64_t{op.w_max} * 229376 < (int64_t{1} << 31);
  std::vector<int64_t> acc(static_cast<size_t>(oh * ow));
  std::vector<int32_t> part(static_cast<size_t>(oh * ow));
  // Output columns whose input column lies inside the image, for each kernel column.
  std::vector<int64_t> x_lo(static_cast<size_t>(kw)), x_hi(static_cast<size_t>(kw));
  for (int64_t s = 0; s < kw; ++s) {
    int64_t lo = 0, hi = ow;
    while (lo < ow && lo * sw - pw + s * dw < 0) ++lo;
    while (hi > lo && (hi - 1) * sw - pw + s * dw >= iw) --hi;
    x_lo[static_cast<size_t>(s)] = lo;
    x_hi[static_cast<size_t>(s)] = hi;
  }
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t m = 0; m < m_out; ++m) {
      std::fill(acc.begin(), acc.end(), 0);
      for (int64_t c = 0; c < c_in; ++c) {
        const int32_t* plane = xi.data() + (n * c_in + c) * ih * iw;
        std::fill(part.begin(), part.end(), 0);
        for (int64_t r = 0; r < kh; ++r) {
          for (int64_t s = 0; s < kw; ++s) {
            const int32_t wv = wi[static_cast<size_t>(((m * c_in + c) * kh + r) * kw + s)];
            if (wv == 0) continue;
            const int64_t lo = x_lo[static_cast<size_t>(s)], hi = x_hi[static_cast<size_t>(s)];
            for (int64_t y0 = 0; y0 < oh; ++y0) {
              const int64_t yy = y0 * sh - ph + r * dh;
              if (yy < 0 || yy >= ih) continue;
              const int32_t* row = plane + yy * iw - pw + s * dw;
              if (narrow && sw == 1) {
                int32_t* prow = part.data() + y0 * ow;
                for (int64_t x0 = lo; x0 < hi; ++x0) prow[x0] += wv * row[x0];  // contiguous: vectorizes
              } else if (narrow) {
                int32_t* prow = part.data() + y0 * ow;
                for (int64_t x0 = lo; x0 < hi; ++x0) prow[x0] += wv * row[x0 * sw];
              } else {
                int64_t* arow = acc.data() + y0 * ow;
                for (int64_t x0 = lo; x0 < hi; ++x0) arow[x0] += static_cast<int64_t>(wv) * row[x0 * sw];
              }
            }
          }
        }
        if (narrow) {
          for (size_t i = 0; i < acc.size(); ++i) acc[i] += part[i];
        }
      }
      const float sc = op.scale[m], b = op.bias[m];
      float* dst = py + (n * m_out + m) * oh * ow;
      for (int64_t i = 0; i < oh * ow; ++i) {
        const float sum = static_cast<float>(std::ldexp(static_cast<double>(acc[static_cast<size_t>(i)]), -9 - op.w_shift));
        const float v = sum * sc + b;
        dst[i] = relu && v < 0.0f ? 0.0f : v;
      }
    }
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
