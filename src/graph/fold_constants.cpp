// Load-time simplification of ONNX graphs: Constant nodes become initializers, Identity nodes
// disappear, Shape of a value whose shape is fully known becomes a constant, and any node whose
// inputs are all constant is evaluated once by the reference kernels. torch.onnx exports then
// reduce to the ops that carry the model (their Shape/Gather/Unsqueeze/Concat chains for a
// Reshape fold to one constant shape wherever the batch is fixed).
#include <algorithm>
#include <map>
#include <set>

#include "backends/ref/kernels.h"
#include "nibble/model_loader.h"

namespace nibble {

namespace {

// A folded output may hold at most this many elements: folding must not turn a few bytes of
// model into gigabytes (a ConstantOfShape of a huge shape stays a node, and fails when run).
constexpr int64_t kMaxFoldedElements = int64_t{1} << 22;

// Ops that are never evaluated at load: randomness, the integer ops of model directories,
// QuantizeLinear / DequantizeLinear (a QDQ model's weight pairs carry its quantization), and
// the reductions whose work is not bounded by their output (loading must stay quick).
bool foldable(const Node& n) {
  if (n.op_type.rfind("nibble:", 0) == 0) return false;
  static const std::set<std::string> never = {
      "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial",
      "QuantizeLinear", "DequantizeLinear", "Conv", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger",
      "QLinearMatMul", "Gemm", "AveragePool", "MaxPool", "GlobalAveragePool"};
  return never.count(n.op_type) == 0;
}

// The element count a node's outputs can reach, bounded before anything is computed: the
// inferred output shapes where ONNX knew them, otherwise the ops whose outputs cannot exceed
// their inputs; -1 where no bound is known.
int64_t output_bound(const Graph& g, const Node& n, const std::vector<const Tensor*>& in) {
  int64_t total = 0;
  bool all_known = true;
  for (const auto& o : n.outputs) {
    if (o.empty()) continue;
    const ValueInfo* v = g.find_value(o);
    if (!v || !v->shape) {
      all_known = false;
      break;
    }
    const int64_t c = shape_numel(*v->shape);
    if (c < 0) {
      all_known = false;
      break;
    }
    total += c;
  }
  if (all_known) return total;
  if (n.op_type == "ConstantOfShape" && !in.empty() && in[0] && in[0]->rank() == 1) {
    int64_t count = 1;  // the product of the requested dimensions, stopping past any bound
    for (int64_t i = 0; i < in[0]->numel(); ++i) {
      const double d = in[0]->get(i);
      if (d < 0) return -1;
      count = static_cast<int64_t>(std::min(static_cast<double>(count) * d, 9.0e15));
    }
    return count;
  }
  static const std::set<std::string> shrinking = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Reshape", "Flatten",
                                                  "Identity", "Cast", "Slice", "Transpose", "Concat", "Constant"};
  if (!shrinking.count(n.op_type)) return -1;
  int64_t sum = 0;
  for (const Tensor* t : in) sum += t ? t->numel() : 0;
  for (const auto& [k, a] : n.attrs) {
    if (const Tensor* t = std::get_if<Tensor>(&a)) sum += t->numel();
  }
  return std::max<int64_t>(sum, 64);
}

}  // namespace

