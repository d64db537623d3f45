// ONNX model -> graph IR: parse, check, infer shapes, convert.
#include "nibble/onnx_import.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>

#include "formats/onnx_tensor.h"
#include "nibble/error.h"
#include "nibble/file_util.h"

namespace nibble {

namespace {

std::string first_line(const std::string& s) {
  const auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

ValueInfo convert_value_info(const onnx::ValueInfoProto& vi, const std::string& path, bool require_tensor) {
  ValueInfo v;
  v.name = vi.name();
  if (!vi.has_type()) return v;
  const auto& type = vi.type();
  if (!type.has_tensor_type()) {
    if (require_tensor) {
      fail(path, "value '{}' is not a tensor (sequences, maps and optionals are not supported)", vi.name());
    }
    return v;
  }
  const auto& tt = type.tensor_type();
  v.dtype = dtype_from_onnx(tt.elem_type());
  if (require_tensor && !v.dtype) {
    fail(path, "value '{}' has ONNX element type {}, which nibble does not support", vi.name(), tt.elem_type());
  }
  if (tt.has_shape()) {
    Shape shape;
    for (const auto& d : tt.shape().dim()) {
      shape.push_back(d.has_dim_value() ? d.dim_value() : -1);
      v.dim_params.push_back(d.has_dim_param() ? d.dim_param() : "");
    }
    v.shape = std::move(shape);
  }
  return v;
}

Node convert_node(const onnx::NodeProto& np, int opset, const std::string& path) {
  Node n;
  n.op_type = np.domain().empty() || np.domain() == "ai.onnx" ? np.op_type() : np.domain() + ":" + np.op_type();
  n.name = np.name();
  n.inputs.assign(np.input().begin(), np.input().end());
  n.outputs.assign(np.output().begin(), np.output().end());
  n.opset = opset;
  for (const auto& a : np.attribute()) {
    switch (a.type()) {
      case onnx::AttributeProto::INT: n.attrs[a.name()] = static_cast<int64_t>(a.i()); break;
      case onnx::AttributeProto::FLOAT: n.attrs[a.name()] = a.f(); break;
      case onnx::AttributeProto::STRING: n.attrs[a.name()] = a.s(); break;
      case onnx::AttributeProto::INTS: n.attrs[a.name()] = std::vector<int64_t>(a.ints().begin(), a.ints().end()); break;
      case onnx::AttributeProto::FLOATS: n.attrs[a.name()] = std::vector<float>(a.floats().begin(), a.floats().end()); break;
      case onnx::AttributeProto::STRINGS:
        n.attrs[a.name()] = std::vector<std::string>(a.strings().begin(), a.strings().end());
        break;
      case onnx::AttributeProto::TENSOR: n.attrs[a.name()] = tensor_from_onnx(a.t(), path); break;
      default:
        // Graph and sparse attributes only occur on ops nibble does not run; keep the name
        // so that the op still sees that the attribute was given.
        n.attrs[a.name()] = std::string{};
        break;
    }
  }
  return n;
}

// ONNX's own shape inference divides by strides, dilations, groups and block sizes without
// checking them: refuse values below 1 (and absurd sizes) first, in every (sub)graph.
void check_sizes(const onnx::GraphProto& g, const std::string& path) {
  constexpr int64_t kMaxGeometry = int64_t{1} << 20;
  for (const auto& n : g.node()) {
    const std::string label = n.name().empty() ? n.op_type() : fmt::format("{} ({})", n.name(), n.op_type());
    for (const auto& a : n.attribute()) {
      if (a.type() == onnx::AttributeProto::GRAPH) check_sizes(a.g(), path);
      for (const auto& sub : a.graphs()) check_sizes(sub, path);
      const std::string& k = a.name();
      const bool window = k == "strides" || k == "dilations" || k == "kernel_shape";
      const bool count = k == "group" || k == "blocksize";
      if (!window && !count) continue;
      std::vector<int64_t> values(a.ints().begin(), a.ints().end());
      if (a.has_i()) values.push_back(a.i());
      for (int64_t v : values) {
        if (v < 1 || v > kMaxGeometry) fail(path, "node {}: attribute {} must be between 1 and 2^20, got {}", label, k, v);
      }
    }
    if (n.op_type() == "Conv" || n.op_type() == "MaxPool" || n.op_type() == "AveragePool" || n.op_type() == "ConvTranspose") {
      for (const auto& a : n.attribute()) {
        if (a.name() != "pads" && a.name() != "output_padding") continue;
        for (int64_t v : a.ints()) {
          if (v < 0 || v > kMaxGeometry) fail(path, "node {}: attribute {} must be between 0 and 2^20, got {}", label, a.name(), v);
        }
      }
    }
  }
}

// Window ops whose ONNX shape inference indexes the input's dimensions by the weight's rank or
// the attributes' lengths without comparing them (convPoolShapeInference in ONNX 1.12 reads past
// the shape for a rank-5 weight on a rank-4 input). The ranks are known only during inference,
// so the check runs there: a schema registry hands out copies of these schemas whose inference
// function checks the ranks first and then calls ONNX's own.
int window_weight_input(const std::string& op) {
  if (op == "Conv" || op == "ConvInteger" || op == "ConvTranspose") return 1;
  if (op == "QLinearConv") return 3;
  if (op == "MaxPool" || op == "AveragePool" || op == "LpPool") return -1;
  return -2;  // not a window op
}

const onnx::TensorShapeProto* input_shape(onnx::InferenceContext& ctx, int i) {
  if (i < 0 || static_cast<size_t>(i) >= ctx.getNumInputs()) return nullptr;
  const onnx::TypeProto* t = ctx.getInputType(static_cast<size_t>(i));
  if (t == nullptr || !t->has_tensor_type() || !t->tensor_type().has_shape()) return nullptr;
  return &t->tensor_type().shape();
}

void check_window_ranks(onnx::InferenceContext& ctx, const std::string& op, const std::string& path) {
  const onnx::TensorShapeProto* x = input_shape(ctx, 0);
  if (x == nullptr) return;
  const int rank = x->dim_size();
  if (rank < 3) fail(path, "{}: the input has rank {}, a convolution or pool needs at least 3", op, rank);
  const size_t spatial = static_cast<size_t>(rank - 2);
  if (const onnx::TensorShapeProto* w = input_shape(ctx, window_weight_input(op)); w != nullptr && w->dim_size() != rank) {
    fail(path, "{}: the weight has rank {} but the input has rank {}", op, w->dim_size(), rank);
  }
  for (const char* name : {"kernel_shape", "strides", "dilations", "pads", "output_padding", "output_shape"}) {
    const onnx::AttributeProto* a = ctx.getAttribute(name);
    if (a == nullptr) continue;
    const size_t want = std::string_view(name) == "pads" ? 2 * spatial : spatial;
    if (static_cast<size_t>(a->ints_size()) != want) {
      fail(path, "{}: attribute {} has {} values, the input's {} spatial dimensions need {}", op, name, a->ints_size(),
           spatial, want);
    }
  }
}

class CheckedSchemas final : public onnx::ISchemaRegistry {
 public:
  explicit CheckedSchemas(std::string path) : path_(std::move(path)) {}

  const onnx::OpSchema* GetSchema(const std::string& key, const int max_version,
                                  const std::string& domain) const override {
    const onnx::OpSchema* schema = onnx::OpSchemaRegistry::Instance()->GetSchema(key, max_version, domain);
    if (schema == nullptr || !(domain.empty() || domain == "ai.onnx") || window_weight_input(key) == -2) return schema;
    const std::string id = fmt::format("{}:{}", key, schema->SinceVersion());
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = checked_.find(id);
    if (it == checked_.end()) {
      auto copy = std::make_unique<onnx::OpSchema>(*schema);
      copy->TypeAndShapeInferenceFunction(
          [inner = schema->GetTypeAndShapeInferenceFunction(), key, path = path_](onnx::InferenceContext& ctx) {
            check_window_ranks(ctx, key, path);
            if (inner) inner(ctx);
          });
      it = checked_.emplace(id, std::move(copy)).first;
    }
    return it->second.get();
  }

 private:
  std::string path_;
  mutable std::mutex mutex_;
  mutable std::map<std::string, std::unique_ptr<onnx::OpSchema>> checked_;
};

}  // namespace

Graph import_onnx(const std::string& path, const OnnxImportOptions& options) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot open file");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string bytes = ss.str();
  if (bytes.empty()) fail(path, "file is empty");

