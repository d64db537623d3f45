// Post-training quantization of an FP32 ONNX graph into a GraphQuantized model directory.
#include "quant/quantize.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "nibble/error.h"
#include "quant/dpq.h"
#include "quant/gptq.h"
#include "quant/observer.h"
#include "quant/requant.h"
#include "quant/sparsity.h"

namespace nibble::quant {

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::int8: return "int8";
    case Precision::int4: return "int4";
    case Precision::w4a8: return "w4a8";
    case Precision::w4a8_fp8: return "w4a8-fp8";
    case Precision::f32: return "float";
  }
  return "?";
}

Precision parse_precision(const std::string& text, const std::string& where) {
  for (Precision p : {Precision::int8, Precision::int4, Precision::w4a8, Precision::w4a8_fp8, Precision::f32}) {
    if (text == precision_name(p)) return p;
  }
  fail(where, "unknown precision '{}' (expected int8, int4, w4a8, w4a8-fp8 or float)", text);
}

int weight_bits(Precision p) { return p == Precision::int8 ? 8 : (p == Precision::f32 ? 0 : 4); }
int activation_bits(Precision p) { return p == Precision::int4 ? 4 : (p == Precision::f32 ? 0 : 8); }

std::optional<Requant> choose_requant(const std::vector<double>& ratio, int limit) {
  double top = 0.0;
  for (double r : ratio) top = std::max(top, r);
  if (!(top < 65535.5)) return std::nullopt;
  int shift = 0;
  while (shift < 31 && std::nearbyint(top * std::ldexp(1.0, shift + 1)) <= 65535.0) ++shift;
  if (shift > limit) {
    bool zero = false;
    for (double r : ratio) zero = zero || (r > 0.0 && std::nearbyint(r * std::ldexp(1.0, limit)) == 0.0);
    if (!zero) shift = limit;
  }
  Requant q;
  q.shift = shift;
  for (double r : ratio) q.factor.push_back(static_cast<uint16_t>(std::nearbyint(r * std::ldexp(1.0, shift))));
  return q;
}

namespace {

constexpr const char* kDataDir = "model/npdata/";

// One conv (BatchNormalization folded in) or linear layer with the ops it absorbs.
struct Unit {
  // generic: any other ONNX op, or a conv/linear/pool nibble has no integer layer for: an `Op`
  // layer in float.
  enum Kind { conv, linear, max_pool, avg_pool, pass, relu, add, generic } kind;
  std::string name;       // layer name
  const Node* node;       // the ONNX node that starts it
  std::string input;      // ONNX tensor of the main input
  std::string input2;     // add: the second input; conv: the residual operand ("" if none)
  std::string output;     // ONNX tensor the unit produces
  std::vector<double> w;  // conv: K x C/g x R x S; linear: K x C (row-major), BN folded
  std::vector<double> b;  // K
  Shape w_shape;
  bool relu_after = false;
  std::optional<double> clip_max;  // the ReLU is a Clip(0, clip_max) (ReLU6)
  bool residual_only = false;  // a conv whose output is only the residual operand of a later add
  bool float_out = false;      // only float ops read the output: it is handed over in f32
  Precision precision = Precision::f32;
  std::string note;
};

// Layer names from ONNX node names: "/layers/layers.0/conv1/Conv" -> "layers_layers_0_conv1".
std::string layer_name_of(const Node& n, size_t index) {
  std::string s = n.name;
  while (!s.empty() && s.front() == '/') s.erase(s.begin());
  // The exporter of PyTorch ends each name with the op type: drop it.
  const size_t slash = s.rfind('/');
  if (slash != std::string::npos && s.substr(slash + 1) == n.op_type) s.erase(slash);
  if (s.empty()) s = fmt::format("{}_{}", n.op_type, index);
  std::string out;
  for (char c : s) {
    const bool keep = std::isalnum(static_cast<unsigned char>(c)) || c == '-';
    if (keep) {
      out += c;
    } else if (out.empty() || out.back() != '_') {
      out += '_';
    }
  }
  while (!out.empty() && out.back() == '_') out.pop_back();
  if (out.empty() || out == "model" || out == "npdata") out = fmt::format("{}_{}", n.op_type, index);
  return out;
}

const Tensor& initializer(const Graph& g, const Node& n, size_t i, const char* what) {
  if (i >= n.inputs.size() || n.inputs[i].empty()) fail(g.source, "{}: {} is missing", n.label(), what);
  const auto it = g.initializers.find(n.inputs[i]);
  if (it == g.initializers.end()) fail(g.source, "{}: {} '{}' is not a constant initializer", n.label(), what, n.inputs[i]);
  return it->second;
}

std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = t.get(i);
  return v;
}

Tensor f32_tensor(const std::vector<double>& v, Shape shape) {
  Tensor t(DType::f32, std::move(shape));
  for (size_t i = 0; i < v.size(); ++i) t.data<float>()[i] = static_cast<float>(v[i]);
  return t;
}

std::string num(double v) { return fmt::format("{:.9g}", v); }

std::string tuple(const std::vector<int64_t>& v) { return fmt::format("{}:{}", v.size(), fmt::join(v, " ")); }

// A list of names: "a,b,c" (layer names never hold ',' or whitespace).
std::string name_list(const std::vector<std::string>& v) { return fmt::format("{}", fmt::join(v, ",")); }

// An integer activation in the model directory.
struct QValue {
  std::string layer;
  double scale;
  int bits;        // levels: 2^bits - 1 unsigned, 2^(bits-1) - 1 signed
  bool is_signed;
};

// s32 accumulators of a conv in scale acc[c] (a residual operand not yet rescaled).
struct AccValue {
  std::string layer;
  std::vector<double> scale;
};

// The residual operand of a conv, as emit_integer rescales it into the conv's accumulators.
struct ResidualSource {
  enum class Kind { none, accumulators, integer, floating };
  Kind kind = Kind::none;
  std::vector<double> scale;  // per channel (accumulators) or one value (integer)
  std::string from;           // the layer that gives it
  std::string mode;           // compute mode of its Quantize rescale (not for floating)

  // The residual's scale for output channel c (0 where it has none).
  double scale_of(size_t c) const {
    if (kind == Kind::integer) return scale[0];
    return kind == Kind::accumulators && c < scale.size() ? scale[c] : 0.0;
  }
};

class Quantizer {
 public:
  Quantizer(const Graph& g, const CalibTable& calib, const QuantizeOptions& opt) : g_(g), calib_(calib), opt_(opt) {}

