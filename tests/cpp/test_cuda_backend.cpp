// The CUDA backend: planning (runs everywhere) and bit-exact parity of every kernel and whole
// networks with the CPU engine (skipped without a CUDA device).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "backends/cuda/plan.h"
#include "nibble/cuda_device.h"
#include "nibble/cuda_engine.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/model_loader.h"
#include "nibble/npy.h"
#include "quant/calibration.h"
#include "quant/observer.h"
#include "quant/quantize.h"
#include "quant/requant.h"
#include "test_util.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;
using testing_util::error_of;

std::string seed_dir() {
  const char* env = std::getenv("NIBBLE_SEED_DIR");
  return env ? env : std::string(NIBBLE_SOURCE_DIR) + "/../shared/models/mlperf-v0.5-int4-resnet50";
}

#define REQUIRE_CUDA()                                                              \
  do {                                                                              \
    if (!cuda_device_description()) GTEST_SKIP() << "skipped: no CUDA device";      \
  } while (0)

// A random residual network in the seed's integer ops, shaped by `seed`:
//   input (u8/s8, or f32 + QuantizeFloat) -> conv1 (8-bit weights, u4 out)
//   -> conv2 (k x k, stride s, s4 weights, u4) -> conv3 (1x1, s4, + residual, ReLU, u4)
//   residual: Requantize(downsample(conv1)) (s7 -> 31 bits), or the downsample's s32 output
//   -> MaxPool 3x3/2 -> IntAvgPool (global) -> Flatten -> IntLinear -> Scale.
struct RandomNet {
  Graph graph;
  Tensor input;
};

