// The seed's real INT4 ResNet-50: golden logits, fused == unfused, and its graph structure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "nibble/engine.h"
#include "nibble/model_loader.h"
#include "nibble/npy.h"
#include "test_util.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;

const std::string kSeedDir = testing_util::source_dir() + "/models/mlperf-v0.5-int4-resnet50";

class SeedModel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kSeedDir + "/model/model")) GTEST_SKIP() << "seed model not found at " << kSeedDir;
  }
  // Both golden images as one s8 batch of two.
  static Tensor golden_batch() {
    const Tensor a = read_npy(kSeedDir + "/golden/image_a_input_s8.npy");
    const Tensor b = read_npy(kSeedDir + "/golden/image_b_input_s8.npy");
    Tensor x(DType::s8, {2, 3, 224, 224});
    std::copy_n(a.bytes(), a.nbytes(), x.bytes());
    std::copy_n(b.bytes(), b.nbytes(), x.bytes() + a.nbytes());
    return x;
  }
};

int64_t argmax_row(const Tensor& t, int64_t row) {
  const int64_t k = t.dim(1);
  int64_t best = 0;
  for (int64_t i = 1; i < k; ++i) {
    if (t.get(row * k + i) > t.get(row * k + best)) best = i;
  }
  return best;
}

TEST_F(SeedModel, GoldenLogitsMatchExactlyAndFusedEqualsUnfused) {
  const Tensor x = golden_batch();
  LoadOptions unfused_opts;
  unfused_opts.fuse = false;
  // Reference kernels only: this test checks the specification itself.
  const Engine fused(load_model(kSeedDir + "/model"), Backend::ref);
  const Engine unfused(load_model(kSeedDir + "/model", unfused_opts), Backend::ref);
  const auto out = fused.run({x});
  ASSERT_EQ(out.size(), 2u);
  const Tensor& logits = out[0];
  ASSERT_EQ(logits.dtype(), DType::s32);
  ASSERT_EQ(logits.shape(), (Shape{2, 1000}));
  const char* golden[] = {"image_a_logits_s32.npy", "image_b_logits_s32.npy"};
  for (int img = 0; img < 2; ++img) {
    const Tensor want = read_npy(kSeedDir + "/golden/" + golden[img]);
    ASSERT_EQ(want.numel(), 1000);
    int mismatches = 0;
    for (int64_t k = 0; k < 1000; ++k) mismatches += logits.data<int32_t>()[img * 1000 + k] != want.data<int32_t>()[k];
    EXPECT_EQ(mismatches, 0) << golden[img];
  }
  // The class is the argmax of the scores: Egyptian cat and espresso.
  EXPECT_EQ(argmax_row(out[1], 0), 285);
  EXPECT_EQ(argmax_row(out[1], 1), 967);

  const auto ref = unfused.run({x});
  for (size_t o = 0; o < ref.size(); ++o) {
    ASSERT_EQ(ref[o].shape(), out[o].shape());
    ASSERT_EQ(0, std::memcmp(ref[o].bytes(), out[o].bytes(), ref[o].nbytes())) << "output " << o;
  }
}

TEST_F(SeedModel, FusionMakesOneKernelPerConv) {
  LoadOptions unfused_opts;
  unfused_opts.fuse = false;
  const Graph fused = load_model(kSeedDir + "/model");
  const Graph unfused = load_model(kSeedDir + "/model", unfused_opts);
  auto count = [](const Graph& g, const std::string& op) {
    return std::count_if(g.nodes.begin(), g.nodes.end(), [&](const Node& n) { return n.op_type == op; });
  };
  // 53 convolutions: the stem, 16 blocks x 3, and 4 downsample convs.
  EXPECT_EQ(count(unfused, "nibble:IntConv"), 53);
  EXPECT_EQ(count(fused, "nibble:IntConvFused"), 53);
  EXPECT_EQ(count(fused, "nibble:IntConv"), 0);
  EXPECT_EQ(count(fused, "nibble:IntAdd"), 0);
  EXPECT_EQ(count(fused, "nibble:IntRelu"), 0);
  // Left as separate ops: the shortcut rescales (12 identity, 4 dequantize after the
  // downsample conv), max pool, average pool, flatten, fc and scale.
  EXPECT_EQ(count(fused, "nibble:Requantize"), 16);
  EXPECT_EQ(fused.nodes.size(), 53u + 16u + 5u);
}

}  // namespace
}  // namespace nibble
