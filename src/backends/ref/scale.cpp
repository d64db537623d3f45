// nibble:Scale: y[n, k, ...] = x[n, k, ...] / out_scale[k] in f32: the seed's classifier scores
// (N x K logits), or a convolution's accumulators handed to float ops (N x K x H x W).
#include <algorithm>

#include "backends/ref/kernels.h"

namespace nibble::ref {

void scale(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& s = required_input(node, in, 1);
  if (x.dtype() != DType::s32 || x.rank() < 2) {
    kernel_fail("{} expects s32 N x K (x ...) accumulators, got {} {}", node.op_type, dtype_name(x.dtype()),
                shape_str(x.shape()));
  }
  if (s.dtype() != DType::f32 || s.numel() != x.dim(1)) {
    kernel_fail("{} expects {} f32 scales, got {} {}", node.op_type, x.dim(1), dtype_name(s.dtype()),
                shape_str(s.shape()));
  }
  Tensor y(DType::f32, x.shape());
  const int64_t k = x.dim(1), inner = x.numel() / std::max<int64_t>(1, x.dim(0) * k);
  const int32_t* xs = x.data<int32_t>();
  float* ys = y.data<float>();
  for (int64_t i = 0; i < x.numel(); i += inner) {
    const float d = s.data<float>()[(i / inner) % k];
    for (int64_t j = i; j < i + inner; ++j) ys[j] = static_cast<float>(xs[j]) / d;
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
