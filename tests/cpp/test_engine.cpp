// ONNX import and the engine: planning errors, input checks, a whole-graph run.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <filesystem>
#include <fstream>

#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/onnx_import.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;

onnx::ValueInfoProto value(const std::string& name, const std::vector<int64_t>& dims, bool batch_param = false) {
  onnx::ValueInfoProto v;
  v.set_name(name);
  auto* tt = v.mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  for (size_t i = 0; i < dims.size(); ++i) {
    auto* d = tt->mutable_shape()->add_dim();
    if (i == 0 && batch_param) {
      d->set_dim_param("N");
    } else {
      d->set_dim_value(dims[i]);
    }
  }
  return v;
}

// x (N x 4) -> Relu -> Add(bias) -> y; optionally with an unsupported op in the middle.
std::string write_model(const std::string& name, const std::string& middle_op = "Relu", int opset = 13) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(opset);
  auto* g = m.mutable_graph();
  g->set_name("g");
  *g->add_input() = value("x", {1, 4}, true);
  *g->add_output() = value("y", {1, 4}, true);
  auto* bias = g->add_initializer();
  bias->set_name("bias");
  bias->set_data_type(onnx::TensorProto::FLOAT);
  bias->add_dims(4);
  for (float v : {1.0f, -1.0f, 0.5f, 0.0f}) bias->add_float_data(v);
  auto* n1 = g->add_node();
  n1->set_op_type(middle_op);
  n1->set_name("middle");
  n1->add_input("x");
  n1->add_output("h");
  auto* n2 = g->add_node();
  n2->set_op_type("Add");
  n2->set_name("add");
  n2->add_input("h");
  n2->add_input("bias");
  n2->add_output("y");
  const std::string path = (fs::temp_directory_path() / name).string();
  std::ofstream f(path, std::ios::binary);
  m.SerializeToOstream(&f);
  return path;
}

TEST(Engine, RunsAGraphWithDynamicBatch) {
  const Engine engine(import_onnx(write_model("nibble_engine_ok.onnx")));
  for (int64_t batch : {1, 3}) {
    Tensor x(DType::f32, {batch, 4});
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = static_cast<float>(i) - 2.0f;
    const auto out = engine.run({x});
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(out[0].shape(), (Shape{batch, 4}));
    const float bias[4] = {1.0f, -1.0f, 0.5f, 0.0f};
    for (int64_t i = 0; i < x.numel(); ++i) {
      EXPECT_EQ(out[0].data<float>()[i], std::max(0.0f, static_cast<float>(i) - 2.0f) + bias[i % 4]);
    }
  }
}

TEST(Engine, RejectsWrongInputs) {
  const Engine engine(import_onnx(write_model("nibble_engine_inputs.onnx")));
  EXPECT_TRUE(engine.check_inputs({Tensor(DType::f32, {2, 4})}) == std::nullopt);
  const auto bad_shape = engine.check_inputs({Tensor(DType::f32, {2, 5})});
  ASSERT_TRUE(bad_shape);
  EXPECT_EQ(bad_shape->problem, "input 'x' must have shape [N, 4], got [2, 5]");
  const auto bad_dtype = engine.check_inputs({Tensor(DType::u8, {2, 4})});
  ASSERT_TRUE(bad_dtype);
  EXPECT_EQ(bad_dtype->problem, "input 'x' must be f32, got u8");
  EXPECT_EQ(engine.check_inputs({})->index, 0u);
  EXPECT_THROW(engine.run({Tensor(DType::f32, {4})}), Error);
}

TEST(Engine, UnsupportedOpNamesOpNodeAndFile) {
  const std::string path = write_model("nibble_engine_sin.onnx", "Sin");
  Graph g = import_onnx(path);
  EXPECT_EQ(unsupported_ops(g), std::vector<std::string>{"Sin"});
  try {
    Engine e(std::move(g));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": unsupported op Sin in node 'middle'");
  }
}

TEST(Import, FixedBatchMakesShapesConcrete) {
  OnnxImportOptions opts;
  opts.fixed_batch = 8;
  const Graph g = import_onnx(write_model("nibble_import_batch.onnx"), opts);
  const ValueInfo* h = g.find_value("h");
  ASSERT_NE(h, nullptr);
  ASSERT_TRUE(h->shape);
  EXPECT_EQ(*h->shape, (Shape{8, 4}));
}

TEST(Import, RejectsUnsupportedOpset) {
  const std::string path = write_model("nibble_import_opset.onnx", "Relu", 18);
  try {
    import_onnx(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("opset 18 is not supported"), std::string::npos);
  }
}

TEST(Import, TruncatedFilesNeverCrash) {
  const std::string path = write_model("nibble_import_full.onnx");
  std::ifstream f(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const std::string cut = (fs::temp_directory_path() / "nibble_import_cut.onnx").string();
  // Every prefix either imports (cut at a harmless boundary) or raises nibble::Error.
  for (size_t len = 0; len < bytes.size(); ++len) {
    {
      std::ofstream o(cut, std::ios::binary | std::ios::trunc);
      o.write(bytes.data(), static_cast<std::streamsize>(len));
    }
    try {
      const Engine e(import_onnx(cut));
      (void)e;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(cut, 0), 0u) << e.what();
    }
  }
}

}  // namespace
}  // namespace nibble
