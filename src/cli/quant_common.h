// Pieces shared by calibrate, quantize and compare.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "cli/batch_runner.h"
#include "nibble/graph.h"
#include "quant/calibration.h"
#include "quant/quantize.h"

namespace nibble::cli {

// Calibrates `fp32` on `data` and returns one table per spec, in order. All specs share the
// range pass and (unless every spec is max) the histogram pass.
std::vector<quant::CalibTable> calibrate_tables(const Graph& fp32, const InputData& data, const DataArgs& args,
                                                const std::vector<quant::CalibSpec>& specs, int bits,
                                                const std::vector<std::string>& comments);

// The input Hessian of every conv and linear layer of `fp32` over the inputs of `args` (for GPTQ)
// into opt.hessians; with `dpq` (the calibration table), also DPQ's FP8 statistics of every
// layer whose input has a range there (opt.fp8_statistics).
void collect_hessians(quant::QuantizeOptions& opt, const Graph& fp32, const DataArgs& args, const std::string& model,
                      const quant::CalibTable* dpq = nullptr);

// "a:int4,b:int8" -> map; "a,b" -> set. Errors name the flag.
std::map<std::string, quant::Precision> parse_layer_precisions(const std::vector<std::string>& items);

// Prints the per-layer table of a quantization.
void print_layer_report(const quant::QuantizeResult& r);

}  // namespace nibble::cli
