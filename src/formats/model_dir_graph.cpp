// Builds the graph of a seed-format model directory (ResNetQuantized and its blocks).
#include <fmt/format.h>

#include <map>

#include "nibble/error.h"
#include "nibble/model_loader.h"
#include "quant/requant.h"

namespace nibble {

namespace {

class Builder {
 public:
  Builder(const ModelDir& m, std::optional<int64_t> batch) : m_(m), batch_(batch.value_or(-1)) {
    g_.source = m.path;
    g_.opset = 13;
  }

  Graph finish(const std::string& logits, const std::string& scores) {
    g_.outputs.push_back(info("logits", DType::s32, shapes_.at(logits)));
    g_.outputs.push_back(info("scores", DType::f32, shapes_.at(scores)));
    rename(logits, "logits");
    rename(scores, "scores");
    return std::move(g_);
  }

  std::string input(const std::string& name, Shape shape) {
    shapes_[name] = shape;
    g_.inputs.push_back(info(name, DType::s8, shape));
    return name;
  }

  // Conv2d: s32 accumulators of x * weight + bias.
  std::string conv(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "Conv2d");
    const Tensor& w = f.get_tensor("weight");
    const Tensor& b = f.get_tensor("bias");
    const auto kernel = f.get_tuple("kernel_size");
    const auto stride = f.get_tuple("stride");
    const auto pad = f.get_tuple("padding");
    const auto dilation = f.get_tuple("dilation");
    const int64_t groups = f.get_int("groups");
    const int64_t cin = f.get_int("in_channels"), cout = f.get_int("out_channels");
    const std::string where = file_of(layer);
    if (kernel.size() != 2 || stride.size() != 2 || pad.size() != 2 || dilation.size() != 2) {
      fail(where, "kernel_size, stride, padding and dilation must be 2-D tuples");
    }
    if (w.rank() != 4 || w.dim(0) != cout || w.dim(1) * groups != cin || w.dim(2) != kernel[0] ||
        w.dim(3) != kernel[1]) {
      fail(where, "weight {} does not match in_channels={} out_channels={} kernel_size={}x{} groups={}",
           shape_str(w.shape()), cin, cout, kernel[0], kernel[1], groups);
    }
    const Shape& xs = shapes_.at(x);
    if (xs[1] != cin) fail(where, "in_channels={} but the layer receives {} channels", cin, xs[1]);
    const auto mode = parse_compute_mode(f.get_string("compute_mode"), where);
    if (mode.size() != 3 || mode[2].kind != 's' || mode[2].bits != 32) {
      fail(where, "compute_mode {} is not <act><weight>s32", f.get_string("compute_mode"));
    }
    check_weight_type(where, w, mode[1]);
    Node n = node("nibble:IntConv", layer, {x, constant(layer + ".weight", w), constant(layer + ".bias", b)});
    n.attrs["kernel_shape"] = kernel;
    n.attrs["strides"] = stride;
    n.attrs["pads"] = std::vector<int64_t>{pad[0], pad[1], pad[0], pad[1]};
    n.attrs["dilations"] = dilation;
    n.attrs["group"] = groups;
    Shape ys = xs;
    ys[1] = cout;
    for (int d = 0; d < 2; ++d) {
      ys[2 + d] = (xs[2 + d] + 2 * pad[d] - dilation[d] * (kernel[d] - 1) - 1) / stride[d] + 1;
      if (ys[2 + d] <= 0) fail(where, "the output would be empty for input {}", shape_str(xs));
    }
    return emit(std::move(n), DType::s32, ys);
  }

  std::string relu(const std::string& layer, const std::string& x) {
    expect(layer, "ReLU");
    return emit(node("nibble:IntRelu", unique(layer), {x}), DType::s32, shapes_.at(x));
  }

  std::string quantize(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "Quantize");
    const std::string where = file_of(layer);
    const auto mode = parse_compute_mode(f.get_string("compute_mode"), where);
    if (mode.size() != 3 || mode[1].kind != 'u' || mode[1].bits != 16 || mode[2].kind == 'f') {
      fail(where, "compute_mode {} is not <in>u16<out>", f.get_string("compute_mode"));
    }
    const Tensor& factor = f.get_tensor("requant_factor");
    if (factor.dtype() != DType::u16) fail(where, "requant_factor must be u16, got {}", dtype_name(factor.dtype()));
    const int64_t bits = f.get_int("output_bits");
    const int64_t shift = f.get_int("shift_bits");
    if (bits < 1 || bits > 31) fail(where, "output_bits={} is outside 1..31", bits);
    if (shift < 0 || shift > 31) fail(where, "shift_bits={} is outside 0..31", shift);
    if (factor.numel() != shapes_.at(x)[1]) {
      fail(where, "requant_factor has {} channels but the layer receives {}", factor.numel(), shapes_.at(x)[1]);
    }
    Node n = node("nibble:Requantize", layer, {x, constant(layer + ".requant_factor", factor)});
    n.attrs["shift"] = shift;
    n.attrs["bits"] = bits;
    const bool is_signed = mode[2].kind == 's';
    n.attrs["signed"] = int64_t{is_signed};
    return emit(std::move(n), quant::storage_dtype(static_cast<int>(bits), is_signed), shapes_.at(x));
  }

