// The model directory reader and writer: the real seed model byte for byte, its known facts, and errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "nibble/error.h"
#include "nibble/engine.h"
#include "nibble/model_dir.h"
#include "nibble/model_loader.h"
#include "test_util.h"

namespace nibble {
namespace {

using testing_util::error_of;

namespace fs = std::filesystem;

const std::string kSeedModel = testing_util::source_dir() + "/models/mlperf-v0.5-int4-resnet50/model";

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spill(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << bytes;
}

// Every regular file under `dir`, by path relative to it.
std::map<std::string, std::string> tree(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).generic_string()] = slurp(e.path());
  }
  return out;
}


bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

class ModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() /
            fmt::format("nibble_{}_{}_{}", info->test_suite_name(), info->name(), ::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // Entries of the scratch directory whose name marks them as a writer's leftovers.
  std::vector<std::string> temp_leftovers() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(root_)) {
      if (e.path().filename().string().find(".tmp.") != std::string::npos) out.push_back(e.path().string());
    }
    return out;
  }

  // Replaces the first `from` in layer file `name` of dir_ by `to`.
  void edit(const std::string& name, const std::string& from, const std::string& to) {
    std::string text = slurp(dir_ / name);
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    spill(dir_ / name, text);
  }

  fs::path root_;
  fs::path dir_;  // the model directory a test builds under root_
};

// --- The real seed model -----------------------------------------------------------------------------

class ModelDirSeed : public ModelDirTest {
 protected:
  void SetUp() override {
    if (!fs::is_directory(kSeedModel)) GTEST_SKIP() << "seed model not found at " << kSeedModel;
    ModelDirTest::SetUp();
  }
};

TEST_F(ModelDirSeed, RoundTripsByteForByte) {
  const ModelDir model = read_model_dir(kSeedModel);
  EXPECT_EQ(model.layers.size(), 168u);
  // A name other than the recorded "model" also checks that a renamed copy loads.
  const fs::path out = root_ / "copy";
  write_model_dir(model, out.string());
  EXPECT_TRUE(temp_leftovers().empty());

  const auto want = tree(kSeedModel);
  const auto got = tree(out);
  ASSERT_EQ(want.size(), 168u + 178u);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [rel, bytes] : want) {
    const auto it = got.find(rel);
    ASSERT_NE(it, got.end()) << rel << " was not written";
    EXPECT_TRUE(it->second == bytes) << rel << " differs";
  }

  const ModelDir again = read_model_dir(out.string());
  ASSERT_EQ(again.layers.size(), model.layers.size());
  const Tensor& w = again.layer("fc").get_tensor("weight");
  const Tensor& w0 = model.layer("fc").get_tensor("weight");
  ASSERT_EQ(w.nbytes(), w0.nbytes());
  EXPECT_EQ(std::memcmp(w.bytes(), w0.bytes(), w.nbytes()), 0);
}

