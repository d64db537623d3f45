// GraphQuantized model directory -> ONNX QDQ model.
#include "nibble/qdq_export.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "nibble/dtype.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/model_loader.h"

namespace nibble {

namespace {

// The quantization of an activation: integer value * scale, clamped to [lo, hi].
struct QInfo {
  double scale;
  int64_t lo;
  int64_t hi;
};

// ONNX element types newer than this libonnx's enum (TensorProto.data_type is an int32 field).
constexpr int kFloat8E4M3FN = 17;  // opset 19
constexpr int kUint4 = 21;         // opset 21
constexpr int kInt4 = 22;          // opset 21

class Exporter {
 public:
  Exporter(const ModelDir& m, int opset) : m_(m), opset_(opset) {}

  onnx::ModelProto run() {
    const LayerFile& root = m_.layer("model");
    if (root.type != "GraphQuantized") {
      fail(m_.path, "export writes models made by `nibble quantize` (GraphQuantized); this one is {}", root.type);
    }
    onnx::ModelProto model;
    // The IR version that introduced the types the opset may use: 8-bit (7), FP8 (9), 4-bit (10).
    model.set_ir_version(opset_ >= 21 ? 10 : (opset_ >= 19 ? 9 : 7));
    model.set_producer_name("nibble");
    auto* opset = model.add_opset_import();
    opset->set_domain("");
    opset->set_version(opset_);
    g_ = model.mutable_graph();
    g_->set_name("nibble_qdq");
    const std::string input = root.get_string("input");
    auto* in = g_->add_input();
    in->set_name(input);
    auto* tt = in->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    tt->mutable_shape()->add_dim()->set_dim_param("N");
    for (int64_t d : root.get_tuple("input_shape")) tt->mutable_shape()->add_dim()->set_dim_value(d);
    value_[input] = input;
    for (const std::string& name : split_name_list(root.get_string("layers"))) layer(name);
    const auto outs = split_name_list(root.get_string("outputs"));
    const auto names = split_name_list(root.get_string("output_names"));
    if (outs.size() != names.size()) fail(m_.path + "/model", "outputs and output_names differ in length");
    for (size_t i = 0; i < outs.size(); ++i) {
      node("Identity", {value_.at(outs[i])}, names[i]);
      auto* o = g_->add_output();
      o->set_name(names[i]);
      auto* ot = o->mutable_type()->mutable_tensor_type();
      ot->set_elem_type(onnx::TensorProto::FLOAT);
      // The rank is known; the sizes are left to shape inference.
      const int rank = outs[i] == input ? static_cast<int>(tt->shape().dim_size()) : rank_.at(outs[i]);
      for (int d = 0; d < rank; ++d) ot->mutable_shape()->add_dim();
    }
    return model;
  }

 private:
  std::string where(const std::string& layer) const { return m_.path + "/" + layer; }

  onnx::NodeProto* node(const std::string& op, const std::vector<std::string>& inputs, const std::string& output) {
    onnx::NodeProto* n = g_->add_node();
    n->set_op_type(op);
    n->set_name(output);
    for (const auto& i : inputs) n->add_input(i);
    n->add_output(output);
    return n;
  }

