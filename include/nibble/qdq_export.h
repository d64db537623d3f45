// A quantized model directory as an ONNX QDQ model (QuantizeLinear / DequantizeLinear pairs).
#pragma once

#include <string>

#include "nibble/model_dir.h"

namespace nibble {

// Writes the GraphQuantized model `m` as an ONNX model in the QDQ form that ONNX Runtime and
// TensorRT read: every integer activation becomes QuantizeLinear -> DequantizeLinear (preceded by
// a Clip when its range is narrower than the quantized type: 4-bit values in 8-bit types, and the
// symmetric ranges of signed ones), every integer weight an integer initializer read through a
// per-channel DequantizeLinear (axis 0), every bias a float initializer (the integer bias times
// its accumulator scale).
//   opset 13: 8-bit types only; 4-bit weights are int8 values in [-8, 7]. No FP8.
//   opset 19: also FP8: e4m3 activations as QuantizeLinear / DequantizeLinear with a
//     float8e4m3fn zero point, and the FP8 weights of w4a8-fp8 layers with group scales as
//     float8e4m3fn initializers (each e4m3(level x group scale), as the layer computes).
//   opset 21: also the 4-bit types: 4-bit weights as int4 initializers, unsigned 4-bit
//     activations through uint4 (signed ones through int4 after a Clip).
// 0 picks the lowest opset that can hold the model: 13, or 19 with FP8 layers. Writes through a
// temporary file; returns the opset written; throws nibble::Error naming the model or `path`.
int export_qdq_onnx(const ModelDir& m, const std::string& path, int opset = 0);

// Whether `m` has FP8 (e4m3) layers, which need opset 19 or later.
bool has_fp8_layers(const ModelDir& m);

}  // namespace nibble
