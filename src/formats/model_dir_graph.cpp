// Builds the graph of a seed-format model directory (ResNetQuantized and its blocks).
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>

#include "nibble/error.h"
#include "nibble/model_loader.h"
#include "quant/requant.h"
#include "quant/sparsity.h"

namespace nibble {

Attribute op_layer_attribute(const LayerField& field, const std::string& where) {
  if (field.is_tensor) return field.tensor;
  const std::string& v = field.value;
  const size_t sp = v.find(' ');
  const std::string kind = v.substr(0, sp), rest = sp == std::string::npos ? "" : v.substr(sp + 1);
  auto bad = [&]() { fail(where, "'{}': '{}' is not <int|float|string|ints|floats> <value>", field.key, v); };
  auto to_int = [&](const std::string& text) -> int64_t {
    char* end = nullptr;
    errno = 0;
    const long long i = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno == ERANGE) bad();
    return i;
  };
  auto to_float = [&](const std::string& text) -> float {
    char* end = nullptr;
    const double d = std::strtod(text.c_str(), &end);
    // A finite value beyond the f32 range has no f32 form (infinities and NaN pass as written).
    if (text.empty() || *end != '\0' || (std::isfinite(d) && std::fabs(d) > std::numeric_limits<float>::max())) bad();
    return static_cast<float>(d);
  };
  if (kind == "string") return rest;
  if (kind == "int") return to_int(rest);
  if (kind == "float") return to_float(rest);
  if (kind != "ints" && kind != "floats") bad();
  const size_t colon = rest.find(':');
  if (colon == std::string::npos) bad();
  std::vector<std::string> items;
  for (size_t i = colon + 1; i < rest.size();) {
    const size_t j = std::min(rest.find(' ', i), rest.size());
    if (j > i) items.push_back(rest.substr(i, j - i));
    i = j + 1;
  }
  if (std::to_string(items.size()) != rest.substr(0, colon)) bad();
  if (kind == "floats") {
    std::vector<float> out;
    for (const auto& item : items) out.push_back(to_float(item));
    return out;
  }
  std::vector<int64_t> out;
  for (const auto& item : items) out.push_back(to_int(item));
  return out;
}


namespace {

// Kernel sizes, strides, dilations and paddings beyond this are not geometry but corruption.
constexpr int64_t kMaxGeometry = int64_t{1} << 20;

// A sliding window along one axis of `extent`: kernel, stride and dilation >= 1, padding >= 0,
// all below kMaxGeometry, and at least one output position.
void check_window(const std::string& where, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation, int64_t extent) {
  if (kernel < 1 || kernel > kMaxGeometry) fail(where, "kernel size {} must be between 1 and 2^20", kernel);
  if (stride < 1 || stride > kMaxGeometry) fail(where, "stride {} must be between 1 and 2^20", stride);
  if (dilation < 1 || dilation > kMaxGeometry) fail(where, "dilation {} must be between 1 and 2^20", dilation);
  if (pad < 0 || pad > kMaxGeometry) fail(where, "padding {} must be between 0 and 2^20", pad);
  if (extent >= 0 && extent + 2 * pad < dilation * (kernel - 1) + 1) {
    fail(where, "a window of {} (dilation {}) does not fit an input of {} with padding {}", kernel, dilation, extent, pad);
  }
}

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

  std::string input(const std::string& name, Shape shape) { return typed_input(name, DType::s8, shape); }

