// The reference backend's dispatch table.
#include <array>

#include "backends/ref/kernels.h"

namespace nibble::ref {

namespace {
struct Entry {
  std::string_view op_type;
  KernelFn fn;
  int min_opset;  // oldest operator-set version whose semantics the kernel implements
};

constexpr std::array<Entry, 56> kKernels = {{
    {"Add", add, 7},
    {"AveragePool", average_pool, 1},
    {"BatchNormalization", batch_normalization, 7},
    {"Cast", cast, 6},
    {"Clip", clip, 6},
    {"Concat", concat, 4},
    {"Constant", constant, 1},
    {"ConstantOfShape", constant_of_shape, 9},
    {"Conv", conv, 1},
    {"ConvInteger", conv_integer, 10},
    {"DequantizeLinear", dequantize_linear, 10},
    {"Div", div, 7},
    {"Equal", equal, 7},
    {"Erf", erf, 9},
    {"Expand", expand, 8},
    {"Flatten", flatten, 1},
    {"Gather", gather, 1},
    {"Gemm", gemm, 7},
    {"GlobalAveragePool", global_average_pool, 1},
    {"HardSigmoid", hard_sigmoid, 6},
    {"HardSwish", hard_swish, 14},
    {"Identity", identity, 1},
    {"LayerNormalization", layer_normalization, 17},
    {"MatMul", matmul, 1},
    {"MatMulInteger", matmul_integer, 10},
    {"MaxPool", max_pool, 1},
    {"Mul", mul, 7},
    {"Pad", pad, 2},
    {"Pow", pow, 7},
    {"QLinearConv", qlinear_conv, 10},
    {"QLinearMatMul", qlinear_matmul, 10},
    {"QuantizeLinear", quantize_linear, 10},
    {"ReduceMean", reduce_mean, 1},
    {"Relu", relu, 6},
    {"Reshape", reshape, 5},
    {"Shape", shape, 1},
    {"Sigmoid", sigmoid, 6},
    {"Slice", slice, 10},
    {"Softmax", softmax, 1},
    {"Sqrt", sqrt, 6},
    {"Squeeze", squeeze, 1},
    {"Sub", sub, 7},
    {"Tanh", tanh, 6},
    {"Transpose", transpose, 1},
    {"Unsqueeze", unsqueeze, 1},
    {"Where", where, 9},
    {"nibble:Fp8Conv", fp8_conv, 1},
    {"nibble:IntAdd", int_add, 1},
    {"nibble:IntAvgPool", int_avg_pool, 1},
    {"nibble:IntConv", int_conv, 1},
    {"nibble:IntConvFused", int_conv_fused, 1},
    {"nibble:IntLinear", int_linear, 1},
    {"nibble:IntRelu", int_relu, 1},
    {"nibble:QuantizeFloat", quantize_float, 1},
    {"nibble:Requantize", requantize, 1},
    {"nibble:Scale", scale, 1},
}};
}  // namespace

const Tensor& required_input(const Node& node, const Inputs& in, size_t i) {
  const Tensor* t = optional_input(in, i);
  if (!t) kernel_fail("required input {} is missing", i);
  return *t;
}

KernelFn find_kernel(std::string_view op_type, int opset) {
  for (const auto& e : kKernels) {
    if (e.op_type == op_type && opset >= e.min_opset) return e.fn;
  }
  return nullptr;
}

int min_opset(std::string_view op_type) {
  for (const auto& e : kKernels) {
    if (e.op_type == op_type) return e.min_opset;
  }
  return -1;
}

std::vector<std::string> supported_ops() {
  std::vector<std::string> out;
  for (const auto& e : kKernels) out.emplace_back(e.op_type);
  return out;
}

}  // namespace nibble::ref
