// The reference backend: naive, exact kernels that define every op's arithmetic.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "nibble/graph.h"
#include "nibble/tensor.h"

namespace nibble::ref {

// Inputs in node order; nullptr where an optional input is omitted (or past the end).
using Inputs = std::vector<const Tensor*>;
// One slot per node output; a kernel fills every output whose name is not "".
using Outputs = std::vector<Tensor>;
using KernelFn = void (*)(const Node& node, const Inputs& in, Outputs& out);

// Thrown by kernels for inputs they cannot handle (bad shapes, unsupported dtypes). The
// engine adds the node and the model file to the message.
class KernelError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

template <typename... Args>
[[noreturn]] void kernel_fail(fmt::format_string<Args...> f, Args&&... args) {
  throw KernelError(fmt::format(f, std::forward<Args>(args)...));
}

// The input at `i`, or nullptr when omitted.
inline const Tensor* optional_input(const Inputs& in, size_t i) { return i < in.size() ? in[i] : nullptr; }
// The input at `i`, which must be present.
const Tensor& required_input(const Node& node, const Inputs& in, size_t i);

// One function per op, each in its own file (src/backends/ref/<op>.cpp).
void add(const Node&, const Inputs&, Outputs&);
void sub(const Node&, const Inputs&, Outputs&);
void mul(const Node&, const Inputs&, Outputs&);
void div(const Node&, const Inputs&, Outputs&);
void relu(const Node&, const Inputs&, Outputs&);
void clip(const Node&, const Inputs&, Outputs&);
void sigmoid(const Node&, const Inputs&, Outputs&);
void hard_sigmoid(const Node&, const Inputs&, Outputs&);
void hard_swish(const Node&, const Inputs&, Outputs&);
void tanh(const Node&, const Inputs&, Outputs&);
void erf(const Node&, const Inputs&, Outputs&);
void sqrt(const Node&, const Inputs&, Outputs&);
void pow(const Node&, const Inputs&, Outputs&);
void equal(const Node&, const Inputs&, Outputs&);
void where(const Node&, const Inputs&, Outputs&);
void reduce_mean(const Node&, const Inputs&, Outputs&);
void layer_normalization(const Node&, const Inputs&, Outputs&);
void shape(const Node&, const Inputs&, Outputs&);
void constant_of_shape(const Node&, const Inputs&, Outputs&);
void expand(const Node&, const Inputs&, Outputs&);
void gather(const Node&, const Inputs&, Outputs&);
void slice(const Node&, const Inputs&, Outputs&);
void unsqueeze(const Node&, const Inputs&, Outputs&);
void squeeze(const Node&, const Inputs&, Outputs&);
void cast(const Node&, const Inputs&, Outputs&);
void pad(const Node&, const Inputs&, Outputs&);
void softmax(const Node&, const Inputs&, Outputs&);
void conv(const Node&, const Inputs&, Outputs&);
void conv_integer(const Node&, const Inputs&, Outputs&);
void qlinear_conv(const Node&, const Inputs&, Outputs&);
void batch_normalization(const Node&, const Inputs&, Outputs&);
void max_pool(const Node&, const Inputs&, Outputs&);
void average_pool(const Node&, const Inputs&, Outputs&);
void global_average_pool(const Node&, const Inputs&, Outputs&);
void gemm(const Node&, const Inputs&, Outputs&);
void matmul(const Node&, const Inputs&, Outputs&);
void matmul_integer(const Node&, const Inputs&, Outputs&);
void qlinear_matmul(const Node&, const Inputs&, Outputs&);
void quantize_linear(const Node&, const Inputs&, Outputs&);
void dequantize_linear(const Node&, const Inputs&, Outputs&);
void quantize_float(const Node&, const Inputs&, Outputs&);
void fp8_conv(const Node&, const Inputs&, Outputs&);
void flatten(const Node&, const Inputs&, Outputs&);
void reshape(const Node&, const Inputs&, Outputs&);
void transpose(const Node&, const Inputs&, Outputs&);
void concat(const Node&, const Inputs&, Outputs&);
void identity(const Node&, const Inputs&, Outputs&);
void constant(const Node&, const Inputs&, Outputs&);

// The seed model's integer ops (domain "nibble"), see docs/seed-model-format.md.
void int_conv(const Node&, const Inputs&, Outputs&);
void int_conv_fused(const Node&, const Inputs&, Outputs&);
void int_relu(const Node&, const Inputs&, Outputs&);
void requantize(const Node&, const Inputs&, Outputs&);
void int_add(const Node&, const Inputs&, Outputs&);
void int_avg_pool(const Node&, const Inputs&, Outputs&);
void int_linear(const Node&, const Inputs&, Outputs&);
void scale(const Node&, const Inputs&, Outputs&);

// The dispatch table: the kernel for an op written against operator set `opset`, nullptr
// when the op is not supported at that version (older versions of some ops differ).
KernelFn find_kernel(std::string_view op_type, int opset);
// The oldest operator-set version supported for `op_type`, -1 when the op is unsupported.
int min_opset(std::string_view op_type);
std::vector<std::string> supported_ops();

}  // namespace nibble::ref
