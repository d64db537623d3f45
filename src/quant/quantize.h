// Post-training quantization: an FP32 ONNX graph plus a calibration table becomes a model
// directory of integer layers (the seed's format, with the GraphQuantized root).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "nibble/graph.h"
#include "nibble/model_dir.h"
#include "quant/calibration.h"

namespace nibble::quant {

// int8: 8-bit weights and activations. int4: 4-bit weights and activations. w4a8: 4-bit
// weights, 8-bit integer activations. w4a8_fp8: 4-bit integer weights, FP8 (e4m3) activations
// and FP8 x INT4 products (the Dual Precision Quantization scheme). f32: the layer stays float.
enum class Precision { int8, int4, w4a8, w4a8_fp8, f32 };

const char* precision_name(Precision p);
// "int8", "int4", "w4a8", "w4a8-fp8" or "float"; throws nibble::Error naming `where` otherwise.
Precision parse_precision(const std::string& text, const std::string& where);
int weight_bits(Precision p);      // 8, 4, 4, 4 (0 for f32)
int activation_bits(Precision p);  // 8, 4, 8, 8 (0 for f32)

struct QuantizeOptions {
  Precision precision = Precision::int8;
  // Per layer (by layer name or ONNX node name): overrides `precision`.
  std::map<std::string, Precision> layer_precision;
  // Layers (by layer name or ONNX node name) kept in float.
  std::set<std::string> exclude;
  // As the seed model does: the first convolution and the last linear layer use 8 bits unless
  // named in layer_precision.
  bool first_last_8bit = true;
  // Per-channel weight scales to use instead of max |w| / levels, by ONNX weight initializer
  // name (a QDQ model's own scales).
  std::map<std::string, std::vector<float>> weight_scales;
  // Input Hessians by ONNX node name (HessianCollector): weights of these layers are rounded
  // with GPTQ's error compensation instead of to the nearest integer.
  std::map<std::string, std::vector<double>> hessians;
  // w4a8-fp8 layers by Dual Precision Quantization (quant/dpq.h): 4-bit levels in groups of
  // `group_size` inputs with FP8-domain group scales and one power-of-two scale per tensor,
  // rounded through GPTQ's compensation when the layer has a Hessian; `reorder`: group-aware
  // column order.
  bool dpq = false;
  int64_t group_size = 32;
  bool reorder = true;
  // By ONNX node name, HessianCollector::fp8_statistics(): DPQ then aims at the FP32 output
  // through the layer's FP8 inputs (quant/dpq.h); without them it uses `hessians`.
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> fp8_statistics;
  // A conv whose output only feeds a later conv's residual Add (a bottleneck's conv3 where the
  // exporter puts the shortcut conv after it) is requantized to 8 (4) bits at its calibrated
  // range, as the seed model does, so that no tensor between layers is 32-bit (the GPU's direct
  // epilogues write 8- and 4-bit outputs only). Unset, it hands over its s32 accumulators: exact,
  // but 4 bytes a value.
  bool requantize_shortcuts = true;
  // A conv or linear layer whose output only float ops read (a Sigmoid, a Concat, a HardSwish)
  // hands them its f32 value, the accumulators times their scale, instead of an 8-bit one that
  // they would dequantize: one rounding less, and no integer layer needs it. Unset, a tensor the
  // calibration table has a range for is rounded there (a QDQ model's QuantizeLinear /
  // DequantizeLinear pair), and only tensors without one stay f32.
  bool float_read_outputs = true;
  // GPTQ's linear algebra threads (0: one per core), and a call after each layer it rounds.
  int threads = 0;
  std::function<void()> on_gptq_layer;
};

// What happened to one conv or linear layer.
struct LayerReport {
  std::string layer;      // layer file name in the model directory
  std::string onnx_node;  // the ONNX node it came from
  std::string op;         // "Conv" or "Gemm"
  Precision precision;    // what it became
  std::string note;       // why, when it differs from the requested precision
};

struct QuantizeResult {
  ModelDir model;
  std::vector<LayerReport> layers;
  std::vector<std::string> warnings;  // e.g. tensors with an empty calibrated range
  std::vector<std::string> float_ops;  // op type of every node kept in float as an `Op` layer
};

// What `quantize` would do with `fp32` at `precision`, without calibration data: the per-layer
// precisions with their reasons, and the ops kept in float. Every tensor gets the range [-1, 1],
// so only decisions that depend on the real ranges (a bias too large for 32 bits) can differ.
// Throws nibble::Error where quantize would fail.
QuantizeResult plan_quantization(const Graph& fp32, Precision precision);

// The quantizable layers (conv and linear units after BatchNormalization folding) of an FP32
// graph, in order: {layer name, ONNX node name}. Used to check --layer-precision and --exclude
// and by the sensitivity sweep.
std::vector<std::pair<std::string, std::string>> quantizable_layers(const Graph& fp32);

// Quantizes `fp32` with the ranges of `calib`. Throws nibble::Error for graphs it cannot
// express (an op with no integer or float layer type), for layer names in the options that
// match no layer, and for calibration entries naming tensors the graph lacks.
QuantizeResult quantize_model(const Graph& fp32, const CalibTable& calib, const QuantizeOptions& options);

// The requantization of an accumulator in scale `from[c]` to scale `to` (ratio from[c] / to[c]):
// the largest shift in 0..31 such that every factor round(ratio * 2^shift) fits in u16, but at
// most `limit` unless a positive ratio's factor would be 0 there. Returns nullopt when the largest
// ratio does not fit even with shift 0. An output requantization passes
// saturation_shift_limit(range) as the limit, so that its 32-bit form exists (the fast path of
// the CPU and GPU kernels); the factors then keep at least 13 bits for the largest ratio.
struct Requant {
  int shift = 0;
  std::vector<uint16_t> factor;
};
std::optional<Requant> choose_requant(const std::vector<double>& ratio, int limit = 31);

}  // namespace nibble::quant
