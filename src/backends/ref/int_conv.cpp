// The seed model's integer convolution, alone (nibble:IntConv) or with its fused epilogue
// (nibble:IntConvFused: bias, optional residual add, optional ReLU, optional requantize). The
// residual is input 3 (s32), or the folded form of fold_residual_requantize: input 5 requantized
// by the factors of input 6 with the attributes res_shift, res_bits and res_signed.
#include <cstdint>
#include <vector>

#include "backends/ref/conv_common.h"
#include "backends/ref/int_ops.h"
#include "backends/ref/kernels.h"
#include "quant/requant.h"

namespace nibble::ref {

namespace {

// s32 accumulators of x * w plus the bias, N x M x OH x OW.
Tensor conv_with_bias(const Node& node, const Tensor& x, const Tensor& w, const Tensor& bias) {
  if (x.dtype() != DType::u8 && x.dtype() != DType::s8) {
    kernel_fail("{} expects u8 or s8 activations, got {}", node.op_type, dtype_name(x.dtype()));
  }
  if (w.dtype() != DType::s8 && w.dtype() != DType::s4) {
    kernel_fail("{} expects s8 or s4 weights, got {}", node.op_type, dtype_name(w.dtype()));
  }
  const ConvProblem p = make_conv_problem(node, x, w);
  Tensor y = integer_conv(p, x, 0, w, std::vector<int32_t>(static_cast<size_t>(p.out_channels), 0));
  check_channel_vector(node, bias, p.out_channels, "bias");
  const int64_t plane = shape_numel(Shape(y.shape().begin() + 2, y.shape().end()));
  int32_t* acc = y.data<int32_t>();
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t m = 0; m < p.out_channels; ++m) {
      const int32_t b = static_cast<int32_t>(bias.get(m));
      int32_t* map = acc + (n * p.out_channels + m) * plane;
      for (int64_t i = 0; i < plane; ++i) map[i] += b;
    }
  }
  return y;
}

}  // namespace

void int_conv(const Node& node, const Inputs& in, Outputs& out) {
  out.at(0) = conv_with_bias(node, required_input(node, in, 0), required_input(node, in, 1),
                             required_input(node, in, 2));
}

void int_conv_fused(const Node& node, const Inputs& in, Outputs& out) {
  Tensor acc = conv_with_bias(node, required_input(node, in, 0), required_input(node, in, 1),
                              required_input(node, in, 2));
  if (const Tensor* residual = optional_input(in, 3)) acc = int_add_s32(node, acc, *residual);
  if (const Tensor* source = optional_input(in, 5)) {
    // The folded residual (fold_residual_requantize): nibble:Requantize of input 5 by input 6.
    if (optional_input(in, 3)) kernel_fail("{} has both a residual and a folded residual", node.op_type);
    Node rq;
    rq.op_type = "nibble:Requantize";
    rq.attrs["shift"] = node.attr_int("res_shift", -1);
    rq.attrs["bits"] = node.attr_int("res_bits", -1);
    rq.attrs["signed"] = node.attr_int("res_signed", 0);
    acc = int_add_s32(node, acc, requantize_tensor(rq, *source, required_input(node, in, 6)));
  }
  if (node.attr_int("relu", 0)) acc = int_relu_s32(acc);
  if (const Tensor* factor = optional_input(in, 4)) acc = requantize_tensor(node, acc, *factor);
  out.at(0) = std::move(acc);
}

}  // namespace nibble::ref
