// Shared steps of the quantization commands.
#include "cli/quant_common.h"

#include <fmt/format.h>

#include "nibble/error.h"
#include "quant/gptq.h"
#include "quant/observer.h"

namespace nibble::cli {

std::vector<quant::CalibTable> calibrate_tables(const Graph& fp32, const InputData& data, const DataArgs& args,
                                                const std::vector<quant::CalibSpec>& specs, int bits,
                                                const std::vector<std::string>& comments) {
  quant::RangeObserver obs(fp32);
  const int64_t n = data.size();
  for_each_batch("ranges", n, args.batch, args.threads,
                 [&](int64_t lo, int64_t hi) { obs.observe_ranges(data.batch(lo, hi)); });
  bool need_hist = false;
  for (const auto& s : specs) need_hist |= s.method != quant::CalibMethod::max;
  if (need_hist) {
    obs.start_histograms();
    for_each_batch("histograms", n, args.batch, args.threads,
                   [&](int64_t lo, int64_t hi) { obs.observe_histograms(data.batch(lo, hi)); });
  }
  std::vector<quant::CalibTable> out;
  for (const auto& s : specs) {
    std::vector<std::string> c = comments;
    c.push_back(fmt::format("method: {}, activation bits: {}", s.text(), bits));
    c.push_back("<tensor> <method> <lo> <hi>");
    out.push_back(obs.table(s, bits, c));
  }
  return out;
}

void collect_hessians(quant::QuantizeOptions& opt, const Graph& fp32, const DataArgs& args, const std::string& model,
                      const quant::CalibTable* dpq) {
  const InputData data = load_data(args, fp32, model);
  quant::HessianCollector collector(fp32);
  if (dpq) collector.set_fp8_scales(*dpq);
  const quant::ScopedBlasThreads one(1);  // the batches run in parallel, each on one thread
  for_each_batch("hessians", data.size(), args.batch, args.threads,
                 [&](int64_t lo, int64_t hi) { collector.observe(data.batch(lo, hi), lo); });
  opt.hessians = collector.hessians();
  if (dpq) opt.fp8_statistics = collector.fp8_statistics();
}

std::map<std::string, quant::Precision> parse_layer_precisions(const std::vector<std::string>& items) {
  std::map<std::string, quant::Precision> out;
  for (const auto& item : items) {
    const size_t colon = item.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == item.size()) {
      fail("--layer-precision", "'{}' is not NAME:PRECISION", item);
    }
    out[item.substr(0, colon)] = quant::parse_precision(item.substr(colon + 1), "--layer-precision");
  }
  return out;
}

void print_layer_report(const quant::QuantizeResult& r) {
  size_t width = 5;
  for (const auto& l : r.layers) width = std::max(width, l.layer.size());
  fmt::print("{:<{}}  {:<4}  {:<9}  {}\n", "layer", width, "op", "precision", "note");
  for (const auto& l : r.layers) {
    fmt::print("{:<{}}  {:<4}  {:<9}  {}\n", l.layer, width, l.op, quant::precision_name(l.precision), l.note);
  }
  for (const auto& w : r.warnings) fmt::print("warning: {}\n", w);
}

}  // namespace nibble::cli