  // Spatial extent d (0: height, 1: width) of value x, read by the sliding-window layer `layer`.
  int64_t spatial(const std::string& layer, const std::string& x, int d) const {
    const Shape& s = shapes_.at(x);
    if (s.size() != 4) fail(file_of(layer), "expects an N x C x H x W input, '{}' is {}", x, shape_str(s));
    return s[static_cast<size_t>(2 + d)];
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
    if (groups < 1 || groups > kMaxGeometry) fail(where, "groups={} is not a positive count", groups);
    for (int d = 0; d < 2; ++d) check_window(where, kernel[d], stride[d], pad[d], dilation[d], spatial(layer, x, d));
    if (w.rank() != 4 || w.dim(0) != cout || w.dim(1) * groups != cin || w.dim(2) != kernel[0] ||
        w.dim(3) != kernel[1]) {
      fail(where, "weight {} does not match in_channels={} out_channels={} kernel_size={}x{} groups={}",
           shape_str(w.shape()), cin, cout, kernel[0], kernel[1], groups);
    }
    const Shape& xs = shapes_.at(x);
    if (xs[1] != cin) fail(where, "in_channels={} but the layer receives {} channels", cin, xs[1]);
    const auto mode = parse_compute_mode(f.get_string("compute_mode"), where);
    const bool is_float = is_float_mode(mode);
    const bool is_fp8 = is_fp8_mode(mode);
    if (!is_float && !is_fp8 && (mode.size() != 3 || mode[2].kind != 's' || mode[2].bits != 32)) {
      fail(where, "compute_mode {} is none of <act><weight>s32, f8<weight>f32 and f32f32f32", f.get_string("compute_mode"));
    }
    check_weight_type(where, w, mode[1]);
    check_sparsity(f, w, w.dim(2) * w.dim(3));
    Node n = node(is_float ? "Conv" : (is_fp8 ? "nibble:Fp8Conv" : "nibble:IntConv"), layer,
                  {x, constant(layer + ".weight", w), constant(layer + ".bias", b)});
    if (is_fp8) {
      // FP8 activations: the f32 accumulator scale is input_scale x weight_scale per channel.
      if (node_dtype(x) != DType::e4m3) fail(where, "the layer computes in FP8 but receives {} values", dtype_name(node_dtype(x)));
      if (b.dtype() != DType::f32) fail(where, "an FP8 layer needs an f32 bias, got {}", dtype_name(b.dtype()));
      const Tensor& ws = f.get_tensor("weight_scale");
      const double sx = std::strtod(f.get_string("input_scale").c_str(), nullptr);
      if (ws.dtype() != DType::f32 || ws.numel() != cout || !(sx > 0.0)) {
        fail(where, "an FP8 layer needs input_scale > 0 and {} f32 weight_scale values", cout);
      }
      Tensor acc(DType::f32, {cout});
      for (int64_t k = 0; k < cout; ++k) acc.data<float>()[k] = static_cast<float>(sx * ws.get(k));
      n.inputs.push_back(constant(layer + ".acc_scale", acc));
      if (f.has("weight_group_scale")) {
        // DPQ: each weight widens to e4m3(level x its group's scale) before the FP8 products.
        if (groups != 1) fail(where, "weight_group_scale needs groups=1");
        const Tensor& gs = f.get_tensor("weight_group_scale");
        const int64_t size = f.get_int("weight_group_size");
        const int64_t per = w.numel() / cout;
        if (size < 1 || size > per) fail(where, "weight_group_size={} is outside 1..{}", size, per);
        const int64_t count = (per + size - 1) / size;
        if (gs.dtype() != DType::f32 || gs.rank() != 2 || gs.dim(0) != cout || gs.dim(1) != count) {
          fail(where, "weight_group_scale must be f32 of shape [{}, {}], got {} {}", cout, count, dtype_name(gs.dtype()),
               shape_str(gs.shape()));
        }
        for (int64_t i = 0; i < gs.numel(); ++i) {
          const double v = gs.get(i);
          if (!(v > 0.0) || !std::isfinite(v)) fail(where, "weight_group_scale[{}] = {} is not a positive finite number", i, v);
        }
        n.inputs.push_back(constant(layer + ".group_scale", gs));
        n.attrs["group_size"] = size;
      }
    } else {
      check_input_type(where, x, is_float);
      if (f.has("weight_group_scale")) fail(where, "weight_group_scale belongs to FP8 layers (compute_mode f8s4f32)");
    }
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
    return emit(std::move(n), is_float || is_fp8 ? DType::f32 : DType::s32, ys);
  }

  std::string relu(const std::string& layer, const std::string& x) {
    expect(layer, "ReLU");
    // s32 accumulators take the integer ReLU; f32 values (layers kept in float) the ONNX one.
    const DType t = node_dtype(x);
    if (t != DType::s32 && t != DType::f32) fail(file_of(layer), "ReLU needs s32 or f32 input, got {}", dtype_name(t));
    return emit(node(t == DType::f32 ? "Relu" : "nibble:IntRelu", unique(layer), {x}), t, shapes_.at(x));
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
    for (int d = 0; d < 2; ++d) check_window(file_of(layer), k, s, p, 1, spatial(layer, x, d));
    Node n = node("MaxPool", layer, {x});
    n.attrs["kernel_shape"] = std::vector<int64_t>{k, k};
    n.attrs["strides"] = std::vector<int64_t>{s, s};
    n.attrs["pads"] = std::vector<int64_t>{p, p, p, p};
    Shape ys = shapes_.at(x);
    for (int d = 2; d < 4; ++d) ys[d] = (ys[d] + 2 * p - k) / s + 1;
    return emit(std::move(n), node_dtype(x), ys);
  }

