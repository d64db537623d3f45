// `nibble calibrate MODEL.onnx --data D --method M -o MODEL.calib`: activation ranges for PTQ.
#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/quant_common.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/model_dir.h"
#include "nibble/model_loader.h"

namespace nibble::cli {

namespace {

struct CalibrateArgs {
  std::string model;
  DataArgs data;
  std::string method = "max";
  std::string precision = "int8";
  std::string output;
  DataArgs eval;
  bool gptq = false;
};

// The methods `--method compare` tries.
const std::vector<std::string> kCompared = {"max", "percentile:99.9", "percentile:99.99", "percentile:99.999", "entropy", "mse"};

void calibrate(const CalibrateArgs& args) {
  const Graph fp32 = load_fp32_onnx(args.model);
  const quant::Precision precision = quant::parse_precision(args.precision, "--precision");
  if (precision == quant::Precision::f32) fail("--precision", "choose int8, int4 or w4a8");
  const bool compare = args.method == "compare";
  std::vector<quant::CalibSpec> specs;
  for (const auto& m : compare ? kCompared : std::vector<std::string>{args.method}) {
    try {
      specs.push_back(quant::CalibSpec::parse(m));
    } catch (const Error& e) {
      fail("--method", "{} (or compare)", e.problem());
    }
  }
  if (args.output.empty() && !compare) fail("-o", "give the calibration table's path");
  if (!args.output.empty()) check_writable(args.output);
  const InputData data = load_data(args.data, fp32, args.model);
  const std::vector<std::string> comments = {
      "nibble calibration table: one line per tensor, its range [lo, hi]",
      fmt::format("model: {}", args.model),
      fmt::format("data: {}, {} samples, {}", data.name, data.size(), args.data.pre.describe())};
  const int bits = quant::activation_bits(precision);
  auto tables = calibrate_tables(fp32, data, args.data, specs, bits, comments);
  if (!compare) {
    quant::write_calib(tables[0], args.output);
    fmt::print("calibrated {} tensors on {} inputs with {}: {}\n", tables[0].entries.size(), data.size(), specs[0].text(),
               args.output);
    return;
  }
  // Quantize with every method and measure top-1 on the evaluation data.
  const InputData eval = load_data(args.eval, fp32, args.model);
  const Engine ref(fp32, Backend::cpu);
  const int64_t fp32_ok = count_correct(predict(ref, eval, args.eval, "fp32", args.model), eval);
  const double n = static_cast<double>(eval.size());
  fmt::print("\n{} at {}{}, top-1 on {} ({} inputs)\n", args.model, args.precision, args.gptq ? " with GPTQ" : "",
             eval.name, eval.size());
  fmt::print("{:<20} {:>8} {:>8}\n", "method", "top-1 %", "drop");
  fmt::print("{:<20} {:>8.2f} {:>8}\n", "fp32", 100.0 * fp32_ok / n, "");
  size_t best = 0;
  int64_t best_ok = -1;
  quant::QuantizeOptions opt;
  opt.precision = precision;
  if (args.gptq) collect_hessians(opt, fp32, args.data, args.model);
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto result = quant::quantize_model(fp32, tables[i], opt);
    const Engine q(quantized_graph(result.model), Backend::cpu);
    const int64_t ok = count_correct(predict(q, eval, args.eval, specs[i].text(), args.model), eval);
    fmt::print("{:<20} {:>8.2f} {:>8.2f}\n", specs[i].text(), 100.0 * ok / n, 100.0 * (fp32_ok - ok) / n);
    if (ok > best_ok) {
      best_ok = ok;
      best = i;
    }
  }
  fmt::print("best: {}\n", specs[best].text());
  if (!args.output.empty()) {
    quant::write_calib(tables[best], args.output);
    fmt::print("wrote the {} table: {}\n", specs[best].text(), args.output);
  }
}

}  // namespace

void add_calibrate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("calibrate", "Choose the range of every activation of an FP32 ONNX model from data");
  auto args = std::make_shared<CalibrateArgs>();
  args->data.limit = 1000;
  args->eval.limit = 0;
  cmd->add_option("model", args->model, "FP32 ONNX model")->required();
  add_data_flags(*cmd, args->data, "fashion-mnist:train", "--samples", "Calibration inputs to use (0: all)");
  cmd->add_option("--method", args->method,
                  "max, percentile:P (e.g. percentile:99.999), entropy, mse, or compare (quantize with each and "
                  "print top-1; -o then gets the best)")
      ->default_val("max");
  cmd->add_option("--precision", args->precision,
                  "Target precision (int8, int4, w4a8, w4a8-fp8): sets the activation bits entropy and mse optimize for")
      ->default_val("int8");
  cmd->add_option("-o,--output", args->output, "Calibration table to write (text, one line per tensor)");
  cmd->add_flag("--gptq", args->gptq, "compare: round weights with GPTQ (Hessians measured on the calibration data)");
  cmd->add_option("--eval-data", args->eval.data, "compare: labelled inputs for top-1")->default_val("fashion-mnist:test");
  cmd->add_option("--eval-limit", args->eval.limit, "compare: use only the first N evaluation inputs (0: all)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args] {
    CalibrateArgs a = *args;
    a.eval = sharing_settings(a.eval, a.data);
    calibrate(a);
  });
}

}  // namespace nibble::cli