TEST_F(ModelDirSeed, KnownFacts) {
  const ModelDir model = read_model_dir(kSeedModel);
  EXPECT_EQ(model.layer("model").type, "ResNetQuantized");

  const LayerFile& conv1 = model.layer("conv1");
  EXPECT_EQ(conv1.type, "Conv2d");
  EXPECT_EQ(conv1.eol, "\r\n");
  EXPECT_TRUE(conv1.final_eol);
  const Tensor& w1 = conv1.get_tensor("weight");
  EXPECT_EQ(w1.dtype(), DType::s8);
  EXPECT_EQ(w1.shape(), (Shape{64, 3, 7, 7}));
  EXPECT_EQ(conv1.get_tuple("kernel_size"), (std::vector<int64_t>{7, 7}));
  EXPECT_EQ(conv1.get_tuple("stride"), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(conv1.get_int("groups"), 1);
  EXPECT_EQ(conv1.get_tensor("bias").dtype(), DType::s16);
  const auto cm = parse_compute_mode(conv1.get_string("compute_mode"), "conv1");
  EXPECT_EQ(cm, (std::vector<NumberType>{{'s', 8}, {'s', 8}, {'s', 32}}));

  // The 4-bit weights: the loaded bytes are the file's bytes, and element 2i is the low nibble of byte i.
  const Tensor& w = model.layer("layer1_0_conv1").get_tensor("weight");
  EXPECT_EQ(w.dtype(), DType::s4);
  EXPECT_EQ(w.shape(), (Shape{64, 64, 1, 1}));
  const std::string raw = slurp(fs::path(kSeedModel) / "npdata" / "layer1_0_conv1.weight");
  ASSERT_EQ(raw.size(), 64u * 64u / 2u);
  ASSERT_EQ(w.nbytes(), raw.size());
  EXPECT_EQ(std::memcmp(w.bytes(), raw.data(), raw.size()), 0);
  const auto sext = [](int nib) { return nib >= 8 ? nib - 16 : nib; };
  bool any_nonzero = false;
  for (int i = 0; i < 32; ++i) {
    const auto byte = static_cast<uint8_t>(raw[static_cast<size_t>(i)]);
    EXPECT_EQ(w.get(2 * i), sext(byte & 0xF)) << "element " << 2 * i;
    EXPECT_EQ(w.get(2 * i + 1), sext(byte >> 4)) << "element " << 2 * i + 1;
    any_nonzero = any_nonzero || byte != 0;
  }
  EXPECT_TRUE(any_nonzero);
  for (int64_t i = 0; i < w.numel(); ++i) {
    ASSERT_GE(w.get(i), -7) << i;  // the spec: s4 weights use -7..7
    ASSERT_LE(w.get(i), 7) << i;
  }

  const LayerFile& q = model.layer("layer1_0_quantize1");
  EXPECT_EQ(q.type, "Quantize");
  EXPECT_EQ(q.get_int("shift_bits"), 16);
  EXPECT_EQ(q.get_int("output_bits"), 4);
  const Tensor& f = q.get_tensor("requant_factor");
  EXPECT_EQ(f.dtype(), DType::u16);
  EXPECT_EQ(f.shape(), (Shape{1, 64, 1, 1}));
  EXPECT_EQ(parse_compute_mode(q.get_string("compute_mode"), "q"),
            (std::vector<NumberType>{{'u', 31}, {'u', 16}, {'u', 4}}));

  const LayerFile& avg = model.layer("avgpool");
  EXPECT_EQ(avg.get_tuple("kernel_size"), (std::vector<int64_t>{7}));
  EXPECT_FALSE(avg.get_bool("ceil_mode"));
  EXPECT_TRUE(avg.get_bool("count_include_pad"));
  EXPECT_EQ(model.layer("layer1").get_int("children_count"), 3);
  EXPECT_TRUE(model.layer("layer1_0").get_bool("downsample_layer"));
  EXPECT_EQ(model.layer("layer1_0_conv1").find("bias")->data_ref, "model/npdata/layer1_0_conv1.bias");
}

// --- compute_mode ------------------------------------------------------------------------------------

TEST(ModelDirComputeMode, ParsesAndRejects) {
  EXPECT_EQ(parse_compute_mode("u31u16u4", "x"), (std::vector<NumberType>{{'u', 31}, {'u', 16}, {'u', 4}}));
  EXPECT_EQ(parse_compute_mode("u4s4s32", "x"), (std::vector<NumberType>{{'u', 4}, {'s', 4}, {'s', 32}}));
  EXPECT_EQ(parse_compute_mode("s32f32f32", "x"), (std::vector<NumberType>{{'s', 32}, {'f', 32}, {'f', 32}}));
  EXPECT_EQ(parse_compute_mode("u7u7", "x"), (std::vector<NumberType>{{'u', 7}, {'u', 7}}));
  for (const char* bad : {"", "u", "x4", "u4s", "u0", "u99", "4u", "u4 s4", "u4-s4"}) {
    const std::string msg = error_of([&] { parse_compute_mode(bad, "conv1:2"); });
    EXPECT_TRUE(starts_with(msg, "conv1:2: malformed compute_mode")) << bad << " -> " << msg;
  }
}

// --- Small synthetic models --------------------------------------------------------------------------

// A two-layer model in the seed's style: `fc` has an s32 bias [2] (8 bytes) and an s4 weight [2, 3]
// (6 nibbles, 3 bytes).
constexpr const char* kFc =
    "Linear\r\n"                    // 1
    "compute_mode=u7s8s32\r\n"      // 2
    "in_features=3\r\n"             // 3
    "out_features=2\r\n"            // 4
    "kernel_size=2:7 7\r\n"         // 5
    "bias=s32,1:2\r\n"              // 6
    "!model/npdata/fc.bias\r\n"     // 7
    "weight=s4,2:2 3\r\n"           // 8
    "!model/npdata/fc.weight\r\n";  // 9

class ModelDirSynthetic : public ModelDirTest {
 protected:
  void SetUp() override {
    ModelDirTest::SetUp();
    dir_ = root_ / "m";
    spill(dir_ / "model", "ResNetQuantized\r\ncompute_mode=s8f32\r\n");
    spill(dir_ / "fc", kFc);
    spill(dir_ / "npdata" / "fc.bias", std::string("\x05\x00\x00\x00\xfe\xff\xff\xff", 8));
    spill(dir_ / "npdata" / "fc.weight", std::string("\x21\xf3\x97", 3));  // 1 2 3 -1 7 -7
  }
  std::string fc() const { return (dir_ / "fc").string(); }
  std::string read_error() const {
    return error_of([&] { read_model_dir(dir_.string()); });
  }
};

TEST_F(ModelDirSynthetic, ReadsValuesAndTensors) {
  const ModelDir m = read_model_dir(dir_.string());
  ASSERT_EQ(m.layers.size(), 2u);
  const LayerFile& fc = m.layer("fc");
  const Tensor& b = fc.get_tensor("bias");
  EXPECT_EQ(b.get(0), 5);
  EXPECT_EQ(b.get(1), -2);
  const Tensor& w = fc.get_tensor("weight");
  const double want[] = {1, 2, 3, -1, 7, -7};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(w.get(i), want[i]) << i;
  EXPECT_EQ(fc.find("weight")->line, 8);
  EXPECT_FALSE(fc.has("nothing"));
}

TEST_F(ModelDirSynthetic, KeepsLineEndingsAndMissingFinalNewline) {
  spill(dir_ / "model", "ResNetQuantized\ncompute_mode=s8f32");  // LF, no final newline
  spill(dir_ / "relu", "ReLU\r\ninplace=True");                  // CRLF, no final newline
  spill(dir_ / "scale", "Scale");                                // only the type line
  spill(dir_ / "avg", "AvgPool2d\nkernel_size=7\n");             // LF
  const ModelDir m = read_model_dir(dir_.string());
  EXPECT_EQ(m.layer("model").eol, "\n");
  EXPECT_FALSE(m.layer("model").final_eol);
  EXPECT_EQ(m.layer("relu").eol, "\r\n");
  EXPECT_FALSE(m.layer("relu").final_eol);
  EXPECT_TRUE(m.layer("avg").final_eol);
  EXPECT_EQ(m.layer("scale").fields.size(), 0u);
  EXPECT_TRUE(m.layer("relu").get_bool("inplace"));

  const fs::path out = root_ / "out";
  write_model_dir(m, out.string());
  EXPECT_EQ(tree(out), tree(dir_));
}

TEST_F(ModelDirSynthetic, MixedLineEndingsAreWrittenInTheFirstLinesStyle) {
  spill(dir_ / "relu", "ReLU\r\ninplace=True\ncompute_mode=s32u31\r\n");
  const ModelDir m = read_model_dir(dir_.string());
  EXPECT_EQ(m.layer("relu").get_string("inplace"), "True");
  const fs::path out = root_ / "out";
  write_model_dir(m, out.string());
  EXPECT_EQ(slurp(out / "relu"), "ReLU\r\ninplace=True\r\ncompute_mode=s32u31\r\n");
}

TEST_F(ModelDirSynthetic, WritesAModelBuiltInMemory) {
  ModelDir m;
  LayerFile root;
  root.name = "model";
  root.type = "ResNetQuantized";
  root.eol = "\n";
  LayerField mode;
  mode.key = "compute_mode";
  mode.value = "s8f32";
  root.fields.push_back(mode);
  m.layers["model"] = root;
  LayerFile q;
  q.name = "q";
  q.type = "Quantize";
  Tensor f(DType::u4, {1, 3});
  f.set(0, 1);
  f.set(1, 15);
  f.set(2, 4);
  LayerField tf;
  tf.key = "factor";
  tf.value = tensor_value(f);
  tf.is_tensor = true;
  tf.data_ref = "model/npdata/q.factor";
  tf.tensor = f;
  q.fields.push_back(tf);
  m.layers["q"] = q;
  EXPECT_EQ(tf.value, "u4,2:1 3");

  const fs::path out = root_ / "built";
  write_model_dir(m, out.string());
  EXPECT_EQ(slurp(out / "model"), "ResNetQuantized\ncompute_mode=s8f32\n");
  EXPECT_EQ(slurp(out / "q"), "Quantize\r\nfactor=u4,2:1 3\r\n!model/npdata/q.factor\r\n");
  EXPECT_EQ(slurp(out / "npdata" / "q.factor"), std::string("\xf1\x04", 2));
  const ModelDir back = read_model_dir(out.string());
  EXPECT_EQ(back.layer("q").get_tensor("factor").get(1), 15);

  // A declaration that disagrees with its tensor would write a directory the reader rejects.
  m.layers["q"].fields[0].value = "u4,2:3 1";
  const std::string msg = error_of([&] { write_model_dir(m, (root_ / "bad").string()); });
  EXPECT_NE(msg.find("declared as 'u4,2:3 1' but the tensor is u4,2:1 3"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(root_ / "bad"));
  EXPECT_TRUE(temp_leftovers().empty());
}

// --- Read errors -------------------------------------------------------------------------------------

TEST_F(ModelDirSynthetic, ErrorMalformedLine) {
  edit("fc", "out_features=2", "out_features 2");
  const std::string msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":4: expected 'key=value'")) << msg;
}

