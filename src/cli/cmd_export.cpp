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
  auto* cmd = app.add_subcommand("export", "Write a quantized model directory as an ONNX QDQ model (opset 13)");
  struct Args {
    std::string model;
    std::string output;
  };
  auto args = std::make_shared<Args>();
  cmd->add_option("model", args->model, "Model directory made by `nibble quantize`")->required();
  cmd->add_option("-o,--output", args->output, "ONNX file to write (must not exist)")->required();
  cmd->callback([args] {
    check_new_output(args->output);
    const ModelDir m = read_model_dir(args->model);
    quantized_graph(m);  // every layer checked as the engine reads it, before anything is written
    export_qdq_onnx(m, args->output);
    fmt::print("wrote {} (ONNX QDQ, opset 13)\n", args->output);
  });
}

}  // namespace nibble::cli
