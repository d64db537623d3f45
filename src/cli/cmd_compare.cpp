// `nibble compare MODEL.onnx OUT.nbl/ --data D`: per-layer error of a quantized model against its
// FP32 original, a per-layer sensitivity sweep and an automatic mixed-precision choice.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "cli/commands.h"
#include "cli/quant_common.h"
#include "nibble/engine.h"
#include "nibble/file_util.h"
#include "nibble/error.h"
#include "nibble/model_dir.h"
#include "nibble/model_loader.h"
#include "quant/observer.h"

namespace nibble::cli {

namespace {

struct CompareArgs {
  std::string fp32;
  std::string quantized;
  DataArgs data;
  std::string calib;
  bool sensitivity = false;
  bool auto_mixed = false;
  double max_drop = 0.3;
  std::string precision = "int4";
  std::string base = "int8";
  std::string write_layers;
  bool gptq = false;
  DataArgs calib_data;
};

// An activation of the quantized model and the FP32 tensor it stands for.
struct Probe {
  std::string layer;   // value name in the quantized graph
  std::string tensor;  // FP32 tensor
  double scale;        // integer value * scale = real value
  double xy = 0, xx = 0, yy = 0, diff = 0;
  int64_t count = 0;
};

std::vector<Probe> probes_of(const ModelDir& m) {
  std::vector<Probe> out;
  const LayerFile& root = m.layer("model");
  if (root.type != "GraphQuantized") fail(m.path, "compare needs a model made by `nibble quantize` (GraphQuantized)");
  // In layer order, so the table reads from the input to the output.
  for (const std::string& name : split_name_list(root.get_string("layers"))) {
    const LayerFile& l = m.layer(name);
    if (!l.has("onnx_tensor") || !l.has("output_scale")) continue;
    out.push_back({name, l.get_string("onnx_tensor"), std::stod(l.get_string("output_scale"))});
  }
  return out;
}

// The range each quantized tensor of `m` was given, as a calibration table.
quant::CalibTable calib_from_model(const ModelDir& m) {
  quant::CalibTable t;
  for (const auto& [name, l] : m.layers) {
    if (!l.has("onnx_tensor") || !l.has("output_scale")) continue;
    const auto mode = parse_compute_mode(l.get_string("compute_mode"), m.path + "/" + name);
    const double scale = std::stod(l.get_string("output_scale"));
    const int64_t bits = l.get_int("output_bits");
    const bool fp8 = mode.back().kind == 'f';  // e4m3: 448 steps of the scale
    const double top = scale * (fp8 ? 448.0 : std::ldexp(1.0, static_cast<int>(bits)) - 1.0);
    const bool is_signed = mode.back().kind == 's';  // FP8 ranges are symmetric; [0, top] keeps the scale
    t.entries.push_back({l.get_string("onnx_tensor"), "max", is_signed ? -top : 0.0, top});
  }
  return t;
}

void layer_errors(const CompareArgs& args, const Graph& fp32, const ModelDir& m, const InputData& data) {
  std::vector<Probe> probes = probes_of(m);
  std::vector<std::string> tensors, layers;
  std::vector<int> f_index;  // each probe's FP32 output slot; -1 for the model input
  const std::string& input_name = fp32.inputs.at(0).name;
  for (const auto& p : probes) {
    if (p.tensor == input_name) {
      f_index.push_back(-1);
    } else {
      if (!fp32.find_value(p.tensor)) {
        fail(m.path, "layer '{}' stands for tensor '{}', which {} does not have", p.layer, p.tensor, args.fp32);
      }
      f_index.push_back(static_cast<int>(fp32.outputs.size() + tensors.size()));
      tensors.push_back(p.tensor);
    }
    layers.push_back(p.layer);
  }
  const Graph fg = quant::with_outputs(fp32, tensors);
  const Graph qg = quant::with_outputs(quantized_graph(m), layers);
  const Engine fe(fg, Backend::cpu), qe(qg, Backend::cpu);
  const size_t q_first = qg.outputs.size() - layers.size();
  // The model outputs are compared too.
  struct Out {
    double xy = 0, xx = 0, yy = 0, diff = 0;
  };
  std::vector<Out> outs(fp32.outputs.size());
  int64_t agree = 0;
  std::mutex mu;
  for_each_batch("compare", data.size(), args.data.batch, args.data.threads, [&](int64_t lo, int64_t hi) {
    const Tensor in = data.batch(lo, hi);
    const auto fo = fe.run({in});
    const auto qo = qe.run({in});
    std::vector<Probe> local = probes;
    auto accumulate = [](const Tensor& x, const Tensor& q, double scale, double& xy, double& xx, double& yy, double& diff) {
      const float* px = x.data<float>();
      for (int64_t i = 0; i < x.numel(); ++i) {
        const double a = px[i], b = q.dtype() == DType::f32 ? q.get(i) : q.get(i) * scale;
        xy += a * b;
        xx += a * a;
        yy += b * b;
        diff += (a - b) * (a - b);
      }
    };
    for (size_t p = 0; p < probes.size(); ++p) {
      const Tensor& x = f_index[p] < 0 ? in : fo[static_cast<size_t>(f_index[p])];
      accumulate(x, qo[q_first + p], probes[p].scale, local[p].xy, local[p].xx, local[p].yy, local[p].diff);
    }
    std::vector<Out> lo_outs(outs.size());
    int64_t local_agree = 0;
    for (size_t o = 0; o < outs.size(); ++o) {
      accumulate(fo[o], qo[o], 1.0, lo_outs[o].xy, lo_outs[o].xx, lo_outs[o].yy, lo_outs[o].diff);
      if (o == 0 && fo[o].rank() == 2) {
        const int64_t k = fo[o].dim(1);
        for (int64_t r = 0; r < fo[o].dim(0); ++r) {
          const float* a = fo[o].data<float>() + r * k;
          const float* b = qo[o].data<float>() + r * k;
          local_agree += (std::max_element(a, a + k) - a) == (std::max_element(b, b + k) - b);
        }
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    for (size_t p = 0; p < probes.size(); ++p) {
      probes[p].xy += local[p].xy;
      probes[p].xx += local[p].xx;
      probes[p].yy += local[p].yy;
      probes[p].diff += local[p].diff;
    }
    for (size_t o = 0; o < outs.size(); ++o) {
      outs[o].xy += lo_outs[o].xy;
      outs[o].xx += lo_outs[o].xx;
      outs[o].yy += lo_outs[o].yy;
      outs[o].diff += lo_outs[o].diff;
    }
    agree += local_agree;
  });
  auto cos = [](double xy, double xx, double yy) { return xx > 0 && yy > 0 ? xy / std::sqrt(xx * yy) : 1.0; };
  auto nmse = [](double diff, double xx) { return xx > 0 ? diff / xx : 0.0; };
  size_t width = 6;
  for (const auto& p : probes) width = std::max(width, p.layer.size());
  fmt::print("per-layer error of {} against {} on {} ({} inputs)\n", args.quantized, args.fp32, data.name, data.size());
  fmt::print("{:<{}}  {:>10}  {:>10}  {}\n", "layer", width, "cosine", "NMSE", "FP32 tensor");
  for (const auto& p : probes) {
    fmt::print("{:<{}}  {:>10.6f}  {:>10.3e}  {}\n", p.layer, width, cos(p.xy, p.xx, p.yy), nmse(p.diff, p.xx), p.tensor);
  }
  for (size_t o = 0; o < outs.size(); ++o) {
    fmt::print("{:<{}}  {:>10.6f}  {:>10.3e}  (model output)\n", fp32.outputs[o].name, width,
               cos(outs[o].xy, outs[o].xx, outs[o].yy), nmse(outs[o].diff, outs[o].xx));
  }
  fmt::print("top-1 agreement with FP32: {:.2f}% ({}/{})\n", 100.0 * agree / static_cast<double>(data.size()), agree,
             data.size());
}

struct Scored {
  std::string layer;
  int64_t correct;
};

int64_t top1_of(const Graph& fp32, const quant::CalibTable& calib, const quant::QuantizeOptions& opt,
                const InputData& data, const DataArgs& args, const std::string& label) {
  const auto r = quant::quantize_model(fp32, calib, opt);
  const Engine e(quantized_graph(r.model), Backend::cpu);
  return count_correct(predict(e, data, args, label, "quantized model"), data);
}

void sweep(const CompareArgs& args, const Graph& fp32, const quant::CalibTable& calib, const InputData& data) {
  const quant::Precision target = quant::parse_precision(args.precision, "--precision");
  const quant::Precision base = quant::parse_precision(args.base, "--base");
  const double n = static_cast<double>(data.size());
  const Engine fe(fp32, Backend::cpu);
  const int64_t fp32_ok = count_correct(predict(fe, data, args.data, "fp32", args.fp32), data);
  quant::QuantizeOptions opt;
  opt.precision = base;
  opt.first_last_8bit = false;
  if (args.gptq) collect_hessians(opt, fp32, args.calib_data, args.fp32);
  const int64_t base_ok = top1_of(fp32, calib, opt, data, args.data, args.base);
  fmt::print("top-1 on {} ({} inputs): FP32 {:.2f}%, all layers {} {:.2f}%\n", data.name, data.size(), 100.0 * fp32_ok / n,
             args.base, 100.0 * base_ok / n);
  std::vector<Scored> scores;
  for (const auto& [layer, node] : quant::quantizable_layers(fp32)) {
    quant::QuantizeOptions one = opt;
    one.layer_precision[layer] = target;
    scores.push_back({layer, top1_of(fp32, calib, one, data, args.data, layer)});
  }
  std::stable_sort(scores.begin(), scores.end(), [](const Scored& a, const Scored& b) { return a.correct > b.correct; });
  size_t width = 5;
  for (const auto& s : scores) width = std::max(width, s.layer.size());
  fmt::print("\nsensitivity: one layer at {}, the rest at {} (least sensitive first)\n", args.precision, args.base);
  fmt::print("{:<{}}  {:>8}  {:>12}\n", "layer", width, "top-1 %", "drop vs " + args.base);
  for (const auto& s : scores) {
    fmt::print("{:<{}}  {:>8.2f}  {:>12.2f}\n", s.layer, width, 100.0 * s.correct / n, 100.0 * (base_ok - s.correct) / n);
  }
  if (!args.auto_mixed) return;
  // Greedy: take layers from the least sensitive on, keeping each that leaves the drop against
  // FP32 within the budget.
  const int64_t floor_ok = fp32_ok - static_cast<int64_t>(std::floor(args.max_drop / 100.0 * n + 1e-9));
  if (base_ok < floor_ok) {
    fail("--max-drop", "all layers at {} already lose {:.2f} points against FP32", args.base, 100.0 * (fp32_ok - base_ok) / n);
  }
  quant::QuantizeOptions mixed = opt;
  int64_t mixed_ok = base_ok;
  std::vector<std::string> chosen;
  for (const auto& s : scores) {
    quant::QuantizeOptions trial = mixed;
    trial.layer_precision[s.layer] = target;
    const int64_t ok = top1_of(fp32, calib, trial, data, args.data, "+" + s.layer);
    if (ok >= floor_ok) {
      mixed = trial;
      mixed_ok = ok;
      chosen.push_back(s.layer);
    }
  }
  std::string list;
  for (const auto& [layer, p] : mixed.layer_precision) {
    list += fmt::format("{}{}:{}", list.empty() ? "" : ",", layer, quant::precision_name(p));
  }
  fmt::print("\nauto-mixed: {} of {} layers at {}, top-1 {:.2f}% (FP32 {:.2f}%, drop {:.2f}, budget {:.2f})\n",
             chosen.size(), scores.size(), args.precision, 100.0 * mixed_ok / n, 100.0 * fp32_ok / n,
             100.0 * (fp32_ok - mixed_ok) / n, args.max_drop);
  fmt::print("--precision {} --all-layers{} --layer-precision {}\n", args.base, args.gptq ? " --gptq" : "",
             list.empty() ? "\"\"" : list);
  if (!args.write_layers.empty()) {
    write_file_atomic(args.write_layers, list + "\n");
    fmt::print("wrote the layer list to {}\n", args.write_layers);
  }
}

void compare(const CompareArgs& args) {
  if (!args.write_layers.empty()) check_writable(args.write_layers);
  const Graph fp32 = load_fp32_onnx(args.fp32);
  ModelDir m = read_model_dir(args.quantized);
  const InputData data = load_data(args.data, fp32, args.fp32);
  layer_errors(args, fp32, m, data);
  if (args.sensitivity || args.auto_mixed) {
    const quant::CalibTable calib = args.calib.empty() ? calib_from_model(m) : quant::read_calib(args.calib);
    fmt::print("\n");
    sweep(args, fp32, calib, data);
  }
}

}  // namespace

void add_compare_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("compare", "Per-layer error of a quantized model against its FP32 ONNX original");
  auto args = std::make_shared<CompareArgs>();
  args->data.limit = 1000;
  cmd->add_option("fp32", args->fp32, "FP32 ONNX model")->required();
  cmd->add_option("quantized", args->quantized, "Model directory made from it by `nibble quantize`")->required();
  add_data_flags(*cmd, args->data, "fashion-mnist:test", "--limit", "Use only the first N inputs (0: all)");
  cmd->add_flag("--sensitivity", args->sensitivity,
                "Quantize one layer at a time to --precision (the rest at --base) and rank layers by top-1 loss");
  cmd->add_flag("--auto-mixed", args->auto_mixed,
                "After the sweep, pick the largest set of --precision layers within --max-drop of FP32");
  cmd->add_option("--max-drop", args->max_drop, "auto-mixed: largest top-1 loss against FP32, in points")
      ->default_val(0.3)
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--precision", args->precision, "Precision the sweep tries per layer")->default_val("int4");
  cmd->add_option("--base", args->base, "Precision of the other layers in the sweep")->default_val("int8");
  cmd->add_option("--calib", args->calib,
                  "Calibration table for the sweep (default: the ranges recorded in the model directory)");
  cmd->add_flag("--gptq", args->gptq, "Sweep: round weights with GPTQ (Hessians measured on --calib-data)");
  args->calib_data.limit = 256;
  cmd->add_option("--calib-data", args->calib_data.data, "--gptq: inputs to measure the Hessians on")
      ->default_val("fashion-mnist:train");
  cmd->add_option("--calib-samples", args->calib_data.limit, "--gptq: how many of them")->default_val(256);
  cmd->add_option("--write-layers", args->write_layers, "auto-mixed: write the --layer-precision list to this file");
  cmd->callback([args] {
    CompareArgs a = *args;
    a.calib_data = sharing_settings(a.calib_data, a.data);
    compare(a);
  });
}

}  // namespace nibble::cli
