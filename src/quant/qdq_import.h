// ONNX QDQ models: their QuantizeLinear / DequantizeLinear pairs as nibble's calibration.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "nibble/graph.h"
#include "quant/calibration.h"
#include "quant/quantize.h"

namespace nibble::quant {

struct QdqModel {
  Graph fp32;        // the graph with every Q/DQ pair (and the Clip before it) removed
  CalibTable calib;  // each quantized activation's range: levels * scale
  QuantizeOptions options;  // per-layer precision from the weights' and inputs' widths, weight scales
  int activations = 0;      // Q/DQ pairs found on activations
  int weights = 0;          // DequantizeLinear nodes found on weights
};

// True when the graph holds any QuantizeLinear or DequantizeLinear node.
bool is_qdq(const Graph& g);

// Takes the scales of a QDQ model instead of calibrating. Activations: QuantizeLinear ->
// DequantizeLinear with zero point 0 (uint8: [0, 255 s]; int8: symmetric [-127 s, 127 s]; a
// Clip right before the QuantizeLinear narrows the range: [0, 15 s] is 4 bits). Weights: int8
// initializers through DequantizeLinear (zero point 0, per tensor or per output channel), 4-bit
// when every value is in [-7, 7]. A conv or Gemm with float weights stays float. Throws
// nibble::Error naming the node for forms it cannot take (non-zero zero points, a Q without
// its DQ).
QdqModel import_qdq(const Graph& g);

}  // namespace nibble::quant
