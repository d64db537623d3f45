// nibble:IntAvgPool: unpadded average pooling of unsigned integers, rounded as the seed does.
#include "backends/ref/kernels.h"
#include "quant/requant.h"

namespace nibble::ref {

void int_avg_pool(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  if (x.dtype() != DType::u8 || x.rank() != 4) {
    kernel_fail("{} expects u8 N x C x H x W, got {} {}", node.op_type, dtype_name(x.dtype()), shape_str(x.shape()));
  }
  const auto k = node.attr_ints("kernel_shape");
  const auto s = node.attr_ints("strides", {1, 1});
  if (k.size() != 2 || s.size() != 2 || k[0] < 1 || k[1] < 1 || s[0] < 1 || s[1] < 1) {
    kernel_fail("{} needs 2-D kernel_shape and strides", node.op_type);
  }
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
  if (h < k[0] || w < k[1]) kernel_fail("{}: input {} is smaller than the kernel", node.op_type, shape_str(x.shape()));
  const int64_t oh = (h - k[0]) / s[0] + 1, ow = (w - k[1]) / s[1] + 1;
  Tensor y(DType::u8, {n, c, oh, ow});
  const uint8_t* px = x.data<uint8_t>();
  uint8_t* py = y.data<uint8_t>();
  for (int64_t plane = 0; plane < n * c; ++plane) {
    const uint8_t* src = px + plane * h * w;
    for (int64_t i = 0; i < oh; ++i) {
      for (int64_t j = 0; j < ow; ++j) {
        int64_t sum = 0;
        for (int64_t a = 0; a < k[0]; ++a) {
          for (int64_t b = 0; b < k[1]; ++b) sum += src[(i * s[0] + a) * w + j * s[1] + b];
        }
        py[(plane * oh + i) * ow + j] = static_cast<uint8_t>(quant::average_round(sum, k[0] * k[1]));
      }
    }
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
