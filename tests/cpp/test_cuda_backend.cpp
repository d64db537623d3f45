// The CUDA backend: planning (runs everywhere) and bit-exact parity of every kernel and whole
// networks with the CPU engine (skipped without a CUDA device).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "backends/cuda/divide.h"
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

// Convolutions are described with designated initializers of NetBuilder::Conv, whose members
// all have defaults; GCC 12 still warns about the ones left out.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace nibble {
namespace {

namespace fs = std::filesystem;
using testing_util::error_of;

std::string seed_dir() {
  const char* env = std::getenv("NIBBLE_SEED_DIR");
  return env ? env : testing_util::source_dir() + "/models/mlperf-v0.5-int4-resnet50";
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

// Builds integer graphs of the seed's ops with random initializers.
struct NetBuilder {
  Graph g;
  std::mt19937 rng;
  NetBuilder(uint32_t seed, std::string source) : rng(seed) { g.source = std::move(source); }
  int uni(int lo, int hi) { return lo + static_cast<int>(rng() % static_cast<uint32_t>(hi - lo + 1)); }
  int64_t pick(std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); }
  std::string tensor(const std::string& name, DType dt, Shape shape, int lo, int hi) {
    Tensor t(dt, shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.set(i, uni(lo, hi));
    g.initializers[name] = t;
    return name;
  }
  struct Conv {
    int k = 1, s = 1, d = 1;
    int p = -1;            // -1: "same" padding, d x (k / 2)
    DType wt = DType::s4;
    int wmax = -1;         // weights in [-wmax, wmax]; -1: the dtype's range (0: all zero, with a zero bias)
    int bits = 0;          // 0: s32 output, no requantization
    bool sgn = false, relu = false;
    std::string residual;
  };
  // A fused conv; factor range chosen so that outputs spread over the clamp range.
  std::string conv(const std::string& name, const std::string& in, int64_t cin, int64_t cout, const Conv& c) {
    const int wmax = c.wmax >= 0 ? c.wmax : (c.wt == DType::s4 ? 7 : 127);
    const int bias = wmax > 0 ? 3000 : 0;
    Node n{"nibble:IntConvFused", name, {in, tensor(name + ".w", c.wt, {cout, cin, c.k, c.k}, -wmax, wmax),
                                          tensor(name + ".b", DType::s32, {cout}, -bias, bias), c.residual},
           {name}, {}};
    const int64_t p = c.p >= 0 ? c.p : c.d * (c.k / 2);
    n.attrs["kernel_shape"] = std::vector<int64_t>{c.k, c.k};
    n.attrs["strides"] = std::vector<int64_t>{c.s, c.s};
    n.attrs["pads"] = std::vector<int64_t>{p, p, p, p};
    n.attrs["dilations"] = std::vector<int64_t>{c.d, c.d};
    n.attrs["group"] = int64_t{1};
    n.attrs["relu"] = int64_t{c.relu};
    if (c.bits > 0) {
      n.inputs.push_back(tensor(name + ".f", DType::u16, {cout}, 20, 900));
      n.attrs["shift"] = int64_t{16};
      n.attrs["bits"] = int64_t{c.bits};
      n.attrs["signed"] = int64_t{c.sgn};
    }
    n.opset = 1;
    g.nodes.push_back(n);
    return name;
  }
  // A nibble:Requantize of a narrow value to 31 bits (how the seed's shortcuts reach a residual).
  std::string requantize_31(const std::string& name, const std::string& in, int64_t channels) {
    Node r{"nibble:Requantize", name, {in, tensor(name + ".f", DType::u16, {channels}, 100, 5000)}, {name}, {}};
    r.attrs["shift"] = int64_t{1};
    r.attrs["bits"] = int64_t{31};
    r.attrs["signed"] = int64_t{1};
    r.opset = 1;
    g.nodes.push_back(r);
    return name;
  }
};

RandomNet random_net(uint32_t seed) {
  NetBuilder b(seed, fmt::format("random_net({})", seed));
  Graph& g = b.g;
  const bool float_input = seed % 3 == 0;
  const bool s32_residual = seed % 4 == 1;
  const int64_t n = b.uni(1, 4), c0 = b.pick({1, 3, 16, 64}), h = b.uni(6, 19), w = b.uni(6, 19);
  const int64_t c1 = b.pick({64, 128}), c2 = b.pick({64, 96, 256});
  const int k2 = static_cast<int>(b.pick({1, 3, 5})), s2 = static_cast<int>(b.pick({1, 2}));
  const DType in_dtype = float_input ? DType::f32 : (seed % 2 ? DType::s8 : DType::u8);
  g.inputs.push_back({"x", in_dtype, Shape{-1, c0, h, w}, {"N", "", "", ""}});
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
  const std::string a = b.conv("conv1", x, c0, c1, {.k = 3, .wt = DType::s8, .bits = 4, .relu = true});
  const std::string c = b.conv("conv2", a, c1, c1, {.k = k2, .s = s2, .bits = 4, .relu = true});
  std::string res;
  if (s32_residual) {
    res = b.conv("down", a, c1, c2, {.s = s2, .sgn = true});
  } else {
    res = b.requantize_31("down_rq", b.conv("down", a, c1, c2, {.s = s2, .bits = 7, .sgn = true}), c2);
  }
  const std::string d = b.conv("conv3", c, c1, c2, {.bits = 4, .relu = true, .residual = res});
  Node mp{"MaxPool", "pool", {d}, {"pool"}, {}};
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
  const int64_t classes = b.pick({10, 37});
  g.nodes.push_back(Node{"nibble:IntLinear", "fc", {"flat", b.tensor("fc.w", DType::s8, {classes, c2}, -127, 127),
                                                     b.tensor("fc.b", DType::s32, {classes}, -500, 500)},
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
    in.set(i, float_input ? std::uniform_real_distribution<double>(-0.2, 1.4)(b.rng) : b.uni(in_dtype == DType::s8 ? -127 : 0, 127));
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

// The FP8 epilogue divides by an e4m3 output's scale as the reference's QuantizeFloat does, with
// the scale's reciprocal computed once (cuda::divide_by, the same operations on host and device):
// bit for bit IEEE division on random normal quotients, signed zeros included.
TEST(CudaDivide, ReciprocalAndOneCorrectionRoundAsDivision) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::uniform_int_distribution<int> sexp(-24, 8), xexp(-40, 40);
  int64_t checked = 0, differ = 0;
  for (int i = 0; i < 4000; ++i) {
    const float s = std::ldexp(mant(rng), sexp(rng));
    const float inv = 1.0f / s;
    for (int j = 0; j < 500; ++j) {
      const float x = std::ldexp(mant(rng), xexp(rng)) * ((j & 1) ? -1.0f : 1.0f);
      const float want = x / s, got = cuda::divide_by(x, s, inv);
      differ += std::memcmp(&want, &got, sizeof(float)) != 0;
      ++checked;
    }
    for (float z : {0.0f, -0.0f}) {
      const float want = z / s, got = cuda::divide_by(z, s, inv);
      EXPECT_EQ(std::signbit(want), std::signbit(got));
      EXPECT_EQ(got, 0.0f);
    }
  }
  EXPECT_EQ(differ, 0) << "of " << checked;
}

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

// Signed values of b bits span [-(2^b - 1), 2^b - 1]: a signed 4-bit activation does not fit a
// nibble and must stay in bytes, a signed 3-bit one packs.
TEST(CudaPlan, SignedFourBitValuesStayInBytes) {
  for (int bits : {3, 4}) {
    NetBuilder b(1, "signed");
    b.g.inputs.push_back({"x", DType::u8, Shape{-1, 64, 4, 4}, {"N", "", "", ""}});
    b.conv("a", "x", 64, 64, {.bits = 4, .relu = true});
    b.requantize_31("rq", b.conv("side", "a", 64, 64, {.bits = bits, .sgn = true}), 64);
    b.conv("out", "a", 64, 64, {.bits = 8, .relu = true, .residual = "rq"});
    b.g.outputs.push_back({"out", DType::u8, std::nullopt, {}});
    const cuda::Plan p = cuda::make_plan(b.g, cuda::StorageMode::native);
    for (const auto& v : p.values) {
      if (v.name == "a") {
        EXPECT_EQ(v.storage, cuda::Storage::u4);
      }
      if (v.name == "side") {
        EXPECT_EQ(v.storage, bits == 3 ? cuda::Storage::s4 : cuda::Storage::s8) << bits << " bits";
      }
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
  // The wgmma kernels' direct epilogue needs, on every ReLU layer, thresholds that reach the top
  // of the output range, and residual requantizations that stay in range: the seed has both.
  int relu_convs = 0, residual_convs = 0;
  for (const auto& st : p.steps) {
    if (st.kind != cuda::StepKind::conv) continue;
    if (st.conv.relu && !st.conv.factor.empty()) {
      ++relu_convs;
      EXPECT_EQ(st.conv.sat_top.size(), st.conv.sat.size()) << st.name;
      EXPECT_FALSE(st.conv.sat_top.empty()) << st.name;
    }
    if (st.conv.res_requant) {
      ++residual_convs;
      EXPECT_TRUE(st.conv.res_in_range) << st.name;
    }
  }
  EXPECT_EQ(relu_convs, 49);
  EXPECT_EQ(residual_convs, 16);
}

// The wgmma kernels widen packed activations in registers: lane (g, t) of a warp loads packed
// words with ldmatrix (bytes 4t..4t+3 of the 16-byte halves of its rows), and the low nibbles
// of a word fill k slots 4t..4t+3 of the MMA's A fragment, the high nibbles 16+4t..16+4t+3.
// Emulating that on the host, the widened weights must give every pixel the plain dot product.
TEST(CudaPlan, WgmmaWeightsFollowTheWideningOrder) {
  std::mt19937 rng(21);
  cuda::ConvStep c;
  c.kh = 3;
  c.kw = 3;
  c.m = 5;
  c.m_pad = 8;
  cuda::Value x;
  x.storage = cuda::Storage::u4;
  x.c = 128;
  x.row = 64;  // 128 channels, two per byte
  c.load = cuda::ConvLoad::vec;
  c.k_bytes = c.kh * c.kw * x.row;
  c.k_pad = c.k_bytes;
  c.weights.assign(static_cast<size_t>(c.m_pad * c.k_pad), 0);
  for (auto& b : c.weights) b = static_cast<int8_t>(rng());
  const std::vector<int8_t> wide = cuda::wgmma_weights(c, x);
  const int64_t taps = 9, wide_k = taps * 2 * x.row;
  ASSERT_EQ(wide.size(), static_cast<size_t>(c.m_pad * wide_k));
  std::vector<uint8_t> act(static_cast<size_t>(taps * x.row));
  for (auto& b : act) b = static_cast<uint8_t>(rng());
  for (int64_t m = 0; m < c.m_pad; ++m) {
    const uint8_t* wp = reinterpret_cast<const uint8_t*>(c.weights.data()) + m * c.k_pad;
    int64_t want = 0, got = 0;
    for (int64_t tap = 0; tap < taps; ++tap) {
      for (int64_t ch = 0; ch < x.c; ++ch) want += unpack_u4(act.data() + tap * x.row, ch) * unpack_s4(wp + tap * x.row, ch);
      for (int64_t cc = 0; cc < x.row / 32; ++cc) {
        const uint8_t* row = act.data() + tap * x.row + cc * 32;  // this chunk's 32 packed bytes
        for (int half = 0; half < 2; ++half) {
          for (int t = 0; t < 4; ++t) {
            uint32_t word = 0;  // ldmatrix: bytes 16 x half + 4t .. + 3 of the row
            for (int j = 0; j < 4; ++j) word |= uint32_t{row[16 * half + 4 * t + j]} << (8 * j);
            for (int j = 0; j < 4; ++j) {
              const int lo = (word >> (8 * j)) & 0xF, hi = (word >> (8 * j + 4)) & 0xF;
              const int8_t* wk = wide.data() + m * wide_k + (tap * (x.row / 32) + cc) * 64 + 32 * half;
              got += lo * wk[4 * t + j] + hi * wk[16 + 4 * t + j];
            }
          }
        }
      }
    }
    EXPECT_EQ(got, want) << "map " << m;
  }
}

// A stem convolution: `c0` channels of 8 bits (u8, s8, or f32 through QuantizeFloat) into 64
// maps, k x k, stride 2 in rows and `sw` in columns, padding p; with `consumer`, a 1x1 conv of s4
// weights reads its output (so that a 4-bit output is stored packed) and gives the s32 output.
struct StemNet {
  Graph graph;
  Tensor input;
};
StemNet stem_net(uint32_t seed, bool consumer) {
  NetBuilder b(seed * 31 + 7, "");
  const int64_t n = b.uni(1, 3), c0 = b.pick({1, 3, 4});
  const int k = static_cast<int>(b.pick({1, 2, 3, 5, 7, 7, 8, 9})), sw = static_cast<int>(b.pick({1, 2, 2}));
  const int64_t h = b.uni(k, 37), w = b.uni(k, 37);
  const int p = b.uni(0, std::min(3, k - 1 + (k == 1)));
  const DType in_dtype = seed % 3 == 0 ? DType::f32 : (seed % 3 == 1 ? DType::s8 : DType::u8);
  const bool sgn = seed % 4 == 0;  // signed outputs of 7 bits (s8), else unsigned ones of 4 or 8 bits
  const int out_bits = sgn ? 7 : static_cast<int>(b.pick({0, 4, 8}));
  b.g.source = fmt::format("stem_net({}: {}x{}x{}x{} {}, {}x{} conv stride 2x{} pad {}, out {} bits{}{})", seed, n, c0, h, w,
                           dtype_name(in_dtype), k, k, sw, p, out_bits, sgn ? " signed" : "", consumer ? ", 1x1 after" : "");
  b.g.inputs.push_back({"x", in_dtype, Shape{-1, c0, h, w}, {"N", "", "", ""}});
  std::string x = "x";
  if (in_dtype == DType::f32) {
    Node q{"nibble:QuantizeFloat", "quant_in", {"x", "in_scale"}, {"xq"}, {}};
    Tensor s(DType::f32, {1});
    s.set(0, 1.0 / 100);
    b.g.initializers["in_scale"] = s;
    q.attrs["bits"] = int64_t{7};  // signed 7 bits: s8 storage
    q.attrs["signed"] = int64_t{1};
    q.opset = 1;
    b.g.nodes.push_back(q);
    x = "xq";
  }
  b.conv("stem", x, c0, 64, {.k = k, .p = p, .wt = DType::s8, .bits = out_bits, .sgn = sgn, .relu = !sgn});
  b.g.nodes.back().attrs["strides"] = std::vector<int64_t>{2, sw};
  std::string out = "stem";
  if (consumer && out_bits > 0) out = b.conv("after", "stem", 64, 64, {.wt = DType::s4});
  const bool s32 = out == "after" || out_bits == 0;
  b.g.outputs.push_back({out, s32 ? DType::s32 : (sgn ? DType::s8 : DType::u8), std::nullopt, {}});
  Tensor in(in_dtype, {n, c0, h, w});
  for (int64_t i = 0; i < in.numel(); ++i) {
    in.set(i, in_dtype == DType::f32 ? std::uniform_real_distribution<double>(-1.5, 1.5)(b.rng)
                                     : b.uni(in_dtype == DType::s8 ? -128 : 0, in_dtype == DType::s8 ? 127 : 255));
  }
  return {b.g, in};
}

// The unfolded stem (plan.h, InputUnfold): the convolution over the unfolded rows with the plan's
// weights equals the original convolution at every output, and the tensor map's traversal of
// the unfolded rows (padding ph before, ph_end after) gives exactly the output rows.
// The direct epilogue's map order: fragment column 8j + 2t + e of a 64-map block is map
// 16t + 2j + e (each thread of a quad holds 16 consecutive maps), and permute_map_rows moves the
// weights' rows to match.
TEST(CudaPlan, DirectEpilogueMapOrder) {
  std::vector<int> seen(64, 0);
  for (int t = 0; t < 4; ++t) {
    for (int j = 0; j < 8; ++j) {
      for (int e = 0; e < 2; ++e) {
        const int map = cuda::wgmma_map_of_column(8 * j + 2 * t + e);
        EXPECT_EQ(map, 16 * t + 2 * j + e);
        ++seen[static_cast<size_t>(map)];
      }
    }
  }
  for (int m = 0; m < 64; ++m) EXPECT_EQ(seen[static_cast<size_t>(m)], 1) << "map " << m;
  const int64_t rows = 128, row_bytes = 3;
  std::vector<int8_t> w(static_cast<size_t>(rows * row_bytes));
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<int8_t>(i * 7 + 1);
  const std::vector<int8_t> p = cuda::permute_map_rows(w.data(), rows, row_bytes);
  ASSERT_EQ(p.size(), w.size());
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t from = r / 64 * 64 + cuda::wgmma_map_of_column(static_cast<int>(r % 64));
    for (int64_t b = 0; b < row_bytes; ++b) EXPECT_EQ(p[static_cast<size_t>(r * row_bytes + b)], w[static_cast<size_t>(from * row_bytes + b)]);
  }
  EXPECT_EQ(p[static_cast<size_t>(2 * row_bytes)], w[static_cast<size_t>(16 * row_bytes)]);  // column 2 (t = 1) is map 16
  EXPECT_THROW(cuda::permute_map_rows(w.data(), 96, 1), std::invalid_argument);
}

TEST(CudaPlan, UnfoldedStemIsTheSameConvolution) {
  int unfolded = 0;
  for (uint32_t seed = 1; seed < 60; seed += 3) {  // integer inputs only (seed % 3 != 0)
    const StemNet net = stem_net(seed, false);
    const cuda::Plan plan = cuda::make_plan(net.graph, cuda::StorageMode::int8);
    const cuda::InputUnfold& u = plan.steps[0].input.unfold;
    const cuda::Step& st = plan.steps[1];
    const Node& node = net.graph.nodes.back();
    const Tensor& wt = net.graph.initializers.at(node.inputs[1]);
    const int64_t n = net.input.dim(0), c0 = net.input.dim(1), h = net.input.dim(2), w = net.input.dim(3);
    const int k = static_cast<int>(wt.dim(2));
    const int sw = static_cast<int>(node.attr_ints("strides")[1]), p = static_cast<int>(node.attr_ints("pads")[0]);
    const int64_t oh = (h + 2 * p - k) / 2 + 1, ow = (w + 2 * p - k) / sw + 1;
    ASSERT_EQ(u.on, k <= cuda::kTapRow) << net.graph.source;
    if (!u.on) continue;
    ++unfolded;
    const cuda::ConvStep& c = st.conv;
    ASSERT_EQ(c.sh, 1);
    ASSERT_EQ(c.kw, 1);
    ASSERT_EQ(u.ow, ow);
    ASSERT_EQ(u.h2 - 1 + c.ph_end + c.ph - (c.kh - 1) + 1, oh) << net.graph.source;
    ASSERT_GE(c.k_pad, c.kh * 64);
    // No real input row lies in a pair past the unfolded rows (those read as zeros).
    ASSERT_GE(2 * u.h2 + u.row_offset, h);
    const std::vector<uint8_t> ux = cuda::unfold_input(net.input, u);
    const bool sgn = net.input.dtype() == DType::s8;
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t oy = 0; oy < oh; ++oy) {
        for (int64_t ox = 0; ox < ow; ++ox) {
          for (int64_t m = 0; m < 64; ++m) {
            int64_t want = 0, got = 0;
            for (int64_t ch = 0; ch < c0; ++ch) {
              for (int a = 0; a < k; ++a) {
                for (int bb = 0; bb < k; ++bb) {
                  const int64_t y = oy * 2 - p + a, xx = ox * sw - p + bb;
                  if (y < 0 || y >= h || xx < 0 || xx >= w) continue;
                  want += static_cast<int64_t>(net.input.get(((b * c0 + ch) * h + y) * w + xx)) *
                          static_cast<int64_t>(wt.get(((m * c0 + ch) * k + a) * k + bb));
                }
              }
            }
            for (int a2 = 0; a2 < c.kh; ++a2) {
              const int64_t y2 = oy - c.ph + a2;
              if (y2 < 0 || y2 >= u.h2) continue;
              const uint8_t* px = ux.data() + ((b * u.h2 + y2) * u.ow + ox) * 64;
              for (int byte = 0; byte < 64; ++byte) {
                const int64_t v = sgn ? static_cast<int8_t>(px[byte]) : px[byte];
                got += v * c.weights[static_cast<size_t>(m * c.k_pad + a2 * 64 + byte)];
              }
            }
            ASSERT_EQ(got, want) << net.graph.source << " at image " << b << " row " << oy << " column " << ox << " map " << m;
          }
        }
      }
    }
  }
  EXPECT_GT(unfolded, 10);
  // Every variant the GPU test runs is a valid integer model (the CPU engine runs it).
  for (uint32_t seed = 0; seed < 36; ++seed) {
    const StemNet net = stem_net(seed, seed % 2 == 0);
    EXPECT_NO_THROW(Engine(net.graph, Backend::cpu).run({net.input})) << net.graph.source;
  }
  // Planned without unfolding, the stem reads one word per pixel.
  const StemNet net = stem_net(4, false);
  cuda::PlanOptions plain;
  plain.unfold_stem = false;
  EXPECT_FALSE(cuda::make_plan(net.graph, cuda::StorageMode::int8, plain).steps[0].input.unfold.on);
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

// One convolution of random shape fed by a 1x1 conv (so that 4-bit inputs are stored packed),
// with an optional residual from a third conv: every kernel family must match the CPU engine.
RandomNet random_conv(uint32_t seed) {
  NetBuilder b(seed * 7919 + 13, "");
  Graph& g = b.g;
  const bool big = seed % 8 == 7;  // more tiles than multiprocessors: the persistent loop
  const int64_t n = big ? 12 : b.uni(1, 5), c0 = b.pick({3, 16, 64});
  const int64_t h = big ? 28 : b.uni(3, 30), w = big ? 28 : b.uni(3, 30);
  // big: 74 pixel tiles x 2 map tiles of 256, more than the 132 multiprocessors of an H100.
  const int64_t cin = big ? 64 : b.pick({64, 128, 192, 256}), cout = big ? 512 : b.pick({8, 64, 72, 128, 200, 256, 320, 512});
  const int k = static_cast<int>(big ? b.pick({1, 3}) : b.pick({1, 1, 3, 3, 5, 7}));
  const int s = static_cast<int>(big ? 1 : b.pick({1, 1, 2}));
  const int d = k > 1 && seed % 5 == 0 ? 2 : 1;
  const int p = seed % 6 == 0 ? 0 : d * (k / 2);
  const bool four = seed % 2 == 0;  // 4-bit input and weights
  const int out_bits = static_cast<int>(b.pick({0, 4, 8}));
  const int res_kind = static_cast<int>(b.rng() % 3);  // 0 none, 1 narrow, 2 s32
  // Narrow residuals: signed 3 bits (packed s4 where the input is 4-bit), 4 or 7 bits (bytes).
  const int res_bits = four ? (seed % 3 == 0 ? 3 : 4) : 7;
  // Unsigned residuals after a ReLU (as between ResNet blocks) for 8-bit inputs (seed % 4 == 1)
  // and 4-bit ones (seed % 8 == 2); signed ones otherwise.
  const bool res_unsigned = seed % 4 == 1 || seed % 8 == 2;
  g.source = fmt::format("random_conv({}: {}x{}x{}x{} -> {} ch, {}x{} conv to {} maps, stride {}, pad {}, dilation {}, {}-bit, "
                         "out {} bits, residual {})",
                         seed, n, c0, h, w, cin, k, k, cout, s, p, d, four ? 4 : 8, out_bits,
                         res_kind == 0 ? "none"
                         : res_kind == 2 ? "s32"
                                         : fmt::format("{} bits{}", res_bits, res_unsigned ? " unsigned" : ""));
  g.inputs.push_back({"x", DType::u8, Shape{-1, c0, h, w}, {"N", "", "", ""}});
  const DType wt = four ? DType::s4 : DType::s8;
  const std::string a = b.conv("feed", "x", c0, cin, {.wt = DType::s8, .bits = four ? 4 : 8, .relu = true});
  const int64_t oh = (h + 2 * p - d * (k - 1) - 1) / s + 1, ow = (w + 2 * p - d * (k - 1) - 1) / s + 1;
  if (oh < 1 || ow < 1) return random_conv(seed + 1000);
  const NetBuilder::Conv shape{.k = k, .s = s, .d = d, .p = p, .wt = wt};
  std::string res;
  if (res_kind == 2) {
    NetBuilder::Conv side = shape;
    side.sgn = true;
    res = b.conv("side", a, cin, cout, side);  // s32, added as it is
  } else if (res_kind == 1) {
    // A narrow output, requantized to 31 bits inside the subject's epilogue.
    NetBuilder::Conv side = shape;
    side.bits = res_bits;
    side.sgn = !res_unsigned;
    side.relu = !side.sgn;
    res = b.requantize_31("side_rq", b.conv("side", a, cin, cout, side), cout);
  }
  const bool out_signed = out_bits == 8 && seed % 3 == 0;
  NetBuilder::Conv subject = shape;
  subject.bits = out_bits;
  subject.sgn = out_signed;
  subject.relu = seed % 4 != 3;
  subject.residual = res;
  b.conv("subject", a, cin, cout, subject);
  g.outputs.push_back({"subject", out_bits == 0 ? DType::s32 : (out_signed ? DType::s8 : DType::u8), std::nullopt, {}});
  Tensor in(DType::u8, {n, c0, h, w});
  for (int64_t i = 0; i < in.numel(); ++i) in.set(i, b.uni(0, 255));
  return {g, in};
}

TEST(CudaEngine, ConvKernelFamiliesMatchTheCpuEngineOnRandomShapes) {
  REQUIRE_CUDA();
  int wgmma_steps = 0, direct_steps = 0, two_block_steps = 0, resident_steps = 0, split_steps = 0;
  int permuted_steps = 0, plain_permuted_steps = 0;  // direct steps in the permuted order: with and without the variable
  // The direct epilogue in the plain map order, and in the permuted one (NIBBLE_WGMMA_PERMUTE=1,
  // set for the "wgmma-permuted" engines only).
  const char* permute_env = std::getenv("NIBBLE_WGMMA_PERMUTE");
  const std::string permute_saved = permute_env ? permute_env : "";
  for (uint32_t seed = 0; seed < 48; ++seed) {
    const RandomNet net = random_conv(seed);
    const auto want = Engine(net.graph, Backend::cpu).run({net.input});
    for (const char* family : {"wgmma", "wgmma-permuted", "mma"}) {
      const bool permuted_family = std::string(family) == "wgmma-permuted";
      for (bool int8 : {false, true}) {
        CudaEngineOptions o;
        o.int8_storage = int8;
        o.max_batch = 16;
        o.conv_kernels = permuted_family ? "wgmma" : family;
        setenv("NIBBLE_WGMMA_PERMUTE", permuted_family ? "1" : "0", 1);
        CudaEngine gpu(net.graph, o);
        if (permute_env) {
          setenv("NIBBLE_WGMMA_PERMUTE", permute_saved.c_str(), 1);
        } else {
          unsetenv("NIBBLE_WGMMA_PERMUTE");
        }
        const std::string what = fmt::format("{} {} {} ({})", net.graph.source, family, int8 ? "int8" : "native", gpu.conv_kernel_summary());
        wgmma_steps += gpu.conv_kernel_summary().find("wgmma") != std::string::npos;
        expect_identical(want, gpu.run({net.input}), what);
        for (const CudaLayerProfile& l : gpu.profile(net.input.shape()[0], 1)) {
          direct_steps += l.kernel.find("_direct") != std::string::npos;
          two_block_steps += l.kernel.find("_direct_x2") != std::string::npos;
          split_steps += l.kernel.find("_splitk") != std::string::npos;
          resident_steps += l.kernel.find("_x2_rw") != std::string::npos;
          const bool permuted = l.kernel.find("_direct") != std::string::npos && l.kernel.back() == 'p';
          (permuted_family ? permuted_steps : plain_permuted_steps) += permuted;
        }
      }
    }
  }
  EXPECT_EQ(plain_permuted_steps, 0);
  // On an sm_90 device the wgmma family must have run (elsewhere every step falls back to mma).
  // Unless an epilogue is forced for a measurement, the direct epilogue must have run too.
  // Small problems split their reduction over several blocks (split K) on the mma kernels.
  if (!std::getenv("NIBBLE_CUDA_SPLIT_K")) {
    EXPECT_GT(split_steps, 8);
  }
  if (cuda_device_description()->find("sm_90") != std::string::npos) {
    EXPECT_GT(wgmma_steps, 48);
    if (!std::getenv("NIBBLE_WGMMA_EPILOGUE")) {
      EXPECT_GT(direct_steps, 8);
      EXPECT_GT(permuted_steps, 8);
      if (!std::getenv("NIBBLE_WGMMA_CTAS")) {
        EXPECT_GT(two_block_steps, 2);
        if (!std::getenv("NIBBLE_WGMMA_RESIDENT")) {
          EXPECT_GT(resident_steps, 1);
        }
      }
    }
  }
  std::printf(
      "wgmma engines: %d, with the direct epilogue: %d (in the permuted map order: %d), two blocks per multiprocessor: %d "
      "(weights resident: %d), split K steps: %d\n",
      wgmma_steps, direct_steps, permuted_steps, two_block_steps, resident_steps, split_steps);
}

// Unfolded stems (u8, s8 and f32 inputs; 4-bit, 8-bit and s32 outputs; strides 2 x 1 and 2 x 2)
// through every kernel family, against the CPU engine; the unfolding itself against the plain
// input (NIBBLE_CUDA_UNFOLD_STEM=0 is not needed: the CPU engine never unfolds).
TEST(CudaEngine, UnfoldedStemsMatchTheCpuEngine) {
  REQUIRE_CUDA();
  int unfolded = 0;
  for (uint32_t seed = 0; seed < 36; ++seed) {
    const StemNet net = stem_net(seed, seed % 2 == 0);
    const auto want = Engine(net.graph, Backend::cpu).run({net.input});
    for (const char* family : {"wgmma", "mma", "auto"}) {
      for (bool int8 : {false, true}) {
        CudaEngineOptions o;
        o.int8_storage = int8;
        o.max_batch = 2;  // up to 3 images: two submissions
        o.conv_kernels = family;
        CudaEngine gpu(net.graph, o);
        const auto profile = gpu.profile(1, 1);
        unfolded += profile.front().kernel == "input_unfold_stem";
        expect_identical(want, gpu.run({net.input}),
                         fmt::format("{} {} {} ({}, stem kernel {})", net.graph.source, family, int8 ? "int8" : "native",
                                     gpu.conv_kernel_summary(), profile[1].kernel));
      }
    }
  }
  EXPECT_GT(unfolded, 60);
}

// A narrow residual (4 bits, stored packed, or 7 bits) folded through a Requantize into a conv
// of zero weights: the output is the requantized residual itself, so a wrong pack, unpack or
// requantization shows directly.
TEST(CudaEngine, NarrowResidualsMatchTheCpuEngine) {
  REQUIRE_CUDA();
  for (int bits : {3, 4, 7}) {
    for (int64_t maps : {64, 256}) {
      NetBuilder b(static_cast<uint32_t>(bits * 100 + maps), fmt::format("narrow residual {} bits {} maps", bits, maps));
      b.g.inputs.push_back({"x", DType::u8, Shape{-1, 64, 9, 7}, {"N", "", "", ""}});
      b.conv("feed", "x", 64, 64, {.wt = DType::s8, .bits = 4, .relu = true});
      b.requantize_31("side_rq", b.conv("side", "feed", 64, maps, {.bits = bits, .sgn = true}), maps);
      b.conv("probe", "feed", 64, maps, {.wmax = 0, .sgn = true, .residual = "side_rq"});
      b.g.outputs.push_back({"probe", DType::s32, std::nullopt, {}});
      Tensor in(DType::u8, {3, 64, 9, 7});
      for (int64_t i = 0; i < in.numel(); ++i) in.set(i, b.uni(0, 255));
      const auto want = Engine(b.g, Backend::cpu).run({in});
      for (const char* family : {"wgmma", "mma"}) {
        for (bool int8 : {false, true}) {
          CudaEngineOptions o;
          o.int8_storage = int8;
          o.conv_kernels = family;
          CudaEngine gpu(b.g, o);
          expect_identical(want, gpu.run({in}), fmt::format("{} {} {}", b.g.source, family, int8 ? "int8" : "native"));
        }
      }
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
  for (const char* family : {"auto", "wgmma", "mma"}) {
  for (bool int8 : {false, true}) {
    CudaEngineOptions o;
    o.int8_storage = int8;
    o.max_batch = 4;
    o.conv_kernels = family;
    CudaEngine gpu(g, o);
    const auto got = gpu.run({x});
    expect_identical(want, got, fmt::format("seed {} storage, {} kernels ({})", int8 ? "int8" : "native", family, gpu.conv_kernel_summary()));
    const Tensor ga = read_npy(seed_dir() + "/golden/image_a_logits_s32.npy");
    const Tensor gb = read_npy(seed_dir() + "/golden/image_b_logits_s32.npy");
    for (int64_t k = 0; k < 1000; ++k) {
      ASSERT_EQ(got[0].get(k), ga.get(k)) << "golden image a, class " << k;
      ASSERT_EQ(got[0].get(1000 + k), gb.get(k)) << "golden image b, class " << k;
    }
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
    const Graph fp32 = load_model(testing_util::source_dir() + "/models/" + model);
    quant::RangeObserver obs(fp32);
    obs.observe_ranges(x);
    obs.start_histograms();
    obs.observe_histograms(x);
    for (const char* precision : {"int8", "int4"}) {
      // Shortcut convs requantized (quantize's default) and handing over their s32 sums.
      for (const bool sums : {false, true}) {
        quant::QuantizeOptions opt;
        opt.precision = quant::parse_precision(precision, "test");
        opt.requantize_shortcuts = !sums;
        const auto table = obs.table(quant::CalibSpec::parse("percentile:99.99"), quant::activation_bits(opt.precision), {"test"});
        const auto q = quant::quantize_model(fp32, table, opt);
        Graph g = graph_from_model_dir(q.model);
        fuse_int_conv_epilogues(g);
        const auto want = Engine(g, Backend::cpu).run({x});
        CudaEngineOptions o;
        o.max_batch = 16;
        CudaEngine gpu(g, o);
        expect_identical(want, gpu.run({x}), fmt::format("{} {}{}", model, precision, sums ? " shortcut sums" : ""));
      }
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
    const auto sat = quant::saturation_thresholds(f, shift, r.lo, r.hi);
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

// sat_top: clamping acc to it and requantizing without a final clamp must give the clamped
// requantization for every acc >= 0, and it must be refused where the requantization skips hi.
TEST(CudaPlan, TopThresholdsReachTheTopExactly) {
  std::mt19937 rng(12);
  int filled = 0, refused = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const int shift = static_cast<int>(rng() % 20), bits = 1 + static_cast<int>(rng() % 8);
    const auto r = quant::output_range(bits, false);
    std::vector<uint16_t> f(4);
    // Mostly scales below one (every value reached), some above (values skipped).
    for (auto& v : f) v = static_cast<uint16_t>(trial % 4 == 0 ? rng() % 65536 : rng() % ((1u << shift) + 1));
    const auto sat = quant::saturation_thresholds(f, shift, r.lo, r.hi);
    if (sat.empty()) continue;
    const auto top = cuda::top_thresholds(f, shift, r.hi, sat);
    const uint64_t round = shift ? uint64_t{1} << (shift - 1) : 0;
    auto unclamped = [&](uint64_t x, uint16_t fc) { return static_cast<int64_t>((x * fc + round) >> shift); };
    if (top.empty()) {
      ++refused;
      bool skips = false;  // some map must have no acc that gives hi
      for (size_t c = 0; c < f.size(); ++c) skips |= f[c] != 0 && unclamped(sat[c] - 1, f[c]) != r.hi;
      EXPECT_TRUE(skips);
      continue;
    }
    ++filled;
    for (size_t c = 0; c < f.size(); ++c) {
      ASSERT_LE(top[c], sat[c]);
      for (int64_t x : {int64_t{0}, int64_t{1}, int64_t{top[c]} - 1, int64_t{top[c]}, int64_t{top[c]} + 1,
                        int64_t{sat[c]}, int64_t{2147483647}}) {
        if (x < 0) continue;
        const uint64_t clamped = std::min<uint64_t>(static_cast<uint64_t>(x), top[c]);
        EXPECT_EQ(unclamped(clamped, f[c]), quant::requantize(x, f[c], shift, r)) << "acc " << x << " factor " << f[c];
      }
    }
  }
  EXPECT_GT(filled, 100);
  EXPECT_GT(refused, 5);
}

// res_in_range: true exactly when both ends of the residual's values requantize inside the range.
TEST(CudaPlan, ResidualRequantizationRange) {
  const std::vector<uint16_t> f = {100, 5000};
  // 255 x 5000 / 2 = 637500 (shift 1): inside 31 bits, outside 19.
  EXPECT_TRUE(cuda::requantization_in_range(f, 1, 0, 255, -(int64_t{1} << 30), int64_t{1} << 30));
  EXPECT_FALSE(cuda::requantization_in_range(f, 1, 0, 255, -(int64_t{1} << 19), (int64_t{1} << 19) - 1));
  EXPECT_TRUE(cuda::requantization_in_range(f, 1, -127, 127, -637500, 637500));
  EXPECT_FALSE(cuda::requantization_in_range(f, 1, -127, 127, -317499, 637500));  // -127 x 5000 / 2 = -317500
  EXPECT_TRUE(cuda::requantization_in_range(f, 1, -127, 127, -317500, 317500));
}

// ---- FP8 (w4a8-fp8) convolutions ----

// input f32 -> QuantizeFloat (e4m3) -> nibble:Fp8Conv -> f32 output, of random shape. Weights:
// s4 levels, s8 levels that e4m3 holds exactly (|l| <= 16), or s4 levels with group scales.
struct Fp8Net {
  Graph graph;
  Tensor input;
  int64_t c = 0, k = 0, group_size = 0;
};

Fp8Net random_fp8_conv(uint32_t seed) {
  NetBuilder b(seed * 104729 + 7, "");
  Graph& g = b.g;
  const int64_t n = b.uni(1, 3), c = b.pick({3, 16, 64, 96, 130}), h = b.uni(4, 20), w = b.uni(4, 20);
  const int64_t m = b.pick({8, 64, 100, 200, 256});
  const int k = static_cast<int>(b.pick({1, 3, 5})), s = static_cast<int>(b.pick({1, 1, 2}));
  const int p = k / 2;
  const int kind = static_cast<int>(seed % 3);  // 0: s4 levels, 1: s8 levels up to 16, 2: s4 with group scales
  const int64_t group_size = kind == 2 ? b.pick({16, 32, 64}) : 0;
  g.source = fmt::format("random_fp8_conv({}: {}x{}x{}x{} -> {} maps, {}x{} stride {}, {})", seed, n, c, h, w, m, k, k, s,
                         kind == 0 ? "s4" : (kind == 1 ? "s8 levels <= 16" : fmt::format("s4, groups of {}", group_size)));
  g.inputs.push_back({"x", DType::f32, Shape{-1, c, h, w}, {"N", "", "", ""}});
  Tensor in_scale(DType::f32, {1});
  in_scale.set(0, 1.0 / 64);
  g.initializers["in_scale"] = in_scale;
  Node q{"nibble:QuantizeFloat", "quant_in", {"x", "in_scale"}, {"xq"}, {}};
  q.attrs["e4m3"] = int64_t{1};
  g.nodes.push_back(q);
  const DType wt = kind == 1 ? DType::s8 : DType::s4;
  const int wmax = kind == 1 ? 16 : 7;
  Node conv{"nibble:Fp8Conv", "conv", {"xq", b.tensor("conv.w", wt, {m, c, k, k}, -wmax, wmax), "conv.b", "conv.s"}, {"y"}, {}};
  Tensor bias(DType::f32, {m}), scale(DType::f32, {m});
  for (int64_t i = 0; i < m; ++i) {
    bias.set(i, std::uniform_real_distribution<double>(-1.0, 1.0)(b.rng));
    scale.set(i, std::ldexp(1.0 + 0.01 * static_cast<double>(i % 50), -8));
  }
  g.initializers["conv.b"] = bias;
  g.initializers["conv.s"] = scale;
  if (group_size > 0) {
    const int64_t count = (c * k * k + group_size - 1) / group_size;
    Tensor gs(DType::f32, {m, count});
    for (int64_t i = 0; i < gs.numel(); ++i) gs.set(i, std::uniform_real_distribution<double>(0.05, 8.0)(b.rng));
    g.initializers["conv.g"] = gs;
    conv.inputs.push_back("conv.g");
    conv.attrs["group_size"] = group_size;
  }
  conv.attrs["kernel_shape"] = std::vector<int64_t>{k, k};
  conv.attrs["strides"] = std::vector<int64_t>{s, s};
  conv.attrs["pads"] = std::vector<int64_t>{p, p, p, p};
  conv.attrs["dilations"] = std::vector<int64_t>{1, 1};
  conv.attrs["relu"] = int64_t{seed % 2};
  g.nodes.push_back(conv);
  for (Node& node : g.nodes) node.opset = 1;
  g.outputs.push_back({"y", DType::f32, std::nullopt, {}});
  Tensor in(DType::f32, {n, c, h, w});
  for (int64_t i = 0; i < in.numel(); ++i) in.set(i, std::uniform_real_distribution<double>(-1.0, 2.0)(b.rng));
  return {g, in, c, k, group_size};
}

// Planning: the FP8 input is e4m3 in rows of whole K tiles, the convolution's weights are the
// e4m3 codes of its levels (times the group scales), its output f32; levels e4m3 cannot hold
// are refused by name.
TEST(CudaPlan, Fp8ConvolutionsTakeE4m3CodesAndRows) {
  for (uint32_t seed = 0; seed < 3; ++seed) {
    const Fp8Net net = random_fp8_conv(seed);
    const cuda::Plan plan = cuda::make_plan(net.graph, cuda::StorageMode::native);
    const cuda::Value& x = plan.values[static_cast<size_t>(plan.input_value)];
    EXPECT_EQ(x.storage, cuda::Storage::e4m3);
    EXPECT_EQ(x.row % 64, 0);
    EXPECT_GE(x.row, net.c);
    ASSERT_EQ(plan.steps.size(), 2u);
    const cuda::Step& st = plan.steps[1];
    ASSERT_EQ(st.kind, cuda::StepKind::conv);
    EXPECT_TRUE(st.conv.fp8);
    EXPECT_EQ(st.conv.load, cuda::ConvLoad::vec);
    EXPECT_EQ(plan.values[static_cast<size_t>(st.y)].storage, cuda::Storage::f32);
    const Tensor& w = net.graph.initializers.at("conv.w");
    const Tensor* gs = net.group_size ? &net.graph.initializers.at("conv.g") : nullptr;
    const int64_t per = w.numel() / w.dim(0), count = gs ? gs->dim(1) : 1;
    // Weight (m, ch, a, b) sits at m x k_pad + (a x kw + b) x row + ch.
    for (int64_t i = 0; i < w.numel(); i += 7) {
      const int64_t m = i / per, ch = (i % per) / (net.k * net.k), a = (i % (net.k * net.k)) / net.k, bb = i % net.k;
      const float level = static_cast<float>(w.get(i));
      const float v = gs ? level * static_cast<float>(gs->get(m * count + (i % per) / net.group_size)) : level;
      const size_t at = static_cast<size_t>(m * st.conv.k_pad + (a * net.k + bb) * x.row + ch);
      ASSERT_EQ(static_cast<uint8_t>(st.conv.weights[at]), f32_to_e4m3_bits(v)) << net.graph.source << " weight " << i;
    }
    EXPECT_EQ(st.conv.fscale.size(), static_cast<size_t>(st.conv.m_pad));
    // The reference runs the same graph (the GPU test's peer).
    const Tensor y = Engine(net.graph, Backend::cpu).run({net.input})[0];
    const cuda::Value& yv = plan.values[static_cast<size_t>(st.y)];
    EXPECT_EQ(y.shape(), (Shape{net.input.dim(0), yv.c, yv.h, yv.w})) << net.graph.source;
  }
  Fp8Net net = random_fp8_conv(1);  // s8 levels
  net.graph.initializers.at("conv.w").set(0, 17);
  const std::string err = error_of([&] { cuda::make_plan(net.graph, cuda::StorageMode::native); });
  EXPECT_NE(err.find("conv"), std::string::npos) << err;
  EXPECT_NE(err.find("e4m3"), std::string::npos) << err;
}

// The FP8 tensor cores multiply e4m3 values exactly but keep only about 14 significant bits of
// each sum they add into the f32 accumulators (NVIDIA documents no order or rounding), so the
// GPU's FP8 convolution is not bit-exact with the reference's exact sum. The rule checked here:
// each accumulation step (one k32 MMA) may err by 2^-12 of the largest partial sum it can reach,
// so |GPU - reference| <= |scale| x (K / 32 + 1) x 2^-12 x sum |x w| + 2^-20 |reference|, where
// sum |x w| is the output's sum of product magnitudes. A wrong tap, channel or weight breaks it
// by orders of magnitude.
TEST(CudaEngine, Fp8ConvolutionsMatchTheReferenceWithinTheAccumulationBound) {
  REQUIRE_CUDA();
  double worst = 0.0;
  for (uint32_t seed = 0; seed < 12; ++seed) {
    const Fp8Net net = random_fp8_conv(seed);
    const Tensor want = Engine(net.graph, Backend::cpu).run({net.input})[0];
    CudaEngineOptions o;
    o.max_batch = 4;
    const Tensor got = CudaEngine(net.graph, o).run({net.input})[0];
    ASSERT_EQ(got.shape(), want.shape()) << net.graph.source;
    // The magnitudes: |x| as e4m3 after the input's quantization, |w| as the layer computes with.
    const Graph& g = net.graph;
    const Tensor& w = g.initializers.at("conv.w");
    const Tensor* gs = net.group_size ? &g.initializers.at("conv.g") : nullptr;
    const Tensor& scale = g.initializers.at("conv.s");
    const Node& conv = g.nodes[1];
    const int64_t n = net.input.dim(0), c = net.c, h = net.input.dim(2), wd = net.input.dim(3), k = net.k;
    const int64_t m = w.dim(0), oh = want.dim(2), ow = want.dim(3), per = c * k * k;
    const int64_t st = conv.attr_ints("strides", {1, 1})[0], p = conv.attr_ints("pads", {0, 0, 0, 0})[0];
    std::vector<double> ax(static_cast<size_t>(net.input.numel())), aw(static_cast<size_t>(w.numel()));
    for (int64_t i = 0; i < net.input.numel(); ++i) {
      ax[static_cast<size_t>(i)] = std::abs(e4m3_bits_to_f32(f32_to_e4m3_bits(static_cast<float>(net.input.get(i) * 64.0))));
    }
    for (int64_t i = 0; i < w.numel(); ++i) {
      const float l = static_cast<float>(w.get(i));
      const float v = gs ? l * static_cast<float>(gs->get((i / per) * gs->dim(1) + (i % per) / net.group_size)) : l;
      aw[static_cast<size_t>(i)] = std::abs(gs ? e4m3_bits_to_f32(f32_to_e4m3_bits(v)) : v);
    }
    const double steps = static_cast<double>((per + 31) / 32 + 1);
    int64_t bad = 0;
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t mm = 0; mm < m; ++mm) {
        for (int64_t y = 0; y < oh; ++y) {
          for (int64_t xx = 0; xx < ow; ++xx) {
            double mag = 0.0;
            for (int64_t ch = 0; ch < c; ++ch) {
              for (int64_t a = 0; a < k; ++a) {
                for (int64_t bb = 0; bb < k; ++bb) {
                  const int64_t iy = y * st - p + a, ix = xx * st - p + bb;
                  if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                  mag += ax[static_cast<size_t>(((b * c + ch) * h + iy) * wd + ix)] *
                         aw[static_cast<size_t>(((mm * c + ch) * k + a) * k + bb)];
                }
              }
            }
            const int64_t at = ((b * m + mm) * oh + y) * ow + xx;
            const double ref = want.get(at), diff = std::abs(got.get(at) - ref);
            const double bound = std::abs(scale.get(mm)) * steps * std::ldexp(mag, -12) + std::ldexp(std::abs(ref), -20) + 1e-30;
            worst = std::max(worst, diff / bound);
            if (diff > bound && bad++ < 3) {
              ADD_FAILURE() << net.graph.source << ": output " << at << " got " << got.get(at) << ", want " << ref
                            << " (bound " << bound << ")";
            }
          }
        }
      }
    }
    EXPECT_EQ(bad, 0) << net.graph.source;
  }
  RecordProperty("fp8_worst_error_over_bound", std::to_string(worst));
  std::printf("FP8 convolutions: the largest error is %.3g of the bound\n", worst);
}

// A Fashion-MNIST network quantized to w4a8-fp8 (the seed-shaped graph: an INT8 stem, FP8
// blocks whose Adds read e4m3 shortcuts, an f32 average pool, an INT8 classifier).
Graph fp8_network(const char* model, const Tensor& x) {
  const Graph fp32 = load_model(testing_util::source_dir() + "/models/" + model);
  quant::RangeObserver obs(fp32);
  obs.observe_ranges(x);
  quant::QuantizeOptions opt;
  opt.precision = quant::Precision::w4a8_fp8;
  const auto table = obs.table(quant::CalibSpec::parse("max"), quant::activation_bits(opt.precision), {"test"});
  Graph g = graph_from_model_dir(quant::quantize_model(fp32, table, opt).model);
  fuse_int_conv_epilogues(g);
  return g;
}

Tensor fmnist_like(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Tensor x(DType::f32, {n, 1, 28, 28});
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::uniform_real_distribution<float>(0, 1)(rng);
  return x;
}

TEST(CudaPlan, Fp8NetworksKeepOneByteBetweenLayers) {
  const Tensor x = fmnist_like(8, 5);
  for (const char* model : {"fmnist_resnet.onnx", "fmnist_resnet50.onnx"}) {
    const Graph g = fp8_network(model, x);
    int fp8_convs = 0, adds = 0;
    for (const Node& n : g.nodes) {
      fp8_convs += n.op_type == "nibble:Fp8Conv";
      adds += n.op_type == "Add";
    }
    ASSERT_GT(adds, 0) << model;
    const cuda::Plan plan = cuda::make_plan(g, cuda::StorageMode::native);
    int convs = 0, residuals = 0, luts = 0, means = 0, f32_values = 0;
    for (const cuda::Step& st : plan.steps) {
      const cuda::Value& y = plan.values[static_cast<size_t>(st.y)];
      if (st.kind == cuda::StepKind::conv && st.conv.fp8) {
        ++convs;
        residuals += st.conv.res >= 0;
        if (st.conv.res >= 0) {
          EXPECT_EQ(plan.values[static_cast<size_t>(st.conv.res)].storage, cuda::Storage::e4m3) << st.name;
          EXPECT_GT(st.conv.fres_scale, 0.0f) << st.name;
        }
        if (y.storage == cuda::Storage::e4m3) {
          EXPECT_GT(st.conv.fout_scale, 0.0f) << st.name;
          EXPECT_EQ(y.row % 64, 0) << st.name;
        }
      }
      if (st.kind == cuda::StepKind::lut) {
        ++luts;
        EXPECT_EQ(y.storage, cuda::Storage::e4m3);
        ASSERT_EQ(st.lut.size(), 256u);
        EXPECT_EQ(st.lut[0], 0) << "zero stays zero";
      }
      means += st.kind == cuda::StepKind::mean_quantize;
      f32_values += y.storage == cuda::Storage::f32;
    }
    // Every FP8 conv is one step with its Add, Relu and QuantizeFloat; only the last block's
    // output (read by the average pool) and the logits stay f32.
    EXPECT_EQ(convs, fp8_convs) << model;
    EXPECT_EQ(residuals, adds) << model;
    EXPECT_EQ(luts, 1) << model;
    EXPECT_EQ(means, 1) << model;
    EXPECT_EQ(f32_values, 2) << model;
  }
}

// The whole FP8 network on the GPU against the CPU engine. Not bit-exact (each FP8 convolution's
// sum is within CudaEngine.Fp8ConvolutionsMatchTheReferenceWithinTheAccumulationBound's bound,
// and a sum on the other side of an e4m3 rounding boundary moves the next layer's input by one
// code), so the logits are compared as a whole: cosine and top-1 agreement.
TEST(CudaEngine, Fp8NetworksTrackTheCpuEngine) {
  REQUIRE_CUDA();
  const Tensor x = fmnist_like(64, 6);
  for (const char* model : {"fmnist_resnet.onnx", "fmnist_resnet50.onnx"}) {
    const Graph g = fp8_network(model, fmnist_like(16, 7));
    const Tensor want = Engine(g, Backend::cpu).run({x})[0];
    CudaEngineOptions o;
    o.max_batch = 32;
    const Tensor got = CudaEngine(g, o).run({x})[0];
    ASSERT_EQ(got.shape(), want.shape()) << model;
    double dot = 0, nw = 0, ng = 0;
    int agree = 0;
    const int64_t k = want.dim(1);
    for (int64_t i = 0; i < want.numel(); ++i) {
      dot += want.get(i) * got.get(i);
      nw += want.get(i) * want.get(i);
      ng += got.get(i) * got.get(i);
    }
    for (int64_t n = 0; n < want.dim(0); ++n) {
      int64_t a = 0, b = 0;
      for (int64_t j = 1; j < k; ++j) {
        if (want.get(n * k + j) > want.get(n * k + a)) a = j;
        if (got.get(n * k + j) > got.get(n * k + b)) b = j;
      }
      agree += a == b;
    }
    const double cosine = dot / std::sqrt(nw * ng);
    std::printf("%s: FP8 network cosine %.6f, top-1 agreement %d / %lld\n", model, cosine, agree,
                static_cast<long long>(want.dim(0)));
    EXPECT_GT(cosine, 0.999) << model;
    EXPECT_GE(agree, 62) << model;
  }
}

}  // namespace
}  // namespace nibble
