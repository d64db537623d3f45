// Calibration passes: the FP32 engine with every float tensor exposed as an output.
#include "quant/observer.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "nibble/error.h"

namespace nibble::quant {

Graph with_outputs(Graph graph, const std::vector<std::string>& names) {
  std::set<std::string> present;
  for (const auto& o : graph.outputs) present.insert(o.name);
  for (const auto& n : names) {
    if (present.count(n)) continue;
    ValueInfo v;
    if (const ValueInfo* known = graph.find_value(n)) v = *known;
    v.name = n;
    v.shape.reset();  // the batch may differ from the one shape inference assumed
    v.dim_params.clear();
    graph.outputs.push_back(v);
    present.insert(n);
  }
  return graph;
}

Graph with_probed_shapes(Graph graph) {
  if (graph.inputs.size() != 1 || !graph.inputs[0].shape || graph.inputs[0].shape->empty()) return graph;
  const ValueInfo& in = graph.inputs[0];
  if (!in.dtype || *in.dtype != DType::f32) return graph;
  for (size_t d = 1; d < in.shape->size(); ++d) {
    if ((*in.shape)[d] <= 0) return graph;
  }
  bool complete = true;
  std::vector<std::string> names;
  for (const Node& n : graph.nodes) {
    for (const auto& o : n.outputs) {
      if (o.empty()) continue;
      names.push_back(o);
      const ValueInfo* v = graph.find_value(o);
      if (!v || !v->dtype || !v->shape) {
        complete = false;
        continue;
      }
      for (size_t d = 0; d < v->shape->size(); ++d) {
        if ((*v->shape)[d] < 0 && !(d == 0 && !v->dim_params.empty() && !v->dim_params[0].empty())) complete = false;
      }
    }
  }
  if (complete) return graph;
  std::vector<std::vector<Tensor>> runs;
  try {
    const Engine probe(with_outputs(graph, names), Backend::cpu);
    for (int64_t batch : {1, 2}) {
      Shape s = *in.shape;
      s[0] = batch;
      Tensor x(DType::f32, s);
      std::fill(x.data<float>(), x.data<float>() + x.numel(), 0.0f);
      runs.push_back(probe.run({x}));
    }
    const auto& outs = probe.graph().outputs;
    for (size_t i = 0; i < outs.size(); ++i) {
      const Tensor& a = runs[0][i];
      const Tensor& b = runs[1][i];
      if (!a.defined() || !b.defined()) continue;
      ValueInfo v;
      v.name = outs[i].name;
      v.dtype = a.dtype();
      Shape s = a.shape();
      for (size_t d = 0; d < s.size(); ++d) {
        const bool batched = a.rank() == b.rank() && s[d] != b.shape()[d];
        v.dim_params.emplace_back(batched && d == 0 ? "N" : "");
        if (batched) s[d] = -1;
      }
      v.shape = s;
      graph.value_info[v.name] = v;
    }
  } catch (const Error&) {
    return graph;  // the run itself will report what is wrong
  }
  return graph;
}

RangeObserver::RangeObserver(const Graph& fp32, int bins) : bins_(bins) {
  if (fp32.inputs.size() != 1) fail(fp32.source, "calibration needs a model with one input, it has {}", fp32.inputs.size());
  tensors_.push_back(fp32.inputs[0].name);
  input_index_ = 0;
  std::vector<std::string> extra;
  for (const Node& n : fp32.nodes) {
    for (const auto& o : n.outputs) {
      if (o.empty()) continue;
      const ValueInfo* v = fp32.find_value(o);
      if (v && v->dtype && *v->dtype != DType::f32) continue;
      tensors_.push_back(o);
      extra.push_back(o);
    }
  }
  Graph g = with_outputs(fp32, extra);
  engine_ = std::make_unique<Engine>(std::move(g), Backend::cpu);
  ranges_.resize(tensors_.size());
}

std::vector<Tensor> RangeObserver::run_all(const Tensor& input) const {
  const auto outs = engine_->run({input});
  const auto& declared = engine_->graph().outputs;
  std::vector<Tensor> by_tensor(tensors_.size());
  by_tensor[input_index_] = input;
  for (size_t i = 0; i < declared.size(); ++i) {
    for (size_t t = 1; t < tensors_.size(); ++t) {
      if (tensors_[t] == declared[i].name) by_tensor[t] = outs[i];
    }
  }
  for (size_t t = 0; t < tensors_.size(); ++t) {
    if (!by_tensor[t].defined() || by_tensor[t].dtype() != DType::f32) {
      fail(engine_->graph().source, "calibration: tensor '{}' is not an f32 value", tensors_[t]);
    }
  }
  return by_tensor;
}

void RangeObserver::observe_ranges(const Tensor& input) {
  const auto values = run_all(input);
  std::vector<MinMax> local(tensors_.size());
  for (size_t t = 0; t < values.size(); ++t) local[t].add(values[t].data<float>(), values[t].numel());
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t t = 0; t < values.size(); ++t) ranges_[t].merge(local[t]);
}

void RangeObserver::start_histograms() {
  hists_.clear();
  for (const MinMax& r : ranges_) hists_.emplace_back(r.abs_max(), bins_);
}

void RangeObserver::observe_histograms(const Tensor& input) {
  const auto values = run_all(input);
  std::vector<AbsHistogram> local;
  for (size_t t = 0; t < values.size(); ++t) {
    local.emplace_back(hists_[t].limit(), bins_);
    local.back().add(values[t].data<float>(), values[t].numel());
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t t = 0; t < values.size(); ++t) hists_[t].merge(local[t]);
}

CalibTable RangeObserver::table(const CalibSpec& spec, int bits, std::vector<std::string> comments) const {
  CalibTable out;
  out.comments = std::move(comments);
  for (size_t t = 0; t < tensors_.size(); ++t) {
    const MinMax& r = ranges_[t];
    CalibEntry e;
    e.tensor = tensors_[t];
    e.method = spec.text();
    if (r.empty()) {
      out.entries.push_back(e);  // never saw a number: [0, 0]
      continue;
    }
    const bool is_signed = r.lo < 0.0;
    // Ranges are stored as f32 values (the table's precision).
    if (spec.method == CalibMethod::max) {
      e.lo = static_cast<float>(std::min(r.lo, 0.0));
      e.hi = static_cast<float>(std::max(r.hi, 0.0));
    } else {
      if (hists_.size() != tensors_.size()) fail("", "internal: histograms were not collected");
      const int levels = is_signed ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
      const double th = static_cast<float>(choose_threshold(hists_[t], spec, levels));
      e.lo = is_signed ? -th : 0.0;
      e.hi = th;
    }
    out.entries.push_back(e);
  }
  return out;
}

}  // namespace nibble::quant
