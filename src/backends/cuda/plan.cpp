// Planning for the CUDA backend: graph analysis, storage choices, weight layouts, the arena.
#include "backends/cuda/plan.h"

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>

#include "nibble/error.h"
#include "backends/ref/kernels.h"
#include "quant/requant.h"

namespace nibble::cuda {

const char* storage_name(Storage s) {
  switch (s) {
    case Storage::u8: return "u8";
    case Storage::s8: return "s8";
    case Storage::u4: return "u4";
    case Storage::s4: return "s4";
    case Storage::s32: return "s32";
    case Storage::f32: return "f32";
    case Storage::e4m3: return "e4m3";
  }
  return "?";
}

int64_t row_bytes(Storage s, int64_t channels) {
  int64_t bytes = 0;
  switch (s) {
    case Storage::u8:
    case Storage::s8: bytes = channels; break;
    case Storage::u4:
    case Storage::s4: bytes = (channels + 1) / 2; break;
    case Storage::s32:
    case Storage::f32: bytes = channels * 4; break;
    case Storage::e4m3: return (channels + kTileChannels - 1) / kTileChannels * kTileChannels;
  }
  return (bytes + 3) / 4 * 4;
}

namespace {

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// The storage of a `bits`-bit integer activation kept in bytes.
Storage byte_storage(int bits, bool is_signed) {
  switch (quant::storage_dtype(bits, is_signed)) {
    case DType::u8: return Storage::u8;
    case DType::s8: return Storage::s8;
    default: return Storage::s32;
  }
}

// The reader of a value, for the storage decision.
struct Use {
  int step;
  enum Kind { conv_x, conv_res, pool_x, other } kind;
};

class Planner {
 public:
  Planner(const Graph& graph, StorageMode mode, const PlanOptions& options) : g_(graph), options_(options) {
    plan_.source = graph.source;
    plan_.mode = mode;
  }

  Plan run() {
    if (g_.inputs.size() != 1) fail("the CUDA backend runs models of one input, this one has {}", g_.inputs.size());
    add_input();
    for (const Node& n : g_.nodes) {
      for (const std::string& i : n.inputs) {
        if (!i.empty()) readers_[i].push_back(&n);
      }
      for (const std::string& o : n.outputs) producer_[o] = &n;
    }
    for (const Node* n : planning_order()) add_node(*n);
    for (const ValueInfo& o : g_.outputs) {
      const int v = lookup(o.name, "graph output");
      plan_.outputs.push_back(v);
      plan_.output_names.push_back(o.name);
      plan_.output_flat.push_back(flat_aliases_.count(o.name) != 0);
    }
    choose_storage();
    if (options_.unfold_stem) unfold_stem();
    finish_steps();
    plan_arena();
    return std::move(plan_);
  }

 private:
  template <typename... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) const {
    nibble::fail(g_.source, "CUDA backend: {}", fmt::format(f, std::forward<Args>(args)...));
  }

  const Tensor& init(const Node& n, size_t i, const char* what) {
    if (i >= n.inputs.size() || n.inputs[i].empty()) fail("{} has no {}", n.label(), what);
    auto it = g_.initializers.find(n.inputs[i]);
    if (it == g_.initializers.end()) fail("{}: {} '{}' must be a constant", n.label(), what, n.inputs[i]);
    return it->second;
  }
  const Tensor* opt_init(const Node& n, size_t i, const char* what) {
    if (i >= n.inputs.size() || n.inputs[i].empty()) return nullptr;
    return &init(n, i, what);
  }

  int lookup(const std::string& name, const std::string& who) {
    if (requant_.count(name)) materialize(name);
    auto it = names_.find(name);
    if (it == names_.end()) fail("{} reads '{}', which no step of the plan produces", who, name);
    return it->second;
  }

  int new_value(const std::string& name, DType dtype, int bits, int64_t c, int64_t h, int64_t w, bool spatial) {
    Value v;
    v.name = name;
    v.dtype = dtype;
    v.bits = bits;
    v.c = c;
    v.h = h;
    v.w = w;
    v.spatial = spatial;
    plan_.values.push_back(v);
    const int id = static_cast<int>(plan_.values.size()) - 1;
    names_[name] = id;
    uses_.emplace_back();
    return id;
  }

  void use(int v, Use::Kind kind) { uses_[static_cast<size_t>(v)].push_back({static_cast<int>(plan_.steps.size()), kind}); }

  void add_input() {
    const ValueInfo& in = g_.inputs[0];
    if (!in.dtype || !in.shape || in.shape->size() != 4) fail("input '{}' must be N x C x H x W", in.name);
    const Shape& s = *in.shape;
    for (size_t d = 1; d < 4; ++d) {
      if (s[d] <= 0) fail("input '{}' needs fixed C, H and W, got {}", in.name, shape_str(s));
    }
    plan_.input_name = in.name;
    plan_.input_dtype = *in.dtype;
    plan_.input_c = s[1];
    plan_.input_h = s[2];
    plan_.input_w = s[3];
    // A QuantizeFloat reading the input is folded into the input step.
    const Node* q = nullptr;
    for (const Node& n : g_.nodes) {
      for (const std::string& i : n.inputs) {
        if (i == in.name && n.op_type == "nibble:QuantizeFloat" && !q) q = &n;
      }
    }
    Step st;
    st.kind = StepKind::input;
    st.name = "input";
    st.op = "input";
    st.input.host_dtype = *in.dtype;
    if (*in.dtype == DType::f32) {
      if (!q) fail("input '{}' is f32: the CUDA backend runs integer models (a nibble:QuantizeFloat must read it)", in.name);
      const Tensor& scale = init(*q, 1, "scale");
      if (scale.numel() != 1 && scale.numel() != s[1]) fail("{}: {} scales for {} channels", q->label(), scale.numel(), s[1]);
      for (int64_t i = 0; i < scale.numel(); ++i) st.input.scale.push_back(static_cast<float>(scale.get(i)));
      folded_quantize_ = q;
      st.input.quantize = true;
      if (q->attr_int("e4m3", 0)) {
        st.input.e4m3 = true;
        st.y = new_value(q->outputs.at(0), DType::e4m3, 8, s[1], s[2], s[3], true);
        plan_.values.back().storage = Storage::e4m3;
        names_[in.name] = st.y;
        plan_.input_value = st.y;
        plan_.steps.push_back(std::move(st));
        return;
      }
      const int bits = static_cast<int>(q->attr_int("bits", 8));
      const bool sgn = q->attr_int("signed", 0) != 0;
      if (bits < 1 || bits > 8 || (sgn && bits > 7)) fail("{}: {}-bit inputs are not supported", q->label(), bits);
      const auto r = quant::output_range(bits, sgn);
      st.input.lo = r.lo;
      st.input.hi = r.hi;
      st.y = new_value(q->outputs.at(0), quant::storage_dtype(bits, sgn), bits, s[1], s[2], s[3], true);
      plan_.values.back().storage = byte_storage(bits, sgn);
      names_[in.name] = st.y;  // nothing else may read the raw floats; checked in add_node
    } else if (*in.dtype == DType::u8 || *in.dtype == DType::s8) {
      st.y = new_value(in.name, *in.dtype, 8, s[1], s[2], s[3], true);
      plan_.values.back().storage = *in.dtype == DType::u8 ? Storage::u8 : Storage::s8;
    } else {
      fail("input '{}' is {}: the CUDA backend takes u8, s8 or f32 (through nibble:QuantizeFloat)", in.name,
           dtype_name(*in.dtype));
    }
    plan_.input_value = st.y;
    plan_.steps.push_back(std::move(st));
  }