  std::string max_pool(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "MaxPool2d");
    const int64_t k = f.get_int("kernel_size"), s = f.get_int("stride"), p = f.get_int("padding");
    if (f.get_int("dilation") != 1 || f.get_bool("ceil_mode")) fail(file_of(layer), "only dilation=1 without ceil_mode is supported");
    Node n = node("MaxPool", layer, {x});
    n.attrs["kernel_shape"] = std::vector<int64_t>{k, k};
    n.attrs["strides"] = std::vector<int64_t>{s, s};
    n.attrs["pads"] = std::vector<int64_t>{p, p, p, p};
    Shape ys = shapes_.at(x);
    for (int d = 2; d < 4; ++d) ys[d] = (ys[d] + 2 * p - k) / s + 1;
    return emit(std::move(n), DType::u8, ys);
  }

  std::string avg_pool(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "AvgPool2d");
    const int64_t k = f.get_int("kernel_size"), s = f.get_int("stride");
    if (f.get_int("padding") != 0 || f.get_bool("ceil_mode")) fail(file_of(layer), "only padding=0 without ceil_mode is supported");
    Node n = node("nibble:IntAvgPool", layer, {x});
    n.attrs["kernel_shape"] = std::vector<int64_t>{k, k};
    n.attrs["strides"] = std::vector<int64_t>{s, s};
    Shape ys = shapes_.at(x);
    for (int d = 2; d < 4; ++d) ys[d] = (ys[d] - k) / s + 1;
    return emit(std::move(n), DType::u8, ys);
  }

  std::string linear(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "Linear");
    const Tensor& w = f.get_tensor("weight");
    const std::string where = file_of(layer);
    const int64_t in = f.get_int("in_features"), out = f.get_int("out_features");
    if (w.rank() != 2 || w.dim(0) != out || w.dim(1) != in) {
      fail(where, "weight {} does not match in_features={} out_features={}", shape_str(w.shape()), in, out);
    }
    const auto mode = parse_compute_mode(f.get_string("compute_mode"), where);
    if (mode.size() != 3) fail(where, "compute_mode {} is not <act><weight>s32", f.get_string("compute_mode"));
    check_weight_type(where, w, mode[1]);
    const Shape& xs = shapes_.at(x);
    if (shape_numel(Shape(xs.begin() + 1, xs.end())) != in) {
      fail(where, "in_features={} but the layer receives {}", in, shape_str(xs));
    }
    Node flat = node("Flatten", layer + ".flatten", {x});
    const std::string flat_out = emit(std::move(flat), DType::u8, {xs[0], in});
    Node n = node("nibble:IntLinear", layer, {flat_out, constant(layer + ".weight", w), constant(layer + ".bias", f.get_tensor("bias"))});
    return emit(std::move(n), DType::s32, {xs[0], out});
  }

  std::string scale(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "Scale");
    const Tensor& s = f.get_tensor("out_scale");
    if (s.dtype() != DType::f32 || s.numel() != shapes_.at(x)[1]) {
      fail(file_of(layer), "out_scale must be {} f32 values, got {} {}", shapes_.at(x)[1], dtype_name(s.dtype()),
           shape_str(s.shape()));
    }
    return emit(node("nibble:Scale", layer, {x, constant(layer + ".out_scale", s)}), DType::f32, shapes_.at(x));
  }

  std::string bottleneck(const std::string& block, const std::string& x) {
    const LayerFile& f = expect(block, "BottleneckQuantized");
    if (!f.get_bool("downsample_layer")) fail(file_of(block), "blocks without a downsample layer are not supported");
    // The shortcut first, so that every input of the fused conv3 exists before it.
    std::string shortcut;
    const std::string ds = block + "_downsample";
    if (layer_type(ds) == "Sequential") {
      if (m_.layer(ds).get_int("children_count") != 3) fail(file_of(ds), "expected conv, Quantize, Quantize");
      shortcut = conv(ds + "_0", x);
      shortcut = quantize(ds + "_1", shortcut);
      shortcut = quantize(ds + "_2", shortcut);
    } else {
      shortcut = quantize(ds, x);
    }
    if (node_dtype(shortcut) != DType::s32) fail(file_of(ds), "the shortcut must end in s32");
    std::string y = conv(block + "_conv1", x);
    y = quantize(block + "_quantize1", relu(block + "_relu", y));
    y = conv(block + "_conv2", y);
    y = quantize(block + "_quantize2", relu(block + "_relu", y));
    y = conv(block + "_conv3", y);
    if (shapes_.at(y) != shapes_.at(shortcut)) {
      fail(file_of(block), "main path {} and shortcut {} differ in shape", shape_str(shapes_.at(y)),
           shape_str(shapes_.at(shortcut)));
    }
    y = emit(node("nibble:IntAdd", block + "_add", {y, shortcut}), DType::s32, shapes_.at(y));
    return quantize(block + "_quantize3", relu(block + "_relu", y));
  }

  std::string sequential(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "Sequential");
    const int64_t count = f.get_int("children_count");
    if (count < 1 || count > 1000) fail(file_of(layer), "children_count={} is out of range", count);
    std::string y = x;
    for (int64_t i = 0; i < count; ++i) {
      const std::string child = fmt::format("{}_{}", layer, i);
      if (layer_type(child) != "BottleneckQuantized") {
        fail(file_of(child), "a stage holds BottleneckQuantized blocks, got {}", layer_type(child));
      }
      y = bottleneck(child, y);
    }
    return y;
  }

  const std::string& layer_type(const std::string& layer) const { return m_.layer(layer).type; }

 private:
  std::string file_of(const std::string& layer) const { return m_.path + "/" + layer; }

  const LayerFile& expect(const std::string& layer, const char* type) const {
    const LayerFile& f = m_.layer(layer);
    if (f.type != type) fail(file_of(layer), "expected a {} layer, got {}", type, f.type);
    return f;
  }

  static void check_weight_type(const std::string& where, const Tensor& w, NumberType t) {
    const std::string want = fmt::format("{}{}", t.kind, t.bits);
    if (dtype_name(w.dtype()) != want) {
      fail(where, "compute_mode says {} weights but the tensor is {}", want, dtype_name(w.dtype()));
    }
  }

  ValueInfo info(const std::string& name, DType t, const Shape& shape) const {
    ValueInfo v;
    v.name = name;
    v.dtype = t;
    v.shape = shape;
    // The batch dimension is symbolic ("N") unless the caller fixed it.
    for (size_t d = 0; d < shape.size(); ++d) v.dim_params.emplace_back(d == 0 && batch_ < 0 ? "N" : "");
    return v;
  }

  std::string constant(const std::string& name, const Tensor& t) {
    g_.initializers[name] = t;
    return name;
  }

  // A fresh value name for layers used more than once (the block's shared ReLU).
  std::string unique(const std::string& layer) {
    const int k = uses_[layer]++;
    return k == 0 ? layer : fmt::format("{}:{}", layer, k);
  }

  Node node(const std::string& op, const std::string& name, std::vector<std::string> inputs) const {
    Node n;
    n.op_type = op;
    n.name = name;
    n.inputs = std::move(inputs);
    n.outputs = {name};
    n.opset = g_.opset;
    return n;
  }

  std::string emit(Node n, DType t, const Shape& shape) {
    const std::string out = n.outputs[0];
    shapes_[out] = shape;
    g_.value_info[out] = info(out, t, shape);
    g_.nodes.push_back(std::move(n));
    return out;
  }

  DType node_dtype(const std::string& value) const { return *g_.value_info.at(value).dtype; }

  void rename(const std::string& from, const std::string& to) {
    for (auto& n : g_.nodes) {
      for (auto& s : n.inputs) {
        if (s == from) s = to;
      }
      for (auto& s : n.outputs) {
        if (s == from) s = to;
      }
    }
    auto vi = g_.value_info.extract(from);
    vi.key() = to;
    vi.mapped().name = to;
    g_.value_info.insert(std::move(vi));
    shapes_[to] = shapes_.at(from);
  }

  const ModelDir& m_;
  int64_t batch_;
  Graph g_;
  std::map<std::string, Shape> shapes_;
  std::map<std::string, int> uses_;
};

}  // namespace

Graph graph_from_model_dir(const ModelDir& m, std::optional<int64_t> fixed_batch) {
  const LayerFile& root = m.layer("model");
  if (root.type != "ResNetQuantized") {
    fail(m.path + "/model", "the root layer is {}; only ResNetQuantized models are supported", root.type);
  }
  Builder b(m, fixed_batch);
  std::string x = b.input("input", {fixed_batch.value_or(-1), 3, 224, 224});
  x = b.conv("conv1", x);
  x = b.quantize("quantize1", b.relu("relu", x));
  x = b.max_pool("maxpool", x);
  for (int stage = 1;; ++stage) {
    const std::string name = fmt::format("layer{}", stage);
    if (!m.has_layer(name)) break;
    x = b.sequential(name, x);
  }
  const std::string logits = b.linear("fc", b.avg_pool("avgpool", x));
  const std::string scores = b.scale("scale", logits);
  return b.finish(logits, scores);
}

}  // namespace nibble