TEST_F(ModelDirSynthetic, ErrorTensorWithoutDataLine) {
  edit("fc", "!model/npdata/fc.bias\r\n", "");
  const std::string msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":6: tensor 'bias' must be followed by a line '!")) << msg;
}

TEST_F(ModelDirSynthetic, ErrorTensorAtEndWithoutDataLine) {
  edit("fc", "\r\n!model/npdata/fc.weight\r\n", "");
  const std::string msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":8: tensor 'weight' must be followed")) << msg;
}

TEST_F(ModelDirSynthetic, ErrorDataLineWithoutTensor) {
  edit("fc", "in_features=3\r\n", "in_features=3\r\n!model/npdata/fc.bias\r\n");
  const std::string msg = read_error();
  // in_features=3 followed by a '!' line is read as a tensor declaration, which it is not.
  EXPECT_TRUE(starts_with(msg, fc() + ":3: tensor 'in_features': expected 'dtype,ndims")) << msg;
  edit("fc", "in_features=3\r\n!model/npdata/fc.bias\r\n", "in_features=3\r\n\r\n");
  EXPECT_TRUE(starts_with(read_error(), fc() + ":4: expected 'key=value', got ''"));
  edit("fc", "in_features=3\r\n\r\n", "in_features=3\r\n");
  edit("fc", "!model/npdata/fc.bias\r\n", "!model/npdata/fc.bias\r\n!model/npdata/fc.bias\r\n");
  const std::string msg2 = read_error();
  EXPECT_TRUE(starts_with(msg2, fc() + ":8: data line '!model/npdata/fc.bias' has no tensor declaration"))
      << msg2;
}