RandomNet random_net(uint32_t seed) {
  std::mt19937 rng(seed);
  auto pick = [&](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  auto uni = [&](int lo, int hi) { return lo + static_cast<int>(rng() % static_cast<uint32_t>(hi - lo + 1)); };
  const bool float_input = seed % 3 == 0;
  const bool s32_residual = seed % 4 == 1;
  const int64_t n = uni(1, 4), c0 = pick({1, 3, 16, 64}), h = uni(6, 19), w = uni(6, 19);
  const int64_t c1 = pick({64, 128}), c2 = pick({64, 96, 256});
  const int k2 = static_cast<int>(pick({1, 3, 5})), s2 = static_cast<int>(pick({1, 2}));
  Graph g;
  g.source = fmt::format("random_net({})", seed);
  const DType in_dtype = float_input ? DType::f32 : (seed % 2 ? DType::s8 : DType::u8);
  g.inputs.push_back({"x", in_dtype, Shape{-1, c0, h, w}, {"N", "", "", ""}});
  auto tensor = [&](const std::string& name, DType dt, Shape shape, int lo, int hi) {
    Tensor t(dt, shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.set(i, uni(lo, hi));
    g.initializers[name] = t;
    return name;
  };
  std::string x = "x";
  if (float_input) {
    Node q{"nibble:QuantizeFloat", "quant_in", {"x", "in_scale"}, {"xq"}, {}};
    Tensor s(DType::f32, {1});
    s.set(0, 1.0 / 200);
    g.initializers["in_scale"] = s;
    q.attrs["bits"] = int64_t{8};
    q.attrs["signed"] = int64_t{0};
    g.nodes.push_back(q);
    x = "xq";
  }
  // A fused conv; factor range chosen so that outputs spread over the clamp range.
  auto conv = [&](const std::string& name, const std::string& in, int64_t cin, int64_t cout, int k, int s, DType wt,
                  int bits, bool sgn, bool relu, const std::string& residual) {
    const int wmax = wt == DType::s4 ? 7 : 127;
    Node c{"nibble:IntConvFused", name, {in, tensor(name + ".w", wt, {cout, cin, k, k}, -wmax, wmax),
                                          tensor(name + ".b", DType::s32, {cout}, -3000, 3000), residual},
           {name}, {}};
    c.attrs["kernel_shape"] = std::vector<int64_t>{k, k};
    c.attrs["strides"] = std::vector<int64_t>{s, s};
    const int64_t p = k / 2;
    c.attrs["pads"] = std::vector<int64_t>{p, p, p, p};
    c.attrs["dilations"] = std::vector<int64_t>{1, 1};
    c.attrs["group"] = int64_t{1};
    c.attrs["relu"] = int64_t{relu};
    if (bits > 0) {
      c.inputs.push_back(tensor(name + ".f", DType::u16, {cout}, 20, 900));
      c.attrs["shift"] = int64_t{16};
      c.attrs["bits"] = int64_t{bits};
      c.attrs["signed"] = int64_t{sgn};
    }
    g.nodes.push_back(c);
    return name;
  };
  const std::string a = conv("conv1", x, c0, c1, 3, 1, DType::s8, 4, false, true, "");
  const std::string b = conv("conv2", a, c1, c1, k2, s2, DType::s4, 4, false, true, "");
  std::string res;
  if (s32_residual) {
    res = conv("down", a, c1, c2, 1, s2, DType::s4, 0, true, false, "");
  } else {
    const std::string d = conv("down", a, c1, c2, 1, s2, DType::s4, 7, true, false, "");
    Node r{"nibble:Requantize", "down_rq", {d, tensor("down_rq.f", DType::u16, {c2}, 100, 5000)}, {"down_rq"}, {}};
    r.attrs["shift"] = int64_t{1};
    r.attrs["bits"] = int64_t{31};
    r.attrs["signed"] = int64_t{1};
    g.nodes.push_back(r);
    res = "down_rq";
  }
  const std::string c = conv("conv3", b, c1, c2, 1, 1, DType::s4, 4, false, true, res);
  Node mp{"MaxPool", "pool", {c}, {"pool"}, {}};
  mp.attrs["kernel_shape"] = std::vector<int64_t>{3, 3};
  mp.attrs["strides"] = std::vector<int64_t>{2, 2};
  mp.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  g.nodes.push_back(mp);
  const int64_t oh = ((h - 1) / s2 + 1 - 1) / 2 + 1, ow = ((w - 1) / s2 + 1 - 1) / 2 + 1;
  Node ap{"nibble:IntAvgPool", "avg", {"pool"}, {"avg"}, {}};
  ap.attrs["kernel_shape"] = std::vector<int64_t>{oh, ow};
  ap.attrs["strides"] = std::vector<int64_t>{1, 1};
  g.nodes.push_back(ap);
  Node fl{"Flatten", "flat", {"avg"}, {"flat"}, {}};
  fl.attrs["axis"] = int64_t{1};
  g.nodes.push_back(fl);
  const int64_t classes = pick({10, 37});
  g.nodes.push_back(Node{"nibble:IntLinear", "fc", {"flat", tensor("fc.w", DType::s8, {classes, c2}, -127, 127),
                                                     tensor("fc.b", DType::s32, {classes}, -500, 500)},
                         {"logits"}, {}});
  Tensor sc(DType::f32, {classes});
  for (int64_t i = 0; i < classes; ++i) sc.set(i, 0.5 + 0.01 * static_cast<double>(i));
  g.initializers["fc.scale"] = sc;
  g.nodes.push_back(Node{"nibble:Scale", "scale", {"logits", "fc.scale"}, {"scores"}, {}});
  for (Node& node : g.nodes) node.opset = 1;
  g.outputs.push_back({"logits", DType::s32, std::nullopt, {}});
  g.outputs.push_back({"scores", DType::f32, std::nullopt, {}});

  Tensor in(in_dtype, {n, c0, h, w});
  for (int64_t i = 0; i < in.numel(); ++i) {
    in.set(i, float_input ? std::uniform_real_distribution<double>(-0.2, 1.4)(rng) : uni(in_dtype == DType::s8 ? -127 : 0, 127));
  }
  return {g, in};
}

void expect_identical(const std::vector<Tensor>& want, const std::vector<Tensor>& got, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(want[i].dtype(), got[i].dtype()) << what << " output " << i;
    ASSERT_EQ(want[i].shape(), got[i].shape()) << what << " output " << i;
    int64_t bad = 0, first = -1;
    for (int64_t j = 0; j < want[i].numel(); ++j) {
      if (want[i].get(j) != got[i].get(j)) {
        if (first < 0) first = j;
        ++bad;
      }
    }
    EXPECT_EQ(bad, 0) << what << " output " << i << ": " << bad << " of " << want[i].numel()
                      << " differ, first at " << first << " (want " << (first >= 0 ? want[i].get(first) : 0) << ", got "
                      << (first >= 0 ? got[i].get(first) : 0) << ")";
  }
}

// ---- planning (no GPU needed) ----

TEST(CudaPlan, RandomNetStorageAndArena) {
  const RandomNet net = random_net(2);  // u8 input, folded Requantize residual
  const cuda::Plan p = cuda::make_plan(net.graph, cuda::StorageMode::native);
  const cuda::Plan q = cuda::make_plan(net.graph, cuda::StorageMode::int8);
  int packed = 0;
  for (const auto& v : p.values) packed += cuda::is_packed(v.storage);
  for (const auto& v : q.values) EXPECT_FALSE(cuda::is_packed(v.storage)) << v.name;
  // conv1's and conv2's outputs; conv3's feeds the max pool and then the average pool, which reads bytes.
  EXPECT_EQ(packed, 2);
  EXPECT_LT(p.arena_bytes_per_image, q.arena_bytes_per_image);
  // Values alive at the same time never share bytes.
  for (const auto& a : p.values) {
    for (const auto& b : p.values) {
      if (&a == &b || a.def < 0 || b.def < 0 || a.def > b.last || b.def > a.last) continue;
      const bool apart = a.arena_offset + a.image_bytes() <= b.arena_offset || b.arena_offset + b.image_bytes() <= a.arena_offset;
      EXPECT_TRUE(apart) << a.name << " and " << b.name;
    }
  }
}

TEST(CudaPlan, DeviceLayoutRoundTrip) {
  std::mt19937 rng(5);
  for (auto [dt, st] : {std::pair{DType::u8, cuda::Storage::u4}, std::pair{DType::s8, cuda::Storage::s4},
                        std::pair{DType::u8, cuda::Storage::u8}, std::pair{DType::s32, cuda::Storage::s32}}) {
    Tensor t(dt, {2, 5, 3, 2});
    const bool four = cuda::is_packed(st);
    for (int64_t i = 0; i < t.numel(); ++i) {
      const int v = static_cast<int>(rng() % 15);
      t.set(i, dt == DType::s8 || dt == DType::s32 ? v - 7 : (four ? v : static_cast<int>(rng() % 256)));
    }
    const auto bytes = cuda::to_device_layout(t, st);
    cuda::Value v;
    v.dtype = dt;
    v.storage = st;
    v.c = 5;
    v.h = 3;
    v.w = 2;
    v.row = cuda::row_bytes(st, 5);
    EXPECT_EQ(bytes.size(), static_cast<size_t>(2 * 3 * 2 * v.row));
    const Tensor back = cuda::from_device_layout(bytes.data(), 2, v);
    expect_identical({t}, {back}, cuda::storage_name(st));
  }
}

TEST(CudaPlan, UnsupportedOpsAreNamed) {
  RandomNet net = random_net(2);
  net.graph.nodes.insert(net.graph.nodes.begin() + 3, Node{"Sigmoid", "odd", {"conv2"}, {"odd"}, {}});
  const std::string e = error_of([&] { cuda::make_plan(net.graph, cuda::StorageMode::native); });
  EXPECT_NE(e.find("Sigmoid"), std::string::npos) << e;
  EXPECT_NE(e.find("random_net(2)"), std::string::npos) << e;
}

TEST(CudaPlan, SeedModelPacksFourBitTensors) {
  if (!fs::exists(seed_dir() + "/model/model")) GTEST_SKIP() << "seed model not found at " << seed_dir();
  const Graph g = load_model(seed_dir() + "/model");
  const cuda::Plan p = cuda::make_plan(g, cuda::StorageMode::native);
  const cuda::Plan q = cuda::make_plan(g, cuda::StorageMode::int8);
  int convs = 0, packed_convs = 0;
  for (const auto& st : p.steps) {
    if (st.kind != cuda::StepKind::conv) continue;
    ++convs;
    packed_convs += cuda::is_packed(p.values[static_cast<size_t>(st.x)].storage);
  }
  EXPECT_EQ(convs, 54);         // 53 convolutions and the classifier
  EXPECT_EQ(packed_convs, 52);  // all but the stem (8-bit input) and the classifier (7-bit input)
  EXPECT_LT(static_cast<double>(p.weight_bytes), 0.6 * static_cast<double>(q.weight_bytes));
  EXPECT_LT(static_cast<double>(p.arena_bytes_per_image), 0.75 * static_cast<double>(q.arena_bytes_per_image));
}

// ---- bit-exact parity on the GPU ----

TEST(CudaEngine, RandomNetsMatchTheCpuEngineExactly) {
  REQUIRE_CUDA();
  for (uint32_t seed = 0; seed < 24; ++seed) {
    const RandomNet net = random_net(seed);
    const auto want = Engine(net.graph, Backend::cpu).run({net.input});
    for (bool int8 : {false, true}) {
      CudaEngineOptions o;
      o.int8_storage = int8;
      o.max_batch = 3;  // inputs of 4 images run as two submissions
      CudaEngine gpu(net.graph, o);
      expect_identical(want, gpu.run({net.input}), fmt::format("seed {} {}", seed, int8 ? "int8" : "native"));
    }
  }
}

TEST(CudaEngine, SeedModelGoldenLogitsAndRandomInputs) {
  REQUIRE_CUDA();
  if (!fs::exists(seed_dir() + "/model/model")) GTEST_SKIP() << "seed model not found at " << seed_dir();
  const Graph g = load_model(seed_dir() + "/model");
  const Tensor a = read_npy(seed_dir() + "/golden/image_a_input_s8.npy");
  const Tensor b = read_npy(seed_dir() + "/golden/image_b_input_s8.npy");
  Tensor x(DType::s8, {6, 3, 224, 224});
  std::copy_n(a.bytes(), a.nbytes(), x.bytes());
  std::copy_n(b.bytes(), b.nbytes(), x.bytes() + a.nbytes());
  std::mt19937 rng(9);
  for (size_t i = 2 * a.nbytes(); i < x.nbytes(); ++i) x.bytes()[i] = static_cast<uint8_t>(static_cast<int>(rng() % 255) - 127);
  const auto want = Engine(g, Backend::cpu).run({x});
  for (bool int8 : {false, true}) {
    CudaEngineOptions o;
    o.int8_storage = int8;
    o.max_batch = 4;
    CudaEngine gpu(g, o);
    const auto got = gpu.run({x});
    expect_identical(want, got, int8 ? "seed int8 storage" : "seed native");
    const Tensor ga = read_npy(seed_dir() + "/golden/image_a_logits_s32.npy");
    const Tensor gb = read_npy(seed_dir() + "/golden/image_b_logits_s32.npy");
    for (int64_t k = 0; k < 1000; ++k) {
      ASSERT_EQ(got[0].get(k), ga.get(k)) << "golden image a, class " << k;
      ASSERT_EQ(got[0].get(1000 + k), gb.get(k)) << "golden image b, class " << k;
    }
  }
}

// PTQ models of the bundled Fashion-MNIST networks (calibrated on random images: the parity
// check needs valid integer models, not accurate ones).
TEST(CudaEngine, PtqModelsMatchTheCpuEngineExactly) {
  REQUIRE_CUDA();
  std::mt19937 rng(3);
  Tensor x(DType::f32, {40, 1, 28, 28});
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::uniform_real_distribution<float>(0, 1)(rng);
  for (const char* model : {"fmnist_resnet.onnx", "fmnist_resnet50.onnx"}) {
    const Graph fp32 = load_model(std::string(NIBBLE_SOURCE_DIR) + "/models/" + model);
    quant::RangeObserver obs(fp32);
    obs.observe_ranges(x);
    obs.start_histograms();
    obs.observe_histograms(x);
    for (const char* precision : {"int8", "int4"}) {
      quant::QuantizeOptions opt;
      opt.precision = quant::parse_precision(precision, "test");
      const auto table = obs.table(quant::CalibSpec::parse("percentile:99.99"), quant::activation_bits(opt.precision), {"test"});
      const auto q = quant::quantize_model(fp32, table, opt);
      Graph g = graph_from_model_dir(q.model);
      fuse_int_conv_epilogues(g);
      const auto want = Engine(g, Backend::cpu).run({x});
      CudaEngineOptions o;
      o.max_batch = 16;
      CudaEngine gpu(g, o);
      expect_identical(want, gpu.run({x}), fmt::format("{} {}", model, precision));
    }
  }
}

TEST(CudaEngine, BadInputsAreOneLineErrors) {
  REQUIRE_CUDA();
  const RandomNet net = random_net(2);
  CudaEngine gpu(net.graph, {});
  Tensor wrong(DType::f32, net.input.shape());
  EXPECT_NE(error_of([&] { gpu.run({wrong}); }).find("must be u8"), std::string::npos);
  Tensor shape(DType::u8, {1, net.input.dim(1) + 1, net.input.dim(2), net.input.dim(3)});
  EXPECT_NE(error_of([&] { gpu.run({shape}); }).find("must have shape"), std::string::npos);
}

}  // namespace
}  // namespace nibble