  static void attr(onnx::NodeProto* n, const std::string& name, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void attr(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a->add_ints(x);
  }

  // An initializer of `type` holding `values` (converted), with `dims`.
  std::string init(const std::string& name, int type, const std::vector<double>& values,
                   const std::vector<int64_t>& dims) {
    onnx::TensorProto* t = g_->add_initializer();
    t->set_name(name);
    t->set_data_type(type);
    for (int64_t d : dims) t->add_dims(d);
    std::string raw;
    if (type == kInt4 || type == kUint4) {
      // Two per byte, the first in the low nibble (as nibble stores them).
      raw.assign((values.size() + 1) / 2, '\0');
      for (size_t i = 0; i < values.size(); ++i) {
        const int v = static_cast<int>(values[i]) & 0xF;
        raw[i / 2] = static_cast<char>(static_cast<uint8_t>(raw[i / 2]) | (v << (4 * (i % 2))));
      }
      t->set_raw_data(raw);
      return name;
    }
    for (double v : values) {
      if (type == kFloat8E4M3FN) {
        raw.push_back(static_cast<char>(f32_to_e4m3_bits(static_cast<float>(v))));
      } else if (type == onnx::TensorProto::FLOAT) {
        const float f = static_cast<float>(v);
        raw.append(reinterpret_cast<const char*>(&f), sizeof f);
      } else if (type == onnx::TensorProto::INT8) {
        raw.push_back(static_cast<char>(static_cast<int8_t>(v)));
      } else if (type == onnx::TensorProto::UINT8) {
        raw.push_back(static_cast<char>(static_cast<uint8_t>(v)));
      } else {
        fail(m_.path, "internal: unsupported initializer type {}", static_cast<int>(type));
      }
    }
    t->set_raw_data(raw);
    return name;
  }

  static std::vector<double> values(const Tensor& t) {
    std::vector<double> v(static_cast<size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = t.get(i);
    return v;
  }

  // A scale field: a number, or a tensor of one value.
  double scalar(const LayerFile& f, const std::string& key) const {
    const LayerField* field = f.find(key);
    if (!field) fail(where(f.name), "missing '{}'", key);
    if (field->is_tensor) {
      if (field->tensor.numel() != 1) fail(where(f.name), "'{}' must be one number to export", key);
      return field->tensor.get(0);
    }
    return std::stod(field->value);
  }

  // x -> [Clip] -> QuantizeLinear -> DequantizeLinear, named `name`. From opset 21 ranges of at
  // most 4 bits take the 4-bit types.
  void qdq(const std::string& x, const std::string& name, double scale, int64_t bits, bool is_signed) {
    const int64_t top = (int64_t{1} << bits) - 1;
    const QInfo q{scale, is_signed ? -top : 0, top};
    std::string v = x;
    const bool four = opset_ >= 21 && bits <= (is_signed ? 3 : 4);
    const bool native = !is_signed && bits == (four ? 4 : 8);
    if (!native) {
      const std::string lo = init(name + ".clip_min", onnx::TensorProto::FLOAT, {static_cast<double>(static_cast<float>(q.lo * scale))}, {});
      const std::string hi = init(name + ".clip_max", onnx::TensorProto::FLOAT, {static_cast<double>(static_cast<float>(q.hi * scale))}, {});
      node("Clip", {v, lo, hi}, name + ".clip");
      v = name + ".clip";
    }
    const std::string s = init(name + ".scale", onnx::TensorProto::FLOAT, {scale}, {});
    const int type = four ? (is_signed ? kInt4 : kUint4) : (is_signed ? onnx::TensorProto::INT8 : onnx::TensorProto::UINT8);
    const std::string zp = init(name + ".zero_point", type, {0.0}, {});
    node("QuantizeLinear", {v, s, zp}, name + ".q");
    node("DequantizeLinear", {name + ".q", s, zp}, name);
    value_[name] = name;
    qinfo_[name] = q;
  }

  // x -> QuantizeLinear -> DequantizeLinear through float8e4m3fn, named `name`: x / scale rounded
  // to the e4m3 grid (nearest even, saturating at 448), as nibble:QuantizeFloat computes it.
  void fp8_qdq(const std::string& x, const std::string& name, double scale) {
    if (opset_ < 19) fail(m_.path, "FP8 (e4m3) activations need ONNX opset 19 or later (--opset 19 or 21)");
    const std::string s = init(name + ".scale", onnx::TensorProto::FLOAT, {scale}, {});
    const std::string zp = init(name + ".zero_point", kFloat8E4M3FN, {0.0}, {});
    node("QuantizeLinear", {x, s, zp}, name + ".q");
    node("DequantizeLinear", {name + ".q", s, zp}, name);
    value_[name] = name;
  }

  // An integer weight read through a per-output-channel DequantizeLinear: int8 (int4 for 4-bit
  // weights from opset 21), or the float8e4m3fn weights of an FP8 layer with group scales.
  std::string weight(const LayerFile& f) {
    const Tensor& w = f.get_tensor("weight");
    if (w.dtype() == DType::f32) return init(f.name + ".weight", onnx::TensorProto::FLOAT, values(w), w.shape());
    const Tensor& s = f.get_tensor("weight_scale");
    if (s.numel() != w.dim(0)) fail(where(f.name), "weight_scale needs one value per output channel");
    std::vector<double> levels = values(w);
    int type = opset_ >= 21 && w.dtype() == DType::s4 ? kInt4 : onnx::TensorProto::INT8;
    if (f.has("weight_group_scale")) {
      if (opset_ < 19) fail(where(f.name), "FP8 weights with group scales need ONNX opset 19 or later (--opset 19 or 21)");
      // The layer computes with e4m3(f32(level x group scale)) (nibble:Fp8Conv).
      const Tensor& g = f.get_tensor("weight_group_scale");
      const int64_t size = f.get_int("weight_group_size");
      const int64_t per = w.numel() / w.dim(0), groups = size > 0 ? (per + size - 1) / size : 0;
      if (size < 1 || g.rank() != 2 || g.dim(0) != w.dim(0) || g.dim(1) != groups) {
        fail(where(f.name), "weight_group_scale must be {} x {} for weight_group_size {}", w.dim(0), groups, size);
      }
      for (int64_t i = 0; i < w.numel(); ++i) {
        const float gv = static_cast<float>(g.get((i / per) * groups + (i % per) / size));
        levels[static_cast<size_t>(i)] = e4m3_bits_to_f32(f32_to_e4m3_bits(static_cast<float>(w.get(i)) * gv));
      }
      type = kFloat8E4M3FN;
    }
    const std::string q = init(f.name + ".weight_quantized", type, levels, w.shape());
    const std::string sc = init(f.name + ".weight_scale", onnx::TensorProto::FLOAT, values(s), {s.numel()});
    const std::string zp = init(f.name + ".weight_zero_point", type,
                                std::vector<double>(static_cast<size_t>(s.numel()), 0.0), {s.numel()});
    onnx::NodeProto* n = node("DequantizeLinear", {q, sc, zp}, f.name + ".weight");
    attr(n, "axis", int64_t{0});
    return f.name + ".weight";
  }

  // The float bias: integer bias * input scale * weight scale.
  std::string bias(const LayerFile& f) {
    const Tensor& b = f.get_tensor("bias");
    if (b.dtype() == DType::f32) return init(f.name + ".bias", onnx::TensorProto::FLOAT, values(b), {b.numel()});
    const Tensor& s = f.get_tensor("weight_scale");
    const double sx = std::stod(f.get_string("input_scale"));
    std::vector<double> v(static_cast<size_t>(b.numel()));
    for (int64_t c = 0; c < b.numel(); ++c) v[static_cast<size_t>(c)] = b.get(c) * sx * s.get(c);
    return init(f.name + ".bias", onnx::TensorProto::FLOAT, v, {b.numel()});
  }

  void layer(const std::string& name) {
    layer_body(name);
    const LayerFile& f = m_.layer(name);
    if (f.type == "Op") return;
    rank_[name] = f.type == "Linear" ? 2 : (f.type == "Scale" || f.type == "Dequantize" || f.type == "ReLU" || f.type == "Add" ||
                                           f.type == "Quantize" || f.type == "QuantizeFloat")
                                              ? input_rank(f)
                                              : 4;
  }

  int input_rank(const LayerFile& f) const {
    const std::string first = split_name_list(f.get_string("inputs")).at(0);
    const auto it = rank_.find(first);
    return it == rank_.end() ? 4 : it->second;
  }

  void layer_body(const std::string& name) {
    const LayerFile& f = m_.layer(name);
    const auto inputs = split_name_list(f.get_string("inputs"));
    std::vector<std::string> xs;
    for (const auto& i : inputs) {
      const auto it = value_.find(i);
      if (it == value_.end()) fail(where(name), "input '{}' is not an earlier layer", i);
      xs.push_back(it->second);
    }
    const std::string& type = f.type;
    if (type == "QuantizeFloat" || type == "Quantize") {
      const auto mode = parse_compute_mode(f.get_string("compute_mode"), where(name));
      if (mode.back().kind == 'f') {
        fp8_qdq(xs[0], name, std::stod(f.get_string("output_scale")));
        return;
      }
      const int64_t bits = f.get_int("output_bits");
      if (bits == 31 || !f.has("output_scale")) {
        value_[name] = xs[0];  // into an accumulator scale: the float graph needs no step
        return;
      }
      qdq(xs[0], name, std::stod(f.get_string("output_scale")), bits, mode.back().kind == 's');
      return;
    }
    if (type == "Dequantize" || type == "Scale") {
      value_[name] = xs[0];  // values are already real numbers in the QDQ graph
      return;
    }
    if (type == "ReLU" || type == "Add") {
      node(type == "ReLU" ? "Relu" : "Add", xs, name);
      value_[name] = name;
      return;
    }
    if (type == "MaxPool2d" || type == "AvgPool2d") {
      const int64_t k = f.get_int("kernel_size"), s = f.get_int("stride"), p = f.get_int("padding");
      const bool avg = type == "AvgPool2d";
      onnx::NodeProto* n = node(avg ? "AveragePool" : "MaxPool", xs, avg ? name + ".average" : name);
      attr(n, "kernel_shape", std::vector<int64_t>{k, k});
      attr(n, "strides", std::vector<int64_t>{s, s});
      attr(n, "pads", std::vector<int64_t>{p, p, p, p});
      const auto q = qinfo_.find(xs[0]);
      if (!avg) {
        value_[name] = name;
        if (q != qinfo_.end()) qinfo_[name] = q->second;
      } else if (q != qinfo_.end()) {
        // The integer average rounds to the input's scale: quantize again to the same grid.
        const bool is_signed = q->second.lo < 0;
        const int64_t bits = static_cast<int64_t>(std::log2(static_cast<double>(q->second.hi) + 1.0) + 0.5);
        qdq(name + ".average", name, q->second.scale, bits, is_signed);
      } else {
        node("Identity", {name + ".average"}, name);
        value_[name] = name;
      }
      return;
    }
    if (type == "Conv2d") {
      onnx::NodeProto* n = node("Conv", {xs[0], weight(f), bias(f)}, name);
      const auto pad = f.get_tuple("padding");
      attr(n, "kernel_shape", f.get_tuple("kernel_size"));
      attr(n, "strides", f.get_tuple("stride"));
      attr(n, "pads", std::vector<int64_t>{pad.at(0), pad.at(1), pad.at(0), pad.at(1)});
      attr(n, "dilations", f.get_tuple("dilation"));
      attr(n, "group", f.get_int("groups"));
      value_[name] = name;
      return;
    }
    if (type == "Linear") {
      onnx::NodeProto* fl = node("Flatten", {xs[0]}, name + ".flatten");
      attr(fl, "axis", int64_t{1});
      onnx::NodeProto* n = node("Gemm", {name + ".flatten", weight(f), bias(f)}, name);
      attr(n, "transB", int64_t{1});
      value_[name] = name;
      return;
    }
    if (type == "Op") {
      op(f, xs);
      return;
    }
    fail(where(name), "layer type {} cannot be exported", type);
  }

  // A float Op layer: the ONNX node it stands for, its constants as initializers.
  void op(const LayerFile& f, const std::vector<std::string>& xs) {
    onnx::NodeProto* n = g_->add_node();
    n->set_op_type(f.get_string("op_type"));
    n->set_name(f.name);
    std::vector<std::string> operands;
    if (f.has("operands")) {
      operands = split_name_list(f.get_string("operands"));
    } else {
      for (size_t k = 0; k < xs.size(); ++k) operands.push_back(fmt::format("x{}", k));
    }
    for (const std::string& o : operands) {
      if (o == "-") {
        n->add_input("");
      } else if (o.rfind("const", 0) == 0) {
        n->add_input(tensor_init(f.name + "." + o, f.get_tensor(o), where(f.name)));
      } else {
        n->add_input(xs.at(std::stoul(o.substr(1))));
      }
    }
    n->add_output(f.name);
    const std::string file = where(f.name);
    for (const LayerField& field : f.fields) {
      if (field.key.rfind("attr_", 0) != 0) continue;
      auto* a = n->add_attribute();
      a->set_name(field.key.substr(5));
      const Attribute value = op_layer_attribute(field, file);
      if (const auto* i = std::get_if<int64_t>(&value)) {
        a->set_type(onnx::AttributeProto::INT);
        a->set_i(*i);
      } else if (const auto* x = std::get_if<float>(&value)) {
        a->set_type(onnx::AttributeProto::FLOAT);
        a->set_f(*x);
      } else if (const auto* str = std::get_if<std::string>(&value)) {
        a->set_type(onnx::AttributeProto::STRING);
        a->set_s(*str);
      } else if (const auto* is = std::get_if<std::vector<int64_t>>(&value)) {
        a->set_type(onnx::AttributeProto::INTS);
        for (int64_t v : *is) a->add_ints(v);
      } else if (const auto* fs = std::get_if<std::vector<float>>(&value)) {
        a->set_type(onnx::AttributeProto::FLOATS);
        for (float v : *fs) a->add_floats(v);
      } else if (const auto* t = std::get_if<Tensor>(&value)) {
        a->set_type(onnx::AttributeProto::TENSOR);
        *a->mutable_t() = tensor_proto(*t, file);
      }
    }
    value_[f.name] = f.name;
    const std::string& shape = f.get_string("output_shape");
    rank_[f.name] = shape == "[]" ? 0 : static_cast<int>(std::count(shape.begin(), shape.end(), ',')) + 1;
  }

  static onnx::TensorProto tensor_proto(const Tensor& t, const std::string& where) {
    const int type = traits(t.dtype()).onnx_type;
    if (type == 0 || traits(t.dtype()).bits < 8) fail(where, "a {} tensor cannot be exported", dtype_name(t.dtype()));
    onnx::TensorProto p;
    p.set_data_type(type);
    for (int64_t d : t.shape()) p.add_dims(d);
    p.set_raw_data(std::string(reinterpret_cast<const char*>(t.bytes()), t.nbytes()));
    return p;
  }

  std::string tensor_init(const std::string& name, const Tensor& t, const std::string& where) {
    onnx::TensorProto* p = g_->add_initializer();
    *p = tensor_proto(t, where);
    p->set_name(name);
    return name;
  }

  const ModelDir& m_;
  const int opset_;
  onnx::GraphProto* g_ = nullptr;
  std::map<std::string, std::string> value_;  // layer -> ONNX value holding its real-valued output
  std::map<std::string, QInfo> qinfo_;        // ONNX value -> its quantization grid
  std::map<std::string, int> rank_;           // layer -> rank of its output
};

}  // namespace

bool has_fp8_layers(const ModelDir& m) {
  for (const auto& [name, layer] : m.layers) {
    if (!layer.has("compute_mode")) continue;
    for (const NumberType& t : parse_compute_mode(layer.get_string("compute_mode"), m.path + "/" + name)) {
      if (t.kind == 'f' && t.bits == 8) return true;
    }
  }
  return false;
}

int export_qdq_onnx(const ModelDir& m, const std::string& path, int opset) {
  if (opset == 0) opset = has_fp8_layers(m) ? 19 : 13;
  if (opset != 13 && opset != 19 && opset != 21) fail(path, "ONNX opset {} cannot be exported (choose 13, 19 or 21)", opset);
  onnx::ModelProto model = Exporter(m, opset).run();
  // This ONNX library's checker knows the operator sets up to 17.
  if (opset <= 17) {
    try {
      onnx::checker::check_model(model);
    } catch (const std::exception& e) {
      fail(path, "internal: the exported model fails ONNX's checker: {}", e.what());
    }
  }
  std::string bytes;
  if (!model.SerializeToString(&bytes)) fail(path, "cannot serialize the ONNX model");
  write_file_atomic(path, bytes);
  return opset;
}

}  // namespace nibble