  std::vector<Unit> build_units() {
    std::map<std::string, std::vector<const Node*>> readers;
    for (const Node& n : g_.nodes) {
      for (const auto& in : n.inputs) {
        if (!in.empty()) readers[in].push_back(&n);
      }
    }
    std::set<std::string> outputs;
    for (const auto& o : g_.outputs) outputs.insert(o.name);
    auto sole = [&](const std::string& v, const char* op) -> const Node* {
      if (outputs.count(v)) return nullptr;
      const auto it = readers.find(v);
      if (it == readers.end() || it->second.size() != 1 || it->second[0]->op_type != op) return nullptr;
      return it->second[0];
    };
    std::set<const Node*> absorbed;
    std::map<std::string, size_t> producer_index;  // ONNX tensor -> unit that produces it
    std::vector<Unit> units;
    std::set<std::string> names;
    auto add_unit = [&](Unit u, size_t index) {
      std::string base = layer_name_of(*u.node, index), name = base;
      for (int k = 2; names.count(name); ++k) name = fmt::format("{}_{}", base, k);
      names.insert(name);
      u.name = name;
      producer_index[u.output] = units.size();
      units.push_back(std::move(u));
    };
    std::set<std::string> available;  // tensors computed by earlier nodes
    for (const auto& in : g_.inputs) available.insert(in.name);
    for (size_t i = 0; i < g_.nodes.size(); ++i) {
      const Node& n = g_.nodes[i];
      if (i > 0) {
        for (const auto& o : g_.nodes[i - 1].outputs) available.insert(o);
      }
      if (absorbed.count(&n)) continue;
      Unit u{};
      u.node = &n;
      u.input = n.inputs.empty() ? "" : n.inputs[0];
      u.output = n.outputs.empty() ? "" : n.outputs[0];
      if (n.op_type == "Conv" && can_fold(n, u, [&] { fold_conv(n, u); })) {
        u.kind = Unit::conv;
        std::string v = u.output;
        if (const Node* bn = sole(v, "BatchNormalization")) {
          fold_bn(*bn, u);
          absorbed.insert(bn);
          v = bn->outputs[0];
        }
        v = absorb_constant_add(v, u, sole, absorbed);
        if (const Node* add = sole(v, "Add")) {
          // The operand computed later absorbs the add; the other one, already computed, is the
          // residual (a shortcut, or a downsampling conv whose accumulators are rescaled).
          const std::string other = add->inputs[0] == v ? add->inputs[1] : add->inputs[0];
          if (available.count(other) && other != v) {
            u.input2 = other;
            absorbed.insert(add);
            v = add->outputs[0];
          }
        }
        if (const Node* relu = sole(v, "Relu")) {
          u.relu_after = true;
          absorbed.insert(relu);
          v = relu->outputs[0];
        } else if (const Node* clip = sole(v, "Clip"); clip && relu6_max(*clip)) {
          // Clip(0, M): a ReLU whose output range, hence its quantization, ends at M.
          u.relu_after = true;
          u.clip_max = relu6_max(*clip);
          absorbed.insert(clip);
          v = clip->outputs[0];
        }
        u.output = v;
      } else if ((n.op_type == "Gemm" || n.op_type == "MatMul") && can_fold(n, u, [&] { fold_linear(n, u); })) {
        u.kind = Unit::linear;
        u.output = absorb_constant_add(u.output, u, sole, absorbed);
        if (const Node* relu = sole(u.output, "Relu")) {
          u.relu_after = true;
          absorbed.insert(relu);
          u.output = relu->outputs[0];
        }
      } else if (n.op_type == "MaxPool" && n.outputs.size() == 1) {
        u.kind = Unit::max_pool;
      } else if (n.op_type == "GlobalAveragePool" || n.op_type == "AveragePool") {
        u.kind = Unit::avg_pool;
      } else if (n.op_type == "Identity" || n.op_type == "Dropout" || (n.op_type == "Flatten" && feeds_linear_only(n, readers))) {
        // A Flatten that only linear layers read: the Linear layer flattens its input itself.
        u.kind = Unit::pass;
      } else if (n.op_type == "Relu") {
        u.kind = Unit::relu;
      } else if (n.op_type == "Add" && n.inputs.size() == 2 && !g_.initializers.count(n.inputs[0]) &&
                 !g_.initializers.count(n.inputs[1]) && same_known_shape(n.inputs[0], n.inputs[1])) {
        // The Add layer sums two values of one shape; a broadcasting Add is an Op.
        u.kind = Unit::add;
        u.input2 = n.inputs.at(1);
      } else {
        u.kind = Unit::generic;
      }
      if (u.kind == Unit::generic) check_generic(n, readers);
      add_unit(std::move(u), i);
    }
    // A conv read only as the residual operand of a later conv's add keeps its accumulators
    // (unless requantize_shortcuts asks for its calibrated 8- or 4-bit form).
    for (Unit& u : units) {
      if (u.kind != Unit::conv || u.input2.empty()) continue;
      if (opt_.requantize_shortcuts && calib_entry(u.input2)) continue;
      const auto it = producer_index.find(u.input2);
      if (it == producer_index.end()) continue;
      Unit& r = units[it->second];
      const auto rd = readers.find(u.input2);
      if (r.kind == Unit::conv && !r.relu_after && r.input2.empty() && rd != readers.end() && rd->second.size() == 1 &&
          !outputs.count(u.input2)) {
        r.residual_only = true;
      }
    }
    // A tensor read only by a channel Concat whose output an integer layer reads takes the Concat
    // output's range: every branch is then quantized with the scale the concatenation is
    // quantized with, so the requantization after the Concat repeats the same rounding exactly
    // instead of rounding a second time. (Where only float ops read the Concat, each branch keeps
    // its own, finer, range.)
    auto integer_reader = [&](const std::string& v) {
      const auto it = readers.find(v);
      if (it == readers.end()) return false;
      for (const Node* r : it->second) {
        if (r->op_type == "Conv" || r->op_type == "MaxPool" || r->op_type == "Gemm" || r->op_type == "MatMul") return true;
      }
      return false;
    };
    for (const Node& n : g_.nodes) {
      if (n.op_type != "Concat" || n.outputs.empty() || !calib_.find(n.outputs[0]) || !integer_reader(n.outputs[0])) continue;
      const int64_t axis = n.attr_int("axis", 1);
      if (axis != 1 && axis != -3) continue;
      for (const auto& in : n.inputs) {
        const auto rd = readers.find(in);
        if (in.empty() || outputs.count(in) || rd == readers.end() || rd->second.size() != 1) continue;
        if (!producer_index.count(in)) continue;  // graph inputs and constants keep their own range
        range_of_[in] = n.outputs[0];
      }
    }
    // A conv or linear layer whose every reader is a float op keeps its output in f32 (unless it
    // is a Concat branch taking the Concat's scale: that integer form is exact and 8 bits wide).
    std::map<const Node*, Unit::Kind> kind_of;
    for (const Unit& u : units) kind_of[u.node] = u.kind;
    for (Unit& u : units) {
      if ((u.kind != Unit::conv && u.kind != Unit::linear) || outputs.count(u.output) || range_of_.count(u.output)) continue;
      if (!opt_.float_read_outputs && calib_entry(u.output)) continue;
      const auto rd = readers.find(u.output);
      if (rd == readers.end() || rd->second.empty()) continue;
      u.float_out = std::all_of(rd->second.begin(), rd->second.end(), [&](const Node* n) {
        const auto k = kind_of.find(n);
        return k != kind_of.end() && k->second == Unit::generic;
      });
    }
    return units;
  }

  // The calibrated range that quantizes tensor `t` (its own, or a Concat's it feeds).
  const CalibEntry* calib_entry(const std::string& t) const {
    const auto it = range_of_.find(t);
    return calib_.find(it == range_of_.end() ? t : it->second);
  }

  // Runs `fold` (a conv or linear layer's folding); when it refuses the layer, the node becomes
  // a float Op with the reason recorded.
  template <typename Fold>
  bool can_fold(const Node& n, Unit& u, Fold fold) {
    try {
      fold();
      return true;
    } catch (const Error& e) {
      u.note = e.problem();
      const std::string prefix = n.label() + ": ";
      if (u.note.rfind(prefix, 0) == 0) u.note.erase(0, prefix.size());
      u.w.clear();
      u.b.clear();
      u.w_shape.clear();
      return false;
    }
  }

  // M for a Clip(x, 0, M) with constant bounds (ReLU6 and its kin), else nullopt.
  std::optional<double> relu6_max(const Node& clip) const {
    auto value = [&](size_t i) -> std::optional<double> {
      if (i >= clip.inputs.size() || clip.inputs[i].empty()) return std::nullopt;
      const auto it = g_.initializers.find(clip.inputs[i]);
      if (it == g_.initializers.end() || it->second.numel() != 1) return std::nullopt;
      return it->second.get(0);
    };
    std::optional<double> lo = clip.opset >= 11 ? value(1) : std::optional<double>(clip.attr_float("min", -3.4e38f));
    std::optional<double> hi = clip.opset >= 11 ? value(2) : std::optional<double>(clip.attr_float("max", 3.4e38f));
    if (!lo || !hi || *lo != 0.0 || !(*hi > 0.0) || !std::isfinite(*hi)) return std::nullopt;
    return hi;
  }