namespace nibble {
namespace {

// The kernel clamps |acc| to `sat` before a 32-bit requantization: every |acc| >= sat must give the
// same saturated value, sat - 1 must not saturate where a smaller input exists, and the product must fit.
TEST(CudaPlan, SaturationThresholdsAreExact) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const int shift = static_cast<int>(rng() % 20), bits = 1 + static_cast<int>(rng() % 8);
    const bool sgn = rng() % 2;
    const auto r = quant::output_range(bits, sgn);
    std::vector<uint16_t> f(4);
    for (auto& v : f) v = static_cast<uint16_t>(rng() % 65536);
    const auto sat = cuda::saturation_thresholds(f, shift, r.lo, r.hi);
    if (sat.empty()) continue;
    for (size_t c = 0; c < f.size(); ++c) {
      const uint64_t round = shift ? uint64_t{1} << (shift - 1) : 0;
      ASSERT_LT(uint64_t{sat[c]} * f[c] + round, uint64_t{1} << 32);
      for (int64_t x : {int64_t{sat[c]}, int64_t{sat[c]} + 1, int64_t{2147483647}}) {
        if (f[c] == 0) break;
        EXPECT_EQ(quant::requantize(x, f[c], shift, r), quant::requantize(sat[c], f[c], shift, r));
        EXPECT_EQ(quant::requantize(-x, f[c], shift, r), quant::requantize(-int64_t{sat[c]}, f[c], shift, r));
        EXPECT_EQ(quant::requantize(sat[c], f[c], shift, r), r.hi);
      }
      if (sat[c] > 0 && f[c] != 0) {
        const int64_t below = quant::requantize(int64_t{sat[c]} - 1, f[c], shift, {-(int64_t{1} << 40), int64_t{1} << 40});
        EXPECT_LE(below, std::max(r.hi, -r.lo));
      }
    }
  }
}

}  // namespace
}  // namespace nibble