int fold_constants(Graph& g) {
  std::set<std::string> graph_outputs;
  for (const auto& o : g.outputs) graph_outputs.insert(o.name);
  std::map<std::string, std::string> alias;  // Identity outputs -> their inputs
  auto resolve = [&](const std::string& v) {
    auto it = alias.find(v);
    return it == alias.end() ? v : it->second;
  };
  std::vector<Node> kept;
  std::map<std::string, Shape> partial;  // Shape outputs -> the shape, -1 where unknown
  int folded = 0;
  for (Node n : g.nodes) {
    for (auto& in : n.inputs) {
      if (!in.empty()) in = resolve(in);
    }
    // Identity: later readers take its input (a graph output keeps its node).
    if (n.op_type == "Identity" && n.inputs.size() == 1 && n.outputs.size() == 1 && !graph_outputs.count(n.outputs[0])) {
      alias[n.outputs[0]] = n.inputs[0];
      ++folded;
      continue;
    }
    const bool output = [&] {
      for (const auto& o : n.outputs) {
        if (graph_outputs.count(o)) return true;
      }
      return false;
    }();
    if (output) {  // the engine computes graph outputs; they stay nodes
      kept.push_back(std::move(n));
      continue;
    }
    // Shape of a runtime value (an input or an inferred intermediate) whose shape is fully known
    // (with start and end, as of opset 15).
    const ValueInfo* shape_of = n.op_type == "Shape" && n.inputs.size() == 1 && !g.initializers.count(n.inputs[0])
                                    ? g.find_value(n.inputs[0])
                                    : nullptr;
    const std::optional<Shape> s = shape_of ? shape_of->shape : std::nullopt;
    if (s && std::all_of(s->begin(), s->end(), [](int64_t d) { return d >= 0; })) {
      const int64_t rank = static_cast<int64_t>(s->size());
      auto clamp_axis = [&](int64_t a) { return std::clamp<int64_t>(a < 0 ? a + rank : a, 0, rank); };
      const int64_t start = clamp_axis(n.attr_int("start", 0)), end = clamp_axis(n.attr_int("end", rank));
      Tensor dims(DType::s64, {std::max<int64_t>(end - start, 0)});
      for (int64_t i = start; i < end; ++i) dims.data<int64_t>()[i - start] = (*s)[static_cast<size_t>(i)];
      g.initializers[n.outputs[0]] = std::move(dims);
      ++folded;
      continue;
    }
    // Shape of a value whose shape is known but for some dimensions (the batch): remember which
    // entries are known, so that a Gather of known entries (x.size(1) in PyTorch) folds.
    if (s && n.outputs.size() == 1 && !n.has_attr("start") && !n.has_attr("end")) partial[n.outputs[0]] = *s;
    if (n.op_type == "Gather" && n.inputs.size() == 2 && n.attr_int("axis", 0) == 0 && partial.count(n.inputs[0])) {
      const Shape& dims = partial.at(n.inputs[0]);
      const auto idx = g.initializers.find(n.inputs[1]);
      if (idx != g.initializers.end() && idx->second.rank() <= 1 && idx->second.numel() <= 16) {
        Tensor out(DType::s64, idx->second.shape());
        bool known = true;
        const int64_t rank = static_cast<int64_t>(dims.size());
        for (int64_t i = 0; i < idx->second.numel() && known; ++i) {
          int64_t k = static_cast<int64_t>(idx->second.get(i));
          if (k < 0) k += rank;
          known = k >= 0 && k < rank && dims[static_cast<size_t>(k)] >= 0;
          if (known) out.data<int64_t>()[i] = dims[static_cast<size_t>(k)];
        }
        if (known) {
          g.initializers[n.outputs[0]] = std::move(out);
          ++folded;
          continue;
        }
      }
    }
    bool constant = foldable(n);
    std::vector<const Tensor*> in;
    for (const auto& v : n.inputs) {
      if (v.empty()) {
        in.push_back(nullptr);
        continue;
      }
      const auto it = g.initializers.find(v);
      if (it == g.initializers.end()) {
        constant = false;
        break;
      }
      in.push_back(&it->second);
    }
    const ref::KernelFn fn = constant ? ref::find_kernel(n.op_type, n.opset) : nullptr;
    const int64_t bound = fn ? output_bound(g, n, in) : -1;
    if (fn && bound >= 0 && bound <= kMaxFoldedElements) {
      ref::Outputs out(n.outputs.size());
      try {
        fn(n, in, out);
      } catch (const ref::KernelError&) {
        kept.push_back(n);  // left for the run, which reports it with the node and the file
        continue;
      }
      for (size_t i = 0; i < n.outputs.size(); ++i) {
        if (!n.outputs[i].empty()) g.initializers[n.outputs[i]] = std::move(out[i]);
      }
      ++folded;
      continue;
    }
    kept.push_back(std::move(n));
  }
  // Nodes nothing reads any more (a Shape whose Gathers all folded) go, last reader first.
  for (bool changed = true; changed;) {
    changed = false;
    std::set<std::string> used(graph_outputs.begin(), graph_outputs.end());
    for (const Node& n : kept) used.insert(n.inputs.begin(), n.inputs.end());
    for (auto it = kept.begin(); it != kept.end();) {
      const bool dead = std::none_of(it->outputs.begin(), it->outputs.end(),
                                     [&](const std::string& o) { return !o.empty() && used.count(o); });
      if (dead) {
        it = kept.erase(it);
        ++folded;
        changed = true;
      } else {
        ++it;
      }
    }
  }
  g.nodes = std::move(kept);
  // Initializers nothing reads any more (the inputs of folded nodes) are dropped.
  std::set<std::string> read(graph_outputs.begin(), graph_outputs.end());
  for (const Node& n : g.nodes) read.insert(n.inputs.begin(), n.inputs.end());
  for (auto it = g.initializers.begin(); it != g.initializers.end();) {
    it = read.count(it->first) ? std::next(it) : g.initializers.erase(it);
  }
  return folded;
}

}  // namespace nibble