  template <typename Readers>
  bool feeds_linear_only(const Node& flatten, const Readers& readers) {
    const auto it = readers.find(flatten.outputs.at(0));
    if (it == readers.end() || flatten.attr_int("axis", 1) != 1) return false;
    for (const Node* r : it->second) {
      if (r->op_type != "Gemm" && r->op_type != "MatMul") return false;
      if (r->inputs.empty() || r->inputs[0] != flatten.outputs[0]) return false;
      Unit trial{};
      if (!can_fold(*r, trial, [&] { fold_linear(*r, trial); })) return false;
    }
    for (const auto& o : g_.outputs) {
      if (o.name == flatten.outputs[0]) return false;
    }
    return true;
  }

  // A float Op can hold any single-result op of the default domain whose attributes the layer
  // file can write.
  template <typename Readers>
  void check_generic(const Node& n, const Readers& readers) const {
    if (n.op_type.empty() || n.op_type.find(':') != std::string::npos) {
      fail(g_.source, "{}: ops outside the default ONNX domain cannot be kept in float", n.label());
    }
    for (size_t i = 1; i < n.outputs.size(); ++i) {
      if (!n.outputs[i].empty() && (readers.count(n.outputs[i]) || is_graph_output(n.outputs[i]))) {
        fail(g_.source, "{}: ops with more than one result (here {}) cannot be kept in float yet", n.label(), n.outputs.size());
      }
    }
    for (const auto& [key, a] : n.attrs) {
      if (const auto* str = std::get_if<std::string>(&a); str && str->find_first_of("\r\n") != std::string::npos) {
        fail(g_.source, "{}: attribute {} holds a line break", n.label(), key);
      }
      if (std::holds_alternative<std::vector<std::string>>(a)) {
        fail(g_.source, "{}: attribute {} is a list of strings, which a layer file cannot hold", n.label(), key);
      }
    }
  }

  bool same_known_shape(const std::string& a, const std::string& b) const {
    const ValueInfo* x = g_.find_value(a);
    const ValueInfo* y = g_.find_value(b);
    return x && y && x->shape && y->shape && *x->shape == *y->shape;
  }

  // An Add of a constant with one value per output channel (a bias exported as its own node, as
  // MatMul + Add) joins the unit's bias. Returns the value the unit now ends with.
  template <typename Sole>
  std::string absorb_constant_add(const std::string& v, Unit& u, Sole& sole, std::set<const Node*>& absorbed) {
    const Node* add = sole(v, "Add");
    if (!add) return v;
    const std::string& other = add->inputs[0] == v ? add->inputs[1] : add->inputs[0];
    const auto c = g_.initializers.find(other);
    const int64_t k = u.w_shape[0];
    if (c == g_.initializers.end() || c->second.numel() != k) return v;
    // Only shapes that broadcast along the channel axis: [K], [1, K] for linear layers, [K, 1, 1]
    // or [1, K, 1, 1] for convolutions.
    const Shape& cs = c->second.shape();
    const bool per_channel = u.kind == Unit::linear ? (cs == Shape{k} || cs == Shape{1, k})
                                                    : (cs == Shape{k, 1, 1} || cs == Shape{1, k, 1, 1});
    if (!per_channel) return v;
    for (int64_t i = 0; i < k; ++i) u.b[static_cast<size_t>(i)] += c->second.get(i);
    absorbed.insert(add);
    return add->outputs[0];
  }

  QuantizeResult run() {
    if (g_.inputs.size() != 1) fail(g_.source, "quantize needs a model with one input, this one has {}", g_.inputs.size());
    for (const auto& e : calib_.entries) {
      if (!g_.find_value(e.tensor) && !is_graph_input(e.tensor)) {
        fail(g_.source, "the calibration table names tensor '{}', which the model does not have", e.tensor);
      }
    }
    std::vector<Unit> units = build_units();
    assign_precisions(units);
    assign_activation_bits(units);

    const ValueInfo& in = g_.inputs[0];
    if (!in.shape || in.shape->size() < 2) fail(g_.source, "the input '{}' needs a known shape", in.name);
    if (!in.dtype || *in.dtype != DType::f32) fail(g_.source, "the input '{}' must be f32", in.name);
    input_name_ = in.name;
    float_[in.name] = in.name;  // the graph input is an f32 value under its own name

    for (Unit& u : units) emit(u);

    LayerFile root = new_layer("model", "GraphQuantized");
    field(root, "compute_mode", "f32f32");
    field(root, "input", in.name);
    field(root, "input_type", "f32");
    field(root, "input_shape", tuple(Shape(in.shape->begin() + 1, in.shape->end())));
    std::vector<std::string> outs, out_names;
    for (const auto& o : g_.outputs) {
      if (o.name.empty() || o.name.find_first_of(", \t\r\n") != std::string::npos) {
        fail(g_.source, "output name '{}' cannot be stored in a model directory (it holds ',' or whitespace)", o.name);
      }
      outs.push_back(need_float(o.name));
      out_names.push_back(o.name);
    }
    field(root, "layers", name_list(order_));
    field(root, "outputs", name_list(outs));
    field(root, "output_names", name_list(out_names));
    result_.model.layers["model"] = std::move(root);
    for (const Unit& u : units) {
      const bool weighted = u.node->op_type == "Conv" || u.node->op_type == "Gemm" || u.node->op_type == "MatMul";
      if (u.kind == Unit::conv || u.kind == Unit::linear || (u.kind == Unit::generic && weighted)) {
        result_.layers.push_back({u.name, u.node->name, u.node->op_type, u.precision, u.note});
      }
    }
    return std::move(result_);
  }

 private:
  bool is_graph_input(const std::string& t) const {
    for (const auto& i : g_.inputs) {
      if (i.name == t) return true;
    }
    return false;
  }

  // --- folding ------------------------------------------------------------------------------------

  void fold_conv(const Node& n, Unit& u) {
    const Tensor& w = initializer(g_, n, 1, "the weight");
    if (w.rank() != 4) fail(g_.source, "{}: only 2-D convolutions can be quantized (weight {})", n.label(), shape_str(w.shape()));
    if (n.attr_string("auto_pad", "NOTSET") != "NOTSET") fail(g_.source, "{}: auto_pad is not supported by quantize", n.label());
    u.w = to_doubles(w);
    u.w_shape = w.shape();
    u.b.assign(static_cast<size_t>(w.dim(0)), 0.0);
    if (n.inputs.size() > 2 && !n.inputs[2].empty()) u.b = to_doubles(initializer(g_, n, 2, "the bias"));
  }

  void fold_bn(const Node& bn, Unit& u) {
    const Tensor& gamma = initializer(g_, bn, 1, "scale");
    const Tensor& beta = initializer(g_, bn, 2, "B");
    const Tensor& mean = initializer(g_, bn, 3, "mean");
    const Tensor& var = initializer(g_, bn, 4, "var");
    const double eps = bn.attr_float("epsilon", 1e-5f);
    const int64_t k = u.w_shape[0];
    if (gamma.numel() != k || beta.numel() != k || mean.numel() != k || var.numel() != k) {
      fail(g_.source, "{}: {} parameters per tensor, the conv has {} channels", bn.label(), gamma.numel(), k);
    }
    const int64_t per = static_cast<int64_t>(u.w.size()) / k;
    for (int64_t c = 0; c < k; ++c) {
      const double a = gamma.get(c) / std::sqrt(var.get(c) + eps);
      for (int64_t i = 0; i < per; ++i) u.w[static_cast<size_t>(c * per + i)] *= a;
      u.b[static_cast<size_t>(c)] = (u.b[static_cast<size_t>(c)] - mean.get(c)) * a + beta.get(c);
    }
  }

