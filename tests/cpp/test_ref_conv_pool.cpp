// Hand-computed and direct-formula checks of the reference convolution, pooling and batch-norm kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "backends/ref/kernels.h"
#include "backends/ref/window.h"
#include "nibble/graph.h"
#include "nibble/tensor.h"

namespace nibble::ref {
namespace {

Tensor make(DType t, Shape shape, const std::vector<double>& values) {
  Tensor x(t, std::move(shape));
  EXPECT_EQ(x.numel(), static_cast<int64_t>(values.size())) << "test tensor has the wrong number of values";
  for (size_t i = 0; i < values.size(); ++i) x.set(static_cast<int64_t>(i), values[i]);
  return x;
}
Tensor f32(Shape shape, const std::vector<double>& values) {
  return make(DType::f32, std::move(shape), values);
}
Tensor scalar(DType t, double v) { return make(t, {}, {v}); }

// 0, 1, 2, ... as f32.
Tensor iota(Shape shape, double start = 0) {
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = start + static_cast<double>(i);
  return f32(std::move(shape), v);
}

// Deterministic values in [-1, 1) that are exact in float, so sums compare tightly.
Tensor pattern(Shape shape, int seed) {
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  uint32_t s = static_cast<uint32_t>(seed) * 2654435761u + 12345u;
  for (auto& e : v) {
    s = s * 1664525u + 1013904223u;
    e = static_cast<double>(static_cast<int>(s >> 24) - 128) / 128.0;
  }
  return f32(std::move(shape), v);
}

Node node(const std::string& op, int opset, std::vector<std::string> outputs = {"y"}) {
  Node n;
  n.op_type = op;
  n.opset = opset;
  n.outputs = std::move(outputs);
  return n;
}

// Runs kernel fn on the inputs and returns its first output.
Tensor run(KernelFn fn, const Node& n, const Inputs& in) {
  Outputs out(n.outputs.size());
  fn(n, in, out);
  return out[0];
}

std::vector<double> values(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = t.get(i);
  return v;
}

void expect_near_all(const Tensor& got, const std::vector<double>& want, double tol = 1e-5) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got.get(static_cast<int64_t>(i)), want[i], tol) << "element " << i;
  }
}

// The message of the KernelError that fn throws, or "" when it throws none.
std::string kernel_error(KernelFn fn, const Node& n, const Inputs& in) {
  try {
    run(fn, n, in);
  } catch (const KernelError& e) {
    return e.what();
  }
  return "";
}

// Conv written straight from the ONNX definition, in double, for any spatial rank:
// y[n, m, o] = B[m] + sum_{c, k} x[n, g*C/G + c, o*s - pad + k*d] * w[m, c, k], out-of-range x = 0.
struct DirectConv {
  std::vector<int64_t> strides, dilations, pads;  // pads: begin..., end...
  int64_t group = 1;
};
std::vector<double> direct_conv(const Tensor& x, const Tensor& w, const Tensor* b, const DirectConv& a,
                                Shape* out_shape) {
  const size_t rank = static_cast<size_t>(x.rank() - 2);
  const int64_t batch = x.dim(0), channels = x.dim(1), maps = w.dim(0);
  const int64_t cg = channels / a.group, mg = maps / a.group;
  Shape out{batch, maps};
  for (size_t i = 0; i < rank; ++i) {
    const int64_t extent = (w.dim(static_cast<int>(i) + 2) - 1) * a.dilations[i] + 1;
    out.push_back((x.dim(static_cast<int>(i) + 2) + a.pads[i] + a.pads[i + rank] - extent) / a.strides[i] +
                  1);
  }
  *out_shape = out;
  std::vector<double> y;
  const Shape o_spatial(out.begin() + 2, out.end());
  const Shape k_spatial(w.shape().begin() + 2, w.shape().end());
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t m = 0; m < maps; ++m) {
      for (int64_t oi = 0; oi < shape_numel(o_spatial); ++oi) {
        std::vector<int64_t> o(rank);
        for (int64_t r = oi, i = static_cast<int64_t>(rank) - 1; i >= 0; --i) {
          o[static_cast<size_t>(i)] = r % o_spatial[static_cast<size_t>(i)];
          r /= o_spatial[static_cast<size_t>(i)];
        }
        double sum = b ? b->get(m) : 0.0;
        for (int64_t c = 0; c < cg; ++c) {
          for (int64_t ki = 0; ki < shape_numel(k_spatial); ++ki) {
            int64_t x_index = n * channels + (m / mg) * cg + c;
            int64_t w_index = m * cg + c;
            bool inside = true;
            int64_t rest = ki;
            std::vector<int64_t> k(rank);
            for (int64_t i = static_cast<int64_t>(rank) - 1; i >= 0; --i) {
              k[static_cast<size_t>(i)] = rest % k_spatial[static_cast<size_t>(i)];
              rest /= k_spatial[static_cast<size_t>(i)];
            }
            for (size_t i = 0; i < rank; ++i) {
              const int64_t pos = o[i] * a.strides[i] - a.pads[i] + k[i] * a.dilations[i];
              const int64_t size = x.dim(static_cast<int>(i) + 2);
              if (pos < 0 || pos >= size) inside = false;
              x_index = x_index * size + pos;
              w_index = w_index * k_spatial[i] + k[i];
            }
            if (inside) sum += x.get(x_index) * w.get(w_index);
          }
        }
        y.push_back(sum);
      }
    }
  }
  return y;
}

