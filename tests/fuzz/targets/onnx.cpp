// Fuzz targets of ONNX models: import (parse, checker, shape inference, conversion), a run on
// the reference kernels, and the QDQ import followed by quantization.
#include <algorithm>

#include "../targets.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/model_loader.h"
#include "quant/qdq_import.h"
#include "quant/quantize.h"

namespace nibble::fuzz {

namespace {

// Loads the input as an ONNX model with the batch fixed to 1; nullopt when it is rejected.
std::optional<Graph> load(const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/input.onnx";
  write_bytes(path, data, size);
  try {
    LoadOptions o;
    o.fixed_batch = 1;
    return load_model(path, o);
  } catch (const Error&) {
    return std::nullopt;
  }
}

// The largest element count of any value the graph declares; -1 where one is unknown.
int64_t largest_value(const Graph& g) {
  int64_t top = 0;
  auto see = [&](const std::optional<Shape>& s) {
    if (!s) {
      top = -1;
      return;
    }
    int64_t n = -1;
    try {
      n = shape_numel(*s);
    } catch (const Error&) {  // more elements than any tensor may have: not run
    }
    if (n < 0 || top < 0) {
      top = -1;
      return;
    }
    top = std::max(top, n);
  };
  for (const auto& v : g.inputs) see(v.shape);
  for (const auto& v : g.outputs) see(v.shape);
  for (const auto& [name, v] : g.value_info) see(v.shape);
  return top;
}

}  // namespace

int onnx_import(const uint8_t* data, size_t size) {
  load(data, size);
  return 0;
}

int onnx_run(const uint8_t* data, size_t size) {
  const auto g = load(data, size);
  if (!g) return 0;
  // Runs only models whose every value is small: the harness bounds the work, not nibble.
  const int64_t top = largest_value(*g);
  if (top < 0 || top > (int64_t{1} << 16) || g->nodes.size() > 64) return 0;
  std::vector<Tensor> inputs;
  for (const auto& in : g->inputs) {
    if (!in.dtype || !in.shape) return 0;
    inputs.emplace_back(*in.dtype, *in.shape);
  }
  try {
    Engine(*g, Backend::ref).run(inputs);
  } catch (const Error&) {
  }
  return 0;
}

int qdq_import(const uint8_t* data, size_t size) {
  const auto g = load(data, size);
  if (!g || !quant::is_qdq(*g) || g->nodes.size() > 64) return 0;
  try {
    const quant::QdqModel q = quant::import_qdq(*g);
    const quant::QuantizeResult r = quant::quantize_model(q.fp32, q.calib, q.options);
    graph_from_model_dir(r.model);
  } catch (const Error&) {
  }
  return 0;
}

}  // namespace nibble::fuzz
