// nibble:IntLinear: u8 x s8 (or s4) products accumulated in s32, plus an s32 bias.
#include "backends/ref/int_ops.h"

namespace nibble::ref {

void int_linear(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& w = required_input(node, in, 1);
  const Tensor& bias = required_input(node, in, 2);
  if (x.dtype() != DType::u8 && x.dtype() != DType::s8) {
    kernel_fail("{} expects u8 or s8 activations, got {}", node.op_type, dtype_name(x.dtype()));
  }
  if ((w.dtype() != DType::s8 && w.dtype() != DType::s4) || w.rank() != 2) {
    kernel_fail("{} expects s8 or s4 weights M x K, got {} {}", node.op_type, dtype_name(w.dtype()),
                shape_str(w.shape()));
  }
  const int64_t batch = x.rank() > 0 ? x.dim(0) : 0;
  const int64_t k = w.dim(1), m = w.dim(0);
  if (batch == 0 || x.numel() != batch * k) {
    kernel_fail("{}: input {} does not flatten to N x {}", node.op_type, shape_str(x.shape()), k);
  }
  check_channel_vector(node, bias, m, "bias");
  std::vector<int32_t> weights(static_cast<size_t>(w.numel()));
  for (int64_t i = 0; i < w.numel(); ++i) weights[static_cast<size_t>(i)] = static_cast<int32_t>(w.get(i));
  std::vector<int32_t> acts(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i) acts[static_cast<size_t>(i)] = static_cast<int32_t>(x.get(i));
  Tensor y(DType::s32, {batch, m});
  int32_t* py = y.data<int32_t>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t o = 0; o < m; ++o) {
      int32_t acc = static_cast<int32_t>(bias.get(o));
      const int32_t* wr = weights.data() + o * k;
      const int32_t* xr = acts.data() + b * k;
      for (int64_t i = 0; i < k; ++i) acc += xr[i] * wr[i];
      py[b * m + o] = acc;
    }
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