TEST_F(ModelDirSynthetic, ErrorUnknownLayerType) {
  edit("fc", "Linear\r\n", "Linearr\r\n");
  const std::string msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":1: unknown layer type 'Linearr'")) << msg;
}

TEST_F(ModelDirSynthetic, ErrorOldMacLineEndings) {
  spill(dir_ / "fc", "Linear\rin_features=3\r");
  const std::string msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":1: stray carriage return in 'Linear\\rin_features=3'")) << msg;
}

TEST_F(ModelDirSynthetic, ErrorUnknownDtype) {
  edit("fc", "weight=s4,", "weight=q4,");
  const std::string msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":8: tensor 'weight': unknown dtype 'q4'")) << msg;
}

TEST_F(ModelDirSynthetic, ErrorBadDimsCount) {
  edit("fc", "weight=s4,2:2 3", "weight=s4,3:2 3");
  const std::string msg = read_error();
  EXPECT_TRUE(
      starts_with(msg, fc() + ":8: tensor 'weight': bad tuple '3:2 3': declares 3 values but holds 2"))
      << msg;
}

TEST_F(ModelDirSynthetic, ErrorBadTuple) {
  edit("fc", "kernel_size=2:7 7", "kernel_size=2:7");
  std::string msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":5: 'kernel_size': bad tuple '2:7'")) << msg;
  edit("fc", "kernel_size=2:7", "kernel_size=2:7 x");
  msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":5: 'kernel_size': bad tuple '2:7 x': 'x' is not an integer")) << msg;
}

