// `nibble quantize MODEL.onnx --calib X.calib --precision P -o OUT.nbl/`: PTQ to a model directory.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <sstream>

#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/quant_common.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/model_dir.h"
#include "nibble/model_loader.h"
#include "quant/gptq.h"
#include "quant/qdq_import.h"

namespace nibble::cli {

namespace {

struct QuantizeArgs {
  std::string model;
  std::string calib;
  std::string precision = "int8";
  std::vector<std::string> layer_precision;
  std::vector<std::string> exclude;
  bool all_layers = false;
  bool shortcut_sums = false;
  std::string output;
  bool gptq = false;
  bool dpq = false;
  int64_t group_size = 32;
  bool no_gar = false;
  DataArgs data;
};

void quantize(const QuantizeArgs& args) {
  check_new_output(args.output);
  const Graph fp32 = load_fp32_onnx(args.model);
  quant::QuantizeOptions opt;
  opt.precision = quant::parse_precision(args.precision, "--precision");
  opt.layer_precision = parse_layer_precisions(args.layer_precision);
  opt.exclude = std::set<std::string>(args.exclude.begin(), args.exclude.end());
  opt.first_last_8bit = !args.all_layers;
  opt.requantize_shortcuts = !args.shortcut_sums;
  quant::QuantizeResult result;
  if (quant::is_qdq(fp32)) {
    // A QDQ model carries its own scales and per-layer widths.
    if (!args.calib.empty()) fail("--calib", "{} is a QDQ model: it carries its own scales", args.model);
    if (!args.layer_precision.empty() || !args.exclude.empty()) {
      fail("--layer-precision", "{} is a QDQ model: its layers' widths come from the model", args.model);
    }
    const quant::QdqModel q = quant::import_qdq(fp32);
    fmt::print("QDQ model: {} quantized activations and {} quantized weights taken as they are\n", q.activations,
               q.weights);
    result = quant::quantize_model(q.fp32, q.calib, q.options);
  } else {
    if (args.calib.empty()) fail("--calib", "give the calibration table made by `nibble calibrate`");
    const quant::CalibTable calib = quant::read_calib(args.calib);
    // A range far beyond any activation (a corrupt or hand-edited table) leaves a quantization
    // step larger than every value: the layer's outputs would all round to zero.
    for (const auto& e : calib.entries) {
      if (std::max(std::fabs(e.lo), std::fabs(e.hi)) > 1e6) {
        fmt::print(stderr, "nibble: warning: {}: the range of '{}' is [{:g}, {:g}], far beyond any activation\n",
                   args.calib, e.tensor, e.lo, e.hi);
      }
    }
    std::unique_ptr<ProgressBar> bar;
    if (args.dpq) {
      bool any = opt.precision == quant::Precision::w4a8_fp8;
      for (const auto& [name, p] : opt.layer_precision) any |= p == quant::Precision::w4a8_fp8;
      if (!any) fail("--dpq", "DPQ rounds w4a8-fp8 layers: give --precision w4a8-fp8 (or such layers in --layer-precision)");
      opt.dpq = true;
      opt.group_size = args.group_size;
      opt.reorder = !args.no_gar;
    }
    if (args.gptq || args.dpq) {
      collect_hessians(opt, fp32, args.data, args.model, args.dpq ? &calib : nullptr);
      opt.threads = args.data.threads;
      bar = std::make_unique<ProgressBar>("gptq", static_cast<int64_t>(opt.hessians.size()));
      opt.on_gptq_layer = [&bar] { bar->advance(1); };
    }
    result = quant::quantize_model(fp32, calib, opt);
    if (bar) bar->finish();
  }
  result.model.path = args.output;
  // Build the graph once before writing, so a model the engine cannot run is never written.
  quantized_graph(result.model);
  print_layer_report(result);
  write_model_dir(result.model, args.output);
  size_t bytes = 0;
  for (const auto& [name, layer] : result.model.layers) {
    for (const auto& f : layer.fields) bytes += f.is_tensor ? f.tensor.nbytes() : 0;
  }
  fmt::print("wrote {} ({} layers, {} bytes of tensors)\n", args.output, result.model.layers.size(), bytes);
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "Quantize an FP32 ONNX model to an integer model directory");
  auto args = std::make_shared<QuantizeArgs>();
  cmd->add_option("model", args->model, "FP32 ONNX model")->required();
  cmd->add_option("--calib", args->calib, "Calibration table from `nibble calibrate`");
  cmd->add_option("--precision", args->precision, "int8, int4 (4-bit weights and activations), w4a8 (4-bit weights, 8-bit activations) or w4a8-fp8 "
                  "(4-bit weights, FP8 e4m3 activations)")
      ->default_val("int8");
  cmd->add_option("--layer-precision", args->layer_precision,
                  "NAME:PRECISION,... per layer (layer or ONNX node name; precision int8, int4, w4a8, w4a8-fp8 or float)")
      ->delimiter(',');
  cmd->add_option("--exclude", args->exclude, "NAME,... layers to keep in float")->delimiter(',');
  cmd->add_flag("--all-layers", args->all_layers,
                "Quantize the first and last layers to --precision too (by default they stay at 8 bits)");
  cmd->add_flag("--shortcut-sums", args->shortcut_sums,
                "A conv read only by a later conv's residual Add hands it its 32-bit sums (exact, one rounding less) "
                "instead of an 8 (4)-bit value as the seed model's (the default: no 32-bit tensor between layers, "
                "faster on the GPU)");
  cmd->add_option("-o,--output", args->output, "Model directory to write (must not exist)")->required();
  cmd->add_flag("--gptq", args->gptq,
                "Round weights with GPTQ's Hessian-guided error compensation, measured on --data (recommended for "
                "4-bit weights)");
  cmd->add_flag("--dpq", args->dpq,
                "w4a8-fp8 layers by Dual Precision Quantization: 4-bit levels in groups with FP8 group scales, rounded "
                "through INT4 then FP8 with Hessian-guided compensation measured on --data (the layers that stay "
                "integer take GPTQ)");
  cmd->add_option("--group-size", args->group_size, "--dpq: inputs per weight group (along C x KH x KW)")
      ->default_val(32)
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_flag("--no-gar", args->no_gar, "--dpq: process the columns in their stored order instead of group-aware reordering");
  args->data.limit = 256;
  add_data_flags(*cmd, args->data, "fashion-mnist:train", "--samples", "--gptq, --dpq: inputs to measure the Hessians on");
  cmd->callback([args] { quantize(*args); });
}

}  // namespace nibble::cli