  onnx::ModelProto model;
  if (!model.ParseFromString(bytes)) fail(path, "not a valid ONNX model (the protobuf does not parse; truncated or corrupt?)");
  if (!model.has_graph() || model.graph().node_size() == 0) fail(path, "not an ONNX model: it has no graph nodes");

  int opset = 0;
  for (const auto& imp : model.opset_import()) {
    if (imp.domain().empty() || imp.domain() == "ai.onnx") opset = static_cast<int>(imp.version());
  }
  if (opset == 0) fail(path, "the model imports no version of the default ONNX operator set");
  if (opset < kMinOnnxOpset || opset > kMaxOnnxOpset) {
    fail(path, "ONNX opset {} is not supported (supported: {} to {})", opset, kMinOnnxOpset, kMaxOnnxOpset);
  }

  check_sizes(model.graph(), path);
  try {
    onnx::checker::check_model(model);
  } catch (const std::exception& e) {
    fail(path, "the ONNX checker rejects the model: {}", first_line(e.what()));
  }

  if (options.fixed_batch) {
    std::set<std::string> init_names;
    for (const auto& t : model.graph().initializer()) init_names.insert(t.name());
    for (auto& in : *model.mutable_graph()->mutable_input()) {
      if (init_names.count(in.name()) || !in.type().has_tensor_type()) continue;
      auto* shape = in.mutable_type()->mutable_tensor_type()->mutable_shape();
      if (shape->dim_size() > 0 && !shape->dim(0).has_dim_value()) shape->mutable_dim(0)->set_dim_value(*options.fixed_batch);
    }
  }
  try {
    const CheckedSchemas schemas(path);
    onnx::shape_inference::InferShapes(model, &schemas);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(path, "ONNX shape inference fails: {}", first_line(e.what()));
  }