  std::string avg_pool(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "AvgPool2d");
    const int64_t k = f.get_int("kernel_size"), s = f.get_int("stride");
    if (f.get_int("padding") != 0 || f.get_bool("ceil_mode")) fail(file_of(layer), "only padding=0 without ceil_mode is supported");
    for (int d = 0; d < 2; ++d) check_window(file_of(layer), k, s, 0, 1, spatial(layer, x, d));
    // Integer pooling rounds as the seed does; f32 values (layers kept in float) use ONNX's.
    const bool is_float = node_dtype(x) == DType::f32;
    Node n = node(is_float ? "AveragePool" : "nibble:IntAvgPool", layer, {x});
    n.attrs["kernel_shape"] = std::vector<int64_t>{k, k};
    n.attrs["strides"] = std::vector<int64_t>{s, s};
    Shape ys = shapes_.at(x);
    for (int d = 2; d < 4; ++d) ys[d] = (ys[d] - k) / s + 1;
    return emit(std::move(n), is_float ? DType::f32 : DType::u8, ys);
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
    const bool is_float = is_float_mode(mode);
    check_weight_type(where, w, mode[1]);
    check_sparsity(f, w, 1);
    check_input_type(where, x, is_float);
    const Shape& xs = shapes_.at(x);
    if (shape_numel(Shape(xs.begin() + 1, xs.end())) != in) {
      fail(where, "in_features={} but the layer receives {}", in, shape_str(xs));
    }
    Node flat = node("Flatten", layer + ".flatten", {x});
    const std::string flat_out = emit(std::move(flat), node_dtype(x), {xs[0], in});
    Node n = node(is_float ? "Gemm" : "nibble:IntLinear", layer,
                  {flat_out, constant(layer + ".weight", w), constant(layer + ".bias", f.get_tensor("bias"))});
    if (is_float) n.attrs["transB"] = int64_t{1};
    return emit(std::move(n), is_float ? DType::f32 : DType::s32, {xs[0], out});
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

  // Add: two s32 accumulators (nibble:IntAdd) or two f32 values (Add) of one shape.
  std::string add(const std::string& layer, const std::string& a, const std::string& b) {
    expect(layer, "Add");
    const DType t = node_dtype(a);
    if (node_dtype(b) != t || (t != DType::s32 && t != DType::f32)) {
      fail(file_of(layer), "Add needs two s32 or two f32 inputs, got {} and {}", dtype_name(t), dtype_name(node_dtype(b)));
    }
    if (shapes_.at(a) != shapes_.at(b)) {
      fail(file_of(layer), "the inputs differ in shape: {} and {}", shape_str(shapes_.at(a)), shape_str(shapes_.at(b)));
    }
    return emit(node(t == DType::f32 ? "Add" : "nibble:IntAdd", layer, {a, b}), t, shapes_.at(a));
  }