  void add_node(const Node& n) {
    if (&n == folded_quantize_ || fused_.count(&n)) return;
    for (const std::string& i : n.inputs) {
      if (folded_quantize_ && i == g_.inputs[0].name) fail("{} reads the f32 input directly", n.label());
    }
    if (n.op_type == "nibble:IntConvFused" || n.op_type == "nibble:IntConv") return add_conv(n);
    if (n.op_type == "nibble:Fp8Conv") return add_fp8_conv(n);
    if (n.op_type == "nibble:IntLinear") return add_linear(n);
    if (n.op_type == "nibble:Requantize") return add_requantize(n);
    if (n.op_type == "MaxPool") return add_pool(n, StepKind::max_pool);
    if (n.op_type == "nibble:IntAvgPool") return add_pool(n, StepKind::avg_pool);
    if (n.op_type == "Flatten") return add_flatten(n);
    if (n.op_type == "nibble:Scale") return add_scale(n);
    if (n.op_type == "DequantizeLinear") return add_dequantize(n);
    if (n.op_type == "GlobalAveragePool" || n.op_type == "AveragePool") return add_mean_quantize(n);
    fail("op {} ({}) is not supported", n.op_type, n.label());
  }

  // The residual source of a conv: an s32 value, or a folded Requantize of a narrow one.
  struct Residual {
    int value = -1;
    const Node* requant = nullptr;
  };

  void add_conv(const Node& n) {
    const int x = lookup(n.inputs.at(0), n.label());
    const Tensor& w = init(n, 1, "weight");
    const Tensor& bias = init(n, 2, "bias");
    Step st;
    st.kind = StepKind::conv;
    st.name = n.name;
    st.op = n.op_type;
    ConvStep& c = st.conv;
    const Value xv = plan_.values[static_cast<size_t>(x)];  // a copy: new_value() may reallocate
    if (xv.storage == Storage::e4m3) fail("{}: input '{}' is FP8, an integer convolution cannot read it", n.label(), xv.name);
    const auto [oh, ow] = conv_window(n, w, xv, c);
    c.relu = n.attr_int("relu", 0) != 0;
    Residual res;
    if (n.op_type == "nibble:IntConvFused" && n.inputs.size() > 3 && !n.inputs[3].empty()) {
      auto it = requant_.find(n.inputs[3]);
      if (it != requant_.end()) {
        res.requant = it->second;
        res.value = lookup(res.requant->inputs.at(0), n.label());
      } else {
        res.value = lookup(n.inputs[3], n.label());
        if (plan_.values[static_cast<size_t>(res.value)].dtype != DType::s32) {
          fail("{}: residual '{}' must be s32", n.label(), n.inputs[3]);
        }
      }
    }
    const Tensor* factor = n.op_type == "nibble:IntConvFused" ? opt_init(n, 4, "requant_factor") : nullptr;
    int bits = 32;
    bool sgn = true;
    DType out_dtype = DType::s32;
    if (factor) {
      c.shift = static_cast<int>(n.attr_int("shift", -1));
      bits = static_cast<int>(n.attr_int("bits", -1));
      sgn = n.attr_int("signed", 0) != 0;
      if (c.shift < 0 || c.shift > 31 || bits < 1 || bits > 31) fail("{}: bad shift or bits", n.label());
      const auto r = quant::output_range(bits, sgn);
      c.lo = r.lo;
      c.hi = r.hi;
      out_dtype = quant::storage_dtype(bits, sgn);
    }
    set_conv_constants(n, st, w, bias, factor, res);
    if (factor) c.sat = quant::saturation_thresholds(c.factor, c.shift, c.lo, c.hi);
    if (factor && c.relu && c.lo == 0 && !c.sat.empty()) c.sat_top = top_thresholds(c.factor, c.shift, c.hi, c.sat);
    if (res.requant) {
      const Value& rv = plan_.values[static_cast<size_t>(res.value)];
      const auto vr = quant::output_range(rv.bits, traits(rv.dtype).is_signed);
      c.res_in_range = rv.bits <= 8 && requantization_in_range(c.res_factor, c.res_shift, vr.lo, vr.hi, c.res_lo, c.res_hi);
    }
    st.x = x;
    use(x, Use::conv_x);
    if (res.value >= 0) {
      c.res = res.value;
      use(res.value, res.requant ? Use::conv_res : Use::other);
    }
    st.y = new_value(n.outputs.at(0), out_dtype, bits, c.m, oh, ow, true);
    plan_.values.back().storage = factor ? byte_storage(bits, sgn) : Storage::s32;
    st.macs_per_image = oh * ow * c.m * xv.c * c.kh * c.kw;
    plan_.steps.push_back(std::move(st));
  }

  // The window attributes of a 2-D convolution node into `c`; returns the output's height and width.
  std::pair<int64_t, int64_t> conv_window(const Node& n, const Tensor& w, const Value& xv, ConvStep& c) {
    if (n.attr_int("group", 1) != 1) fail("{}: grouped convolutions are not supported", n.label());
    if (n.has_attr("auto_pad") && n.attr_string("auto_pad", "NOTSET") != "NOTSET") {
      fail("{}: auto_pad is not supported", n.label());
    }
    if (w.rank() != 4) fail("{}: weight must be M x C x KH x KW, got {}", n.label(), shape_str(w.shape()));
    const auto strides = n.attr_ints("strides", {1, 1});
    const auto dil = n.attr_ints("dilations", {1, 1});
    const auto pads = n.attr_ints("pads", {0, 0, 0, 0});
    if (strides.size() != 2 || dil.size() != 2 || pads.size() != 4) fail("{}: needs 2-D strides, dilations and pads", n.label());
    c.kh = static_cast<int>(w.dim(2));
    c.kw = static_cast<int>(w.dim(3));
    c.sh = static_cast<int>(strides[0]);
    c.sw = static_cast<int>(strides[1]);
    c.dh = static_cast<int>(dil[0]);
    c.dw = static_cast<int>(dil[1]);
    c.ph = static_cast<int>(pads[0]);
    c.pw = static_cast<int>(pads[1]);
    c.ph_end = static_cast<int>(pads[2]);
    c.pw_end = static_cast<int>(pads[3]);
    if (!xv.spatial || w.dim(1) != xv.c) {
      fail("{}: weight {} does not match input '{}' of {} channels", n.label(), shape_str(w.shape()), xv.name, xv.c);
    }
    const int64_t oh = (xv.h + pads[0] + pads[2] - dil[0] * (c.kh - 1) - 1) / strides[0] + 1;
    const int64_t ow = (xv.w + pads[1] + pads[3] - dil[1] * (c.kw - 1) - 1) / strides[1] + 1;
    if (oh <= 0 || ow <= 0) fail("{}: the output would be empty", n.label());
    return {oh, ow};
  }

