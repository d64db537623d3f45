// Parity of the vectorized CPU kernels with the reference kernels: outputs must be byte-identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backends/cpu/kernels.h"
#include "backends/ref/kernels.h"
#include "nibble/engine.h"
#include "nibble/model_loader.h"
#include "nibble/npy.h"
#include "quant/requant.h"
#include "test_util.h"

namespace nibble {
namespace {

// The instruction sets with kernels on this processor; every one is checked, not only the best.
std::vector<std::string> vector_isas() {
  std::vector<std::string> isas;
  for (const auto& isa : cpu::available_isas()) {
    if (isa != "scalar") isas.push_back(isa);
  }
  return isas;
}

#define SKIP_WITHOUT_CPU_KERNELS()                                                                    \
  do {                                                                                                \
    if (std::string(cpu::isa_name()) == "scalar") GTEST_SKIP() << "no CPU kernels on this processor"; \
  } while (0)

// Where the two outputs first differ, for a readable failure.
::testing::AssertionResult identical(const Tensor& want, const Tensor& got) {
  if (want.dtype() != got.dtype()) {
    return ::testing::AssertionFailure()
           << "dtype " << dtype_name(got.dtype()) << " != " << dtype_name(want.dtype());
  }
  if (want.shape() != got.shape()) {
    return ::testing::AssertionFailure()
           << "shape " << shape_str(got.shape()) << " != " << shape_str(want.shape());
  }
  if (std::memcmp(want.bytes(), got.bytes(), want.nbytes()) == 0) return ::testing::AssertionSuccess();
  int64_t differing = 0, first = -1;
  for (int64_t i = 0; i < want.numel(); ++i) {
    if (want.get(i) != got.get(i)) {
      if (first < 0) first = i;
      ++differing;
    }
  }
  return ::testing::AssertionFailure() << differing << " of " << want.numel() << " elements differ; first at "
                                       << first << ": got " << got.get(first) << ", want " << want.get(first);
}

// A 2-D convolution node of `op_type` with its window attributes (pads: top, left, bottom, right).
Node conv_node(const std::string& op_type, std::vector<int64_t> kernel, std::vector<int64_t> strides,
               std::vector<int64_t> pads, int64_t dilation) {
  Node node;
  node.op_type = op_type;
  node.name = "conv";
  node.outputs = {"y"};
  node.attrs["kernel_shape"] = std::move(kernel);
  node.attrs["strides"] = std::move(strides);
  node.attrs["pads"] = std::move(pads);
  node.attrs["dilations"] = std::vector<int64_t>{dilation, dilation};
  return node;
}

Tensor run_kernel(ref::KernelFn fn, const Node& n, const ref::Inputs& in) {
  ref::Outputs out(1);
  fn(n, in, out);
  return out[0];
}

// Uniform integers in [lo, hi] written with Tensor::set, so s4 packs like any model file.
Tensor random_tensor(DType t, Shape shape, int64_t lo, int64_t hi, std::mt19937& rng) {
  Tensor x(t, std::move(shape));
  std::uniform_int_distribution<int64_t> d(lo, hi);
  for (int64_t i = 0; i < x.numel(); ++i) x.set(i, static_cast<double>(d(rng)));
  return x;
}

// The activation kinds of the seed model and the edges of the u8 x s8 saturation bound.
enum class Act { u4, u7, u8_full, s8 };
const char* act_name(Act a) {
  switch (a) {
    case Act::u4:
      return "u4";
    case Act::u7:
      return "u7";
    case Act::u8_full:
      return "u8(0..255)";
    default:
      return "s8";
  }
}
Tensor random_activations(Act a, Shape shape, std::mt19937& rng) {
  switch (a) {
    case Act::u4:
      return random_tensor(DType::u8, std::move(shape), 0, 15, rng);
    case Act::u7:
      return random_tensor(DType::u8, std::move(shape), 0, 127, rng);
    case Act::u8_full:
      return random_tensor(DType::u8, std::move(shape), 0, 255, rng);
    default:
      return random_tensor(DType::s8, std::move(shape), -127, 127, rng);
  }
}

struct Requant {
  int shift;
  int bits;
  bool is_signed;
};

struct ConvCase {
  int64_t n = 1, c = 8, h = 8, w = 8, m = 8;
  int64_t kh = 3, kw = 3, stride_h = 1, stride_w = 1;
  int64_t pad_t = 1, pad_l = 1, pad_b = 1, pad_r = 1;
  int64_t dilation = 1, group = 1;
  DType wtype = DType::s4;
  Act act = Act::u4;
  bool fused = true;
  bool residual = false;
  // The residual of fold_residual_requantize (inputs 5 and 6): u8 or s8 values requantized on read.
  std::optional<Requant> folded_residual = std::nullopt;
  bool folded_signed_source = false;
  bool relu = false;
  std::optional<Requant> requant = std::nullopt;

