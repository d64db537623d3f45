// Chooses the reader for a model path: ONNX file or model directory.
#include "nibble/model_loader.h"

#include <filesystem>

#include "nibble/error.h"
#include "nibble/onnx_import.h"

namespace nibble {

Graph load_model(const std::string& path, const LoadOptions& options) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    Graph g = graph_from_model_dir(read_model_dir(path), options.fixed_batch);
    if (options.fuse) fuse_int_conv_epilogues(g);
    return g;
  }
  OnnxImportOptions onnx_options;
  onnx_options.fixed_batch = options.fixed_batch;
  Graph g = import_onnx(path, onnx_options);
  if (options.fold) fold_constants(g);
  return g;
}

Graph load_fp32_onnx(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    fail(path, "is a model directory; calibration and quantization take the FP32 ONNX model");
  }
  return load_model(path);
}

Graph quantized_graph(const ModelDir& model) {
  Graph g = graph_from_model_dir(model);
  fuse_int_conv_epilogues(g);
  return g;
}

}  // namespace nibble