  void fold_linear(const Node& n, Unit& u) {
    const Tensor& w = initializer(g_, n, 1, "the weight");
    if (w.rank() != 2) fail(g_.source, "{}: the weight must be 2-D, got {}", n.label(), shape_str(w.shape()));
    if (n.op_type == "MatMul") {
      // A Linear layer takes N x C; a MatMul over more dimensions (tokens) stays in float.
      const ValueInfo* x = g_.find_value(n.inputs[0]);
      if (!x || !x->shape || x->shape->size() != 2) {
        fail(g_.source, "{}: the input has {} dimensions; integer Linear layers take N x C", n.label(),
             x && x->shape ? std::to_string(x->shape->size()) : "an unknown number of");
      }
    }
    bool trans_b = false;
    if (n.op_type == "Gemm") {
      if (n.attr_int("transA", 0) != 0 || n.attr_float("alpha", 1.0f) != 1.0f || n.attr_float("beta", 1.0f) != 1.0f) {
        fail(g_.source, "{}: only Gemm with transA=0, alpha=1, beta=1 can be quantized", n.label());
      }
      trans_b = n.attr_int("transB", 0) != 0;
    }
    const int64_t out = trans_b ? w.dim(0) : w.dim(1), in = trans_b ? w.dim(1) : w.dim(0);
    u.w_shape = {out, in};
    u.w.resize(static_cast<size_t>(out * in));
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t i = 0; i < in; ++i) u.w[static_cast<size_t>(o * in + i)] = trans_b ? w.get(o * in + i) : w.get(i * out + o);
    }
    u.b.assign(static_cast<size_t>(out), 0.0);
    if (n.op_type == "Gemm" && n.inputs.size() > 2 && !n.inputs[2].empty()) {
      const Tensor& c = initializer(g_, n, 2, "C");
      if (c.numel() != out) fail(g_.source, "{}: C must hold one value per output, got {}", n.label(), shape_str(c.shape()));
      u.b = to_doubles(c);
    }
  }

  // --- precisions ----------------------------------------------------------------------------------

  void assign_precisions(std::vector<Unit>& units) {
    std::set<std::string> used;
    auto lookup = [&](const Unit& u, const auto& table) {
      for (const std::string& key : {u.name, u.node->name}) {
        if (table.count(key)) {
          used.insert(key);
          return true;
        }
      }
      return false;
    };
    const Unit* first = nullptr;
    const Unit* last = nullptr;
    for (const Unit& u : units) {
      if (u.kind != Unit::conv && u.kind != Unit::linear) continue;
      if (!first) first = &u;
      last = &u;
    }
    for (Unit& u : units) {
      if (u.kind != Unit::conv && u.kind != Unit::linear) continue;
      u.precision = opt_.precision;
      if (lookup(u, opt_.exclude)) {
        u.precision = Precision::f32;
        u.note = "excluded with --exclude";
        continue;
      }
      bool named = false;
      for (const std::string& key : {u.name, u.node->name}) {
        if (auto it = opt_.layer_precision.find(key); it != opt_.layer_precision.end()) {
          u.precision = it->second;
          used.insert(key);
          named = true;
          u.note = "set with --layer-precision";
        }
      }
      if (!named && opt_.first_last_8bit && (&u == first || &u == last) && u.precision != Precision::int8 &&
          u.precision != Precision::f32) {
        u.precision = Precision::int8;
        u.note = &u == first ? "first layer kept at 8 bits" : "last layer kept at 8 bits";
      }
    }
    for (const auto& [key, p] : opt_.layer_precision) {
      if (!used.count(key)) fail("--layer-precision", "no conv or linear layer is named '{}'", key);
    }
    for (const auto& key : opt_.exclude) {
      if (!used.count(key)) fail("--exclude", "no conv or linear layer is named '{}'", key);
    }
  }

  // Each tensor gets the widest activation width its integer readers need; pools and flattens
  // pass the need on to their input.
  void assign_activation_bits(const std::vector<Unit>& units) {
    for (auto it = units.rbegin(); it != units.rend(); ++it) {
      const Unit& u = *it;
      if ((u.kind == Unit::conv || u.kind == Unit::linear) && u.precision != Precision::f32) {
        need_bits(u.input, activation_bits(u.precision));
      } else if (u.kind == Unit::max_pool || u.kind == Unit::avg_pool || u.kind == Unit::pass || u.kind == Unit::relu) {
        if (auto b = bits_.find(u.output); b != bits_.end()) need_bits(u.input, b->second);
      }
    }
  }

  void need_bits(const std::string& t, int bits) { bits_[t] = std::max(bits_[t], bits); }

  // --- the quantized graph -------------------------------------------------------------------------

  LayerFile new_layer(const std::string& name, const std::string& type) {
    LayerFile f;
    f.name = name;
    f.type = type;
    f.eol = "\n";
    return f;
  }

  static void field(LayerFile& f, const std::string& key, const std::string& value) {
    LayerField x;
    x.key = key;
    x.value = value;
    f.fields.push_back(std::move(x));
  }

  static void tensor_field(LayerFile& f, const std::string& key, Tensor t) {
    LayerField x;
    x.key = key;
    x.is_tensor = true;
    x.value = tensor_value(t);
    x.data_ref = kDataDir + f.name + "." + key;
    x.tensor = std::move(t);
    f.fields.push_back(std::move(x));
  }

  void add_layer(LayerFile f, const std::vector<std::string>& inputs) {
    field(f, "inputs", name_list(inputs));
    order_.push_back(f.name);
    const std::string name = f.name;
    if (result_.model.layers.count(name)) fail(g_.source, "two layers are named '{}'", name);
    result_.model.layers[name] = std::move(f);
  }

  // A layer with no fields of its own (Add, ReLU) named after `base`; returns its name.
  std::string plain_layer(const std::string& base, const char* type, const std::vector<std::string>& inputs) {
    LayerFile l = new_layer(unique_layer(base), type);
    const std::string name = l.name;
    add_layer(std::move(l), inputs);
    return name;
  }

  // Conv2d geometry, or Linear sizes.
  void shape_fields(const Unit& u, LayerFile& l) const {
    if (u.kind == Unit::conv) {
      conv_geometry(u, l);
    } else {
      field(l, "in_features", std::to_string(u.w_shape[1]));
      field(l, "out_features", std::to_string(u.w_shape[0]));
    }
  }

  std::string unique_layer(const std::string& base) {
    std::string name = base;
    for (int k = 2; result_.model.layers.count(name) || taken_.count(name); ++k) name = fmt::format("{}_{}", base, k);
    taken_.insert(name);
    return name;
  }

  std::string resolve(const std::string& t) const {
    std::string v = t;
    for (auto it = alias_.find(v); it != alias_.end(); it = alias_.find(v)) v = it->second;
    return v;
  }

  // The calibrated quantization of tensor `t` at `bits`.
  // After a ReLU (`non_negative`) the value is unsigned whatever the table says.
  QValue plan_activation(const std::string& t, int bits, bool non_negative = false) {
    const CalibEntry* e = calib_entry(t);
    if (!e) fail(g_.source, "the calibration table has no range for tensor '{}'", t);
    const bool is_signed = e->lo < 0.0 && !non_negative;
    const double top = non_negative ? std::max(e->hi, 0.0) : std::max(std::abs(e->lo), std::abs(e->hi));
    const double levels = is_signed ? std::ldexp(1.0, bits - 1) - 1.0 : std::ldexp(1.0, bits) - 1.0;
    double scale = top / levels;
    if (!(scale > 0.0) || !std::isfinite(static_cast<float>(scale)) || static_cast<float>(scale) <= 0.0f) {
      result_.warnings.push_back(fmt::format("tensor '{}' has an empty calibrated range; its scale is set to 1", t));
      scale = 1.0;
    }
    // The scale the model stores is an f32 number: every later computation uses that value.
    scale = static_cast<float>(scale);
    return {"", scale, bits, is_signed};
  }

  int bits_of(const std::string& t) const {
    const auto it = bits_.find(t);
    return it == bits_.end() || it->second == 0 ? 8 : it->second;
  }

  static std::string act_type(const QValue& q) {
    return fmt::format("{}{}", q.is_signed ? 's' : 'u', q.bits);
  }

  // The integer form of tensor `t` (quantizing its float form when needed).
  QValue need_quantized(const std::string& tensor) {
    const std::string t = resolve(tensor);
    if (auto it = quant_.find(t); it != quant_.end()) return it->second;
    const auto f = float_.find(t);
    if (f == float_.end()) fail(g_.source, "internal: tensor '{}' has no value", t);
    QValue q = plan_activation(t, bits_of(t));
    LayerFile l = new_layer(unique_layer(f->second == input_name_ ? "input_quantize" : f->second + "_quantize"), "QuantizeFloat");
    field(l, "compute_mode", "f32f32" + act_type(q));
    field(l, "output_bits", std::to_string(q.is_signed ? q.bits - 1 : q.bits));
    field(l, "scale", num(q.scale));
    field(l, "onnx_tensor", t);
    field(l, "output_scale", num(q.scale));
    q.layer = l.name;
    add_layer(std::move(l), {f->second});
    quant_[t] = q;
    return q;
  }

  // The f32 form of tensor `t` (dequantizing its integer form when needed).
  std::string need_float(const std::string& tensor) {
    const std::string t = resolve(tensor);
    if (auto it = float_.find(t); it != float_.end()) return it->second;
    if (auto a = acc_.find(t); a != acc_.end()) {
      LayerFile l = new_layer(unique_layer(a->second.layer + "_dequantize"), "Dequantize");
      tensor_field(l, "scale", f32_tensor(a->second.scale, {static_cast<int64_t>(a->second.scale.size())}));
      const std::string name = l.name;
      add_layer(std::move(l), {a->second.layer});
      return float_[t] = name;
    }
    const auto q = quant_.find(t);
    if (q == quant_.end()) fail(g_.source, "internal: tensor '{}' has no value", t);
    LayerFile l = new_layer(unique_layer(q->second.layer + "_dequantize"), "Dequantize");
    field(l, "scale", num(q->second.scale));
    const std::string name = l.name;
    add_layer(std::move(l), {q->second.layer});
    return float_[t] = name;
  }

  // Per-channel symmetric weights: scale[k] = max |w[k]| / levels (or the given scales).
  Tensor quantize_weights(const Unit& u, int bits, std::vector<double>& scale) {
    const int64_t k = u.w_shape[0];
    const int64_t per = static_cast<int64_t>(u.w.size()) / k;
    const double levels = std::ldexp(1.0, bits - 1) - 1.0;
    const std::string& wname = u.node->inputs.at(1);
    const auto given = opt_.weight_scales.find(wname);
    scale.assign(static_cast<size_t>(k), 1.0);
    Tensor q(bits == 8 ? DType::s8 : DType::s4, u.w_shape);
    for (int64_t c = 0; c < k; ++c) {
      double top = 0.0;
      for (int64_t i = 0; i < per; ++i) top = std::max(top, std::abs(u.w[static_cast<size_t>(c * per + i)]));
      double s = top > 0.0 ? top / levels : 1.0;
      if (given != opt_.weight_scales.end() && given->second.size() == static_cast<size_t>(k)) s = given->second[c];
      scale[static_cast<size_t>(c)] = static_cast<float>(s);
    }
    const auto h = opt_.hessians.find(u.node->name);
    if (h != opt_.hessians.end() && h->second.size() == static_cast<size_t>(per * per) &&
        (u.kind == Unit::linear || u.node->attr_int("group", 1) == 1)) {
      const std::vector<double> v = gptq_quantize(u.w, k, per, h->second, scale, levels, opt_.threads, is_sparse(u));
      if (opt_.on_gptq_layer) opt_.on_gptq_layer();
      for (int64_t i = 0; i < k * per; ++i) q.set(i, v[static_cast<size_t>(i)]);
      return q;
    }
    for (int64_t c = 0; c < k; ++c) {
      const double s = scale[static_cast<size_t>(c)];
      for (int64_t i = 0; i < per; ++i) {
        const double v = std::nearbyint(u.w[static_cast<size_t>(c * per + i)] / s);
        q.set(c * per + i, std::clamp(v, -levels, levels));
      }
    }
    return q;
  }

  // A pruned layer (nibble prune): 2:4 along the input channels of an ungrouped conv or a
  // linear layer.
  static bool is_sparse(const Unit& u) {
    if (u.kind == Unit::conv && u.node->attr_int("group", 1) != 1) return false;
    const int64_t inner = u.kind == Unit::conv ? u.w_shape[2] * u.w_shape[3] : 1;
    return rows_are_2to4([&](int64_t i) { return u.w[static_cast<size_t>(i)]; }, u.w_shape[0], u.w_shape[1], inner);
  }

  void conv_geometry(const Unit& u, LayerFile& l) const {
    const Node& n = *u.node;
    const auto kernel = n.attr_ints("kernel_shape", {u.w_shape[2], u.w_shape[3]});
    const auto strides = n.attr_ints("strides", {1, 1});
    const auto pads = n.attr_ints("pads", {0, 0, 0, 0});
    const auto dil = n.attr_ints("dilations", {1, 1});
    if (kernel.size() != 2 || strides.size() != 2 || pads.size() != 4 || dil.size() != 2) {
      fail(g_.source, "{}: only 2-D convolutions can be quantized", n.label());
    }
    if (pads[0] != pads[2] || pads[1] != pads[3]) fail(g_.source, "{}: asymmetric padding is not supported by quantize", n.label());
    const int64_t group = n.attr_int("group", 1);
    field(l, "in_channels", std::to_string(u.w_shape[1] * group));
    field(l, "out_channels", std::to_string(u.w_shape[0]));
    field(l, "kernel_size", tuple(kernel));
    field(l, "stride", tuple(strides));
    field(l, "padding", tuple({pads[0], pads[1]}));
    field(l, "dilation", tuple(dil));
    field(l, "groups", std::to_string(group));
  }

  void emit(Unit& u) {
    switch (u.kind) {
      case Unit::conv:
      case Unit::linear:
        if (u.precision == Precision::w4a8_fp8) {
          if (u.kind == Unit::conv && u.node->attr_int("group", 1) == 1) {
            emit_fp8(u);
            return;
          }
          u.precision = Precision::w4a8;
          u.note = "FP8 compute covers ungrouped convolutions; integer w4a8 instead";
        }
        if (u.precision == Precision::f32 || !emit_integer(u)) emit_float(u);
        return;
      case Unit::pass:
        alias_[u.output] = resolve(u.input);
        return;
      case Unit::relu: {
        const std::string in = resolve(u.input);
        if (auto q = quant_.find(in); q != quant_.end() && !q->second.is_signed) {
          alias_[u.output] = in;  // ReLU of a non-negative integer value changes nothing
          return;
        }
        LayerFile l = new_layer(u.name, "ReLU");
        const std::string x = need_float(in);
        add_layer(std::move(l), {x});
        float_[u.output] = u.name;
        return;
      }
      case Unit::add: {
        const std::string a = need_float(u.input), b = need_float(u.input2);
        add_layer(new_layer(u.name, "Add"), {a, b});
        float_[u.output] = u.name;
        return;
      }
      case Unit::max_pool:
      case Unit::avg_pool:
        if (!emit_pool(u)) emit_op(u);
        return;
      case Unit::generic:
        emit_op(u);
        return;
    }
  }

  // The node of `u` as a float `Op` layer: tensors from earlier layers in their f32 form (their
  // own form when they are not f32 values), initializers as constant fields.
  void emit_op(const Unit& u) {
    const Node& n = *u.node;
    LayerFile l = new_layer(u.name, "Op");
    field(l, "op_type", n.op_type);
    std::vector<std::string> inputs, operands;
    std::map<std::string, size_t> input_index;
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const std::string& v = n.inputs[i];
      if (v.empty()) {
        operands.emplace_back("-");
      } else if (const auto c = g_.initializers.find(v); c != g_.initializers.end() && !float_.count(resolve(v))) {
        const std::string key = fmt::format("const{}", i);
        tensor_field(l, key, c->second);
        operands.push_back(key);
      } else {
        const std::string x = need_float(v);
        auto [it, fresh] = input_index.emplace(x, inputs.size());
        if (fresh) inputs.push_back(x);
        operands.push_back(fmt::format("x{}", it->second));
      }
    }
    field(l, "operands", name_list(operands));
    for (const auto& [key, a] : n.attrs) {
      if (const auto* t = std::get_if<Tensor>(&a)) {
        tensor_field(l, "attr_" + key, *t);
      } else {
        field(l, "attr_" + key, attribute_text(a));
      }
    }
    const ValueInfo* out = g_.find_value(u.output);
    field(l, "output_type", std::string(dtype_name(out && out->dtype ? *out->dtype : DType::f32)));
    field(l, "output_shape", shape_text(out));
    field(l, "onnx_node", n.name);
    add_layer(std::move(l), inputs);
    float_[u.output] = u.name;
    result_.float_ops.push_back(n.op_type);
  }

  static std::string attribute_text(const Attribute& a) {
    if (const auto* i = std::get_if<int64_t>(&a)) return fmt::format("int {}", *i);
    if (const auto* f = std::get_if<float>(&a)) return fmt::format("float {}", num(*f));
    if (const auto* str = std::get_if<std::string>(&a)) return "string " + *str;
    if (const auto* v = std::get_if<std::vector<int64_t>>(&a)) return fmt::format("ints {}:{}", v->size(), fmt::join(*v, " "));
    if (const auto* v = std::get_if<std::vector<float>>(&a)) {
      std::vector<std::string> items;
      for (float f : *v) items.push_back(num(f));
      return fmt::format("floats {}:{}", v->size(), fmt::join(items, " "));
    }
    return "string ";
  }

  // "[N,16,112,112]" from the ONNX value's shape: N its symbolic batch, ? an unknown dimension.
  static std::string shape_text(const ValueInfo* v) {
    if (!v || !v->shape) return "[?]";
    std::vector<std::string> dims;
    for (size_t d = 0; d < v->shape->size(); ++d) {
      const int64_t x = (*v->shape)[d];
      dims.push_back(x >= 0 ? std::to_string(x) : (d == 0 ? "N" : "?"));
    }
    return fmt::format("[{}]", fmt::join(dims, ","));
  }

  // Returns false for pools the MaxPool2d / AvgPool2d layers cannot describe (they become Ops).
  bool emit_pool(const Unit& u) {
    const Node& n = *u.node;
    const std::string in = resolve(u.input);
    const ValueInfo* vi = g_.find_value(in);
    const bool global = n.op_type == "GlobalAveragePool";
    int64_t k = 0, s = 1, p = 0;
    if (global) {
      if (!vi || !vi->shape || vi->shape->size() != 4 || (*vi->shape)[2] != (*vi->shape)[3] || (*vi->shape)[2] <= 0) {
        return false;
      }
      k = (*vi->shape)[2];
    } else {
      const auto ks = n.attr_ints("kernel_shape"), st = n.attr_ints("strides", {1, 1}), pd = n.attr_ints("pads", {0, 0, 0, 0});
      const bool square = ks.size() == 2 && ks[0] == ks[1] && st.size() == 2 && st[0] == st[1] && pd.size() == 4 &&
                          pd[0] == pd[1] && pd[1] == pd[2] && pd[2] == pd[3];
      if (!square || n.attr_int("ceil_mode", 0) != 0 || n.attr_ints("dilations", {1, 1}) != std::vector<int64_t>{1, 1} ||
          n.attr_string("auto_pad", "NOTSET") != "NOTSET" || n.attr_int("storage_order", 0) != 0) {
        return false;
      }
      k = ks[0];
      s = st[0];
      p = pd[0];
      if (u.kind == Unit::avg_pool && p != 0) return false;
      if (!vi || !vi->shape || vi->shape->size() != 4) return false;
    }
    LayerFile l = new_layer(u.name, u.kind == Unit::max_pool ? "MaxPool2d" : "AvgPool2d");
    field(l, "kernel_size", std::to_string(k));
    field(l, "stride", std::to_string(s));
    field(l, "padding", std::to_string(p));
    if (u.kind == Unit::max_pool) field(l, "dilation", "1");
    field(l, "ceil_mode", "False");
    // Integer pooling keeps the scale: max pool of any integers, average pool of unsigned ones.
    auto q = quant_.find(in);
    const bool integer = q != quant_.end() && (u.kind == Unit::max_pool || !q->second.is_signed);
    if (integer) {
      QValue out = q->second;
      add_layer(std::move(l), {out.layer});
      out.layer = u.name;
      quant_[u.output] = out;
    } else {
      const std::string x = need_float(in);
      add_layer(std::move(l), {x});
      float_[u.output] = u.name;
    }
    return true;
  }

  // The residual operand of u, classified once: the accumulators of a residual-only conv, an
  // integer tensor (quantized here when it is not yet), or a float tensor.
  ResidualSource residual_source(const Unit& u) {
    using RK = ResidualSource::Kind;
    ResidualSource s;
    if (u.input2.empty()) return s;
    const std::string r = resolve(u.input2);
    if (auto a = acc_.find(r); a != acc_.end()) {
      s.kind = RK::accumulators;
      s.scale = a->second.scale;
      s.from = a->second.layer;
      s.mode = "s32u16s32";
    } else if (quant_.count(r) || !float_.count(r)) {
      const QValue q = need_quantized(r);
      s.kind = RK::integer;
      s.scale = {q.scale};
      s.from = q.layer;
      s.mode = act_type(q) + "u16s32";
    } else {
      s.kind = RK::floating;
      s.from = float_.at(r);
    }
    return s;
  }

  // Returns false (with u.note set) when the layer cannot be expressed in integers.
  bool emit_integer(Unit& u) {
    const int wb = weight_bits(u.precision);
    const QValue x = need_quantized(u.input);
    std::vector<double> ws;
    Tensor wq = quantize_weights(u, wb, ws);
    const int64_t k = u.w_shape[0];
    std::vector<double> acc(static_cast<size_t>(k));
    for (int64_t c = 0; c < k; ++c) acc[static_cast<size_t>(c)] = x.scale * ws[static_cast<size_t>(c)];
    // A channel whose weights are so small that its bias, or the residual it adds, cannot be
    // expressed in its accumulator scale (|bias| / scale or residual scale / scale of 2^31 or
    // more) is a dead channel: its weights become 0 with scale 1. Only such channels change.
    const ResidualSource res = residual_source(u);
    using RK = ResidualSource::Kind;
    const int64_t per = wq.numel() / k;
    for (int64_t c = 0; c < k; ++c) {
      const size_t i = static_cast<size_t>(c);
      if (std::abs(u.b[i] / acc[i]) > 2147483647.0 || res.scale_of(i) / acc[i] >= 2147483648.0) {
        ws[i] = 1.0;
        acc[i] = x.scale;
        for (int64_t j = 0; j < per; ++j) wq.set(c * per + j, 0.0);
      }
    }
    Tensor bias(DType::s32, {k});
    for (int64_t c = 0; c < k; ++c) {
      const double v = std::nearbyint(u.b[static_cast<size_t>(c)] / acc[static_cast<size_t>(c)]);
      if (std::abs(v) > 2147483647.0) {
        u.note = "the bias does not fit in 32 bits at this scale";
        u.precision = Precision::f32;
        return false;
      }
      bias.set(c, v);
    }
    // Plan the residual rescale and the output requantization before writing anything.
    std::optional<Requant> residual_rq, residual_pre;
    std::string residual_from = res.from;
    std::string residual_mode = res.mode;
    // A float residual goes straight into the accumulator scale.
    const bool residual_float = res.kind == RK::floating;
    if (res.kind == RK::accumulators && res.scale.size() != static_cast<size_t>(k))
      fail(g_.source, "{}: the residual has a different channel count", u.node->label());
    if (res.kind == RK::accumulators || res.kind == RK::integer) {
      std::vector<double> ratio(static_cast<size_t>(k));
      for (size_t c = 0; c < ratio.size(); ++c) ratio[c] = res.scale_of(c) / acc[c];
      residual_rq = choose_requant(ratio);
      if (!residual_rq) {
        // Too large for one 16-bit factor: first multiply exactly by an integer (shift 0),
        // then requantize the rest.
        std::vector<double> pre(ratio.size()), rest(ratio.size());
        for (size_t c = 0; c < ratio.size(); ++c) {
          pre[c] = std::min(65535.0, std::ceil(ratio[c] / 32768.0));
          rest[c] = ratio[c] / pre[c];
        }
        residual_pre = Requant{};
        for (double p : pre) residual_pre->factor.push_back(static_cast<uint16_t>(p));
        residual_rq = choose_requant(rest);
        if (!residual_rq) {
          u.note = "the residual's scale is too large for two 16-bit requantization factors";
          u.precision = Precision::f32;
          return false;
        }
      }
    }
    std::optional<Requant> out_rq;
    QValue out_q{};
    const bool graph_output = is_graph_output(u.output);
    const bool to_scale = (u.kind == Unit::linear && graph_output && !u.relu_after) || u.float_out;
    if (!u.residual_only && !to_scale) {
      out_q = plan_activation(u.output, bits_of(u.output), u.relu_after);
      std::vector<double> ratio(static_cast<size_t>(k));
      for (int64_t c = 0; c < k; ++c) ratio[static_cast<size_t>(c)] = acc[static_cast<size_t>(c)] / out_q.scale;
      const int out_bits = out_q.is_signed ? out_q.bits - 1 : out_q.bits;
      out_rq = choose_requant(ratio, saturation_shift_limit(output_range(out_bits, out_q.is_signed)));
      if (!out_rq) {
        u.note = "the output scale is too small for a 16-bit requantization factor";
        u.precision = Precision::f32;
        return false;
      }
    }

    // The layer itself.
    const std::string mode = fmt::format("{}s{}s32", act_type(x), wb);
    LayerFile l = new_layer(u.name, u.kind == Unit::conv ? "Conv2d" : "Linear");
    field(l, "compute_mode", mode);
    shape_fields(u, l);
    field(l, "precision", precision_name(u.precision));
    field(l, "input_scale", num(x.scale));
    tensor_field(l, "bias", bias);
    tensor_field(l, "weight", wq);
    tensor_field(l, "weight_scale", f32_tensor(ws, {k}));
    if (is_sparse(u)) field(l, "sparsity", "2:2 4");  // 2 of every 4 (the quantized zeros stay)
    field(l, "onnx_node", u.node->name);
    add_layer(std::move(l), {x.layer});
    std::string value = u.name;

    if (res.kind != RK::none) {
      std::string residual;
      if (residual_float) {
        LayerFile r = new_layer(unique_layer(u.name + "_residual"), "QuantizeFloat");
        field(r, "compute_mode", "f32f32s32");
        field(r, "output_bits", "31");
        tensor_field(r, "scale", f32_tensor(acc, {k}));
        residual = r.name;
        add_layer(std::move(r), {residual_from});
      } else {
        if (residual_pre) {
          LayerFile pre = new_layer(unique_layer(u.name + "_residual_scale"), "Quantize");
          field(pre, "compute_mode", residual_mode);
          field(pre, "output_bits", "31");
          requant_fields(pre, *residual_pre);
          residual_mode = "s32u16s32";
          const std::string pre_name = pre.name;
          add_layer(std::move(pre), {residual_from});
          residual_from = pre_name;
        }
        LayerFile r = new_layer(unique_layer(u.name + "_residual"), "Quantize");
        field(r, "compute_mode", residual_mode);
        field(r, "output_bits", "31");
        requant_fields(r, *residual_rq);
        residual = r.name;
        add_layer(std::move(r), {residual_from});
      }
      value = plain_layer(u.name + "_add", "Add", {value, residual});
    }
    if (u.relu_after) value = plain_layer(u.name + "_relu", "ReLU", {value});
    if (u.residual_only) {
      acc_[u.output] = {value, acc};
      return true;
    }
    if (to_scale) {
      LayerFile s = new_layer(unique_layer(u.name + "_scale"), "Scale");
      field(s, "compute_mode", "s32f32f32");
      std::vector<double> inv(static_cast<size_t>(k));
      for (int64_t c = 0; c < k; ++c) inv[static_cast<size_t>(c)] = 1.0 / acc[static_cast<size_t>(c)];
      tensor_field(s, "out_scale", f32_tensor(inv, {k}));
      std::string scale_name = s.name;
      add_layer(std::move(s), {value});
      if (u.clip_max) scale_name = clip_layer(u, scale_name);
      float_[u.output] = scale_name;
      return true;
    }
    LayerFile q = new_layer(unique_layer(u.name + "_quantize"), "Quantize");
    field(q, "compute_mode", fmt::format("{}u16{}", u.relu_after ? "u31" : "s32", act_type(out_q)));
    field(q, "output_bits", std::to_string(out_q.is_signed ? out_q.bits - 1 : out_q.bits));
    requant_fields(q, *out_rq);
    field(q, "onnx_tensor", u.output);
    field(q, "output_scale", num(out_q.scale));
    out_q.layer = q.name;
    add_layer(std::move(q), {value});
    quant_[u.output] = out_q;
    return true;
  }

  static void requant_fields(LayerFile& l, const Requant& rq) {
    field(l, "shift_bits", std::to_string(rq.shift));
    const uint16_t top = rq.factor.empty() ? 0 : *std::max_element(rq.factor.begin(), rq.factor.end());
    field(l, "max_requant", std::to_string(top));
    Tensor f(DType::u16, {1, static_cast<int64_t>(rq.factor.size()), 1, 1});
    for (size_t c = 0; c < rq.factor.size(); ++c) f.data<uint16_t>()[c] = rq.factor[c];
    tensor_field(l, "requant_factor", f);
  }

  bool is_graph_output(const std::string& t) const {
    for (const auto& o : g_.outputs) {
      if (o.name == t) return true;
    }
    return false;
  }

  // The FP8 (e4m3) form of tensor `t`: its float form divided by amax / 448.
  std::string need_fp8(const std::string& tensor) {
    const std::string t = resolve(tensor);
    if (auto it = fp8_.find(t); it != fp8_.end()) return it->second;
    const std::string f = need_float(t);
    const CalibEntry* e = calib_entry(t);
    if (!e) fail(g_.source, "the calibration table has no range for tensor '{}'", t);
    double scale = fp8_activation_scale(*e);
    if (!(scale > 0.0)) {
      result_.warnings.push_back(fmt::format("tensor '{}' has an empty calibrated range; its scale is set to 1", t));
      scale = 1.0;
    }
    LayerFile l = new_layer(unique_layer(f == input_name_ ? "input_fp8" : f + "_fp8"), "QuantizeFloat");
    field(l, "compute_mode", "f32f32f8");
    field(l, "output_bits", "8");
    field(l, "scale", num(scale));
    field(l, "onnx_tensor", t);
    field(l, "output_scale", num(scale));
    const std::string name = l.name;
    add_layer(std::move(l), {f});
    fp8_scale_[t] = scale;
    return fp8_[t] = name;
  }

  // W4A8 with FP8 compute: e4m3 activations x 4-bit integer weights, f32 results.
  void emit_fp8(Unit& u) {
    const std::string x = need_fp8(u.input);
    std::vector<double> ws;
    const int64_t k = u.w_shape[0];
    Tensor wq;
    Tensor group_scale;
    int64_t group_size = 0;
    if (opt_.dpq) {
      const int64_t per = static_cast<int64_t>(u.w.size()) / k;
      const auto h = opt_.hessians.find(u.node->name);
      const auto f = opt_.fp8_statistics.find(u.node->name);
      static const std::vector<double> none;
      const size_t square = static_cast<size_t>(per * per);
      const bool has_f = f != opt_.fp8_statistics.end() && f->second.first.size() == square && f->second.second.size() == square;
      const bool has_h = has_f || (h != opt_.hessians.end() && h->second.size() == square);
      const DpqWeights d = dpq_quantize(u.w, k, per, has_f ? f->second.first : has_h ? h->second : none, opt_.group_size,
                                        opt_.reorder, opt_.threads, is_sparse(u), has_f ? f->second.second : none);
      if (has_h && opt_.on_gptq_layer) opt_.on_gptq_layer();
      wq = Tensor(DType::s4, u.w_shape);
      for (int64_t i = 0; i < wq.numel(); ++i) wq.set(i, d.levels[static_cast<size_t>(i)]);
      ws.assign(static_cast<size_t>(k), d.tensor_scale);
      group_size = d.group_size;
      group_scale = Tensor(DType::f32, {k, static_cast<int64_t>(d.group_scale.size()) / k});
      std::copy(d.group_scale.begin(), d.group_scale.end(), group_scale.data<float>());
    } else {
      wq = quantize_weights(u, 4, ws);
    }
    LayerFile l = new_layer(u.name, "Conv2d");
    field(l, "compute_mode", "f8s4f32");
    shape_fields(u, l);
    field(l, "precision", precision_name(u.precision));
    field(l, "input_scale", num(fp8_scale_.at(resolve(u.input))));
    tensor_field(l, "bias", f32_tensor(u.b, {k}));
    tensor_field(l, "weight", wq);
    tensor_field(l, "weight_scale", f32_tensor(ws, {k}));
    if (group_size > 0) {
      field(l, "weight_group_size", std::to_string(group_size));
      tensor_field(l, "weight_group_scale", group_scale);
    }
    field(l, "onnx_node", u.node->name);
    add_layer(std::move(l), {x});
    float_epilogue(u);
  }

  // The f32 value of the e4m3 form of tensor `t` (its FP8 codes times their scale).
  std::string need_fp8_float(const std::string& tensor) {
    const std::string t = resolve(tensor);
    if (auto it = fp8_float_.find(t); it != fp8_float_.end()) return it->second;
    const std::string codes = need_fp8(t);
    LayerFile l = new_layer(unique_layer(codes + "_dequantize"), "Dequantize");
    field(l, "scale", num(fp8_scale_.at(t)));
    const std::string name = l.name;
    add_layer(std::move(l), {codes});
    return fp8_float_[t] = name;
  }

  // After a layer with f32 results: the residual add and the ReLU in f32. An FP8 layer's residual
  // is read in its e4m3 form, as an INT8 layer reads its residual's 8-bit form: every tensor
  // between FP8 layers is then 8 bits wide, the block outputs included.
  void float_epilogue(const Unit& u) {
    std::string value = u.name;
    if (!u.input2.empty()) {
      const bool fp8 = u.precision == Precision::w4a8_fp8;
      value = plain_layer(u.name + "_add", "Add", {value, fp8 ? need_fp8_float(u.input2) : need_float(u.input2)});
    }
    if (u.relu_after) value = plain_layer(u.name + "_relu", "ReLU", {value});
    if (u.clip_max) value = clip_layer(u, value);
    float_[u.output] = value;
  }

  // min(x, hi) on f32 values (the top of a ReLU6 that was absorbed as a ReLU).
  std::string clip_layer(const Unit& u, const std::string& x) {
    LayerFile l = new_layer(unique_layer(u.name + "_clip"), "Op");
    field(l, "op_type", "Clip");
    field(l, "operands", "x0,-,const2");
    tensor_field(l, "const2", f32_tensor({*u.clip_max}, {}));
    field(l, "output_type", "f32");
    field(l, "output_shape", shape_text(g_.find_value(u.output)));
    const std::string name = l.name;
    add_layer(std::move(l), {x});
    return name;
  }

  void emit_float(const Unit& u) {
    const std::string x = need_float(u.input);
    const int64_t k = u.w_shape[0];
    LayerFile l = new_layer(u.name, u.kind == Unit::conv ? "Conv2d" : "Linear");
    field(l, "compute_mode", "f32f32f32");
    shape_fields(u, l);
    field(l, "precision", "float");
    tensor_field(l, "bias", f32_tensor(u.b, {k}));
    tensor_field(l, "weight", f32_tensor(u.w, u.w_shape));
    field(l, "onnx_node", u.node->name);
    add_layer(std::move(l), {x});
    float_epilogue(u);
  }

  const Graph& g_;
  const CalibTable& calib_;
  const QuantizeOptions& opt_;
  QuantizeResult result_;
  std::string input_name_;
  std::vector<std::string> order_;
  std::set<std::string> taken_;
  std::map<std::string, int> bits_;             // ONNX tensor -> activation bits its readers need
  std::map<std::string, std::string> alias_;    // ONNX tensor -> the tensor it equals
  std::map<std::string, std::string> range_of_;  // ONNX tensor -> the Concat output whose range it takes
  std::map<std::string, QValue> quant_;         // ONNX tensor -> integer form
  std::map<std::string, AccValue> acc_;         // ONNX tensor -> unrescaled accumulators
  std::map<std::string, std::string> float_;    // ONNX tensor -> layer giving its f32 form
  std::map<std::string, std::string> fp8_;      // ONNX tensor -> layer giving its e4m3 form
  std::map<std::string, double> fp8_scale_;     // ONNX tensor -> the scale of that form
  std::map<std::string, std::string> fp8_float_;  // ONNX tensor -> layer giving its e4m3 form in f32
};

}  // namespace

std::vector<std::pair<std::string, std::string>> quantizable_layers(const Graph& fp32) {
  const CalibTable none;
  const QuantizeOptions opt;
  Quantizer q(fp32, none, opt);
  std::vector<std::pair<std::string, std::string>> out;
  for (const Unit& u : q.build_units()) {
    if (u.kind == Unit::conv || u.kind == Unit::linear) out.emplace_back(u.name, u.node->name);
  }
  return out;
}

QuantizeResult quantize_model(const Graph& fp32, const CalibTable& calib, const QuantizeOptions& options) {
  const Graph g = with_probed_shapes(fp32);
  return Quantizer(g, calib, options).run();
}

QuantizeResult plan_quantization(const Graph& fp32, Precision precision) {
  CalibTable unit;
  for (const auto& in : fp32.inputs) unit.entries.push_back({in.name, "plan", -1.0, 1.0});
  for (const auto& [name, vi] : fp32.value_info) unit.entries.push_back({name, "plan", -1.0, 1.0});
  QuantizeOptions opt;
  opt.precision = precision;
  const Graph g = with_probed_shapes(fp32);
  return Quantizer(g, unit, opt).run();
}

}  // namespace nibble::quant
