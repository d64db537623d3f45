// A quantized model directory as an ONNX QDQ model (QuantizeLinear / DequantizeLinear pairs).
#pragma once

#include <string>

#include "nibble/model_dir.h"

namespace nibble {

// Writes the GraphQuantized model `m` as an ONNX model (opset 13) in the QDQ form that ONNX
// Runtime and TensorRT read: every integer activation becomes QuantizeLinear -> DequantizeLinear
// (preceded by a Clip when its range is narrower than the 8-bit type: 4-bit values, and the
// symmetric [-127, 127] of signed ones), every integer weight an int8 initializer read through
// a per-channel DequantizeLinear (axis 0), every bias a float initializer (the integer bias times
// its accumulator scale). 4-bit weights are stored as int8 values in [-7, 7]. Writes through a
// temporary file; throws nibble::Error naming the model or `path`.
void export_qdq_onnx(const ModelDir& m, const std::string& path);

}  // namespace nibble