  Graph g;
  g.source = path;
  g.opset = opset;
  const auto& gp = model.graph();
  for (const auto& t : gp.initializer()) {
    if (t.name().empty()) fail(path, "an initializer has no name");
    g.initializers[t.name()] = tensor_from_onnx(t, path);
  }
  for (const auto& in : gp.input()) {
    if (g.initializers.count(in.name())) continue;
    g.inputs.push_back(convert_value_info(in, path, /*require_tensor=*/true));
  }
  for (const auto& out : gp.output()) g.outputs.push_back(convert_value_info(out, path, /*require_tensor=*/true));
  for (const auto& vi : gp.value_info()) g.value_info[vi.name()] = convert_value_info(vi, path, false);
  for (const auto& np : gp.node()) g.nodes.push_back(convert_node(np, opset, path));
  return g;
}

void write_onnx_with_initializers(const std::string& in, const std::string& out,
                                  const std::map<std::string, Tensor>& replace) {
  onnx::ModelProto model;
  if (!model.ParseFromString(read_file(in))) fail(in, "not a valid ONNX model (the protobuf does not parse)");
  std::set<std::string> done;
  for (auto& t : *model.mutable_graph()->mutable_initializer()) {
    const auto it = replace.find(t.name());
    if (it == replace.end()) continue;
    const Tensor& v = it->second;
    const Shape dims(t.dims().begin(), t.dims().end());
    if (t.data_type() != onnx::TensorProto::FLOAT || v.dtype() != DType::f32 || dims != v.shape()) {
      fail(in, "initializer '{}' is not an f32 tensor of shape {}", t.name(), shape_str(v.shape()));
    }
    t.clear_float_data();
    t.clear_external_data();
    t.set_data_location(onnx::TensorProto::DEFAULT);
    t.set_raw_data(std::string(reinterpret_cast<const char*>(v.bytes()), v.nbytes()));
    done.insert(t.name());
  }
  for (const auto& [name, v] : replace) {
    if (!done.count(name)) fail(in, "has no initializer named '{}'", name);
  }
  std::string bytes;
  if (!model.SerializeToString(&bytes)) fail(out, "cannot serialize the ONNX model");
  write_file_atomic(out, bytes);
}

}  // namespace nibble
