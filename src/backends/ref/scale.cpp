// nibble:Scale: score[k] = logit[k] / out_scale[k] in f32 (the seed's classifier output).
#include "backends/ref/kernels.h"

namespace nibble::ref {

void scale(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  const Tensor& s = required_input(node, in, 1);
  if (x.dtype() != DType::s32 || x.rank() != 2) {
    kernel_fail("{} expects s32 N x K logits, got {} {}", node.op_type, dtype_name(x.dtype()), shape_str(x.shape()));
  }
  if (s.dtype() != DType::f32 || s.numel() != x.dim(1)) {
    kernel_fail("{} expects {} f32 scales, got {} {}", node.op_type, x.dim(1), dtype_name(s.dtype()),
                shape_str(s.shape()));
  }
  Tensor y(DType::f32, x.shape());
  const int64_t k = x.dim(1);
  for (int64_t i = 0; i < x.numel(); ++i) {
    y.data<float>()[i] = static_cast<float>(x.data<int32_t>()[i]) / s.data<float>()[i % k];
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