  // nibble:Fp8Conv (e4m3 x s4/s8 levels, optional group scales) with an f32 output. The weights
  // become e4m3 codes: plain levels must be values e4m3 holds exactly (all of s4's).
  void add_fp8_conv(const Node& n) {
    const int x = lookup(n.inputs.at(0), n.label());
    const Tensor& w = init(n, 1, "weight");
    const Tensor& bias = init(n, 2, "bias");
    const Tensor& scale = init(n, 3, "scale");
    const Tensor* groups = opt_init(n, 4, "group scales");
    const Value xv = plan_.values[static_cast<size_t>(x)];
    if (xv.storage != Storage::e4m3) fail("{}: input '{}' must be e4m3", n.label(), xv.name);
    Step st;
    st.kind = StepKind::conv;
    st.name = n.name;
    st.op = n.op_type;
    ConvStep& c = st.conv;
    const auto [oh, ow] = conv_window(n, w, xv, c);
    if (w.dtype() != DType::s8 && w.dtype() != DType::s4) fail("{}: weights must be s8 or s4", n.label());
    c.m = w.dim(0);
    c.m_pad = round_up(c.m, kMapAlign);
    if (bias.numel() != c.m || scale.numel() != c.m || bias.dtype() != DType::f32 || scale.dtype() != DType::f32) {
      fail("{}: bias and scale must be {} f32 values", n.label(), c.m);
    }
    c.fp8 = true;
    c.relu = n.attr_int("relu", 0) != 0;
    c.fscale.assign(static_cast<size_t>(c.m_pad), 0.0f);
    c.fbias.assign(static_cast<size_t>(c.m_pad), 0.0f);
    for (int64_t i = 0; i < c.m; ++i) {
      c.fscale[static_cast<size_t>(i)] = static_cast<float>(scale.get(i));
      c.fbias[static_cast<size_t>(i)] = static_cast<float>(bias.get(i));
    }
    const int64_t per = w.numel() / c.m;
    std::vector<uint8_t> codes(static_cast<size_t>(w.numel()));
    int64_t size = 0, count = 0;
    if (groups) {
      size = n.attr_int("group_size", 0);
      count = size > 0 ? (per + size - 1) / size : 0;
      if (size < 1 || groups->dtype() != DType::f32 || groups->rank() != 2 || groups->dim(0) != c.m || groups->dim(1) != count) {
        fail("{}: group scales must be f32 [{}, {}] with a positive group_size", n.label(), c.m, count);
      }
    }
    for (int64_t i = 0; i < w.numel(); ++i) {
      const float level = static_cast<float>(w.get(i));
      const float v = groups ? level * static_cast<float>(groups->get((i / per) * count + (i % per) / size)) : level;
      codes[static_cast<size_t>(i)] = f32_to_e4m3_bits(v);
      if (!groups && e4m3_bits_to_f32(codes[static_cast<size_t>(i)]) != level) {
        fail("{}: weight level {} has no exact e4m3 form (FP8 convolutions take 4-bit levels or group scales)", n.label(),
             level);
      }
    }
    fp8_codes_[plan_.steps.size()] = std::move(codes);
    weight_tensors_.push_back(&w);
    st.x = x;
    use(x, Use::other);
    // The f32 ops after it: Add of a DequantizeLinear'd e4m3 residual, Relu, QuantizeFloat to e4m3.
    std::string out = n.outputs.at(0);
    if (const Node* d = fp8_residual(out); d && !c.relu) {
      const Node* a = sole_reader(out);
      const int r = lookup(d->inputs.at(0), d->label());
      c.res = r;
      c.fres_scale = one_scale(*d, 1);
      use(r, Use::other);
      fused_.insert(d);
      fused_.insert(a);
      out = a->outputs.at(0);
    }
    if (const Node* r = sole_reader(out); r && r->op_type == "Relu") {
      c.relu = true;
      fused_.insert(r);
      out = r->outputs.at(0);
    }
    const Node* q = sole_reader(out);
    const bool fp8_out = q && is_e4m3_quantize(*q);
    if (fp8_out) {
      c.fout_scale = one_scale(*q, 1);
      fused_.insert(q);
      out = q->outputs.at(0);
    }
    st.y = new_value(out, fp8_out ? DType::e4m3 : DType::f32, fp8_out ? 8 : 32, c.m, oh, ow, true);
    plan_.values.back().storage = fp8_out ? Storage::e4m3 : Storage::f32;
    st.macs_per_image = oh * ow * c.m * xv.c * c.kh * c.kw;
    plan_.steps.push_back(std::move(st));
  }

  // The one node that reads tensor `t`, where exactly one does and `t` is not a graph output.
  const Node* sole_reader(const std::string& t) const {
    const auto it = readers_.find(t);
    if (it == readers_.end() || it->second.size() != 1) return nullptr;
    for (const ValueInfo& o : g_.outputs) {
      if (o.name == t) return nullptr;
    }
    return it->second[0];
  }
  const Node* node_writing(const std::string& t) const {
    const auto it = producer_.find(t);
    return it == producer_.end() ? nullptr : it->second;
  }
  static bool is_e4m3_quantize(const Node& q) {
    return q.op_type == "nibble:QuantizeFloat" && q.attr_int("e4m3", 0) != 0;
  }
  // The single f32 scale of input `i` (a QuantizeFloat's or DequantizeLinear's), checked.
  float one_scale(const Node& n, size_t i) {
    const Tensor& s = init(n, i, "scale");
    if (s.dtype() != DType::f32 || s.numel() != 1) fail("{}: needs one f32 scale (per-tensor)", n.label());
    if (n.op_type == "DequantizeLinear" && n.inputs.size() > 2 && !n.inputs[2].empty()) {
      const Tensor& z = init(n, 2, "zero point");
      for (int64_t k = 0; k < z.numel(); ++k) {
        if (z.get(k) != 0.0) fail("{}: needs a zero zero point", n.label());
      }
    }
    return static_cast<float>(s.get(0));
  }
  // Where the only reader of FP8 conv output `out` is an Add whose other operand is a
  // DequantizeLinear of an e4m3 value read by that Add alone: the DequantizeLinear.
  const Node* fp8_residual(const std::string& out) const {
    const Node* a = sole_reader(out);
    if (!a || a->op_type != "Add" || a->inputs.size() != 2 || a->inputs[0] == a->inputs[1]) return nullptr;
    const std::string& other = a->inputs[0] == out ? a->inputs[1] : a->inputs[0];
    const Node* d = node_writing(other);
    if (!d || d->op_type != "DequantizeLinear" || sole_reader(other) != a) return nullptr;
    const Node* q = node_writing(d->inputs.at(0));
    if (!q || !is_e4m3_quantize(*q)) return nullptr;
    return d;
  }

