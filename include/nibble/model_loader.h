// One entry point for every model format: ONNX files and model directories.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "nibble/graph.h"
#include "nibble/model_dir.h"

namespace nibble {

struct LoadOptions {
  // Fix a symbolic batch dimension so that every shape is concrete (for `inspect`).
  std::optional<int64_t> fixed_batch;
  // Model directories: fuse conv + bias + ReLU + requantize (and the residual add) into one
  // op, as the seed engine does. Off gives the layer-by-layer graph.
  bool fuse = true;
  // ONNX files: fold constants at load (fold_constants). Off gives the graph as written.
  bool fold = true;
};

// A directory is read as a model directory, anything else as an ONNX file.
Graph load_model(const std::string& path, const LoadOptions& options = {});

// An FP32 ONNX model for calibration and quantization; a model directory is refused with a
// clear message.
Graph load_fp32_onnx(const std::string& path);

// The fused integer graph of an in-memory model directory, as load_model() reads one from disk:
// every layer checked as the engine reads it (so a model the engine cannot run is never written).
Graph quantized_graph(const ModelDir& model);

// The graph of a model directory: nibble:* integer ops in the seed's layer order. Input
// "input" (s8 N x 3 x H x W); outputs "logits" (s32, the fc layer) and "scores" (f32).
Graph graph_from_model_dir(const ModelDir& model, std::optional<int64_t> fixed_batch = std::nullopt);

// An `attr_<name>` field of an Op layer (docs/model-format.md): "int 3", "float 0.5",
// "string constant", "ints 2:1 1" or "floats 2:0.5 0.25"; a tensor field is the tensor.
// Throws nibble::Error naming `where` when the text is none of these.
Attribute op_layer_attribute(const LayerField& field, const std::string& where);

// The seed's fusion: IntConv followed by its sole consumers [IntAdd] [IntRelu] [Requantize]
// becomes one IntConvFused node with an integer epilogue. Returns the number of fused nodes.
int fuse_int_conv_epilogues(Graph& graph);

// The CPU engine's residual folding: an IntConvFused whose residual (input 3) is the output of
// a nibble:Requantize read by nothing else takes that Requantize's input and factor as inputs 5
// and 6, its shift, bits and signed attributes as res_shift, res_bits and res_signed, and the
// Requantize goes (the same values: the kernel requantizes the residual as it reads it).
// Returns the number of folded residuals.
int fold_residual_requantize(Graph& graph);

// ONNX graphs at load: Constant nodes become initializers, Identity nodes go, Shape of a fully
// known shape, a Gather of the known entries of a partly known one (x.size(1) with a free
// batch) and every node whose inputs are all constant are evaluated once (outputs of at most
// 2^22 elements; QDQ pairs, convolutions, matrix products, pools and graph outputs stay
// nodes), and nodes nothing reads any more go. Returns the number of nodes removed.
int fold_constants(Graph& graph);

}  // namespace nibble
