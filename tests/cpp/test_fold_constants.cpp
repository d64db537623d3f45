// Load-time constant folding: torch-style shape chains reduce to constants, results unchanged.
#include <gtest/gtest.h>

#include "nibble/engine.h"
#include "nibble/model_loader.h"

namespace nibble {
namespace {

Node node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out) {
  Node n;
  n.op_type = op;
  n.name = op + "_" + out[0];
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  n.opset = 13;
  return n;
}

Tensor s64(const std::vector<int64_t>& v, Shape shape) {
  Tensor t(DType::s64, std::move(shape));
  for (size_t i = 0; i < v.size(); ++i) t.data<int64_t>()[i] = v[i];
  return t;
}

// The folded graph gives the original's outputs, exactly, on one input of `shape`.
void expect_same_results(const Graph& original, const Graph& folded, const Shape& shape) {
  Tensor x(DType::f32, shape);
  for (int64_t i = 0; i < x.numel(); ++i) x.set(i, static_cast<double>(i % 7) - 3.0);
  const auto want = Engine(original, Backend::ref).run({x});
  const auto got = Engine(folded, Backend::ref).run({x});
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(got[0].shape(), want[0].shape());
  for (int64_t i = 0; i < want[0].numel(); ++i) EXPECT_EQ(got[0].get(i), want[0].get(i)) << i;
}

// x (2 x 3 x 4) * 2 -> Reshape to (Shape(x)[0], -1) -> Identity -> Relu, as torch.onnx writes
// x.view(x.size(0), -1).
Graph flatten_graph() {
  Graph g;
  g.source = "fold test";
  g.opset = 13;
  g.inputs.push_back({"x", DType::f32, Shape{2, 3, 4}, {"", "", ""}});
  g.outputs.push_back({"y", DType::f32, Shape{2, 12}, {"", ""}});
  g.value_info["m"] = {"m", DType::f32, Shape{2, 3, 4}, {"", "", ""}};
  Node two = node("Constant", {}, {"two"});
  Tensor v(DType::f32, {1});
  v.data<float>()[0] = 2.0f;
  two.attrs["value"] = v;
  g.nodes.push_back(two);
  g.nodes.push_back(node("Mul", {"x", "two"}, {"m"}));
  g.nodes.push_back(node("Shape", {"m"}, {"s"}));
  g.initializers["zero"] = s64({0}, {});
  g.initializers["axes"] = s64({0}, {1});
  g.initializers["minus_one"] = s64({-1}, {1});
  g.nodes.push_back(node("Gather", {"s", "zero"}, {"batch"}));
  g.nodes.push_back(node("Unsqueeze", {"batch", "axes"}, {"batch1"}));
  Node cat = node("Concat", {"batch1", "minus_one"}, {"target"});
  cat.attrs["axis"] = int64_t{0};
  g.nodes.push_back(cat);
  g.nodes.push_back(node("Reshape", {"m", "target"}, {"r"}));
  g.nodes.push_back(node("Identity", {"r"}, {"r2"}));
  g.nodes.push_back(node("Relu", {"r2"}, {"y"}));
  return g;
}

TEST(FoldConstants, ShapeChainsBecomeOneConstantShape) {
  const Graph original = flatten_graph();
  Graph g = original;
  EXPECT_EQ(fold_constants(g), 6);  // Constant, Shape, Gather, Unsqueeze, Concat, Identity
  std::vector<std::string> ops;
  for (const Node& n : g.nodes) ops.push_back(n.op_type);
  EXPECT_EQ(ops, (std::vector<std::string>{"Mul", "Reshape", "Relu"}));
  ASSERT_TRUE(g.initializers.count("target"));
  const Tensor& target = g.initializers.at("target");
  EXPECT_EQ(target.shape(), Shape{2});
  EXPECT_EQ(target.data<int64_t>()[0], 2);
  EXPECT_EQ(target.data<int64_t>()[1], -1);
  EXPECT_FALSE(g.initializers.count("zero")) << "inputs only folded nodes read are dropped";
  EXPECT_EQ(g.nodes[2].inputs[0], "r") << "the Identity's reader takes its input";

  expect_same_results(original, g, {2, 3, 4});
}

// With a free batch, Shape(x) is not constant, but its known entries are: x.size(1) folds, the
// batch entry stays computed, and nodes nothing reads any more go.
TEST(FoldConstants, KnownEntriesOfAPartlyKnownShapeFold) {
  Graph g;
  g.source = "fold test";
  g.opset = 13;
  g.inputs.push_back({"x", DType::f32, Shape{-1, 3, 4}, {"N", "", ""}});
  g.outputs.push_back({"y", DType::f32, Shape{-1, 3, 4}, {"N", "", ""}});
  g.value_info["m"] = {"m", DType::f32, Shape{-1, 3, 4}, {"N", "", ""}};
  g.initializers["zero"] = s64({0}, {});
  g.initializers["one"] = s64({1}, {});
  g.initializers["axes"] = s64({0}, {1});
  g.initializers["minus_one"] = s64({-1}, {1});
  g.nodes.push_back(node("Relu", {"x"}, {"m"}));
  g.nodes.push_back(node("Shape", {"m"}, {"s"}));
  g.nodes.push_back(node("Gather", {"s", "zero"}, {"batch"}));
  g.nodes.push_back(node("Gather", {"s", "one"}, {"channels"}));
  g.nodes.push_back(node("Shape", {"m"}, {"unused"}));
  g.nodes.push_back(node("Unsqueeze", {"batch", "axes"}, {"batch1"}));
  g.nodes.push_back(node("Unsqueeze", {"channels", "axes"}, {"channels1"}));
  Node cat = node("Concat", {"batch1", "channels1", "minus_one"}, {"target"});
  cat.attrs["axis"] = int64_t{0};
  g.nodes.push_back(cat);
  g.nodes.push_back(node("Reshape", {"m", "target"}, {"y"}));
  const Graph original = g;
  EXPECT_EQ(fold_constants(g), 3);  // Gather of entry 1, its Unsqueeze, the unread Shape
  std::vector<std::string> ops;
  for (const Node& n : g.nodes) ops.push_back(n.op_type);
  EXPECT_EQ(ops, (std::vector<std::string>{"Relu", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape"}));
  ASSERT_TRUE(g.initializers.count("channels1"));
  EXPECT_EQ(g.initializers.at("channels1").data<int64_t>()[0], 3);
  for (int64_t batch : {2, 5}) expect_same_results(original, g, {batch, 3, 4});
}

// A constant that would be huge once computed stays a node; graph outputs stay computed.
TEST(FoldConstants, LeavesHugeConstantsAndGraphOutputs) {
  Graph g;
  g.source = "fold test";
  g.opset = 13;
  g.outputs.push_back({"big", DType::f32, std::nullopt, {}});
  g.outputs.push_back({"dims", DType::s64, Shape{1}, {""}});
  g.initializers["shape"] = s64({int64_t{1} << 40}, {1});
  g.nodes.push_back(node("ConstantOfShape", {"shape"}, {"big"}));
  g.nodes.push_back(node("Identity", {"shape"}, {"dims"}));
  Graph f = g;
  EXPECT_EQ(fold_constants(f), 0);
  EXPECT_EQ(f.nodes.size(), 2u);
  EXPECT_TRUE(f.initializers.count("shape"));

  // Without the graph output, the huge ConstantOfShape is still not evaluated.
  g.outputs.erase(g.outputs.begin() + 1);
  g.nodes.pop_back();
  g.outputs[0].name = "other";
  g.nodes.push_back(node("Shape", {"big"}, {"other"}));
  f = g;
  EXPECT_EQ(fold_constants(f), 0);
  EXPECT_EQ(f.nodes.size(), 2u);
}

}  // namespace
}  // namespace nibble