  // QuantizeFloat: f32 -> integer, round(x / scale) clamped to output_bits.
  std::string quantize_float(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "QuantizeFloat");
    const std::string where = file_of(layer);
    if (node_dtype(x) != DType::f32) fail(where, "QuantizeFloat needs f32 input, got {}", dtype_name(node_dtype(x)));
    const auto mode = parse_compute_mode(f.get_string("compute_mode"), where);
    if (mode.size() != 3 || mode[0].kind != 'f') fail(where, "compute_mode {} is not f32f32<out>", f.get_string("compute_mode"));
    const int64_t bits = f.get_int("output_bits");
    if (bits < 1 || bits > 31) fail(where, "output_bits={} is outside 1..31", bits);
    const bool is_signed = mode[2].kind == 's';
    const bool fp8 = mode[2].kind == 'f' && mode[2].bits == 8;  // f32f32f8: e4m3 out
    if (mode[2].kind == 'f' && !fp8) fail(where, "compute_mode {}: a float output must be f8 (e4m3)", f.get_string("compute_mode"));
    Node n = node("nibble:QuantizeFloat", layer, {x, constant(layer + ".scale", scale_tensor(f, "scale", x))});
    n.attrs["bits"] = bits;
    n.attrs["signed"] = int64_t{is_signed};
    if (fp8) n.attrs["e4m3"] = int64_t{1};
    return emit(std::move(n), fp8 ? DType::e4m3 : quant::storage_dtype(static_cast<int>(bits), is_signed), shapes_.at(x));
  }

  // Dequantize: integer or e4m3 -> f32, x * scale (one scale, or one per channel).
  std::string dequantize(const std::string& layer, const std::string& x) {
    const LayerFile& f = expect(layer, "Dequantize");
    const DType t = node_dtype(x);
    if (t != DType::u8 && t != DType::s8 && t != DType::s32 && t != DType::e4m3) {
      fail(file_of(layer), "Dequantize needs u8, s8, s32 or e4m3 input, got {}", dtype_name(t));
    }
    Node n = node("DequantizeLinear", layer, {x, constant(layer + ".scale", scale_tensor(f, "scale", x))});
    n.attrs["axis"] = int64_t{1};
    return emit(std::move(n), DType::f32, shapes_.at(x));
  }

  // Op: one ONNX operator of the default domain, kept in float (quantize's fallback). Its
  // operands are value inputs (`x<k>`: the k-th name of `inputs`), constant tensors (`const<k>`
  // fields) or omitted optional inputs (`-`); attributes are `attr_<name>` fields; the output's
  // type and shape are recorded, as ONNX's shape inference gave them.
  std::string op(const std::string& layer, const std::vector<std::string>& inputs) {
    const LayerFile& f = expect(layer, "Op");
    const std::string where = file_of(layer);
    const std::string& op_type = f.get_string("op_type");
    if (op_type.empty() || !std::all_of(op_type.begin(), op_type.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)); })) {
      fail(where, "op_type '{}' is not the name of an ONNX operator", op_type);
    }
    Node n = node(op_type, layer, {});
    std::vector<std::string> operands;
    if (f.has("operands")) {
      operands = split_name_list(f.get_string("operands"));
    } else {
      for (size_t k = 0; k < inputs.size(); ++k) operands.push_back(fmt::format("x{}", k));
    }
    std::vector<bool> used(inputs.size(), false);
    for (const std::string& o : operands) {
      if (o == "-") {
        n.inputs.emplace_back();
      } else if (o.size() > 1 && o[0] == 'x' && std::all_of(o.begin() + 1, o.end(), ::isdigit) && o.size() < 8) {
        const size_t k = std::stoul(o.substr(1));
        if (k >= inputs.size()) fail(where, "operand {} names input {}, the layer has {}", o, k, inputs.size());
        used[k] = true;
        n.inputs.push_back(inputs[k]);
      } else if (o.rfind("const", 0) == 0) {
        n.inputs.push_back(constant(layer + "." + o, f.get_tensor(o)));
      } else {
        fail(where, "operand '{}' is none of x<k>, const<k> and -", o);
      }
    }
    for (size_t k = 0; k < used.size(); ++k) {
      if (!used[k]) fail(where, "input '{}' is not an operand", inputs[k]);
    }
    for (const LayerField& field : f.fields) {
      if (field.key.rfind("attr_", 0) != 0) continue;
      const std::string name = field.key.substr(5);
      if (name.empty()) fail(where, "an attribute field has no name");
      n.attrs[name] = op_layer_attribute(field, where);
    }
    const std::optional<DType> t = dtype_from_name(f.get_string("output_type"));
    if (!t) fail(where, "output_type '{}' is not a dtype", f.get_string("output_type"));
    return emit(std::move(n), *t, parse_shape(f.get_string("output_shape"), where));
  }

  // "[N,16,112,112]": N is the batch (free unless fixed), ? an unknown dimension, [] a scalar.
  Shape parse_shape(const std::string& text, const std::string& where) const {
    if (text.size() < 2 || text.front() != '[' || text.back() != ']') fail(where, "output_shape '{}' is not [d1,d2,...]", text);
    Shape out;
    const std::string body = text.substr(1, text.size() - 2);
    if (body.empty()) return out;
    for (const std::string& d : split_name_list(body)) {
      if (d == "N") {
        out.push_back(batch_);
      } else if (d == "?") {
        out.push_back(-1);
      } else {
        char* end = nullptr;
        errno = 0;
        const long long v = std::strtoll(d.c_str(), &end, 10);
        if (d.empty() || *end != '\0' || errno == ERANGE || v < 0 || v > kMaxGeometry * kMaxGeometry) {
          fail(where, "output_shape '{}': '{}' is not a dimension", text, d);
        }
        out.push_back(v);
      }
      if (out.size() > 16) fail(where, "output_shape '{}' has more than 16 dimensions", text);
    }
    return out;
  }

  // The root of a GraphQuantized model: the layer `name` applied to `inputs` (values already built).
  std::string layer(const std::string& name, const std::vector<std::string>& inputs) {
    const std::string& type = layer_type(name);
    if (type == "Op") return op(name, inputs);
    const size_t want = type == "Add" ? 2 : 1;
    if (inputs.size() != want) fail(file_of(name), "a {} layer takes {} input(s), the file names {}", type, want, inputs.size());
    const std::string& x = inputs[0];
    if (type == "Conv2d") return conv(name, x);
    if (type == "ReLU") return relu(name, x);
    if (type == "Quantize") return quantize(name, x);
    if (type == "QuantizeFloat") return quantize_float(name, x);
    if (type == "Dequantize") return dequantize(name, x);
    if (type == "Add") return add(name, x, inputs[1]);
    if (type == "MaxPool2d") return max_pool(name, x);
    if (type == "AvgPool2d") return avg_pool(name, x);
    if (type == "Linear") return linear(name, x);
    if (type == "Scale") return scale(name, x);
    fail(file_of(name), "layer type {} cannot appear in a GraphQuantized model", type);
  }

  bool has_value(const std::string& v) const { return shapes_.count(v) != 0; }

  const std::string& layer_type(const std::string& layer) const { return m_.layer(layer).type; }

  std::string file_of(const std::string& layer) const { return m_.path + "/" + layer; }

  // The graph's outputs, renamed from their layers to `names`; each keeps the dtype its layer gives.
  Graph finish_outputs(const std::vector<std::string>& layers, const std::vector<std::string>& names) {
    for (size_t i = 0; i < layers.size(); ++i) {
      g_.outputs.push_back(info(names[i], node_dtype(layers[i]), shapes_.at(layers[i])));
      rename(layers[i], names[i]);
    }
    return std::move(g_);
  }

  std::string typed_input(const std::string& name, DType t, Shape shape) {
    shapes_[name] = shape;
    g_.inputs.push_back(info(name, t, shape));
    input_types_[name] = t;
    return name;
  }

 private:
  // f8<weight>f32: FP8 (e4m3) activations, integer weights, f32 results.
  static bool is_fp8_mode(const std::vector<NumberType>& mode) {
    return mode.size() == 3 && mode[0].kind == 'f' && mode[0].bits == 8 && mode[1].kind == 's' && mode[2].kind == 'f';
  }

  static bool is_float_mode(const std::vector<NumberType>& mode) {
    return mode.size() == 3 && mode[0].kind == 'f' && mode[1].kind == 'f' && mode[2].kind == 'f';
  }

  // Integer layers take u8/s8 activations, float layers f32 values.
  void check_input_type(const std::string& where, const std::string& x, bool is_float) const {
    const DType t = node_dtype(x);
    const bool ok = is_float ? t == DType::f32 : (t == DType::u8 || t == DType::s8);
    if (!ok) fail(where, "the layer computes in {} but receives {} values", is_float ? "f32" : "integers", dtype_name(t));
  }

  // A scale field: a number ("0.0123") or an f32 tensor with one value per channel of x.
  Tensor scale_tensor(const LayerFile& f, const std::string& key, const std::string& x) const {
    const LayerField* field = f.find(key);
    const std::string where = file_of(f.name);
    if (!field) fail(where, "missing '{}'", key);
    Tensor s;
    if (field->is_tensor) {
      s = field->tensor;
      if (s.dtype() != DType::f32) fail(where, "'{}' must be f32, got {}", key, dtype_name(s.dtype()));
      if (s.numel() != 1 && (shapes_.at(x).size() < 2 || s.numel() != shapes_.at(x)[1])) {
        fail(where, "'{}' has {} values but the layer receives {} channels", key, s.numel(), shapes_.at(x)[1]);
      }
      s = s.reshaped({s.numel()});
    } else {
      char* end = nullptr;
      const double v = std::strtod(field->value.c_str(), &end);
      if (field->value.empty() || *end != '\0') fail(where, "'{}' is not a number: {}", key, field->value);
      s = Tensor(DType::f32, {1});
      s.data<float>()[0] = static_cast<float>(v);
    }
    for (int64_t i = 0; i < s.numel(); ++i) {
      const float v = s.data<float>()[i];
      if (!(v > 0.0f) || !std::isfinite(v)) fail(where, "'{}' holds {}, which is not a positive finite scale", key, v);
    }
    return s;
  }

  const LayerFile& expect(const std::string& layer, const char* type) const {
    const LayerFile& f = m_.layer(layer);
    if (f.type != type) fail(file_of(layer), "expected a {} layer, got {}", type, f.type);
    return f;
  }

  // `sparsity=2:2 4` (2 of every 4 weights along the input channels): the weights must hold it.
  void check_sparsity(const LayerFile& f, const Tensor& w, int64_t inner) const {
    if (!f.has("sparsity")) return;
    const std::string where = file_of(f.name);
    if (f.get_tuple("sparsity") != std::vector<int64_t>{2, 4}) {
      fail(where, "sparsity={} is not supported (2:2 4: two of every four)", f.get_string("sparsity"));
    }
    if (!quant::rows_are_2to4([&](int64_t i) { return w.get(i); }, w.dim(0), w.dim(1), inner)) {
      fail(where, "declares 2:4 sparsity but its weight {} has a group of four input channels with more than two "
                  "non-zeros", shape_str(w.shape()));
    }
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

  DType node_dtype(const std::string& value) const {
    if (auto it = input_types_.find(value); it != input_types_.end()) return it->second;
    return *g_.value_info.at(value).dtype;
  }

  void rename(const std::string& from, const std::string& to) {
    if (from == to) return;
    // Two outputs of one name, or one layer listed as two outputs, cannot both be renamed.
    if (g_.value_info.count(to) != 0) fail(m_.path, "the output name {} is used twice", to);
    if (g_.value_info.count(from) == 0) fail(m_.path, "the output layer {} is listed twice", from);
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
  std::map<std::string, DType> input_types_;
};

// A list of names, "a,b,c" -> {a, b, c}.
std::vector<std::string> names_field(const LayerFile& f, const std::string& key, const std::string& where) {
  const std::string& v = f.get_string(key);
  std::vector<std::string> out = split_name_list(v);
  for (const auto& name : out) {
    if (name.empty()) fail(where, "'{}' holds an empty name: '{}'", key, v);
  }
  return out;
}

// The generic root: every layer names its inputs; `layers` gives a topological order.
Graph graph_from_layer_list(const ModelDir& m, std::optional<int64_t> fixed_batch) {
  const LayerFile& root = m.layer("model");
  const std::string where = m.path + "/model";
  Builder b(m, fixed_batch);
  const auto dims = root.get_tuple("input_shape");
  Shape shape{fixed_batch.value_or(-1)};
  for (int64_t d : dims) {
    if (d <= 0) fail(where, "input_shape holds a non-positive dimension {}", d);
    shape.push_back(d);
  }
  const std::string in_name = root.get_string("input");
  const std::string& in_type = root.get_string("input_type");
  const std::optional<DType> in_dtype = dtype_from_name(in_type);
  if (!in_dtype || (*in_dtype != DType::f32 && *in_dtype != DType::u8 && *in_dtype != DType::s8)) {
    fail(where, "input_type must be f32, u8 or s8, got '{}'", in_type);
  }
  b.typed_input(in_name, *in_dtype, shape);
  for (const std::string& layer : names_field(root, "layers", where)) {
    if (!m.has_layer(layer)) fail(where, "'layers' names '{}', which has no layer file", layer);
    if (b.has_value(layer)) fail(where, "'layers' names '{}' twice", layer);
    // An Op may read constants only (its `inputs` is then empty).
    const LayerFile& lf = m.layer(layer);
    std::vector<std::string> inputs;
    if (lf.type != "Op" || !lf.get_string("inputs").empty()) inputs = names_field(lf, "inputs", b.file_of(layer));
    for (const auto& x : inputs) {
      if (!b.has_value(x)) fail(b.file_of(layer), "input '{}' is neither the model input nor an earlier layer", x);
    }
    b.layer(layer, inputs);
  }
  const auto outputs = names_field(root, "outputs", where);
  const auto output_names = names_field(root, "output_names", where);
  if (outputs.empty() || outputs.size() != output_names.size()) {
    fail(where, "'outputs' and 'output_names' must list the same, non-zero number of names");
  }
  for (const auto& o : outputs) {
    if (!b.has_value(o)) fail(where, "output '{}' is not a layer of the model", o);
  }
  return b.finish_outputs(outputs, output_names);
}

}  // namespace

Graph graph_from_model_dir(const ModelDir& m, std::optional<int64_t> fixed_batch) {
  const LayerFile& root = m.layer("model");
  if (root.type == "GraphQuantized") return graph_from_layer_list(m, fixed_batch);
  if (root.type != "ResNetQuantized") {
    fail(m.path + "/model", "the root layer is {}; nibble reads ResNetQuantized and GraphQuantized models", root.type);
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