TEST_F(ModelDirSynthetic, ErrorDuplicateKey) {
  edit("fc", "out_features=2", "in_features=2");
  const std::string msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":4: duplicate key 'in_features' (first on line 3)")) << msg;
}

TEST_F(ModelDirSynthetic, ErrorEmptyLayerFile) {
  spill(dir_ / "fc", "");
  EXPECT_TRUE(starts_with(read_error(), fc() + ": empty file"));
}

TEST_F(ModelDirSynthetic, ErrorMissingNpdataFile) {
  fs::remove(dir_ / "npdata" / "fc.weight");
  const std::string msg = read_error();
  const std::string data = (dir_ / "npdata" / "fc.weight").string();
  EXPECT_TRUE(starts_with(msg, data + ": no such file")) << msg;
  EXPECT_NE(msg.find(fc() + ":9"), std::string::npos) << msg;
}

TEST_F(ModelDirSynthetic, ErrorTruncatedNpdataFile) {
  fs::resize_file(dir_ / "npdata" / "fc.weight", 2);
  const std::string msg = read_error();
  EXPECT_EQ(msg, (dir_ / "npdata" / "fc.weight").string() + ": holds 2 bytes but s4 [2, 3] needs 3");
}

TEST_F(ModelDirSynthetic, ErrorNpdataFileTooLong) {
  spill(dir_ / "npdata" / "fc.bias", std::string(9, '\0'));
  const std::string msg = read_error();
  EXPECT_EQ(msg, (dir_ / "npdata" / "fc.bias").string() + ": holds 9 bytes but s32 [2] needs 8");
}

TEST_F(ModelDirSynthetic, ErrorDataPathLeavingTheDirectory) {
  edit("fc", "!model/npdata/fc.bias", "!model/../../etc/passwd");
  std::string msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":7: data path")) << msg;
  edit("fc", "!model/../../etc/passwd", "!/etc/passwd");
  msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":7: data path '/etc/passwd' must be relative")) << msg;
  edit("fc", "!/etc/passwd", "!fc.bias");
  msg = read_error();
  EXPECT_TRUE(starts_with(msg, fc() + ":7: data path 'fc.bias' needs the model name")) << msg;
}

TEST_F(ModelDirSynthetic, ErrorMissingDirectory) {
  const std::string missing = (root_ / "nowhere").string();
  const std::string msg = error_of([&] { read_model_dir(missing); });
  EXPECT_EQ(msg, missing + ": no such model directory");
  const std::string file = fc();
  EXPECT_TRUE(starts_with(error_of([&] { read_model_dir(file); }), file + ": not a directory"));
}