  // The nodes in an order the planner can fuse: the graph's, except that an FP8 conv whose output
  // is added to an e4m3 residual waits for the node producing that residual (an exporter may
  // place a shortcut's convolution after the block's last one).
  std::vector<const Node*> planning_order() const {
    const size_t count = g_.nodes.size();
    std::map<const Node*, size_t> index;
    for (size_t i = 0; i < count; ++i) index[&g_.nodes[i]] = i;
    std::vector<std::vector<size_t>> after(count);  // after[i]: nodes that wait for node i
    std::vector<int> waits(count, 0);
    auto edge = [&](const Node* from, size_t to) {
      if (!from) return;
      after[index.at(from)].push_back(to);
      ++waits[to];
    };
    for (size_t i = 0; i < count; ++i) {
      const Node& n = g_.nodes[i];
      for (const std::string& in : n.inputs) {
        if (!in.empty()) edge(node_writing(in), i);
      }
      if (n.op_type == "nibble:Fp8Conv") {
        if (const Node* d = fp8_residual(n.outputs.at(0))) edge(node_writing(d->inputs.at(0)), i);
      }
    }
    std::set<size_t> ready;
    for (size_t i = 0; i < count; ++i) {
      if (waits[i] == 0) ready.insert(i);
    }
    std::vector<const Node*> order;
    while (!ready.empty()) {
      const size_t i = *ready.begin();
      ready.erase(ready.begin());
      order.push_back(&g_.nodes[i]);
      for (size_t j : after[i]) {
        if (--waits[j] == 0) ready.insert(j);
      }
    }
    if (order.size() != count) fail("the graph has a cycle");
    return order;
  }

  // DequantizeLinear: of an e4m3 value into an Add (left to the FP8 convolution that fuses it), or
  // of an 8-bit value into a QuantizeFloat to e4m3 (one table lookup per value).
  void add_dequantize(const Node& n) {
    const Node* q = sole_reader(n.outputs.at(0));
    if (q && q->op_type == "Add") return;  // the FP8 convolution before the Add reads it (or the Add is refused)
    if (!q || !is_e4m3_quantize(*q)) fail("{}: only a DequantizeLinear into a QuantizeFloat to e4m3 is supported", n.label());
    const int x = lookup(n.inputs.at(0), n.label());
    const Value xv = plan_.values[static_cast<size_t>(x)];
    if (!xv.spatial || (xv.storage != Storage::u8 && xv.storage != Storage::s8)) {
      fail("{}: input must be an 8-bit N x C x H x W tensor", n.label());
    }
    // The table: the reference's two ops on every byte.
    Tensor bytes(xv.storage == Storage::u8 ? DType::u8 : DType::s8, {1, 256, 1, 1});
    for (int b = 0; b < 256; ++b) bytes.bytes()[b] = static_cast<uint8_t>(b);
    Tensor scale(DType::f32, {});
    scale.data<float>()[0] = one_scale(n, 1);
    Node deq = n;
    deq.attrs.erase("axis");
    ref::Outputs f(1), codes(1);
    ref::dequantize_linear(deq, {&bytes, &scale}, f);
    Tensor qscale(DType::f32, {});
    qscale.data<float>()[0] = one_scale(*q, 1);
    ref::quantize_float(*q, {&f[0], &qscale}, codes);
    Step st;
    st.kind = StepKind::lut;
    st.name = q->name;
    st.op = "nibble:QuantizeFloat";
    st.lut.assign(codes[0].bytes(), codes[0].bytes() + 256);
    st.x = x;
    use(x, Use::other);
    fused_.insert(q);
    st.y = new_value(q->outputs.at(0), DType::e4m3, 8, xv.c, xv.h, xv.w, true);
    plan_.values.back().storage = Storage::e4m3;
    plan_.steps.push_back(std::move(st));
  }

  // A global average pool of f32 values into a QuantizeFloat to 8 bits: the mean of each
  // channel's plane (summed in double in row order and divided, as the reference), quantized.
  void add_mean_quantize(const Node& n) {
    const int x = lookup(n.inputs.at(0), n.label());
    const Value xv = plan_.values[static_cast<size_t>(x)];
    if (!xv.spatial || xv.storage != Storage::f32) fail("{}: input must be an f32 N x C x H x W tensor", n.label());
    if (n.op_type == "AveragePool") {
      const auto k = n.attr_ints("kernel_shape");
      const auto p = n.attr_ints("pads", {0, 0, 0, 0});
      if (k != std::vector<int64_t>{xv.h, xv.w} || p != std::vector<int64_t>{0, 0, 0, 0} || n.attr_int("ceil_mode", 0) ||
          n.attr_ints("dilations", {1, 1}) != std::vector<int64_t>{1, 1}) {
        fail("{}: only an average over the whole plane is supported", n.label());
      }
    }
    const Node* q = sole_reader(n.outputs.at(0));
    if (!q || q->op_type != "nibble:QuantizeFloat" || is_e4m3_quantize(*q)) {
      fail("{}: an f32 average pool must be read by a QuantizeFloat to integers alone", n.label());
    }
    const int bits = static_cast<int>(q->attr_int("bits", 8));
    const bool sgn = q->attr_int("signed", 0) != 0;
    if (bits < 1 || bits > 8 || (sgn && bits > 7)) fail("{}: {}-bit outputs are not supported", q->label(), bits);
    Step st;
    st.kind = StepKind::mean_quantize;
    st.name = n.name;
    st.op = n.op_type;
    st.quant.scale.push_back(one_scale(*q, 1));
    const auto r = quant::output_range(bits, sgn);
    st.quant.lo = r.lo;
    st.quant.hi = r.hi;
    st.x = x;
    use(x, Use::other);
    fused_.insert(q);
    st.y = new_value(q->outputs.at(0), quant::storage_dtype(bits, sgn), bits, xv.c, 1, 1, true);
    plan_.values.back().storage = byte_storage(bits, sgn);
    plan_.steps.push_back(std::move(st));
  }

