// The reference BatchNormalization: inference with given statistics, or (opset 14+) training-mode batch
// statistics.
#include <cmath>
#include <cstdint>
#include <vector>

#include "backends/ref/kernels.h"

namespace nibble::ref {

namespace {

// Nodes built without an opset (as in tests) follow the newest definition.
constexpr int kNewestOpset = 17;

bool wants_output(const Node& node, const Outputs& out, size_t i) {
  return i < node.outputs.size() && i < out.size() && !node.outputs[i].empty();
}

// y = (x - mean) / sqrt(var + epsilon) * scale + bias in float, in the order the ONNX formula
// writes it; parameter p of element i of (n, c) is c, or c * inner + i for per-element statistics.
void normalize(const float* x, float* y, int64_t batch, int64_t channels, int64_t inner, bool per_element,
               const float* scale, const float* bias, const float* mean, const float* var, float epsilon) {
  const int64_t params = per_element ? channels * inner : channels;
  std::vector<float> denominator(static_cast<size_t>(params));
  for (int64_t p = 0; p < params; ++p) denominator[static_cast<size_t>(p)] = std::sqrt(var[p] + epsilon);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = (n * channels + c) * inner;
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t p = per_element ? c * inner + i : c;
        y[base + i] = (x[base + i] - mean[p]) / denominator[static_cast<size_t>(p)] * scale[p] + bias[p];
      }
    }
  }
}

}  // namespace

void batch_normalization(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  if (x.dtype() != DType::f32)
    kernel_fail("BatchNormalization expects f32 input X, got {}", dtype_name(x.dtype()));
  if (x.rank() < 2) {
    kernel_fail("BatchNormalization expects X of rank >= 2 (N x C x ...), got shape {}",
                shape_str(x.shape()));
  }
  const int opset = node.opset > 0 ? node.opset : kNewestOpset;
  const int64_t batch = x.dim(0);
  const int64_t channels = x.dim(1);
  const int64_t inner = batch * channels == 0 ? 0 : x.numel() / (batch * channels);

  // Before opset 9, spatial = 0 gave every element of a sample its own statistics.
  const bool per_element = opset < 9 && node.attr_int("spatial", 1) == 0;
  const Shape param_shape = per_element ? Shape(x.shape().begin() + 1, x.shape().end()) : Shape{channels};
  const char* names[] = {"scale", "B", "input_mean", "input_var"};
  const float* params[4] = {};
  for (size_t i = 0; i < 4; ++i) {
    const Tensor& t = required_input(node, in, i + 1);
    if (t.dtype() != DType::f32) {
      kernel_fail("BatchNormalization expects f32 {}, got {}", names[i], dtype_name(t.dtype()));
    }
    if (t.shape() != param_shape) {
      kernel_fail("BatchNormalization expects {} of shape {}, got {}", names[i], shape_str(param_shape),
                  shape_str(t.shape()));
    }
    params[i] = t.data<float>();
  }
  const float* scale = params[0];
  const float* bias = params[1];
  const float* input_mean = params[2];
  const float* input_var = params[3];
  const float epsilon = node.attr_float("epsilon", 1e-5f);
  const float momentum = node.attr_float("momentum", 0.9f);

  const bool training = opset >= 14 && node.attr_int("training_mode", 0) != 0;
  if (opset < 14) {
    for (size_t i = 1; i < node.outputs.size(); ++i) {
      if (wants_output(node, out, i)) {
        kernel_fail(
            "BatchNormalization-{} training outputs (mean, var, saved_mean, saved_var) are not supported; "
            "use opset 14+ with training_mode",
            opset);
      }
    }
  }

  Tensor y(DType::f32, x.shape());
  if (!training) {
    normalize(x.data<float>(), y.data<float>(), batch, channels, inner, per_element, scale, bias, input_mean,
              input_var, epsilon);
    // Outside training the running statistics pass through unchanged.
    if (wants_output(node, out, 1)) out[1] = required_input(node, in, 3).clone();
    if (wants_output(node, out, 2)) out[2] = required_input(node, in, 4).clone();
    out.at(0) = std::move(y);
    return;
  }

  // Training mode: normalize with this batch's mean and biased variance (over N and the spatial
  // dims), and blend them into the running statistics with the momentum. The ONNX test data uses
  // the biased variance for both.
  const int64_t count = batch * inner;
  if (count == 0)
    kernel_fail("BatchNormalization training mode needs a non-empty batch, got {}", shape_str(x.shape()));
  const float* xd = x.data<float>();
  std::vector<float> batch_mean(static_cast<size_t>(channels)), batch_var(static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c) {
    double sum = 0.0;
    for (int64_t n = 0; n < batch; ++n) {
      const float* plane = xd + (n * channels + c) * inner;
      for (int64_t i = 0; i < inner; ++i) sum += plane[i];
    }
    const double mean = sum / static_cast<double>(count);
    double squares = 0.0;
    for (int64_t n = 0; n < batch; ++n) {
      const float* plane = xd + (n * channels + c) * inner;
      for (int64_t i = 0; i < inner; ++i) squares += (plane[i] - mean) * (plane[i] - mean);
    }
    batch_mean[static_cast<size_t>(c)] = static_cast<float>(mean);
    batch_var[static_cast<size_t>(c)] = static_cast<float>(squares / static_cast<double>(count));
  }
  normalize(xd, y.data<float>(), batch, channels, inner, false, scale, bias, batch_mean.data(),
            batch_var.data(), epsilon);

  const double keep = momentum;
  const double take = 1.0 - static_cast<double>(momentum);
  if (wants_output(node, out, 1)) {
    Tensor running_mean(DType::f32, param_shape);
    float* rm = running_mean.data<float>();
    for (int64_t c = 0; c < channels; ++c) {
      rm[c] = static_cast<float>(input_mean[c] * keep + batch_mean[static_cast<size_t>(c)] * take);
    }
    out[1] = std::move(running_mean);
  }
  if (wants_output(node, out, 2)) {
    Tensor running_var(DType::f32, param_shape);
    float* rv = running_var.data<float>();
    for (int64_t c = 0; c < channels; ++c) {
      rv[c] = static_cast<float>(input_var[c] * keep + batch_var[static_cast<size_t>(c)] * take);
    }
    out[2] = std::move(running_var);
  }
  out.at(0) = std::move(y);
}

}  // namespace nibble::ref
