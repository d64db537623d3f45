// QDQ ONNX -> FP32 graph + calibration table + per-layer precisions.
#include "quant/qdq_import.h"

#include <cmath>
#include <set>

#include "nibble/error.h"

namespace nibble::quant {

bool is_qdq(const Graph& g) {
  for (const Node& n : g.nodes) {
    if (n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear") return true;
  }
  return false;
}

namespace {

const Tensor* constant(const Graph& g, const std::string& name) {
  const auto it = g.initializers.find(name);
  return it == g.initializers.end() ? nullptr : &it->second;
}

void require_zero_point(const Graph& g, const Node& n) {
  if (n.inputs.size() < 3 || n.inputs[2].empty()) return;
  const Tensor* zp = constant(g, n.inputs[2]);
  if (!zp) fail(g.source, "{}: the zero point must be a constant", n.label());
  for (int64_t i = 0; i < zp->numel(); ++i) {
    if (zp->get(i) != 0.0) fail(g.source, "{}: nibble quantizes symmetrically; zero point {} is not 0", n.label(), zp->get(i));
  }
}

// The scale of a QuantizeLinear or DequantizeLinear: a constant f32 tensor of finite, positive
// values (a NaN, infinite, zero or negative scale would quantize into garbage).
const Tensor& checked_scale(const Graph& g, const Node& n) {
  if (n.inputs.size() < 2 || n.inputs[1].empty()) fail(g.source, "{}: needs a scale input", n.label());
  const Tensor* s = constant(g, n.inputs[1]);
  if (!s) fail(g.source, "{}: the scale must be a constant", n.label());
  if (s->dtype() != DType::f32) fail(g.source, "{}: the scale must be f32, got {}", n.label(), dtype_name(s->dtype()));
  if (s->numel() < 1) fail(g.source, "{}: the scale is empty", n.label());
  for (int64_t i = 0; i < s->numel(); ++i) {
    const float v = s->data<float>()[i];
    if (!std::isfinite(v) || !(v > 0.0f)) {
      fail(g.source, "{}: scale {} (element {}) is not a finite positive number", n.label(), v, i);
    }
  }
  return *s;
}

}  // namespace

QdqModel import_qdq(const Graph& g) {
  QdqModel out;
  std::map<std::string, const Node*> producer;
  std::map<std::string, int> reader_count;
  for (const Node& n : g.nodes) {
    for (const auto& o : n.outputs) producer[o] = &n;
    for (const auto& i : n.inputs) reader_count[i]++;
  }
  std::set<const Node*> removed;
  std::map<std::string, std::string> rename;  // DQ output -> the float tensor it stands for
  std::map<std::string, int> act_bits;        // float tensor -> bits
  std::map<std::string, int> weight_bits;     // float weight initializer -> bits
  Graph fp = g;
  fp.nodes.clear();
  for (const Node& n : g.nodes) {
    if (n.op_type != "DequantizeLinear") continue;
    if (n.inputs.empty() || n.outputs.empty()) fail(g.source, "{}: needs an input and an output", n.label());
    require_zero_point(g, n);
    const Tensor* scale = &checked_scale(g, n);
    const std::string& dq_out = n.outputs.at(0);
    if (const Tensor* w = constant(g, n.inputs[0])) {
      // A weight: dequantize it into a float initializer under the DQ output's name.
      const int64_t axis = n.attr_int("axis", 1);
      const int64_t channels = scale->numel();
      if (channels != 1 && (w->rank() < 1 || axis != 0 || w->dim(0) != channels)) {
        fail(g.source, "{}: weights must be quantized per tensor or per output channel (axis 0)", n.label());
      }
      Tensor f(DType::f32, w->shape());
      const int64_t per = w->numel() / std::max<int64_t>(1, channels == 1 ? 1 : channels);
      double top = 0.0;
      std::vector<float> scales;
      for (int64_t i = 0; i < w->numel(); ++i) {
        const float s = scale->data<float>()[channels == 1 ? 0 : i / per];
        f.data<float>()[i] = static_cast<float>(w->get(i)) * s;
        top = std::max(top, std::abs(w->get(i)));
      }
      const int64_t k = w->rank() >= 1 ? w->dim(0) : 1;
      for (int64_t c = 0; c < k; ++c) scales.push_back(scale->data<float>()[channels == 1 ? 0 : c]);
      fp.initializers[dq_out] = f;
      weight_bits[dq_out] = top <= 7.0 ? 4 : 8;
      out.options.weight_scales[dq_out] = scales;
      removed.insert(&n);
      out.weights++;
      continue;
    }
    const auto p = producer.find(n.inputs[0]);
    if (p == producer.end() || p->second->op_type != "QuantizeLinear") {
      fail(g.source, "{}: a DequantizeLinear of an activation must follow a QuantizeLinear", n.label());
    }
    const Node& q = *p->second;
    require_zero_point(g, q);
    const Tensor* qs = &checked_scale(g, q);
    if (qs->numel() != 1 || scale->numel() != 1 || qs->data<float>()[0] != scale->data<float>()[0]) {
      fail(g.source, "{}: activation scales must be one constant shared by the QuantizeLinear and DequantizeLinear", n.label());
    }
    const double s = scale->data<float>()[0];
    bool is_signed = false;
    if (q.inputs.size() > 2 && !q.inputs[2].empty()) is_signed = constant(g, q.inputs[2])->dtype() == DType::s8;
    double levels = is_signed ? 127.0 : 255.0;
    std::string source = q.inputs[0];
    // A Clip read only by the QuantizeLinear narrows the range (4-bit activations).
    const auto c = producer.find(source);
    if (c != producer.end() && c->second->op_type == "Clip" && reader_count[source] == 1 && c->second->inputs.size() >= 3) {
      const Tensor* hi = constant(g, c->second->inputs[2]);
      if (hi && hi->numel() == 1) {
        levels = std::min(levels, std::nearbyint(hi->get(0) / s));
        removed.insert(c->second);
        source = c->second->inputs[0];
      }
    }
    const int bits = levels <= 15.0 ? 4 : 8;
    act_bits[source] = bits;
    out.calib.entries.push_back({source, "max", is_signed ? -levels * s : 0.0, levels * s});
    rename[dq_out] = source;
    removed.insert(&n);
    removed.insert(&q);
    out.activations++;
  }
  for (const Node& n : g.nodes) {
    if (removed.count(&n)) continue;
    Node m = n;
    for (auto& i : m.inputs) {
      if (auto it = rename.find(i); it != rename.end()) i = it->second;
    }
    fp.nodes.push_back(std::move(m));
  }
  // An Identity that only renames a node's result to a graph output: give the result that name.
  for (size_t i = 0; i < fp.nodes.size(); ++i) {
    const Node& id = fp.nodes[i];
    if (id.op_type != "Identity" || id.inputs.size() != 1) continue;
    bool is_output = false;
    for (const auto& o : fp.outputs) is_output |= o.name == id.outputs.at(0);
    if (!is_output || reader_count[id.inputs[0]] != 1) continue;
    const std::string from = id.inputs[0], to = id.outputs[0];
    bool renamed = false;
    for (Node& n : fp.nodes) {
      for (auto& o : n.outputs) {
        if (o == from) {
          o = to;
          renamed = true;
        }
      }
    }
    if (!renamed) continue;
    if (const ValueInfo* v = fp.find_value(to)) fp.value_info[to] = *v;
    fp.nodes.erase(fp.nodes.begin() + static_cast<std::ptrdiff_t>(i));
    --i;
  }
  for (auto& o : fp.outputs) {
    if (auto it = rename.find(o.name); it != rename.end()) {
      fail(g.source, "output '{}' is a DequantizeLinear result; nibble needs a float output after it", o.name);
    }
  }
  // Per-layer precision from the widths found.
  for (const Node& n : fp.nodes) {
    if (n.op_type != "Conv" && n.op_type != "Gemm" && n.op_type != "MatMul") continue;
    if (n.inputs.size() < 2) continue;
    const auto w = weight_bits.find(n.inputs[1]);
    if (w == weight_bits.end()) {
      out.options.exclude.insert(n.name);
      continue;
    }
    const auto a = act_bits.find(n.inputs[0]);
    const int abits = a == act_bits.end() ? 8 : a->second;
    out.options.layer_precision[n.name] =
        w->second == 8 ? Precision::int8 : (abits == 4 ? Precision::int4 : Precision::w4a8);
  }
  out.options.first_last_8bit = false;
  // A conv read only by a later conv's residual Add is requantized where the model quantizes its
  // output (a QuantizeLinear / DequantizeLinear pair, which gave it a table entry above); without
  // one it hands over its sums, as `quantize --shortcut-sums` does.
  out.options.requantize_shortcuts = true;
  // Likewise a conv that only float ops read: rounded where the model has a pair, f32 elsewhere.
  out.options.float_read_outputs = false;
  for (const Node& n : fp.nodes) {
    if (n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear") {
      fail(g.source, "{}: a QuantizeLinear without its DequantizeLinear cannot be imported", n.label());
    }
  }
  out.fp32 = std::move(fp);
  return out;
}

}  // namespace nibble::quant
