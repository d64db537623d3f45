// Import of ONNX models into the graph IR through ONNX's own checker and shape inference.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "nibble/graph.h"

namespace nibble {

struct OnnxImportOptions {
  // Replaces a symbolic first dimension of every graph input by this value before shape
  // inference, so that every intermediate shape becomes concrete (used by `inspect`).
  std::optional<int64_t> fixed_batch;
};

// Opsets of the default ONNX domain that the importer accepts. Each op states the oldest
// version of its own semantics that the backends implement (see the kernel table).
inline constexpr int kMinOnnxOpset = 1;
inline constexpr int kMaxOnnxOpset = 17;

// Reads, checks and converts an ONNX model. Throws nibble::Error naming `path` on any
// problem (missing file, corrupt protobuf, checker failure, unsupported opset or value type).
Graph import_onnx(const std::string& path, const OnnxImportOptions& options = {});

// Copies the ONNX model at `in` to `out` (written atomically) with the f32 initializers named in
// `replace` given new values of the same shape; everything else is kept as it was. Throws
// nibble::Error naming the file when an initializer is missing, not f32 or of another shape.
void write_onnx_with_initializers(const std::string& in, const std::string& out,
                                  const std::map<std::string, Tensor>& replace);

// Reads a serialized onnx.TensorProto file (the ONNX test-data format).
Tensor read_onnx_tensor(const std::string& path);

}  // namespace nibble