  void set_conv_constants(const Node& n, Step& st, const Tensor& w, const Tensor& bias, const Tensor* factor,
                          const Residual& res) {
    ConvStep& c = st.conv;
    c.m = w.dim(0);
    c.m_pad = round_up(c.m, kMapAlign);
    if (w.dtype() != DType::s8 && w.dtype() != DType::s4) fail("{}: weights must be s8 or s4", n.label());
    if (bias.numel() != c.m) fail("{}: {} bias values for {} maps", n.label(), bias.numel(), c.m);
    c.bias.assign(static_cast<size_t>(c.m_pad), 0);
    for (int64_t i = 0; i < c.m; ++i) c.bias[static_cast<size_t>(i)] = static_cast<int32_t>(bias.get(i));
    if (factor) {
      if (factor->dtype() != DType::u16 || factor->numel() != c.m) fail("{}: requant_factor must be {} u16 values", n.label(), c.m);
      c.factor.assign(static_cast<size_t>(c.m_pad), 0);
      for (int64_t i = 0; i < c.m; ++i) c.factor[static_cast<size_t>(i)] = static_cast<uint16_t>(factor->get(i));
    }
    if (res.requant) {
      const Node& r = *res.requant;
      const Tensor& rf = init(r, 1, "requant_factor");
      if (rf.dtype() != DType::u16 || rf.numel() != c.m) fail("{}: requant_factor must be {} u16 values", r.label(), c.m);
      c.res_requant = true;
      c.res_factor.assign(static_cast<size_t>(c.m_pad), 0);
      for (int64_t i = 0; i < c.m; ++i) c.res_factor[static_cast<size_t>(i)] = static_cast<uint16_t>(rf.get(i));
      c.res_shift = static_cast<int>(r.attr_int("shift", -1));
      const int rb = static_cast<int>(r.attr_int("bits", -1));
      if (c.res_shift < 0 || c.res_shift > 31 || rb < 1 || rb > 31) fail("{}: bad shift or bits", r.label());
      const auto range = quant::output_range(rb, r.attr_int("signed", 0) != 0);
      c.res_lo = range.lo;
      c.res_hi = range.hi;
    }
    weight_tensors_.push_back(&w);
  }

  // nibble:IntLinear over N x K (or a flattened N x C x H x W): a convolution whose kernel
  // covers the whole input plane.
  void add_linear(const Node& n) {
    auto fl = flattened_.find(n.inputs.at(0));
    const int x = fl != flattened_.end() ? fl->second : lookup(n.inputs.at(0), n.label());
    const Tensor& w = init(n, 1, "weight");
    const Tensor& bias = init(n, 2, "bias");
    const Value xv = plan_.values[static_cast<size_t>(x)];
    if (w.rank() != 2 || w.dim(1) != xv.c * xv.h * xv.w) {
      fail("{}: weight {} does not match input '{}' of {} features", n.label(), shape_str(w.shape()), xv.name,
           xv.c * xv.h * xv.w);
    }
    if (xv.storage == Storage::s32) fail("{}: input must be 8-bit", n.label());
    Tensor w4 = w.reshaped({w.dim(0), xv.c, xv.h, xv.w});
    owned_weights_.push_back(std::make_unique<Tensor>(std::move(w4)));
    Step st;
    st.kind = StepKind::conv;
    st.name = n.name;
    st.op = n.op_type;
    st.conv.kh = static_cast<int>(xv.h);
    st.conv.kw = static_cast<int>(xv.w);
    set_conv_constants(n, st, *owned_weights_.back(), bias, nullptr, Residual{});
    st.x = x;
    use(x, Use::conv_x);
    st.y = new_value(n.outputs.at(0), DType::s32, 32, st.conv.m, 1, 1, false);
    plan_.values.back().storage = Storage::s32;
    st.macs_per_image = st.conv.m * w.dim(1);
    plan_.steps.push_back(std::move(st));
  }

  void add_requantize(const Node& n) {
    // Deferred: a conv that adds it as its residual folds it into its epilogue; any other
    // reader makes it a step of its own (materialize).
    lookup(n.inputs.at(0), n.label());
    requant_[n.outputs.at(0)] = &n;
  }

  void materialize(const std::string& name) {
    const Node& n = *requant_.at(name);
    requant_.erase(name);
    const int x = lookup(n.inputs.at(0), n.label());
    const Value xv = plan_.values[static_cast<size_t>(x)];
    const Tensor& f = init(n, 1, "requant_factor");
    if (f.dtype() != DType::u16 || f.numel() != xv.c) fail("{}: requant_factor must be {} u16 values", n.label(), xv.c);
    Step st;
    st.kind = StepKind::requantize;
    st.name = n.name;
    st.op = n.op_type;
    ConvStep& c = st.conv;
    c.m = xv.c;
    c.m_pad = round_up(xv.c, kMapAlign);
    c.factor.assign(static_cast<size_t>(c.m_pad), 0);
    for (int64_t i = 0; i < xv.c; ++i) c.factor[static_cast<size_t>(i)] = static_cast<uint16_t>(f.get(i));
    c.shift = static_cast<int>(n.attr_int("shift", -1));
    const int bits = static_cast<int>(n.attr_int("bits", -1));
    const bool sgn = n.attr_int("signed", 0) != 0;
    if (c.shift < 0 || c.shift > 31 || bits < 1 || bits > 31) fail("{}: bad shift or bits", n.label());
    const auto r = quant::output_range(bits, sgn);
    c.lo = r.lo;
    c.hi = r.hi;
    st.x = x;
    use(x, Use::conv_res);  // read element by element: any storage
    st.y = new_value(name, quant::storage_dtype(bits, sgn), bits, xv.c, xv.h, xv.w, xv.spatial);
    plan_.values.back().storage = byte_storage(bits, sgn);
    plan_.steps.push_back(std::move(st));
  }

  void add_pool(const Node& n, StepKind kind) {
    const int x = lookup(n.inputs.at(0), n.label());
    const Value xv = plan_.values[static_cast<size_t>(x)];
    if (!xv.spatial || (xv.storage != Storage::u8 && xv.storage != Storage::s8)) {
      fail("{}: input must be an 8-bit (or narrower) N x C x H x W tensor", n.label());
    }
    if (kind == StepKind::avg_pool && xv.storage != Storage::u8) fail("{}: input must be unsigned", n.label());
    const auto k = n.attr_ints("kernel_shape");
    const auto s = n.attr_ints("strides", {1, 1});
    const auto p = n.attr_ints("pads", {0, 0, 0, 0});
    if (k.size() != 2 || s.size() != 2 || p.size() != 4) fail("{}: needs a 2-D kernel, strides and pads", n.label());
    if (n.attr_int("ceil_mode", 0) || n.attr_ints("dilations", {1, 1}) != std::vector<int64_t>{1, 1}) {
      fail("{}: ceil_mode and dilations are not supported", n.label());
    }
    if (n.outputs.size() > 1 && !n.outputs[1].empty()) fail("{}: MaxPool indices are not supported", n.label());
    Step st;
    st.kind = kind;
    st.name = n.name;
    st.op = n.op_type;
    st.pool = {static_cast<int>(k[0]), static_cast<int>(k[1]), static_cast<int>(s[0]),
               static_cast<int>(s[1]), static_cast<int>(p[0]), static_cast<int>(p[1])};
    const int64_t oh = (xv.h + p[0] + p[2] - k[0]) / s[0] + 1, ow = (xv.w + p[1] + p[3] - k[1]) / s[1] + 1;
    if (oh <= 0 || ow <= 0) fail("{}: the output would be empty", n.label());
    st.x = x;
    use(x, kind == StepKind::max_pool ? Use::pool_x : Use::other);
    st.y = new_value(n.outputs.at(0), xv.dtype, xv.bits, xv.c, oh, ow, true);
    plan_.values.back().storage = xv.storage;
    plan_.steps.push_back(std::move(st));
  }