TEST_F(ModelDirSynthetic, ErrorMissingRootFile) {
  fs::remove(dir_ / "model");
  const std::string msg = read_error();
  EXPECT_EQ(msg, dir_.string() + ": not a model directory: it has no 'model' root layer file");
}

TEST_F(ModelDirSynthetic, AccessorErrorsNameFileLineAndKey) {
  edit("fc", "in_features=3", "in_features=three");
  const ModelDir m = read_model_dir(dir_.string());
  const LayerFile& l = m.layer("fc");
  EXPECT_TRUE(starts_with(error_of([&] { l.get_int("in_features"); }),
                          fc() + ":3: 'in_features': expected an integer, got 'three'"));
  EXPECT_TRUE(starts_with(error_of([&] { l.get_int("groups"); }), fc() + ": Linear layer has no 'groups'"));
  EXPECT_TRUE(starts_with(error_of([&] { l.get_bool("out_features"); }), fc() + ":4: 'out_features'"));
  EXPECT_TRUE(starts_with(error_of([&] { l.get_tuple("compute_mode"); }), fc() + ":2: 'compute_mode'"));
  EXPECT_TRUE(
      starts_with(error_of([&] { l.get_tensor("out_features"); }), fc() + ":4: 'out_features' is not"));
  EXPECT_EQ(l.get_tuple("out_features"), (std::vector<int64_t>{2}));
  EXPECT_TRUE(starts_with(error_of([&] { m.layer("conv9"); }), dir_.string() + ": the model has no layer"));
}

// --- Write errors ------------------------------------------------------------------------------------

TEST_F(ModelDirSynthetic, ErrorWritingToAnExistingPath) {
  const ModelDir m = read_model_dir(dir_.string());
  const fs::path out = root_ / "taken";
  spill(out / "keep", "mine");
  const std::string msg = error_of([&] { write_model_dir(m, out.string()); });
  EXPECT_TRUE(starts_with(msg, out.string() + ": already exists")) << msg;
  EXPECT_EQ(tree(out), (std::map<std::string, std::string>{{"keep", "mine"}}));
  EXPECT_TRUE(temp_leftovers().empty());
  // An existing plain file and a trailing slash are refused the same way.
  EXPECT_NE(error_of([&] { write_model_dir(m, fc()); }).find("already exists"), std::string::npos);
  EXPECT_NE(error_of([&] { write_model_dir(m, out.string() + "/"); }).find("already exists"),
            std::string::npos);
}

TEST_F(ModelDirSynthetic, FailureWhileWritingLeavesNothing) {
  ModelDir m = read_model_dir(dir_.string());
  // The tensor's file would have to live under "fc", which the layer file of that name already is.
  m.layers["fc"].fields.back().data_ref = "model/fc/weight";
  const fs::path out = root_ / "out";
  const std::string msg = error_of([&] { write_model_dir(m, out.string()); });
  EXPECT_TRUE(starts_with(msg, out.string() + ": cannot write the model")) << msg;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(temp_leftovers().empty());
}

TEST_F(ModelDirSynthetic, WriterRefusesWhatTheReaderWouldReject) {
  const ModelDir good = read_model_dir(dir_.string());
  const std::string out = (root_ / "out").string();
  const auto refuse = [&](ModelDir m, const std::string& expect) {
    const std::string msg = error_of([&] { write_model_dir(m, out); });
    EXPECT_NE(msg.find(expect), std::string::npos) << msg;
    EXPECT_FALSE(fs::exists(out));
  };
  ModelDir m = good;
  m.layers["fc"].type = "Linear2";
  refuse(m, "unknown layer type 'Linear2'");
  m = good;
  m.layers.erase("model");
  refuse(m, "no 'model' root layer");
  m = good;
  m.layers["fc"].fields[0].value = "u7\ns8";
  refuse(m, "line break");
  m = good;
  m.layers["fc"].fields[1].value = "s4,1:2";  // a plain value that reads back as a tensor
  refuse(m, "looks like a tensor declaration");
  m = good;
  m.layers["fc"].fields.back().data_ref = "model/npdata/fc.bias";
  refuse(m, "is also used by tensor 'bias' of layer 'fc'");
  m = good;
  m.layers["fc"].fields.back().data_ref = "../../x";
  refuse(m, "may not contain");
  EXPECT_TRUE(temp_leftovers().empty());
}

}  // namespace
}  // namespace nibble