  std::string str() const {
    std::string s = "x " + std::to_string(n) + "x" + std::to_string(c) + "x" + std::to_string(h) + "x" +
                    std::to_string(w) + " " + act_name(act) + ", W " + std::to_string(m) + "x" +
                    std::to_string(c / group) + "x" + std::to_string(kh) + "x" + std::to_string(kw) + " " +
                    std::string(dtype_name(wtype)) + ", stride " + std::to_string(stride_h) + "," +
                    std::to_string(stride_w) + ", pads " + std::to_string(pad_t) + "," +
                    std::to_string(pad_l) + "," + std::to_string(pad_b) + "," + std::to_string(pad_r) +
                    ", dilation " + std::to_string(dilation) + ", group " + std::to_string(group);
    if (!fused) return s + ", IntConv";
    s += residual ? ", residual" : "";
    if (folded_residual) {
      s += std::string(", folded residual from ") + (folded_signed_source ? "s8" : "u8") + " shift " +
           std::to_string(folded_residual->shift) + " bits " + std::to_string(folded_residual->bits) +
           (folded_residual->is_signed ? " signed" : " unsigned");
    }
    s += relu ? ", relu" : "";
    if (requant) {
      s += ", requant shift " + std::to_string(requant->shift) + " bits " + std::to_string(requant->bits) +
           (requant->is_signed ? " signed" : " unsigned");
    }
    return s;
  }
};

// Builds the node and inputs of `cc`, runs the reference and every vector ISA, and compares.
void check_conv(const ConvCase& cc, uint32_t seed) {
  std::mt19937 rng(seed);
  const Tensor x = random_activations(cc.act, {cc.n, cc.c, cc.h, cc.w}, rng);
  const int64_t w_lo = cc.wtype == DType::s4 ? -8 : -128, w_hi = cc.wtype == DType::s4 ? 7 : 127;
  const Tensor w = random_tensor(cc.wtype, {cc.m, cc.c / cc.group, cc.kh, cc.kw}, w_lo, w_hi, rng);
  const Tensor bias = random_tensor(rng() % 2 ? DType::s16 : DType::s32, {cc.m}, -30000, 30000, rng);
  Node node = conv_node(cc.fused ? "nibble:IntConvFused" : "nibble:IntConv", {cc.kh, cc.kw}, {cc.stride_h, cc.stride_w},
                        {cc.pad_t, cc.pad_l, cc.pad_b, cc.pad_r}, cc.dilation);
  node.attrs["group"] = cc.group;
  const int64_t oh = (cc.h + cc.pad_t + cc.pad_b - cc.dilation * (cc.kh - 1) - 1) / cc.stride_h + 1;
  const int64_t ow = (cc.w + cc.pad_l + cc.pad_r - cc.dilation * (cc.kw - 1) - 1) / cc.stride_w + 1;
  Tensor residual, factor, res_src, res_factor;
  ref::Inputs in{&x, &w, &bias};
  if (cc.fused) {
    node.attrs["relu"] = int64_t{cc.relu};
    if (cc.residual) residual = random_tensor(DType::s32, {cc.n, cc.m, oh, ow}, -(1 << 20), 1 << 20, rng);
    if (cc.requant) {
      node.attrs["shift"] = int64_t{cc.requant->shift};
      node.attrs["bits"] = int64_t{cc.requant->bits};
      node.attrs["signed"] = int64_t{cc.requant->is_signed};
      factor = random_tensor(DType::u16, rng() % 2 ? Shape{1, cc.m, 1, 1} : Shape{cc.m}, 0, 65535, rng);
      if (rng() % 4 != 0) {
        // Scale each map's factor so that its outputs spread over the clamp range instead of
        // saturating: a wrong sum must change the output, not vanish into the clamp.
        Node plain = node;
        plain.op_type = "nibble:IntConv";
        const Tensor acc = run_kernel(ref::int_conv, plain, {&x, &w, &bias});
        const int64_t plane = oh * ow;
        const double top = std::ldexp(static_cast<double>(quant::output_range(cc.requant->bits, true).hi),
                                      cc.requant->shift);
        for (int64_t m = 0; m < cc.m; ++m) {
          double max_abs = 1;
          for (int64_t n = 0; n < cc.n; ++n) {
            for (int64_t i = 0; i < plane; ++i)
              max_abs = std::max(max_abs, std::abs(acc.get((n * cc.m + m) * plane + i)));
          }
          const double f = top / max_abs * std::uniform_real_distribution<double>(0.5, 2.0)(rng);
          factor.set(m, std::clamp(std::floor(f), 1.0, 65535.0));
        }
      }
    }
    in.push_back(cc.residual ? &residual : nullptr);
    if (cc.requant || cc.folded_residual) in.push_back(cc.requant ? &factor : nullptr);
    if (cc.folded_residual) {
      res_src = cc.folded_signed_source ? random_tensor(DType::s8, {cc.n, cc.m, oh, ow}, -127, 127, rng)
                                        : random_tensor(DType::u8, {cc.n, cc.m, oh, ow}, 0, 255, rng);
      // Factors of every size: small ones keep the 32-bit requantization, large ones need 64 bits.
      res_factor = random_tensor(DType::u16, {cc.m}, 0, rng() % 2 ? 65535 : 300, rng);
      node.attrs["res_shift"] = int64_t{cc.folded_residual->shift};
      node.attrs["res_bits"] = int64_t{cc.folded_residual->bits};
      node.attrs["res_signed"] = int64_t{cc.folded_residual->is_signed};
      in.push_back(&res_src);
      in.push_back(&res_factor);
    }
  }
  const Tensor want = run_kernel(cc.fused ? ref::int_conv_fused : ref::int_conv, node, in);
  for (const auto& isa : vector_isas()) {
    const ref::KernelFn fn = cpu::find_kernel(isa, node.op_type);
    ASSERT_NE(fn, nullptr) << isa << " has no " << node.op_type;
    EXPECT_TRUE(identical(want, run_kernel(fn, node, in)))
        << isa << ": " << cc.str() << " (seed " << seed << ")";
  }
}

// FP8 convolutions: random e4m3 activations (every exponent, subnormals, +-448) and s4/s8
// weights, plain or widened to FP8 through group scales; strides, padding, dilation, ReLU.
TEST(CpuBackend, Fp8ConvMatchesTheReference) {
  SKIP_WITHOUT_CPU_KERNELS();
  struct Case {
    int64_t n, c, h, w, m, k, stride, pad, dil, group_size;
    DType wt;
    bool relu;
  };
  const Case cases[] = {
      {2, 3, 9, 11, 5, 3, 1, 1, 1, 0, DType::s4, false},   {1, 16, 8, 8, 13, 3, 2, 1, 1, 32, DType::s4, true},
      {1, 64, 7, 7, 8, 1, 1, 0, 1, 32, DType::s4, false},  {3, 8, 10, 6, 4, 3, 1, 2, 2, 7, DType::s4, true},
      {1, 128, 5, 5, 17, 3, 1, 1, 1, 0, DType::s8, false}, {1, 512, 4, 4, 6, 3, 1, 1, 1, 128, DType::s4, false},
      // Images wide enough for runs of pixels whose windows lie inside (no bounds checks).
      {1, 8, 30, 30, 5, 3, 1, 1, 1, 0, DType::s4, true},   {2, 4, 33, 29, 6, 3, 2, 1, 1, 16, DType::s8, false},
  };
  std::mt19937 rng(7);
  for (const Case& cc : cases) {
    Tensor x(DType::e4m3, {cc.n, cc.c, cc.h, cc.w});
    std::uniform_int_distribution<int> byte(0, 255);
    for (int64_t i = 0; i < x.numel(); ++i) {
      uint8_t b = static_cast<uint8_t>(byte(rng));
      if ((b & 0x7f) == 0x7f) b = 0x7e;  // NaN is not an activation: take 448 instead
      x.set(i, e4m3_bits_to_f32(b));
    }
    x.set(0, 448.0);
    x.set(1, -448.0);
    Tensor w(cc.wt, {cc.m, cc.c, cc.k, cc.k});
    const int hi = cc.wt == DType::s4 ? 7 : 127;
    std::uniform_int_distribution<int> level(-hi, hi);
    for (int64_t i = 0; i < w.numel(); ++i) w.set(i, level(rng));
    w.set(0, -hi);
    Tensor bias(DType::f32, {cc.m}), scale(DType::f32, {cc.m});
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int64_t i = 0; i < cc.m; ++i) {
      bias.set(i, u(rng));
      scale.set(i, std::ldexp(1.0f + u(rng) * 0.5f, -12));
    }
    Node node = conv_node("nibble:Fp8Conv", {cc.k, cc.k}, {cc.stride, cc.stride}, {cc.pad, cc.pad, cc.pad, cc.pad}, cc.dil);
    if (cc.relu) node.attrs["relu"] = int64_t{1};
    ref::Inputs in{&x, &w, &bias, &scale};
    Tensor groups;
    if (cc.group_size > 0) {
      const int64_t per = cc.c * cc.k * cc.k, count = (per + cc.group_size - 1) / cc.group_size;
      groups = Tensor(DType::f32, {cc.m, count});
      std::uniform_real_distribution<float> g(0.01f, 64.0f);  // l x g spans subnormal to saturated e4m3
      for (int64_t i = 0; i < groups.numel(); ++i) groups.set(i, g(rng));
      node.attrs["group_size"] = cc.group_size;
      in.push_back(&groups);
    }
    const Tensor want = run_kernel(ref::fp8_conv, node, in);
    for (const auto& isa : vector_isas()) {
      const ref::KernelFn fn = cpu::find_kernel(isa, node.op_type);
      ASSERT_NE(fn, nullptr) << isa << " has no " << node.op_type;
      EXPECT_TRUE(identical(want, run_kernel(fn, node, in))) << isa << ": c " << cc.c << " k " << cc.k << " groups " << cc.group_size;
    }
  }
}

// QuantizeFloat to e4m3: random f32 bit patterns of every exponent, the values around each
// rounding boundary of the e4m3 grid (ties included), zeros, subnormals, saturation,
// infinities and NaN, with one scale and with per-channel scales, lengths not a multiple of 8.
TEST(CpuBackend, QuantizeFloatToE4m3MatchesTheReference) {
  SKIP_WITHOUT_CPU_KERNELS();
  std::vector<float> values = {0.0f, -0.0f, 448.0f, -448.0f, 464.0f, 464.00003f, 480.0f, 1e30f, -1e30f,
                               std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min(),
                               std::ldexp(1.0f, -6), std::ldexp(1.0f, -10), std::ldexp(3.0f, -11)};
  // Each e4m3 value, the midpoints to its neighbours, and one f32 step either side of those.
  for (int b = 0; b < 0x7F; ++b) {
    const float v = e4m3_bits_to_f32(static_cast<uint8_t>(b)), next = e4m3_bits_to_f32(static_cast<uint8_t>(b + 1));
    const float mid = b + 1 < 0x7F ? (v + next) / 2.0f : v + std::ldexp(1.0f, 4);
    for (float x : {v, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      values.push_back(x);
      values.push_back(-x);
    }
  }
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits;
  while (values.size() % 8 != 5 || values.size() < 20000) values.push_back(std::bit_cast<float>(bits(rng)));
  const int64_t n = static_cast<int64_t>(values.size());
  Tensor x(DType::f32, {1, n});
  std::memcpy(x.bytes(), values.data(), values.size() * sizeof(float));
  Node node;
  node.op_type = "nibble:QuantizeFloat";
  node.name = "q";
  node.attrs["e4m3"] = int64_t{1};
  for (float s : {1.0f, 0.0137f, 3.5f}) {
    Tensor scale(DType::f32, {1});
    scale.set(0, s);
    const ref::Inputs in{&x, &scale};
    const Tensor want = run_kernel(ref::quantize_float, node, in);
    for (const auto& isa : vector_isas()) {
      const ref::KernelFn fn = cpu::find_kernel(isa, node.op_type);
      ASSERT_NE(fn, nullptr) << isa;
      EXPECT_TRUE(identical(want, run_kernel(fn, node, in))) << isa << ", scale " << s;
    }
  }
  // Per-channel scales over N x C x H x W (runs of 13 values per channel).
  Tensor x4(DType::f32, {2, 3, 13, 1});
  for (int64_t i = 0; i < x4.numel(); ++i) x4.set(i, static_cast<double>(values[static_cast<size_t>(i * 97)]));
  Tensor scales(DType::f32, {3});
  scales.set(0, 0.5);
  scales.set(1, 2.0);
  scales.set(2, 0.0078125);
  const ref::Inputs in4{&x4, &scales};
  const Tensor want4 = run_kernel(ref::quantize_float, node, in4);
  for (const auto& isa : vector_isas()) {
    EXPECT_TRUE(identical(want4, run_kernel(cpu::find_kernel(isa, node.op_type), node, in4))) << isa << ", per channel";
  }
}

TEST(CpuBackend, DispatchNamesTheIsa) {
  const std::string isa = cpu::isa_name();
  EXPECT_TRUE(isa == "amx" || isa == "avx512vnni" || isa == "avx2" || isa == "scalar") << isa;
  EXPECT_EQ(cpu::available_isas().front(), isa);
  EXPECT_EQ(cpu::available_isas().back(), "scalar");
  std::string all;
  for (const auto& name : cpu::available_isas()) all += (all.empty() ? "" : ",") + name;
  RecordProperty("cpu_isas", all);  // which tables the parity tests below cover on this machine
  if (isa == "scalar") {
    EXPECT_EQ(cpu::find_kernel("nibble:IntConvFused"), nullptr);
  } else {
    EXPECT_NE(cpu::find_kernel("nibble:IntConvFused"), nullptr);
    EXPECT_NE(cpu::find_kernel("nibble:IntConv"), nullptr);
  }
  EXPECT_EQ(cpu::find_kernel("NoSuchOp"), nullptr);
}

// The seed model's layer shapes, scaled down in channels, and the stem.
TEST(CpuBackend, IntConvFusedMatchesReferenceOnSeedLikeLayers) {
  SKIP_WITHOUT_CPU_KERNELS();
  uint32_t seed = 1;
  // Stem: 7x7 stride 2 pad 3 on s8 images, s8 weights, u4 output.
  for (int64_t n : {1, 3}) {
    ConvCase stem{.n = n,
                  .c = 3,
                  .h = 37,
                  .w = 41,
                  .m = 13,
                  .kh = 7,
                  .kw = 7,
                  .stride_h = 2,
                  .stride_w = 2,
                  .pad_t = 3,
                  .pad_l = 3,
                  .pad_b = 3,
                  .pad_r = 3,
                  .wtype = DType::s8,
                  .act = Act::s8,
                  .relu = true,
                  .requant = Requant{16, 4, false}};
    check_conv(stem, seed++);
  }
  // 1x1 reduce, 3x3 (stride 1 and 2), 1x1 expand with residual, downsample to s8.
  for (int64_t n : {1, 3}) {
    for (int64_t hw : {7, 14, 15, 28, 56}) {
      if (n == 3 && hw == 56) continue;
      check_conv({.n = n,
                  .c = 64,
                  .h = hw,
                  .w = hw,
                  .m = 32,
                  .kh = 1,
                  .kw = 1,
                  .pad_t = 0,
                  .pad_l = 0,
                  .pad_b = 0,
                  .pad_r = 0,
                  .relu = true,
                  .requant = Requant{16, 4, false}},
                 seed++);
      for (int64_t s : {1, 2}) {
        check_conv({.n = n,
                    .c = 32,
                    .h = hw,
                    .w = hw,
                    .m = 32,
                    .stride_h = s,
                    .stride_w = s,
                    .relu = true,
                    .requant = Requant{16, 4, false}},
                   seed++);
      }
      check_conv({.n = n,
                  .c = 32,
                  .h = hw,
                  .w = hw,
                  .m = 64,
                  .kh = 1,
                  .kw = 1,
                  .pad_t = 0,
                  .pad_l = 0,
                  .pad_b = 0,
                  .pad_r = 0,
                  .residual = true,
                  .relu = true,
                  .requant = Requant{16, 7, false}},
                 seed++);
      check_conv({.n = n,
                  .c = 32,
                  .h = hw,
                  .w = hw,
                  .m = 64,
                  .kh = 1,
                  .kw = 1,
                  .stride_h = 2,
                  .stride_w = 2,
                  .pad_t = 0,
                  .pad_l = 0,
                  .pad_b = 0,
                  .pad_r = 0,
                  .requant = Requant{16, 7, true}},
                 seed++);
    }
  }
}

TEST(CpuBackend, IntConvFusedMatchesReferenceOnRandomShapes) {
  SKIP_WITHOUT_CPU_KERNELS();
  std::mt19937 rng(20240607);
  auto pick = [&](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  const Act acts[] = {Act::u4, Act::u7, Act::u8_full, Act::s8};
  const Requant requants[] = {{16, 4, false},  {16, 7, false}, {16, 8, false}, {16, 7, true}, {16, 8, true},
                              {16, 31, false}, {16, 31, true}, {0, 4, false},  {0, 8, true},  {0, 31, true},
                              {0, 31, false},  {1, 7, true},   {31, 4, false}, {5, 13, true}};
  for (int iter = 0; iter < 400; ++iter) {
    ConvCase cc;
    const int64_t shape_kind = rng() % 4;  // 1x1, 3x3, 7x7, odd
    if (shape_kind == 0) {
      cc.kh = cc.kw = 1;
      cc.pad_t = cc.pad_l = cc.pad_b = cc.pad_r = 0;
    } else if (shape_kind == 1) {
      cc.kh = cc.kw = 3;
    } else if (shape_kind == 2) {
      cc.kh = cc.kw = 7;
      cc.pad_t = cc.pad_l = cc.pad_b = cc.pad_r = 3;
    } else {
      cc.kh = pick({1, 2, 3, 5});
      cc.kw = pick({1, 2, 3, 4});
      cc.pad_t = pick({0, 1, 2});
      cc.pad_l = pick({0, 1});
      cc.pad_b = pick({0, 1, 2});
      cc.pad_r = pick({0, 2});
      cc.dilation = pick({1, 1, 2});
    }
    cc.stride_h = pick({1, 2});
    cc.stride_w = rng() % 4 == 0 ? pick({1, 2, 3}) : cc.stride_h;
    cc.group = pick({1, 1, 1, 1, 2, 3});
    cc.c = cc.group * pick({1, 2, 3, 4, 5, 7, 13, 16, 33, 64});
    cc.m = cc.group * pick({1, 3, 4, 5, 8, 13, 17, 64});
    cc.n = pick({1, 1, 2, 3});
    const int64_t min_h = cc.dilation * (cc.kh - 1) + 1 - cc.pad_t - cc.pad_b;
    const int64_t min_w = cc.dilation * (cc.kw - 1) + 1 - cc.pad_l - cc.pad_r;
    cc.h = std::max<int64_t>({1, min_h, pick({1, 2, 3, 5, 7, 9, 14, 16, 17, 23, 31})});
    cc.w = std::max<int64_t>({1, min_w, pick({1, 2, 3, 5, 7, 9, 14, 16, 17, 23, 31, 40})});
    cc.wtype = rng() % 2 ? DType::s4 : DType::s8;
    cc.act = acts[rng() % 4];
    cc.fused = rng() % 8 != 0;
    cc.residual = rng() % 3 == 0;
    if (!cc.residual && rng() % 3 == 0) {
      const Requant folded[] = {{0, 31, true}, {3, 31, true}, {8, 20, true}, {12, 16, false}, {31, 31, true}};
      cc.folded_residual = folded[rng() % std::size(folded)];
      cc.folded_signed_source = rng() % 2 == 0;
    }
    cc.relu = rng() % 2 == 0;
    if (rng() % 4 != 0) cc.requant = requants[rng() % std::size(requants)];
    check_conv(cc, static_cast<uint32_t>(1000 + iter));
    if (HasFailure()) break;
  }
}

TEST(CpuBackend, IntConvMatchesReference) {
  SKIP_WITHOUT_CPU_KERNELS();
  for (Act a : {Act::u4, Act::u7, Act::u8_full, Act::s8}) {
    for (DType wt : {DType::s4, DType::s8}) {
      check_conv({.n = 3, .c = 13, .h = 9, .w = 11, .m = 17, .wtype = wt, .act = a, .fused = false}, 7);
      check_conv({.n = 1,
                  .c = 64,
                  .h = 7,
                  .w = 7,
                  .m = 64,
                  .kh = 1,
                  .kw = 1,
                  .pad_t = 0,
                  .pad_l = 0,
                  .pad_b = 0,
                  .pad_r = 0,
                  .wtype = wt,
                  .act = a,
                  .fused = false},
                 8);
    }
  }
}

// Reductions long enough for the s16 partial sums to matter (K = 4608), at the edges of the
// u8 x s8 bound: 0..127 activations with -128 weights, and 0..255 which must avoid maddubs.
TEST(CpuBackend, LongReductionsAtTheSaturationBound) {
  SKIP_WITHOUT_CPU_KERNELS();
  for (Act a : {Act::u4, Act::u7, Act::u8_full}) {
    for (DType wt : {DType::s4, DType::s8}) {
      check_conv({.n = 1,
                  .c = 512,
                  .h = 7,
                  .w = 7,
                  .m = 20,
                  .wtype = wt,
                  .act = a,
                  .relu = true,
                  .requant = Requant{16, 4, false}},
                 11);
    }
  }
  // Every product at its extreme: the sums are exactly what an s16 overflow would corrupt.
  for (int64_t value : {15, 127, 255}) {
    for (int64_t wv : {-8, 7, -128}) {
      const DType wt = wv >= -8 ? DType::s4 : DType::s8;
      Tensor x(DType::u8, {1, 256, 5, 5});
      for (int64_t i = 0; i < x.numel(); ++i) x.set(i, static_cast<double>(value));
      Tensor w(wt, {16, 256, 3, 3});
      for (int64_t i = 0; i < w.numel(); ++i) w.set(i, static_cast<double>(wv));
      Tensor bias(DType::s32, {16});
      Node node;
      node.op_type = "nibble:IntConvFused";
      node.outputs = {"y"};
      node.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
      const ref::Inputs in{&x, &w, &bias};
      const Tensor want = run_kernel(ref::int_conv_fused, node, in);
      for (const auto& isa : vector_isas()) {
        EXPECT_TRUE(identical(want, run_kernel(cpu::find_kernel(isa, node.op_type), node, in)))
            << isa << " x = " << value << " w = " << wv;
      }
    }
  }
}

// The packed-weight cache must notice a weight tensor changed in place between calls.
TEST(CpuBackend, WeightCacheSeesInPlaceChanges) {
  SKIP_WITHOUT_CPU_KERNELS();
  std::mt19937 rng(5);
  const Tensor x = random_activations(Act::u4, {1, 16, 6, 6}, rng);
  Tensor w = random_tensor(DType::s4, {8, 16, 3, 3}, -8, 7, rng);
  const Tensor bias = random_tensor(DType::s16, {8}, -100, 100, rng);
  Node node;
  node.op_type = "nibble:IntConv";
  node.outputs = {"y"};
  node.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  const ref::Inputs in{&x, &w, &bias};
  for (int round = 0; round < 3; ++round) {
    const Tensor want = run_kernel(ref::int_conv, node, in);
    for (const auto& isa : vector_isas()) {
      EXPECT_TRUE(identical(want, run_kernel(cpu::find_kernel(isa, node.op_type), node, in)))
          << isa << " round " << round;
    }
    w.set(round * 7, -static_cast<double>(round + 1));
  }
}

// Engine::run may be called from several threads at once; the pool then runs tasks inline.
TEST(CpuBackend, ConcurrentCallsMatchReference) {
  SKIP_WITHOUT_CPU_KERNELS();
  std::mt19937 rng(9);
  const Tensor x = random_activations(Act::u4, {2, 32, 14, 14}, rng);
  const Tensor w = random_tensor(DType::s4, {64, 32, 3, 3}, -8, 7, rng);
  const Tensor bias = random_tensor(DType::s16, {64}, -100, 100, rng);
  const Tensor factor = random_tensor(DType::u16, {64}, 0, 65535, rng);
  Node node;
  node.op_type = "nibble:IntConvFused";
  node.outputs = {"y"};
  node.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  node.attrs["relu"] = int64_t{1};
  node.attrs["shift"] = int64_t{16};
  node.attrs["bits"] = int64_t{4};
  node.attrs["signed"] = int64_t{0};
  const ref::Inputs in{&x, &w, &bias, nullptr, &factor};
  const Tensor want = run_kernel(ref::int_conv_fused, node, in);
  const ref::KernelFn fn = cpu::find_kernel(node.op_type);
  std::vector<Tensor> got(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) got[t] = run_kernel(fn, node, in);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& g : got) EXPECT_TRUE(identical(want, g));
}

TEST(CpuBackend, RequantizeMatchesReference) {
  SKIP_WITHOUT_CPU_KERNELS();
  std::mt19937 rng(17);
  const Requant requants[] = {{16, 4, false}, {16, 7, true}, {0, 31, false}, {0, 31, true},
                              {16, 8, true},  {3, 8, false}, {31, 2, true},  {16, 31, false}};
  const Shape shapes[] = {{1, 64, 56, 56}, {3, 13, 7, 5}, {2, 17, 1, 1}, {2, 5}, {1, 3, 4, 5, 3}};
  for (DType in_type : {DType::u8, DType::s8, DType::s32}) {
    for (const Shape& shape : shapes) {
      for (const Requant& rq : requants) {
        const int64_t lo = in_type == DType::u8 ? 0 : in_type == DType::s8 ? -127 : -(int64_t{1} << 31);
        const int64_t hi = in_type == DType::u8 ? 255 : in_type == DType::s8 ? 127 : (int64_t{1} << 31) - 1;
        Tensor x = random_tensor(in_type, shape, lo, hi, rng);
        if (in_type == DType::s32 && rng() % 2) x = random_tensor(in_type, shape, -100000, 100000, rng);
        const Tensor factor = random_tensor(
            DType::u16, rng() % 2 || shape.size() != 4 ? Shape{shape[1]} : Shape{1, shape[1], 1, 1}, 0,
            rq.shift == 0 ? 40000 : 65535, rng);
        Node node;
        node.op_type = "nibble:Requantize";
        node.outputs = {"y"};
        node.attrs["shift"] = int64_t{rq.shift};
        node.attrs["bits"] = int64_t{rq.bits};
        node.attrs["signed"] = int64_t{rq.is_signed};
        const ref::Inputs in{&x, &factor};
        const Tensor want = run_kernel(ref::requantize, node, in);
        for (const auto& isa : vector_isas()) {
          EXPECT_TRUE(identical(want, run_kernel(cpu::find_kernel(isa, node.op_type), node, in)))
              << isa << " " << dtype_name(in_type) << " " << shape_str(shape) << " shift " << rq.shift
              << " bits " << rq.bits << (rq.is_signed ? " signed" : " unsigned");
        }
      }
    }
  }
}

// s32 extremes and rounding ties through every factor edge: |INT32_MIN| must round like llabs,
// and products up to 2^31 x 65535 must not lose bits.
TEST(CpuBackend, RequantizeEdgeValues) {
  SKIP_WITHOUT_CPU_KERNELS();
  const std::vector<int64_t> values = {
      INT32_MIN, INT32_MIN + 1, -65536, -32769, -32768, -32767,        -3,       -2, -1, 0, 1, 2, 3,
      32767,     32768,         32769,  65535,  65536,  INT32_MAX - 1, INT32_MAX};
  const std::vector<int64_t> factors = {0, 1, 2, 3, 32768, 65534, 65535};
  const int64_t n = static_cast<int64_t>(values.size()), c = static_cast<int64_t>(factors.size());
  Tensor x(DType::s32, {1, c, 1, n});
  Tensor factor(DType::u16, {c});
  for (int64_t j = 0; j < c; ++j) {
    factor.set(j, static_cast<double>(factors[static_cast<size_t>(j)]));
    for (int64_t i = 0; i < n; ++i)
      x.data<int32_t>()[j * n + i] = static_cast<int32_t>(values[static_cast<size_t>(i)]);
  }
  for (int shift : {0, 1, 2, 15, 16, 17, 30, 31}) {
    for (int bits : {1, 4, 7, 8, 15, 16, 30, 31}) {
      for (bool is_signed : {false, true}) {
        Node node;
        node.op_type = "nibble:Requantize";
        node.outputs = {"y"};
        node.attrs["shift"] = int64_t{shift};
        node.attrs["bits"] = int64_t{bits};
        node.attrs["signed"] = int64_t{is_signed};
        const ref::Inputs in{&x, &factor};
        const Tensor want = run_kernel(ref::requantize, node, in);
        for (const auto& isa : vector_isas()) {
          EXPECT_TRUE(identical(want, run_kernel(cpu::find_kernel(isa, node.op_type), node, in)))
              << isa << " shift " << shift << " bits " << bits << (is_signed ? " signed" : " unsigned");
        }
      }
    }
  }
}

TEST(CpuBackend, IntLinearMatchesReference) {
  SKIP_WITHOUT_CPU_KERNELS();
  std::mt19937 rng(23);
  for (Act a : {Act::u4, Act::u7, Act::u8_full, Act::s8}) {
    for (DType wt : {DType::s4, DType::s8}) {
      for (int64_t k : {1, 3, 31, 33, 100, 2048}) {
        for (int64_t batch : {1, 3}) {
          const Tensor x = random_activations(a, {batch, k}, rng);
          const int64_t m = 1 + static_cast<int64_t>(rng() % 130);
          const Tensor w =
              random_tensor(wt, {m, k}, wt == DType::s4 ? -8 : -128, wt == DType::s4 ? 7 : 127, rng);
          const Tensor bias = random_tensor(rng() % 2 ? DType::s32 : DType::s16, {m}, -30000, 30000, rng);
          Node node;
          node.op_type = "nibble:IntLinear";
          node.outputs = {"y"};
          const ref::Inputs in{&x, &w, &bias};
          const Tensor want = run_kernel(ref::int_linear, node, in);
          for (const auto& isa : vector_isas()) {
            EXPECT_TRUE(identical(want, run_kernel(cpu::find_kernel(isa, node.op_type), node, in)))
                << isa << " " << act_name(a) << " " << dtype_name(wt) << " k " << k << " m " << m << " batch "
                << batch;
          }
        }
      }
    }
  }
}

TEST(CpuBackend, MaxPoolMatchesReference) {
  SKIP_WITHOUT_CPU_KERNELS();
  std::mt19937 rng(31);
  struct Pool {
    int64_t k, s, p, d;
    bool ceil;
  };
  const Pool pools[] = {{3, 2, 1, 1, false}, {3, 1, 1, 1, false}, {2, 2, 0, 1, false}, {3, 2, 0, 1, true},
                        {3, 2, 1, 2, false}, {1, 1, 0, 1, false}, {5, 3, 2, 1, true}};
  for (const Pool& pool : pools) {
    for (const Shape& shape :
         {Shape{1, 64, 112, 112}, Shape{3, 5, 7, 9}, Shape{2, 3, 33, 70}, Shape{1, 1, 5, 5}}) {
      const Tensor x = random_tensor(DType::u8, shape, 0, rng() % 2 ? 15 : 255, rng);
      Node node;
      node.op_type = "MaxPool";
      node.opset = 13;
      node.outputs = {"y"};
      node.attrs["kernel_shape"] = std::vector<int64_t>{pool.k, pool.k};
      node.attrs["strides"] = std::vector<int64_t>{pool.s, pool.s};
      node.attrs["pads"] = std::vector<int64_t>{pool.p, pool.p, pool.p, pool.p};
      node.attrs["dilations"] = std::vector<int64_t>{pool.d, pool.d};
      node.attrs["ceil_mode"] = int64_t{pool.ceil};
      const ref::Inputs in{&x};
      const Tensor want = run_kernel(ref::max_pool, node, in);
      for (const auto& isa : vector_isas()) {
        EXPECT_TRUE(identical(want, run_kernel(cpu::find_kernel(isa, node.op_type), node, in)))
            << isa << " " << shape_str(shape) << " k " << pool.k << " s " << pool.s << " p " << pool.p
            << " d " << pool.d << (pool.ceil ? " ceil" : "");
      }
    }
  }
  // Other dtypes go to the reference kernel.
  const Tensor xf = random_tensor(DType::f32, {1, 2, 6, 6}, -5, 5, rng);
  Node node;
  node.op_type = "MaxPool";
  node.opset = 13;
  node.outputs = {"y"};
  node.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  const ref::Inputs in{&xf};
  EXPECT_TRUE(
      identical(run_kernel(ref::max_pool, node, in), run_kernel(cpu::find_kernel("MaxPool"), node, in)));
}

const std::string kSeedModelDir =
    testing_util::source_dir() + "/models/mlperf-v0.5-int4-resnet50";

TEST(CpuBackend, SeedResNet50LogitsMatchReference) {
  SKIP_WITHOUT_CPU_KERNELS();
  if (!std::filesystem::exists(kSeedModelDir + "/model/model")) GTEST_SKIP() << "seed model not found";
  const Tensor image = read_npy(kSeedModelDir + "/golden/image_a_input_s8.npy").reshaped({1, 3, 224, 224});
  const Graph graph = load_model(kSeedModelDir + "/model");
  const auto want = Engine(graph, Backend::ref).run({image});
  const auto got = Engine(graph, Backend::cpu).run({image});
  ASSERT_EQ(want.size(), got.size());
  for (size_t o = 0; o < want.size(); ++o) EXPECT_TRUE(identical(want[o], got[o])) << "output " << o;
  const Tensor golden = read_npy(kSeedModelDir + "/golden/image_a_logits_s32.npy");
  ASSERT_EQ(golden.numel(), got[0].numel());
  EXPECT_EQ(0, std::memcmp(golden.bytes(), got[0].bytes(), golden.nbytes()));
}

// The CPU engine folds a shortcut rescale into the convolution that alone reads it; the outputs
// stay the reference's, and a rescale with a second reader is left alone.
TEST(CpuBackend, FoldedResidualRequantizeMatchesTheUnfoldedGraph) {
  SKIP_WITHOUT_CPU_KERNELS();
  std::mt19937 rng(77);
  for (const bool shared : {false, true}) {
    Graph g;
    g.source = "folded.onnx";
    g.inputs = {ValueInfo{"x", DType::u8, Shape{2, 24, 9, 11}, {}}};
    g.initializers["w"] = random_tensor(DType::s8, {48, 24, 3, 3}, -128, 127, rng);
    g.initializers["b"] = random_tensor(DType::s32, {48}, -5000, 5000, rng);
    g.initializers["f"] = random_tensor(DType::u16, {48}, 1, 400, rng);
    g.initializers["wr"] = random_tensor(DType::s8, {48, 24, 1, 1}, -128, 127, rng);
    g.initializers["br"] = random_tensor(DType::s32, {48}, -500, 500, rng);
    g.initializers["fr"] = random_tensor(DType::u16, {48}, 1, 65535, rng);
    g.initializers["fs"] = random_tensor(DType::u16, {48}, 1, 3000, rng);
    // shortcut: 1x1 conv to s8, then the rescale to s32 that the main conv adds.
    Node sc = conv_node("nibble:IntConvFused", {1, 1}, {1, 1}, {0, 0, 0, 0}, 1);
    sc.name = "shortcut";
    sc.inputs = {"x", "wr", "br", "", "fr"};
    sc.outputs = {"s"};
    sc.attrs["relu"] = int64_t{0};
    sc.attrs["shift"] = int64_t{16};
    sc.attrs["bits"] = int64_t{7};
    sc.attrs["signed"] = int64_t{1};
    Node rq;
    rq.op_type = "nibble:Requantize";
    rq.name = "rescale";
    rq.inputs = {"s", "fs"};
    rq.outputs = {"r"};
    rq.attrs["shift"] = int64_t{4};
    rq.attrs["bits"] = int64_t{31};
    rq.attrs["signed"] = int64_t{1};
    Node conv = conv_node("nibble:IntConvFused", {3, 3}, {1, 1}, {1, 1, 1, 1}, 1);
    conv.inputs = {"x", "w", "b", "r", "f"};
    conv.outputs = {"y"};
    conv.attrs["relu"] = int64_t{1};
    conv.attrs["shift"] = int64_t{20};
    conv.attrs["bits"] = int64_t{8};
    conv.attrs["signed"] = int64_t{0};
    g.nodes = {sc, rq, conv};
    for (Node& n : g.nodes) n.opset = 1;
    g.outputs = {ValueInfo{"y", DType::u8, std::nullopt, {}}};
    if (shared) g.outputs.push_back(ValueInfo{"r", DType::s32, std::nullopt, {}});
    Graph folded = g;
    EXPECT_EQ(fold_residual_requantize(folded), shared ? 0 : 1);
    EXPECT_EQ(folded.nodes.size(), shared ? 3u : 2u);
    const Tensor x = random_tensor(DType::u8, {2, 24, 9, 11}, 0, 255, rng);
    const auto want = Engine(g, Backend::ref).run({x});
    const auto got = Engine(g, Backend::cpu).run({x});
    const auto folded_ref = Engine(folded, Backend::ref).run({x});
    ASSERT_EQ(want.size(), got.size());
    for (size_t o = 0; o < want.size(); ++o) {
      EXPECT_TRUE(identical(want[o], got[o])) << "output " << o << (shared ? " (shared rescale)" : "");
      EXPECT_TRUE(identical(want[o], folded_ref[o])) << "reference, folded graph: output " << o;
    }
    // The outputs must depend on the residual: a wrong folding cannot hide in a clamp.
    int64_t distinct = 0;
    for (int64_t i = 1; i < want[0].numel(); ++i) distinct += want[0].get(i) != want[0].get(i - 1);
    EXPECT_GT(distinct, want[0].numel() / 4);
  }
}

}  // namespace
}  // namespace nibble
