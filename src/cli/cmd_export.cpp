// `nibble export OUT.nbl/ -o q.onnx`: a quantized model directory as an ONNX QDQ model.
#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/quant_common.h"
#include "nibble/file_util.h"
#include "nibble/model_dir.h"
#include "nibble/model_loader.h"
#include "nibble/qdq_export.h"

namespace nibble::cli {

void add_export_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Write a quantized model directory as an ONNX QDQ model");
  struct Args {
    std::string model;
    std::string output;
    int opset = 0;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("model", args->model, "Model directory made by `nibble quantize`")->required();
  cmd->add_option("-o,--output", args->output, "ONNX file to write (must not exist)")->required();
  cmd->add_option("--opset", args->opset,
                  "ONNX opset: 13 (8-bit types), 19 (adds FP8: float8e4m3fn activations and weights) or 21 (adds "
                  "int4/uint4 for 4-bit weights and activations); default: 13, or 19 for a model with FP8 layers")
      ->check(CLI::IsMember({13, 19, 21}));
  cmd->callback([args] {
    check_new_output(args->output);
    const ModelDir m = read_model_dir(args->model);
    quantized_graph(m);  // every layer checked as the engine reads it, before anything is written
    const int opset = export_qdq_onnx(m, args->output, args->opset);
    fmt::print("wrote {} (ONNX QDQ, opset {})\n", args->output, opset);
  });
}

}  // namespace nibble::cli