  void add_flatten(const Node& n) {
    const int x = lookup(n.inputs.at(0), n.label());
    if (n.attr_int("axis", 1) != 1) fail("{}: only axis=1 is supported", n.label());
    const Value xv = plan_.values[static_cast<size_t>(x)];  // a copy: new_value() may reallocate
    if (xv.h == 1 && xv.w == 1) {
      names_[n.outputs.at(0)] = x;  // the same bytes: N x C x 1 x 1 and N x C are one layout in NHWC
      flat_aliases_.insert(n.outputs.at(0));
    } else {
      flattened_[n.outputs.at(0)] = x;  // only an IntLinear may read it (a plane-sized kernel)
    }
  }

  void add_scale(const Node& n) {
    const int x = lookup(n.inputs.at(0), n.label());
    const Tensor& s = init(n, 1, "out_scale");
    const Value xv = plan_.values[static_cast<size_t>(x)];
    if (xv.storage != Storage::s32 || xv.h * xv.w != 1 || s.numel() != xv.c) {
      fail("{}: expects s32 N x K logits and K scales", n.label());
    }
    Step st;
    st.kind = StepKind::scale;
    st.name = n.name;
    st.op = n.op_type;
    for (int64_t i = 0; i < s.numel(); ++i) st.scale.push_back(static_cast<float>(s.get(i)));
    st.x = x;
    use(x, Use::other);
    st.y = new_value(n.outputs.at(0), DType::f32, 32, xv.c, 1, 1, false);
    plan_.values.back().storage = Storage::f32;
    plan_.steps.push_back(std::move(st));
  }

  // Packs 4-bit activations (unsigned 4-bit, signed 3-bit) where every reader takes them: convs with s4 weights whose input
  // channels fill whole K tiles, max pools (whose output then packs too) and residual reads.
  void choose_storage() {
    const size_t nv = plan_.values.size();
    std::vector<char> packed(nv, 0);
    if (plan_.mode == StorageMode::native) {
      for (size_t v = 0; v < nv; ++v) {
        const Value& val = plan_.values[v];
        // Only the convolution and max pool kernels write 4-bit storage.
        const int def = producer(static_cast<int>(v));
        const bool writer = def >= 0 && (plan_.steps[static_cast<size_t>(def)].kind == StepKind::conv ||
                                         plan_.steps[static_cast<size_t>(def)].kind == StepKind::max_pool);
        // A nibble holds unsigned values of up to 4 bits and signed ones of up to 3 (a signed
        // b-bit value spans [-(2^b - 1), 2^b - 1]: signed 4-bit needs 5 bits).
        const bool fits = val.storage == Storage::u8 ? val.bits <= 4 : (val.storage == Storage::s8 && val.bits <= 3);
        packed[v] = writer && fits;
      }
      for (const ValueInfo& o : g_.outputs) packed[static_cast<size_t>(names_.at(o.name))] = 0;
      for (bool changed = true; changed;) {
        changed = false;
        for (size_t v = 0; v < nv; ++v) {
          if (!packed[v]) continue;
          bool ok = true;
          for (const Use& u : uses_[v]) {
            const Step& st = plan_.steps[static_cast<size_t>(u.step)];
            if (u.kind == Use::conv_x) {
              ok = ok && weight_tensors_[conv_index(u.step)]->dtype() == DType::s4 && plan_.values[v].c % kTileChannels == 0;
            } else if (u.kind == Use::pool_x) {
              ok = ok && packed[static_cast<size_t>(st.y)];
            } else if (u.kind != Use::conv_res) {
              ok = false;
            }
          }
          // A max pool's output packs only with its input.
          const int def = producer(static_cast<int>(v));
          if (def >= 0 && plan_.steps[static_cast<size_t>(def)].kind == StepKind::max_pool) {
            ok = ok && packed[static_cast<size_t>(plan_.steps[static_cast<size_t>(def)].x)];
          }
          if (!ok) {
            packed[v] = 0;
            changed = true;
          }
        }
      }
    }
    for (size_t v = 0; v < nv; ++v) {
      Value& val = plan_.values[v];
      if (packed[v]) val.storage = val.storage == Storage::s8 ? Storage::s4 : Storage::u4;
      val.row = row_bytes(val.storage, val.c);
    }
  }

  int producer(int v) const {
    for (size_t s = 0; s < plan_.steps.size(); ++s) {
      if (plan_.steps[s].y == v) return static_cast<int>(s);
    }
    return -1;
  }

  size_t conv_index(int step) const {
    size_t i = 0;
    for (int s = 0; s < step; ++s) i += plan_.steps[static_cast<size_t>(s)].kind == StepKind::conv;
    return i;
  }

  // InputUnfold (plan.h): the input step writes the unfolded rows of the one convolution that
  // reads the input, where that convolution has row stride 2, a kernel of at most kTapRow
  // columns, no dilation, and an input of one word per pixel at 8 bits.
  void unfold_stem() {
    Step& in = plan_.steps[0];
    const int xv = in.y;
    Value& x = plan_.values[static_cast<size_t>(xv)];
    if ((x.storage != Storage::u8 && x.storage != Storage::s8) || x.row != 4 || x.bits > 8) return;
    const auto& uses = uses_[static_cast<size_t>(xv)];
    if (uses.size() != 1 || uses[0].kind != Use::conv_x) return;
    for (int o : plan_.outputs) {
      if (o == xv) return;
    }
    Step& st = plan_.steps[static_cast<size_t>(uses[0].step)];
    ConvStep& c = st.conv;
    const Value& y = plan_.values[static_cast<size_t>(st.y)];
    if (c.sh != 2 || c.kw > kTapRow || c.dh != 1 || c.dw != 1 || c.ph < 0 || c.pw < 0) return;
    InputUnfold& u = in.input.unfold;
    u.on = true;
    u.row_offset = -(c.ph % 2);
    u.stride_w = c.sw;
    u.pad_w = c.pw;
    // Every input row lies in some pair: rows row_offset .. 2 h2 + row_offset - 1.
    u.h2 = (x.h - u.row_offset + 1) / 2;
    u.ow = y.w;
    // Output row oy reads rows 2 oy - ph .. + kh - 1, the pairs oy - ph / 2 .. + ceil(kh / 2) - 1.
    c.unfold_kh = c.kh;
    c.unfold_kw = c.kw;
    c.kh = (c.kh + 1) / 2;
    c.kw = 1;
    c.sh = 1;
    c.sw = 1;
    c.ph = c.ph / 2;
    c.ph_end = static_cast<int>(y.h + c.kh - 1 - c.ph - u.h2);  // the pair rows past the last one
    c.pw = 0;
    c.pw_end = 0;
    x.h = u.h2;
    x.w = u.ow;
    x.row = 2 * kTapRow * 4;
  }