void set_conv_attrs(Node& n, const DirectConv& a) {
  n.attrs["strides"] = a.strides;
  n.attrs["dilations"] = a.dilations;
  n.attrs["pads"] = a.pads;
  n.attrs["group"] = a.group;
}

// --- Window geometry -------------------------------------------------------------------------------

TEST(RefWindow, SamePadsPutTheOddElementAtTheRightEnd) {
  Node n = node("Conv", 11);
  const std::vector<int64_t> input{5, 6}, kernel{4, 3};
  n.attrs["strides"] = std::vector<int64_t>{2, 1};
  n.attrs["auto_pad"] = std::string("SAME_UPPER");
  Window upper = make_window(n, input, kernel, WindowRules{});
  // dim 0: out ceil(5/2) = 3, total pad (3-1)*2 + 4 - 5 = 3; dim 1: out 6, total 2.
  EXPECT_EQ(upper.output, (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(upper.pad_begin, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(upper.pad_end, (std::vector<int64_t>{2, 1}));
  n.attrs["auto_pad"] = std::string("SAME_LOWER");
  Window lower = make_window(n, input, kernel, WindowRules{});
  EXPECT_EQ(lower.output, (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(lower.pad_begin, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(lower.pad_end, (std::vector<int64_t>{1, 1}));
}

TEST(RefWindow, ValidIgnoresPaddingAndCountsDilation) {
  Node n = node("MaxPool", 12);
  n.attrs["auto_pad"] = std::string("VALID");
  n.attrs["dilations"] = std::vector<int64_t>{2};
  n.attrs["strides"] = std::vector<int64_t>{3};
  const std::vector<int64_t> input{10}, kernel{3};
  // Extent (3-1)*2+1 = 5; starts 0, 3 fit (3+5 <= 10), 6 does not.
  EXPECT_EQ(make_window(n, input, kernel, WindowRules{}).output, (std::vector<int64_t>{2}));
}

TEST(RefWindow, CeilModeDropsAWindowStartingInTheEndPadding) {
  Node n = node("MaxPool", 12);
  n.attrs["ceil_mode"] = int64_t{1};
  n.attrs["strides"] = std::vector<int64_t>{2};
  const std::vector<int64_t> kernel{2};
  // Input 5: ceil((5-2)/2)+1 = 3 windows, the last starts at 4 inside the input.
  EXPECT_EQ(make_window(n, std::vector<int64_t>{5}, kernel, {.ceil_mode_allowed = true}).output,
            (std::vector<int64_t>{3}));
  // Input 4 padded [0, 1]: ceil((4+1-2)/2)+1 = 3, but the third would start at 4, in the padding.
  n.attrs["pads"] = std::vector<int64_t>{0, 1};
  EXPECT_EQ(make_window(n, std::vector<int64_t>{4}, kernel, {.ceil_mode_allowed = true}).output,
            (std::vector<int64_t>{2}));
  // Without ceil_mode allowed (Conv) the attribute has no effect: floor((5-2)/2)+1 = 2.
  n.attrs["pads"] = std::vector<int64_t>{0, 0};
  EXPECT_EQ(make_window(n, std::vector<int64_t>{5}, kernel, WindowRules{}).output, (std::vector<int64_t>{2}));
}

TEST(RefWindow, RejectsBadAttributes) {
  const std::vector<int64_t> input{5, 5}, kernel{3, 3};
  auto message = [&](const Node& n) {
    try {
      make_window(n, input, kernel, WindowRules{});
    } catch (const KernelError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  Node wrong_length = node("Conv", 11);
  wrong_length.attrs["strides"] = std::vector<int64_t>{1};
  EXPECT_NE(message(wrong_length).find("'strides' has 1 entries"), std::string::npos)
      << message(wrong_length);
  Node zero_stride = node("Conv", 11);
  zero_stride.attrs["strides"] = std::vector<int64_t>{1, 0};
  EXPECT_NE(message(zero_stride).find("strides"), std::string::npos);
  Node negative_pad = node("Conv", 11);
  negative_pad.attrs["pads"] = std::vector<int64_t>{0, -1, 0, 0};
  EXPECT_NE(message(negative_pad).find("pads"), std::string::npos);
  Node short_pads = node("Conv", 11);
  short_pads.attrs["pads"] = std::vector<int64_t>{1, 1};
  EXPECT_NE(message(short_pads).find("pads"), std::string::npos);
  Node too_dilated = node("Conv", 11);
  too_dilated.attrs["dilations"] = std::vector<int64_t>{3, 1};  // extent 7 > 5
  EXPECT_NE(message(too_dilated).find("output is empty"), std::string::npos) << message(too_dilated);
  Node bad_auto_pad = node("Conv", 11);
  bad_auto_pad.attrs["auto_pad"] = std::string("SAME");
  EXPECT_NE(message(bad_auto_pad).find("auto_pad"), std::string::npos);
  Node both = node("Conv", 11);
  both.attrs["auto_pad"] = std::string("SAME_UPPER");
  both.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  EXPECT_NE(message(both).find("both"), std::string::npos);
  EXPECT_EQ(message(node("Conv", 11)), "");
}

// --- Conv ------------------------------------------------------------------------------------------

TEST(RefConv, OnesKernelWithAndWithoutPadding) {
  const Tensor x = iota({1, 1, 5, 5});
  const Tensor w = f32({1, 1, 3, 3}, std::vector<double>(9, 1.0));
  Node n = node("Conv", 11);
  const Tensor valid = run(conv, n, {&x, &w});
  EXPECT_EQ(valid.shape(), (Shape{1, 1, 3, 3}));
  EXPECT_EQ(values(valid), (std::vector<double>{54, 63, 72, 99, 108, 117, 144, 153, 162}));
  n.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  const Tensor padded = run(conv, n, {&x, &w});
  EXPECT_EQ(padded.shape(), (Shape{1, 1, 5, 5}));
  EXPECT_EQ(values(padded), (std::vector<double>{12,  21, 27, 33,  24,  33,  54,  63, 72,  51,  63,  99, 108,
                                                 117, 81, 93, 144, 153, 162, 111, 72, 111, 117, 123, 84}));
}

TEST(RefConv, StrideTwoWithAsymmetricPadsAndBias) {
  const Tensor x = iota({1, 1, 7, 5});
  const Tensor w = f32({1, 1, 3, 3}, std::vector<double>(9, 1.0));
  const Tensor b = f32({1}, {0.5});
  Node n = node("Conv", 11);
  n.attrs["strides"] = std::vector<int64_t>{2, 2};
  n.attrs["pads"] = std::vector<int64_t>{1, 0, 1, 0};  // rows padded on both ends, columns not at all
  const Tensor y = run(conv, n, {&x, &w, &b});
  EXPECT_EQ(y.shape(), (Shape{1, 1, 4, 2}));
  EXPECT_EQ(values(y), (std::vector<double>{21.5, 33.5, 99.5, 117.5, 189.5, 207.5, 171.5, 183.5}));
}

TEST(RefConv, DepthwiseWithChannelMultiplier) {
  // Two channels, group 2, two maps per channel; 1x2 kernels over a 1x3 row.
  const Tensor x = f32({1, 2, 1, 3}, {1, 2, 3, 10, 20, 30});
  const Tensor w = f32({4, 1, 1, 2}, {1, 0, 0, 1, 1, 1, 2, -1});
  Node n = node("Conv", 11);
  n.attrs["group"] = int64_t{2};
  const Tensor y = run(conv, n, {&x, &w});
  EXPECT_EQ(y.shape(), (Shape{1, 4, 1, 2}));
  // maps 0, 1 read channel 0 ([1, 2, 3]); maps 2, 3 read channel 1 ([10, 20, 30]).
  EXPECT_EQ(values(y), (std::vector<double>{1, 2, 2, 3, 30, 50, 0, 10}));
}

TEST(RefConv, DilationSkipsInputs) {
  const Tensor x = iota({1, 1, 7}, 1);  // 1..7
  const Tensor w = f32({1, 1, 3}, {1, 10, 100});
  Node n = node("Conv", 11);
  n.attrs["dilations"] = std::vector<int64_t>{3};
  // Output o reads x[o], x[o+3], x[o+6]: only o = 0 fits.
  const Tensor y = run(conv, n, {&x, &w});
  EXPECT_EQ(y.shape(), (Shape{1, 1, 1}));
  EXPECT_EQ(values(y), (std::vector<double>{1 + 40 + 700}));
}

TEST(RefConv, AutoPadSameUpperAndLower) {
  const Tensor x = iota({1, 1, 4}, 1);  // 1..4
  const Tensor w = f32({1, 1, 2}, {1, 1});
  Node n = node("Conv", 11);
  n.attrs["auto_pad"] = std::string("SAME_UPPER");
  EXPECT_EQ(values(run(conv, n, {&x, &w})), (std::vector<double>{3, 5, 7, 4}));
  n.attrs["auto_pad"] = std::string("SAME_LOWER");
  EXPECT_EQ(values(run(conv, n, {&x, &w})), (std::vector<double>{1, 3, 5, 7}));
}

TEST(RefConv, KernelShapeAttributeIsOptional) {
  const Tensor x = iota({1, 1, 3, 3});
  const Tensor w = f32({1, 1, 2, 2}, {1, 1, 1, 1});
  Node n = node("Conv", 11);
  n.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  EXPECT_EQ(values(run(conv, n, {&x, &w})), (std::vector<double>{8, 12, 20, 24}));
  n.attrs["kernel_shape"] = std::vector<int64_t>{3, 3};
  EXPECT_NE(kernel_error(conv, n, {&x, &w}).find("kernel_shape"), std::string::npos);
}

struct DirectCase {
  const char* name;
  Shape x, w;
  DirectConv attrs;
  bool bias;
};

TEST(RefConv, MatchesTheDirectFormulaIn1d2d3d) {
  const std::vector<DirectCase> cases = {
      {"1d stride dilation pads", {2, 3, 11}, {4, 3, 3}, {{2}, {2}, {1, 2}, 1}, true},
      {"1d grouped", {1, 4, 9}, {6, 2, 2}, {{1}, {1}, {0, 1}, 2}, false},
      {"2d asymmetric", {2, 2, 7, 6}, {3, 2, 3, 2}, {{2, 1}, {1, 2}, {0, 1, 2, 0}, 1}, true},
      {"2d depthwise", {1, 3, 6, 6}, {3, 1, 3, 3}, {{1, 2}, {1, 1}, {1, 1, 1, 1}, 3}, true},
      {"2d big stride", {1, 2, 9, 9}, {2, 2, 2, 2}, {{3, 4}, {2, 1}, {1, 0, 0, 3}, 1}, false},
      {"3d", {1, 2, 5, 4, 6}, {4, 1, 2, 3, 2}, {{1, 2, 1}, {2, 1, 2}, {1, 0, 1, 0, 1, 1}, 2}, true},
      {"2d stride 3 dilation 2", {1, 2, 8, 13}, {2, 2, 2, 3}, {{1, 3}, {1, 2}, {0, 2, 1, 1}, 1}, true},
      {"3d strided", {2, 2, 5, 6, 7}, {2, 2, 2, 2, 3}, {{2, 2, 3}, {1, 2, 1}, {1, 0, 2, 0, 1, 1}, 1}, false},
      // Rows of 16 and more outputs take the row-at-a-time path rather than the flattened one.
      {"2d wide strided rows", {1, 2, 5, 37}, {3, 2, 2, 3}, {{2, 2}, {1, 3}, {1, 2, 0, 1}, 1}, true},
      {"2d wide rows", {2, 3, 4, 20}, {2, 3, 3, 3}, {{1, 1}, {1, 1}, {1, 1, 1, 1}, 1}, false},
  };
  int seed = 1;
  for (const DirectCase& c : cases) {
    SCOPED_TRACE(c.name);
    const Tensor x = pattern(c.x, seed++);
    const Tensor w = pattern(c.w, seed++);
    const Tensor b = pattern({c.w[0]}, seed++);
    Node n = node("Conv", 11);
    set_conv_attrs(n, c.attrs);
    Shape want_shape;
    const std::vector<double> want = direct_conv(x, w, c.bias ? &b : nullptr, c.attrs, &want_shape);
    const Tensor y = run(conv, n, c.bias ? Inputs{&x, &w, &b} : Inputs{&x, &w});
    EXPECT_EQ(y.shape(), want_shape);
    expect_near_all(y, want, 1e-5);
  }
}

TEST(RefConv, RejectsMismatchedInputs) {
  const Tensor x = iota({1, 4, 5, 5});
  const Tensor w = iota({2, 3, 3, 3});
  Node n = node("Conv", 11);
  EXPECT_NE(kernel_error(conv, n, {&x, &w}).find("W has 3 input channels per group but X has 4"),
            std::string::npos)
      << kernel_error(conv, n, {&x, &w});
  n.attrs["group"] = int64_t{3};
  EXPECT_NE(kernel_error(conv, n, {&x, &w}).find("group"), std::string::npos);

  const Tensor w_ok = iota({2, 4, 3, 3});
  const Tensor x_s8 = make(DType::s8, {1, 4, 5, 5}, std::vector<double>(100, 1));
  Node plain = node("Conv", 11);
  EXPECT_NE(kernel_error(conv, plain, {&x_s8, &w_ok}).find("Conv expects f32 input X, got s8"),
            std::string::npos);
  const Tensor w_rank3 = iota({2, 4, 3});
  EXPECT_NE(kernel_error(conv, plain, {&x, &w_rank3}).find("same rank"), std::string::npos);
  const Tensor bad_bias = f32({3}, {0, 0, 0});
  EXPECT_NE(kernel_error(conv, plain, {&x, &w_ok, &bad_bias}).find("bias B of shape [2]"), std::string::npos);
  const Tensor big_kernel = iota({2, 4, 6, 6});
  EXPECT_NE(kernel_error(conv, plain, {&x, &big_kernel}).find("output is empty"), std::string::npos);
  const Tensor x_rank2 = iota({1, 4});
  EXPECT_NE(kernel_error(conv, plain, {&x_rank2, &w_ok}).find("rank"), std::string::npos);
  EXPECT_EQ(kernel_error(conv, plain, {&x, &w_ok}), "");
}

// --- ConvInteger -----------------------------------------------------------------------------------

TEST(RefConvInteger, PaddingActsAsTheZeroPoint) {
  const Tensor x = make(DType::u8, {1, 1, 3, 3}, {2, 3, 4, 5, 6, 7, 8, 9, 10});
  const Tensor w = make(DType::u8, {1, 1, 2, 2}, {1, 1, 1, 1});
  const Tensor x_zero = scalar(DType::u8, 1);
  Node n = node("ConvInteger", 10);
  const Tensor valid = run(conv_integer, n, {&x, &w, &x_zero});
  EXPECT_EQ(valid.dtype(), DType::s32);
  EXPECT_EQ(values(valid), (std::vector<double>{12, 16, 24, 28}));
  n.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  const Tensor padded = run(conv_integer, n, {&x, &w, &x_zero});
  EXPECT_EQ(padded.shape(), (Shape{1, 1, 4, 4}));
  EXPECT_EQ(values(padded), (std::vector<double>{1, 3, 5, 3, 5, 12, 16, 9, 11, 24, 28, 15, 7, 15, 17, 9}));
}

TEST(RefConvInteger, SignedInputsWithPerChannelWeightZeroPoints) {
  const Tensor x = make(DType::s8, {1, 1, 4}, {-128, -1, 0, 127});
  const Tensor w = make(DType::s8, {2, 1, 2}, {1, -2, 127, -128});
  const Tensor x_zero = scalar(DType::s8, -3);
  const Tensor w_zero = make(DType::s8, {2}, {1, -128});
  Node n = node("ConvInteger", 10);
  const Tensor y = run(conv_integer, n, {&x, &w, &x_zero, &w_zero});
  // x - zx = [-125, 2, 3, 130]; map 0 weights [0, -3]; map 1 weights [255, 0].
  EXPECT_EQ(values(y), (std::vector<double>{-6, -9, -390, -31875, 510, 765}));
  const Tensor no_zero = run(conv_integer, n, {&x, &w});
  // map 0 weights [1, -2]: -128 + 2, -1 - 0, 0 - 254.
  EXPECT_EQ(values(no_zero).at(0), -126);
  EXPECT_EQ(values(no_zero).at(2), -254);
}

TEST(RefConvInteger, RejectsMismatchedZeroPoints) {
  const Tensor x = make(DType::u8, {1, 2, 3}, {1, 2, 3, 4, 5, 6});
  const Tensor w = make(DType::u8, {3, 2, 1}, {1, 1, 1, 1, 1, 1});
  const Tensor s8_zero = scalar(DType::s8, 0);
  Node n = node("ConvInteger", 10);
  EXPECT_NE(kernel_error(conv_integer, n, {&x, &w, &s8_zero}).find("x_zero_point of type u8"),
            std::string::npos);
  const Tensor two_zeros = make(DType::u8, {2}, {0, 0});
  EXPECT_NE(kernel_error(conv_integer, n, {&x, &w, nullptr, &two_zeros}).find("3 output channels"),
            std::string::npos);
  const Tensor x_f32 = iota({1, 2, 3});
  EXPECT_NE(kernel_error(conv_integer, n, {&x_f32, &w}).find("u8 or s8 input X, got f32"), std::string::npos);
  const Tensor w_wrong = make(DType::u8, {3, 1, 1}, {1, 1, 1});
  EXPECT_NE(
      kernel_error(conv_integer, n, {&x, &w_wrong}).find("W has 1 input channels per group but X has 2"),
      std::string::npos);
}

// --- QLinearConv -----------------------------------------------------------------------------------

TEST(RefQLinearConv, RoundsHalfToEvenAndSaturates) {
  // One input channel, 1x1 kernel: acc = (x - 10) * (w - zw).
  const Tensor x = make(DType::u8, {1, 1, 1, 5}, {15, 17, 11, 13, 255});
  const Tensor x_scale = scalar(DType::f32, 0.5);
  const Tensor x_zero = scalar(DType::u8, 10);
  const Tensor w = make(DType::u8, {2, 1, 1, 1}, {3, 0});
  const Tensor w_scale = f32({2}, {1.0, 0.25});
  const Tensor w_zero = make(DType::u8, {2}, {2, 4});
  const Tensor y_scale = scalar(DType::f32, 1.0);
  const Tensor y_zero = scalar(DType::u8, 100);
  Node n = node("QLinearConv", 10);
  const Tensor y = run(qlinear_conv, n, {&x, &x_scale, &x_zero, &w, &w_scale, &w_zero, &y_scale, &y_zero});
  EXPECT_EQ(y.dtype(), DType::u8);
  EXPECT_EQ(y.shape(), (Shape{1, 2, 1, 5}));
  // map 0: acc = x - 10 = [5, 7, 1, 3, 245], times 0.5 = [2.5, 3.5, 0.5, 1.5, 122.5]
  //   -> half to even [2, 4, 0, 2, 122], + 100.
  // map 1: acc = (x - 10) * -4, times 0.125 = [-2.5, -3.5, -0.5, -1.5, -122.5]
  //   -> [-2, -4, 0, -2, -122], + 100, and -22 saturates at 0.
  EXPECT_EQ(values(y), (std::vector<double>{102, 104, 100, 102, 222, 98, 96, 100, 98, 0}));

  const Tensor high_zero = scalar(DType::u8, 200);
  const Tensor y_high =
      run(qlinear_conv, n, {&x, &x_scale, &x_zero, &w, &w_scale, &w_zero, &y_scale, &high_zero});
  EXPECT_EQ(values(y_high).at(4), 255);  // 122 + 200 saturates
}

TEST(RefQLinearConv, SignedOutputWithBiasAndPadding) {
  const Tensor x = make(DType::s8, {1, 1, 3}, {-1, 2, 5});
  const Tensor x_scale = scalar(DType::f32, 1.0);
  const Tensor x_zero = scalar(DType::s8, -1);
  const Tensor w = make(DType::s8, {1, 1, 3}, {1, 2, 3});
  const Tensor w_scale = scalar(DType::f32, 1.0);
  const Tensor w_zero = scalar(DType::s8, 0);
  const Tensor y_scale = scalar(DType::f32, 0.5);
  const Tensor y_zero = scalar(DType::s8, -10);
  const Tensor bias = make(DType::s32, {1}, {-20});
  Node n = node("QLinearConv", 10);
  n.attrs["pads"] = std::vector<int64_t>{1, 1};
  const Tensor y =
      run(qlinear_conv, n, {&x, &x_scale, &x_zero, &w, &w_scale, &w_zero, &y_scale, &y_zero, &bias});
  EXPECT_EQ(y.dtype(), DType::s8);
  // x - zx = [0, 3, 6] with zero-point padding; sums [0*2 + 3*3, 0 + 6 + 18, 3 + 12] = [9, 24, 15],
  // + bias = [-11, 4, -5], / 0.5 = [-22, 8, -10], - 10.
  EXPECT_EQ(values(y), (std::vector<double>{-32, -2, -20}));
}

TEST(RefQLinearConv, RejectsBadScales) {
  const Tensor x = make(DType::u8, {1, 1, 2}, {1, 2});
  const Tensor w = make(DType::u8, {2, 1, 1}, {1, 2});
  const Tensor one = scalar(DType::f32, 1.0);
  const Tensor zero_u8 = scalar(DType::u8, 0);
  const Tensor three_scales = f32({3}, {1, 1, 1});
  Node n = node("QLinearConv", 10);
  EXPECT_NE(kernel_error(qlinear_conv, n, {&x, &one, &zero_u8, &w, &three_scales, &zero_u8, &one, &zero_u8})
                .find("w_scale"),
            std::string::npos);
  const Tensor two_scales = f32({2}, {1, 1});
  EXPECT_NE(kernel_error(qlinear_conv, n, {&x, &two_scales, &zero_u8, &w, &one, &zero_u8, &one, &zero_u8})
                .find("x_scale to be a scalar"),
            std::string::npos);
  const Tensor f32_zero = scalar(DType::f32, 0.0);
  EXPECT_NE(kernel_error(qlinear_conv, n, {&x, &one, &zero_u8, &w, &one, &zero_u8, &one, &f32_zero})
                .find("y_zero_point"),
            std::string::npos);
  EXPECT_EQ(kernel_error(qlinear_conv, n, {&x, &one, &zero_u8, &w, &one, &zero_u8, &one, &zero_u8}), "");
}

// --- BatchNormalization ----------------------------------------------------------------------------

TEST(RefBatchNormalization, InferenceUsesTheGivenStatistics) {
  const Tensor x = f32({1, 2, 1, 2}, {1, 3, 10, 20});
  const Tensor scale = f32({2}, {2, 0.5});
  const Tensor bias = f32({2}, {1, -1});
  const Tensor mean = f32({2}, {2, 10});
  const Tensor var = f32({2}, {4, 100});
  Node n = node("BatchNormalization", 15);
  n.attrs["epsilon"] = 0.0f;
  const Tensor y = run(batch_normalization, n, {&x, &scale, &bias, &mean, &var});
  // channel 0: (x - 2) / 2 * 2 + 1; channel 1: (x - 10) / 10 * 0.5 - 1.
  expect_near_all(y, {0, 2, -1, -0.5});
  // Rank 2 (N x C) works too.
  const Tensor x2 = f32({2, 2}, {4, 30, 0, 10});
  expect_near_all(run(batch_normalization, n, {&x2, &scale, &bias, &mean, &var}), {3, 0, -1, -1});
}

TEST(RefBatchNormalization, TrainingModeUsesBatchStatisticsAndMomentum) {
  // Channel 0 holds 1, 2, 3, 6 (mean 3, biased variance 3.5); channel 1 holds 0, 0, 4, 4 (mean 2, var 4).
  const Tensor x = f32({2, 2, 2}, {1, 2, 0, 0, 3, 6, 4, 4});
  const Tensor scale = f32({2}, {1, 2});
  const Tensor bias = f32({2}, {0, 1});
  const Tensor mean = f32({2}, {10, 20});
  const Tensor var = f32({2}, {1, 2});
  Node n = node("BatchNormalization", 15, {"y", "running_mean", "running_var"});
  n.attrs["training_mode"] = int64_t{1};
  n.attrs["momentum"] = 0.75f;
  n.attrs["epsilon"] = 0.5f;
  Outputs out(3);
  batch_normalization(n, {&x, &scale, &bias, &mean, &var}, out);
  const double d0 = std::sqrt(3.5 + 0.5), d1 = std::sqrt(4.0 + 0.5);
  expect_near_all(out[0], {(1 - 3) / d0, (2 - 3) / d0, (0 - 2) / d1 * 2 + 1, (0 - 2) / d1 * 2 + 1,
                           (3 - 3) / d0, (6 - 3) / d0, (4 - 2) / d1 * 2 + 1, (4 - 2) / d1 * 2 + 1});
  expect_near_all(out[1], {10 * 0.75 + 3 * 0.25, 20 * 0.75 + 2 * 0.25});
  expect_near_all(out[2], {1 * 0.75 + 3.5 * 0.25, 2 * 0.75 + 4 * 0.25});
}

TEST(RefBatchNormalization, RejectsBadParameters) {
  const Tensor x = f32({1, 2, 2}, {1, 2, 3, 4});
  const Tensor two = f32({2}, {1, 1});
  const Tensor three = f32({3}, {1, 1, 1});
  Node n = node("BatchNormalization", 15);
  EXPECT_NE(kernel_error(batch_normalization, n, {&x, &two, &three, &two, &two}).find("B of shape [2]"),
            std::string::npos);
  Node legacy = node("BatchNormalization", 9, {"y", "mean", "var"});
  EXPECT_NE(kernel_error(batch_normalization, legacy, {&x, &two, &two, &two, &two}).find("not supported"),
            std::string::npos);
  EXPECT_EQ(kernel_error(batch_normalization, n, {&x, &two, &two, &two, &two}), "");
}

// --- MaxPool ---------------------------------------------------------------------------------------

TEST(RefMaxPool, PaddingNeverWins) {
  const Tensor x = iota({1, 1, 2, 2}, -4);  // all negative: -4, -3, -2, -1
  Node n = node("MaxPool", 12);
  n.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  n.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  const Tensor y = run(max_pool, n, {&x});
  EXPECT_EQ(y.shape(), (Shape{1, 1, 3, 3}));
  EXPECT_EQ(values(y), (std::vector<double>{-4, -3, -3, -2, -1, -1, -2, -1, -1}));
}

TEST(RefMaxPool, IndicesInRowAndColumnMajorOrder) {
  const Tensor x = iota({1, 2, 5, 5}, 1);
  Node n = node("MaxPool", 12, {"y", "indices"});
  n.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  n.attrs["strides"] = std::vector<int64_t>{2, 2};
  Outputs out(2);
  max_pool(n, {&x}, out);
  EXPECT_EQ(values(out[0]), (std::vector<double>{7, 9, 17, 19, 32, 34, 42, 44}));
  EXPECT_EQ(out[1].dtype(), DType::s64);
  // Indices count from the start of the whole tensor, so channel 1 is offset by 25.
  EXPECT_EQ(values(out[1]), (std::vector<double>{6, 8, 16, 18, 31, 33, 41, 43}));
  n.attrs["storage_order"] = int64_t{1};
  max_pool(n, {&x}, out);
  // Column-major: row + col * 5; (1, 1) -> 6, (1, 3) -> 16, (3, 1) -> 8, (3, 3) -> 18.
  EXPECT_EQ(values(out[1]), (std::vector<double>{6, 16, 8, 18, 31, 41, 33, 43}));
}

TEST(RefMaxPool, TiesKeepTheFirstIndexAndNaNsAreSkipped) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Tensor x = f32({1, 1, 6}, {2, 2, nan, 1, nan, nan});
  Node n = node("MaxPool", 12, {"y", "indices"});
  n.attrs["kernel_shape"] = std::vector<int64_t>{2};
  Outputs out(2);
  max_pool(n, {&x}, out);
  // Windows [2, 2], [2, nan], [nan, 1], [1, nan], [nan, nan].
  ASSERT_EQ(out[0].numel(), 5);
  EXPECT_EQ(values(out[0]).at(0), 2);
  EXPECT_EQ(values(out[0]).at(1), 2);
  EXPECT_EQ(values(out[0]).at(2), 1);
  EXPECT_EQ(values(out[0]).at(3), 1);
  EXPECT_TRUE(std::isnan(out[0].get(4)));  // nothing but NaN to choose from
  EXPECT_EQ(values(out[1]), (std::vector<double>{0, 1, 3, 3, 4}));
}

TEST(RefMaxPool, CeilModeDilationsAndPads) {
  const Tensor x = iota({1, 1, 4, 4}, 1);
  Node n = node("MaxPool", 12);
  n.attrs["kernel_shape"] = std::vector<int64_t>{3, 3};
  n.attrs["strides"] = std::vector<int64_t>{2, 2};
  n.attrs["ceil_mode"] = int64_t{1};
  EXPECT_EQ(values(run(max_pool, n, {&x})), (std::vector<double>{11, 12, 15, 16}));
  Node d = node("MaxPool", 12);
  d.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  d.attrs["dilations"] = std::vector<int64_t>{2, 2};
  EXPECT_EQ(values(run(max_pool, d, {&x})), (std::vector<double>{11, 12, 15, 16}));
  const Tensor row = f32({1, 1, 5}, {3, 1, 4, 1, 5});
  Node p = node("MaxPool", 12);
  p.attrs["kernel_shape"] = std::vector<int64_t>{2};
  p.attrs["strides"] = std::vector<int64_t>{2};
  p.attrs["pads"] = std::vector<int64_t>{1, 0};
  // Windows [-1, 0], [1, 2], [3, 4].
  EXPECT_EQ(values(run(max_pool, p, {&row})), (std::vector<double>{3, 4, 5}));
}

TEST(RefMaxPool, EightBitTypesAnd3d) {
  const Tensor u = make(DType::u8, {1, 1, 4}, {200, 3, 255, 0});
  const Tensor s = make(DType::s8, {1, 1, 4}, {-128, -5, 127, -1});
  Node n = node("MaxPool", 12);
  n.attrs["kernel_shape"] = std::vector<int64_t>{2};
  n.attrs["pads"] = std::vector<int64_t>{1, 1};
  const Tensor yu = run(max_pool, n, {&u});
  EXPECT_EQ(yu.dtype(), DType::u8);
  EXPECT_EQ(values(yu), (std::vector<double>{200, 200, 255, 255, 0}));
  const Tensor ys = run(max_pool, n, {&s});
  EXPECT_EQ(ys.dtype(), DType::s8);
  EXPECT_EQ(values(ys), (std::vector<double>{-128, -5, 127, 127, -1}));

  const Tensor cube = pattern({1, 2, 3, 4, 5}, 7);
  Node c = node("MaxPool", 12);
  c.attrs["kernel_shape"] = std::vector<int64_t>{2, 3, 2};
  c.attrs["strides"] = std::vector<int64_t>{1, 1, 2};
  const Tensor y = run(max_pool, c, {&cube});
  ASSERT_EQ(y.shape(), (Shape{1, 2, 2, 2, 2}));
  for (int64_t ch = 0; ch < 2; ++ch) {
    for (int64_t od = 0; od < 2; ++od) {
      for (int64_t oh = 0; oh < 2; ++oh) {
        for (int64_t ow = 0; ow < 2; ++ow) {
          double best = -1e9;
          for (int64_t kd = 0; kd < 2; ++kd) {
            for (int64_t kh = 0; kh < 3; ++kh) {
              for (int64_t kw = 0; kw < 2; ++kw) {
                best = std::max(best, cube.get(((ch * 3 + od + kd) * 4 + oh + kh) * 5 + ow * 2 + kw));
              }
            }
          }
          EXPECT_EQ(y.get(((ch * 2 + od) * 2 + oh) * 2 + ow), best);
        }
      }
    }
  }
}

TEST(RefMaxPool, RejectsBadInputs) {
  const Tensor x = iota({1, 1, 4, 4});
  Node n = node("MaxPool", 12);
  EXPECT_NE(kernel_error(max_pool, n, {&x}).find("kernel_shape"), std::string::npos);
  n.attrs["kernel_shape"] = std::vector<int64_t>{2};
  EXPECT_NE(kernel_error(max_pool, n, {&x}).find("kernel_shape has 1 entries"), std::string::npos);
  n.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  n.attrs["storage_order"] = int64_t{2};
  EXPECT_NE(kernel_error(max_pool, n, {&x}).find("storage_order"), std::string::npos);
  Node ok = node("MaxPool", 12);
  ok.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  const Tensor x_s32 = make(DType::s32, {1, 1, 2, 2}, {1, 2, 3, 4});
  EXPECT_NE(kernel_error(max_pool, ok, {&x_s32}).find("got s32"), std::string::npos);
}

// --- AveragePool -----------------------------------------------------------------------------------

TEST(RefAveragePool, CountIncludePadChangesTheDivisor) {
  const Tensor x = iota({1, 1, 3, 3}, 1);
  Node n = node("AveragePool", 11);
  n.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  n.attrs["pads"] = std::vector<int64_t>{1, 1, 0, 0};
  const Tensor excl = run(average_pool, n, {&x});
  EXPECT_EQ(excl.shape(), (Shape{1, 1, 3, 3}));
  // Top-left window holds only x[0][0] = 1; the next one x[0][0..1] = 1, 2.
  expect_near_all(excl, {1, 1.5, 2.5, 2.5, 3, 4, 5.5, 6, 7});
  n.attrs["count_include_pad"] = int64_t{1};
  expect_near_all(run(average_pool, n, {&x}), {0.25, 0.75, 1.25, 1.25, 3, 4, 2.75, 6, 7});
}

TEST(RefAveragePool, CeilModeNeverCountsPastThePaddedInput) {
  const Tensor x = iota({1, 1, 6}, 1);  // 1..6
  Node n = node("AveragePool", 11);
  n.attrs["kernel_shape"] = std::vector<int64_t>{3};
  n.attrs["strides"] = std::vector<int64_t>{2};
  n.attrs["pads"] = std::vector<int64_t>{1, 1};
  n.attrs["ceil_mode"] = int64_t{1};
  n.attrs["count_include_pad"] = int64_t{1};
  // Windows cover positions [-1, 1], [1, 3], [3, 5], [5, 7]: -1 and 6 are pads, 7 lies past them.
  const Tensor incl = run(average_pool, n, {&x});
  EXPECT_EQ(incl.shape(), (Shape{1, 1, 4}));
  expect_near_all(incl, {3.0 / 3, 9.0 / 3, 15.0 / 3, 6.0 / 2});
  n.attrs["count_include_pad"] = int64_t{0};
  expect_near_all(run(average_pool, n, {&x}), {3.0 / 2, 9.0 / 3, 15.0 / 3, 6.0});

  const Tensor sq = iota({1, 1, 4, 4}, 1);
  Node c = node("AveragePool", 11);
  c.attrs["kernel_shape"] = std::vector<int64_t>{3, 3};
  c.attrs["strides"] = std::vector<int64_t>{2, 2};
  c.attrs["ceil_mode"] = int64_t{1};
  expect_near_all(run(average_pool, c, {&sq}), {6, 7.5, 12, 13.5});
}

TEST(RefAveragePool, SameLowerAnd3d) {
  const Tensor x = iota({1, 1, 4}, 1);
  Node n = node("AveragePool", 11);
  n.attrs["kernel_shape"] = std::vector<int64_t>{2};
  n.attrs["auto_pad"] = std::string("SAME_LOWER");
  expect_near_all(run(average_pool, n, {&x}), {1, 1.5, 2.5, 3.5});
  n.attrs["auto_pad"] = std::string("SAME_UPPER");
  expect_near_all(run(average_pool, n, {&x}), {1.5, 2.5, 3.5, 4});

  const Tensor cube = iota({1, 1, 2, 2, 2});
  Node c = node("AveragePool", 11);
  c.attrs["kernel_shape"] = std::vector<int64_t>{2, 2, 2};
  expect_near_all(run(average_pool, c, {&cube}), {3.5});
  const Tensor x_u8 = make(DType::u8, {1, 1, 2}, {1, 2});
  EXPECT_NE(kernel_error(average_pool, n, {&x_u8}).find("f32 input X, got u8"), std::string::npos);
}

// --- GlobalAveragePool -----------------------------------------------------------------------------

TEST(RefGlobalAveragePool, AveragesEverySpatialDim) {
  const Tensor x = iota({2, 2, 2, 3});
  Node n = node("GlobalAveragePool", 1);
  const Tensor y = run(global_average_pool, n, {&x});
  EXPECT_EQ(y.shape(), (Shape{2, 2, 1, 1}));
  expect_near_all(y, {2.5, 8.5, 14.5, 20.5});
  const Tensor x3 = iota({1, 1, 5});
  const Tensor y3 = run(global_average_pool, n, {&x3});
  EXPECT_EQ(y3.shape(), (Shape{1, 1, 1}));
  expect_near_all(y3, {2});
  const Tensor x2 = iota({2, 2});
  EXPECT_NE(kernel_error(global_average_pool, n, {&x2}).find("rank >= 3"), std::string::npos);
}

}  // namespace
}  // namespace nibble::ref
