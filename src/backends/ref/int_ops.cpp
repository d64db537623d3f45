// Shared integer pieces: channel-vector checks, s32 add, ReLU and per-channel requantization.
#include "backends/ref/int_ops.h"

#include "quant/requant.h"

namespace nibble::ref {

void check_channel_vector(const Node& node, const Tensor& t, int64_t channels, const char* what) {
  const bool flat = t.rank() == 1 && t.dim(0) == channels;
  const bool nchw = t.rank() == 4 && t.dim(0) == 1 && t.dim(1) == channels && t.dim(2) == 1 && t.dim(3) == 1;
  if (!flat && !nchw) {
    kernel_fail("{} expects {} of {} channels, got shape {}", node.op_type, what, channels, shape_str(t.shape()));
  }
}

Tensor int_add_s32(const Node& node, const Tensor& a, const Tensor& b) {
  if (a.dtype() != DType::s32 || b.dtype() != DType::s32 || a.shape() != b.shape()) {
    kernel_fail("{} adds s32 tensors of one shape, got {} {} and {} {}", node.op_type, dtype_name(a.dtype()),
                shape_str(a.shape()), dtype_name(b.dtype()), shape_str(b.shape()));
  }
  Tensor y(DType::s32, a.shape());
  const int32_t* pa = a.data<int32_t>();
  const int32_t* pb = b.data<int32_t>();
  int32_t* py = y.data<int32_t>();
  for (int64_t i = 0; i < y.numel(); ++i) {
    // Wrap like a 32-bit accumulator instead of overflowing signed arithmetic.
    py[i] = static_cast<int32_t>(static_cast<uint32_t>(pa[i]) + static_cast<uint32_t>(pb[i]));
  }
  return y;
}

Tensor int_relu_s32(const Tensor& x) {
  Tensor y(DType::s32, x.shape());
  const int32_t* px = x.data<int32_t>();
  int32_t* py = y.data<int32_t>();
  for (int64_t i = 0; i < x.numel(); ++i) py[i] = px[i] > 0 ? px[i] : 0;
  return y;
}

Tensor requantize_tensor(const Node& node, const Tensor& x, const Tensor& factor) {
  if (x.rank() < 2) kernel_fail("{} expects N x C x ... input, got {}", node.op_type, shape_str(x.shape()));
  if (traits(x.dtype()).is_float || traits(x.dtype()).bits < 8) {
    kernel_fail("{} expects an integer input, got {}", node.op_type, dtype_name(x.dtype()));
  }
  if (factor.dtype() != DType::u16) kernel_fail("{} expects u16 factors, got {}", node.op_type, dtype_name(factor.dtype()));
  const int64_t channels = x.dim(1);
  check_channel_vector(node, factor, channels, "requant_factor");
  const int shift = static_cast<int>(node.attr_int("shift", -1));
  const int bits = static_cast<int>(node.attr_int("bits", -1));
  const bool is_signed = node.attr_int("signed", 0) != 0;
  if (shift < 0 || shift > 31) kernel_fail("{}: shift {} is outside 0..31", node.op_type, shift);
  if (bits < 1 || bits > 31) kernel_fail("{}: output bits {} is outside 1..31", node.op_type, bits);
  const quant::IntRange range = quant::output_range(bits, is_signed);
  Tensor y(quant::storage_dtype(bits, is_signed), x.shape());
  const int64_t plane = x.numel() / (x.dim(0) * channels);
  const uint16_t* f = factor.data<uint16_t>();
  for (int64_t n = 0; n < x.dim(0); ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = (n * channels + c) * plane;
      for (int64_t i = 0; i < plane; ++i) {
        y.set(base + i, static_cast<double>(quant::requantize(static_cast<int64_t>(x.get(base + i)), f[c], shift, range)));
      }
    }
  }
  return y;
}

}  // namespace nibble::ref