  // Weights in the kernel's layout, K-tile choices and the traffic of each step.
  void finish_steps() {
    for (const auto& [name, v] : flattened_) {
      for (const Node& n : g_.nodes) {
        for (const std::string& i : n.inputs) {
          if (i == name && n.op_type != "nibble:IntLinear") fail("{} reads the flattened plane '{}'", n.label(), name);
        }
      }
      for (const ValueInfo& o : g_.outputs) {
        if (o.name == name) fail("output '{}' is a flattened plane", name);
      }
    }
    size_t ci = 0;
    for (Step& st : plan_.steps) {
      const Value& x = st.x >= 0 ? plan_.values[static_cast<size_t>(st.x)] : plan_.values[static_cast<size_t>(st.y)];
      const Value& y = plan_.values[static_cast<size_t>(st.y)];
      if (st.kind == StepKind::conv) {
        ConvStep& c = st.conv;
        const Tensor& w = *weight_tensors_[ci++];
        const int64_t tile = is_packed(x.storage) ? kTileChannels / 2 : kTileChannels;
        const bool unfolded = c.unfold_kh > 0;
        if (x.row % tile == 0) {
          c.load = ConvLoad::vec;
        } else if (x.row == 4 && c.kw <= kTapRow) {
          c.load = ConvLoad::taps;
        } else {
          c.load = ConvLoad::gather;
        }
        // Bytes of one kernel row (kh): kTapRow taps of one word in `taps` mode and unfolded
        // (where a pair of kernel rows fills one unfolded pixel: row a at byte 32 a).
        const bool tap_rows = c.load == ConvLoad::taps || unfolded;
        const int64_t kh_bytes = tap_rows ? kTapRow * 4 : c.kw * x.row;
        const int64_t tap_bytes = tap_rows ? 4 : x.row;
        const int64_t kh = unfolded ? c.unfold_kh : c.kh, kw = unfolded ? c.unfold_kw : c.kw;
        c.k_bytes = unfolded ? c.kh * x.row : kh * kh_bytes;
        c.k_pad = round_up(c.k_bytes, tile);
        c.weights.assign(static_cast<size_t>(c.m_pad * c.k_pad), 0);
        const int64_t cin = w.dim(1);
        for (int64_t m = 0; m < c.m; ++m) {
          for (int64_t ch = 0; ch < cin; ++ch) {
            for (int64_t a = 0; a < kh; ++a) {
              for (int64_t b = 0; b < kw; ++b) {
                const int64_t wi = ((m * cin + ch) * kh + a) * kw + b;
                const int v = c.fp8 ? static_cast<int8_t>(fp8_codes_.at(static_cast<size_t>(&st - plan_.steps.data()))[static_cast<size_t>(wi)])
                                    : static_cast<int>(w.get(wi));
                const int64_t tap = a * kh_bytes + b * tap_bytes;
                int8_t* dst = c.weights.data() + m * c.k_pad + tap;
                if (is_packed(x.storage)) {
                  pack_4bit(reinterpret_cast<uint8_t*>(dst), ch, v);
                } else {
                  dst[ch] = static_cast<int8_t>(v);
                }
              }
            }
          }
        }
        plan_.weight_bytes += c.m * kh * kw * (unfolded ? 4 : x.row);
        st.bytes_per_image = x.image_bytes() + y.image_bytes();
        if (c.res >= 0) st.bytes_per_image += plan_.values[static_cast<size_t>(c.res)].image_bytes();
      } else if (st.kind == StepKind::input) {
        st.bytes_per_image = plan_.input_c * plan_.input_h * plan_.input_w *
                                 static_cast<int64_t>(dtype_storage_bytes(st.input.host_dtype, 1)) +
                             y.image_bytes();
      } else {
        st.bytes_per_image = x.image_bytes() + y.image_bytes();
      }
      plan_.macs_per_image += st.macs_per_image;
    }
  }

  // Liveness-based placement: values whose lifetimes overlap never share bytes.
  void plan_arena() {
    for (size_t s = 0; s < plan_.steps.size(); ++s) {
      const Step& st = plan_.steps[s];
      auto touch = [&](int v) {
        if (v < 0) return;
        Value& val = plan_.values[static_cast<size_t>(v)];
        if (val.def < 0) val.def = static_cast<int>(s);
        val.last = static_cast<int>(s);
      };
      touch(st.y);
      touch(st.x);
      if (st.kind == StepKind::conv) touch(st.conv.res);
    }
    for (int o : plan_.outputs) plan_.values[static_cast<size_t>(o)].last = static_cast<int>(plan_.steps.size());
    std::vector<size_t> order;
    for (size_t v = 0; v < plan_.values.size(); ++v) {
      if (plan_.values[v].def >= 0) order.push_back(v);
    }
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return plan_.values[a].image_bytes() > plan_.values[b].image_bytes();
    });
    std::vector<size_t> placed;
    for (size_t v : order) {
      Value& val = plan_.values[v];
      const int64_t size = round_up(val.image_bytes(), kArenaAlign);
      std::vector<std::pair<int64_t, int64_t>> busy;
      for (size_t p : placed) {
        const Value& o = plan_.values[p];
        if (o.def <= val.last && val.def <= o.last) busy.emplace_back(o.arena_offset, o.arena_offset + round_up(o.image_bytes(), kArenaAlign));
      }
      std::sort(busy.begin(), busy.end());
      int64_t offset = 0;
      for (const auto& [lo, hi] : busy) {
        if (offset + size <= lo) break;
        offset = std::max(offset, hi);
      }
      val.arena_offset = offset;
      plan_.arena_bytes_per_image = std::max(plan_.arena_bytes_per_image, offset + size);
      placed.push_back(v);
    }
  }

  const Graph& g_;
  const PlanOptions options_;
  Plan plan_;
  std::map<std::string, int> names_;
  std::map<std::string, std::vector<const Node*>> readers_;  // tensor -> the nodes reading it
  std::map<std::string, const Node*> producer_;              // tensor -> the node writing it
  std::set<const Node*> fused_;                              // nodes another step carries out
  std::vector<std::vector<Use>> uses_;
  std::map<std::string, const Node*> requant_;
  std::map<std::string, int> flattened_;
  std::set<std::string> flat_aliases_;
  std::vector<const Tensor*> weight_tensors_;  // per conv step
  std::map<size_t, std::vector<uint8_t>> fp8_codes_;  // per Fp8Conv step: its weights as e4m3 codes
  std::vector<std::unique_ptr<Tensor>> owned_weights_;
  const Node* folded_quantize_ = nullptr;
};

}  // namespace

Plan make_plan(const Graph& graph, StorageMode mode, const PlanOptions& options) {
  return Planner(graph, mode, options).run();
}