namespace nibble {
namespace {

// --- Op layers: ONNX operators kept in float by quantize --------------------------------------------

class ModelDirOp : public ModelDirTest {
 protected:
  void SetUp() override {
    ModelDirTest::SetUp();
    dir_ = root_ / "m";
    spill(dir_ / "model",
          "GraphQuantized\ncompute_mode=f32f32\ninput=x\ninput_type=f32\ninput_shape=2:2 3\nlayers=t,m\n"
          "outputs=m\noutput_names=y\n");
    spill(dir_ / "t", "Op\nop_type=Transpose\ninputs=x\nattr_perm=ints 3:0 2 1\noutput_type=f32\n"
                      "output_shape=[N,3,2]\n");
    spill(dir_ / "m", "Op\nop_type=Mul\ninputs=t\noperands=const0,x0\nconst0=f32,1:1\n!m/npdata/m.const0\n"
                      "output_type=f32\noutput_shape=[N,3,2]\n");
    const float two = 2.0f;
    spill(dir_ / "npdata" / "m.const0", std::string(reinterpret_cast<const char*>(&two), 4));
  }
  std::string load_error() const {
    return error_of([&] { load_model(dir_.string()); });
  }
};

TEST_F(ModelDirOp, RunsTheOnnxOperatorsItNames) {
  const Engine engine(load_model(dir_.string()), Backend::ref);
  Tensor x(DType::f32, {1, 2, 3});
  for (int i = 0; i < 6; ++i) x.data<float>()[i] = static_cast<float>(i);
  const Tensor y = engine.run({x}).at(0);
  ASSERT_EQ(y.shape(), (Shape{1, 3, 2}));
  // y[0][j][i] = 2 * x[0][i][j]
  for (int j = 0; j < 3; ++j) {
    for (int i = 0; i < 2; ++i) EXPECT_EQ(y.data<float>()[j * 2 + i], 2.0f * static_cast<float>(i * 3 + j));
  }
  // Written back, the directory reads the same.
  const fs::path copy = root_ / "copy";
  write_model_dir(read_model_dir(dir_.string()), copy.string());
  EXPECT_EQ(slurp(copy / "t"), slurp(dir_ / "t"));
}

TEST_F(ModelDirOp, MalformedFieldsAreErrorsNamingTheFile) {
  struct Case {
    const char* layer;
    const char* from;
    const char* to;
    const char* error;
  };
  const Case cases[] = {
      {"t", "ints 3:0 2 1", "ints 4:0 2 1", "m/t: 'attr_perm'"},
      {"t", "ints 3:0 2 1", "tensor 0", "is not <int|float|string|ints|floats>"},
      {"m", "operands=const0,x0", "operands=const0,x1", "operand x1 names input 1, the layer has 1"},
      {"m", "operands=const0,x0", "operands=const0", "input 't' is not an operand"},
      {"t", "op_type=Transpose", "op_type=nibble:IntConv", "is not the name of an ONNX operator"},
      {"t", "output_shape=[N,3,2]", "output_shape=3:1 2 3", "is not [d1,d2,...]"},
      {"t", "output_type=f32", "output_type=f99", "output_type 'f99' is not a dtype"},
  };
  for (const Case& c : cases) {
    SetUp();
    edit(c.layer, c.from, c.to);
    const std::string msg = load_error();
    EXPECT_NE(msg.find(c.error), std::string::npos) << c.to << ": " << msg;
  }
}

}  // namespace
}  // namespace nibble