std::vector<uint8_t> unfold_input(const Tensor& x, const InputUnfold& u) {
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
  const int64_t row = 2 * kTapRow * 4;
  std::vector<uint8_t> out(static_cast<size_t>(n * u.h2 * u.ow * row), 0);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t y2 = 0; y2 < u.h2; ++y2) {
      for (int64_t ox = 0; ox < u.ow; ++ox) {
        uint8_t* dst = out.data() + ((b * u.h2 + y2) * u.ow + ox) * row;
        for (int half = 0; half < 2; ++half) {
          const int64_t y = 2 * y2 + u.row_offset + half;
          for (int tap = 0; tap < kTapRow; ++tap) {
            const int64_t xx = ox * u.stride_w - u.pad_w + tap;
            if (y < 0 || y >= h || xx < 0 || xx >= w) continue;
            for (int64_t ch = 0; ch < c && ch < 4; ++ch) {
              dst[32 * half + 4 * tap + ch] = static_cast<uint8_t>(static_cast<int64_t>(x.get(((b * c + ch) * h + y) * w + xx)));
            }
          }
        }
      }
    }
  }
  return out;
}

std::vector<int8_t> wgmma_weights(const ConvStep& c, const Value& x) {
  if (!is_packed(x.storage) || c.load != ConvLoad::vec || x.row % 32 != 0) return {};
  const int64_t taps = int64_t{c.kh} * c.kw, chunks = x.row / 32, wide_k = taps * chunks * 64;
  std::vector<int8_t> out(static_cast<size_t>(c.m_pad * wide_k), 0);
  for (int64_t m = 0; m < c.m_pad; ++m) {
    const uint8_t* src = reinterpret_cast<const uint8_t*>(c.weights.data()) + m * c.k_pad;
    int8_t* dst = out.data() + m * wide_k;
    for (int64_t tap = 0; tap < taps; ++tap) {
      for (int64_t cc = 0; cc < chunks; ++cc) {
        for (int slot = 0; slot < 64; ++slot) {
          const int64_t ch = cc * 64 + wgmma_channel(slot);
          dst[(tap * chunks + cc) * 64 + slot] = static_cast<int8_t>(unpack_s4(src + tap * x.row, ch));
        }
      }
    }
  }
  return out;
}

std::vector<int8_t> permute_map_rows(const int8_t* w, int64_t rows, int64_t row_bytes) {
  if (rows % 64 != 0) throw std::invalid_argument("permute_map_rows: rows must be a multiple of 64");
  std::vector<int8_t> out(static_cast<size_t>(rows * row_bytes));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t from = r / 64 * 64 + wgmma_map_of_column(static_cast<int>(r % 64));
    std::copy_n(w + from * row_bytes, row_bytes, out.data() + r * row_bytes);
  }
  return out;
}

namespace {
// |x| x factor requantized by `shift` (round half up on the magnitude), as the kernels compute it.
uint64_t requant_magnitude(uint64_t x, uint16_t factor, int shift) {
  const uint64_t round = shift > 0 ? uint64_t{1} << (shift - 1) : 0;
  return (x * factor + round) >> shift;
}
}  // namespace

std::vector<uint32_t> top_thresholds(const std::vector<uint16_t>& factor, int shift, int64_t hi,
                                     const std::vector<uint32_t>& sat) {
  if (sat.size() != factor.size() || hi < 0) return {};
  std::vector<uint32_t> top(sat.size());
  for (size_t i = 0; i < sat.size(); ++i) {
    // A zero factor gives 0 everywhere: any threshold keeps it. Otherwise sat - 1 is the largest
    // acc below saturation, and it must give hi exactly.
    if (factor[i] == 0) {
      top[i] = sat[i];
    } else {
      if (sat[i] == 0 || requant_magnitude(sat[i] - 1, factor[i], shift) != static_cast<uint64_t>(hi)) return {};
      top[i] = sat[i] - 1;
    }
  }
  return top;
}

bool requantization_in_range(const std::vector<uint16_t>& factor, int shift, int64_t vlo, int64_t vhi, int64_t lo,
                             int64_t hi) {
  if (vlo > vhi || shift < 0 || shift > 31) return false;
  for (uint16_t f : factor) {
    // The magnitude grows with |x|: the extremes decide.
    if (vhi > 0 && static_cast<int64_t>(requant_magnitude(static_cast<uint64_t>(vhi), f, shift)) > hi) return false;
    if (vlo < 0 && -static_cast<int64_t>(requant_magnitude(static_cast<uint64_t>(-vlo), f, shift)) < lo) return false;
  }
  return true;
}

std::vector<uint8_t> to_device_layout(const Tensor& t, Storage storage) {
  const int64_t n = t.dim(0), c = t.dim(1);
  const int64_t plane = t.rank() == 4 ? t.dim(2) * t.dim(3) : 1;
  const int64_t row = row_bytes(storage, c);
  std::vector<uint8_t> out(static_cast<size_t>(n * plane * row), 0);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t p = 0; p < plane; ++p) {
        const int64_t v = static_cast<int64_t>(t.get((b * c + ch) * plane + p));
        uint8_t* dst = out.data() + (b * plane + p) * row;
        switch (storage) {
          case Storage::u8:
          case Storage::s8: dst[ch] = static_cast<uint8_t>(v); break;
          case Storage::e4m3: dst[ch] = f32_to_e4m3_bits(static_cast<float>(t.get((b * c + ch) * plane + p))); break;
          case Storage::u4:
          case Storage::s4: pack_4bit(dst, ch, static_cast<int>(v)); break;
          case Storage::s32: {
            const int32_t w = static_cast<int32_t>(v);
            std::copy_n(reinterpret_cast<const uint8_t*>(&w), 4, dst + 4 * ch);
            break;
          }
          case Storage::f32: {
            const float f = static_cast<float>(t.get((b * c + ch) * plane + p));
            std::copy_n(reinterpret_cast<const uint8_t*>(&f), 4, dst + 4 * ch);
            break;
          }
        }
      }
    }
  }
  return out;
}

Tensor from_device_layout(const uint8_t* data, int64_t batch, const Value& v, bool flat) {
  Shape shape = v.spatial && !flat ? Shape{batch, v.c, v.h, v.w} : Shape{batch, v.c};
  Tensor t(v.dtype, shape);
  const int64_t plane = v.h * v.w;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t p = 0; p < plane; ++p) {
      const uint8_t* src = data + (b * plane + p) * v.row;
      for (int64_t ch = 0; ch < v.c; ++ch) {
        double x = 0;
        switch (v.storage) {
          case Storage::u8: x = src[ch]; break;
          case Storage::s8: x = static_cast<int8_t>(src[ch]); break;
          case Storage::e4m3: x = e4m3_bits_to_f32(src[ch]); break;
          case Storage::u4: x = unpack_u4(src, ch); break;
          case Storage::s4: x = unpack_s4(src, ch); break;
          case Storage::s32: {
            int32_t w;
            std::copy_n(src + 4 * ch, 4, reinterpret_cast<uint8_t*>(&w));
            x = w;
            break;
          }
          case Storage::f32: {
            float f;
            std::copy_n(src + 4 * ch, 4, reinterpret_cast<uint8_t*>(&f));
            x = f;
            break;
          }
        }
        t.set((b * v.c + ch) * plane + p, x);
      }
    }
  }
  return t;
}

}  // namespace nibble::cuda
