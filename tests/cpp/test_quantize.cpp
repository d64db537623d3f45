// Post-training quantization: requantization factors, the calibration passes, quantize_model on
// the committed Fashion-MNIST ResNet, model-directory round trips and the QDQ ONNX round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <random>

#include <onnx/onnx_pb.h>

#include "nibble/dataset.h"
#include "nibble/dtype.h"
#include "nibble/engine.h"
#include "nibble/model_dir.h"
#include "nibble/model_loader.h"
#include "nibble/qdq_export.h"
#include "quant/dpq.h"
#include "quant/gptq.h"
#include "quant/observer.h"
#include "quant/qdq_import.h"
#include "quant/quantize.h"
#include "test_util.h"

namespace nibble {
namespace {

using testing_util::error_of;

const std::string kModel = testing_util::source_dir() + "/models/fmnist_resnet.onnx";

// The first `n` Fashion-MNIST images of a split, N x 1 x 28 x 28 in [0, 1].
Tensor images(int64_t n, const std::string& split) {
  const Dataset d = load_dataset("fashion-mnist:" + split, "", n);
  return image_batch_f32(d, 0, d.size());
}

Tensor slice(const Tensor& t, int64_t lo, int64_t hi) {
  Shape s = t.shape();
  s[0] = hi - lo;
  Tensor out(DType::f32, s);
  const int64_t per = t.numel() / t.dim(0);
  std::copy(t.data<float>() + lo * per, t.data<float>() + hi * per, out.data<float>());
  return out;
}

quant::CalibTable calibrate(const Graph& g, const Tensor& x, int64_t batch, const quant::CalibSpec& spec, int bits = 8) {
  quant::RangeObserver obs(g);
  for (int64_t i = 0; i < x.dim(0); i += batch) obs.observe_ranges(slice(x, i, std::min(x.dim(0), i + batch)));
  obs.start_histograms();
  for (int64_t i = 0; i < x.dim(0); i += batch) obs.observe_histograms(slice(x, i, std::min(x.dim(0), i + batch)));
  return obs.table(spec, bits, {"test"});
}

Tensor run_graph(const Graph& g, const Tensor& x) { return Engine(g, Backend::cpu).run({x}).at(0); }

Graph quantized(const ModelDir& m) {
  Graph g = graph_from_model_dir(m);
  fuse_int_conv_epilogues(g);
  return g;
}

double cosine(const Tensor& a, const Tensor& b) {
  double xy = 0, xx = 0, yy = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    xy += a.get(i) * b.get(i);
    xx += a.get(i) * a.get(i);
    yy += b.get(i) * b.get(i);
  }
  return xy / std::sqrt(xx * yy);
}

int argmax_agreement(const Tensor& a, const Tensor& b) {
  int same = 0;
  const int64_t k = a.dim(1);
  for (int64_t r = 0; r < a.dim(0); ++r) {
    const float* pa = a.data<float>() + r * k;
    const float* pb = b.data<float>() + r * k;
    same += (std::max_element(pa, pa + k) - pa) == (std::max_element(pb, pb + k) - pb);
  }
  return same;
}

TEST(Requant, FactorsFitSixteenBitsAndKeepTheRatio) {
  const std::vector<double> ratio = {0.5, 0.0123, 3.75, 1e-4};
  const auto rq = quant::choose_requant(ratio);
  ASSERT_TRUE(rq.has_value());
  EXPECT_LE(*std::max_element(rq->factor.begin(), rq->factor.end()), 65535);
  // The largest ratio uses most of the 16 bits: doubling the shift would overflow.
  EXPECT_GT(ratio[2] * std::ldexp(1.0, rq->shift + 1), 65535.0);
  for (size_t c = 0; c < ratio.size(); ++c) {
    EXPECT_NEAR(rq->factor[c] / std::ldexp(1.0, rq->shift), ratio[c], std::ldexp(0.5, -rq->shift) + 1e-12);
  }
  EXPECT_FALSE(quant::choose_requant({70000.0}).has_value());
  EXPECT_EQ(quant::choose_requant({65535.0})->shift, 0);
}

TEST(Observer, TablesDoNotDependOnBatchSizeOrOrder) {
  const Graph g = load_model(kModel);
  const Tensor x = images(24, "train");
  // The same inputs, reversed.
  Tensor rev(DType::f32, x.shape());
  const int64_t per = x.numel() / x.dim(0);
  for (int64_t i = 0; i < x.dim(0); ++i) {
    std::copy(x.data<float>() + i * per, x.data<float>() + (i + 1) * per, rev.data<float>() + (x.dim(0) - 1 - i) * per);
  }
  for (const char* method : {"max", "percentile:99.9", "entropy", "mse"}) {
    const auto spec = quant::CalibSpec::parse(method);
    const auto a = calibrate(g, x, 24, spec), b = calibrate(g, x, 5, spec), c = calibrate(g, rev, 7, spec);
    ASSERT_EQ(a.entries.size(), b.entries.size());
    EXPECT_EQ(quant::format_calib(a), quant::format_calib(b)) << method;
    EXPECT_EQ(quant::format_calib(a), quant::format_calib(c)) << method;
  }
}

TEST(Observer, RangesAreNonNegativeAfterRelu) {
  const Graph g = load_model(kModel);
  const auto t = calibrate(g, images(8, "train"), 8, quant::CalibSpec::parse("max"));
  int relus = 0;
  for (const auto& e : t.entries) {
    EXPECT_LE(e.lo, e.hi) << e.tensor;
    if (e.tensor.find("Relu") != std::string::npos) {
      ++relus;
      EXPECT_EQ(e.lo, 0.0) << e.tensor;
      EXPECT_GT(e.hi, 0.0) << e.tensor;
    }
  }
  EXPECT_EQ(relus, 9);
  EXPECT_EQ(t.find("input")->lo, 0.0);
}

// ||X (W - s q)^T||^2 summed over rows: the output error GPTQ minimizes.
double output_error(const std::vector<double>& x, int64_t n, const std::vector<double>& w, const std::vector<double>& q,
                    const std::vector<double>& scale, int64_t rows, int64_t cols) {
  double err = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < rows; ++k) {
      double d = 0.0;
      for (int64_t j = 0; j < cols; ++j) {
        d += x[static_cast<size_t>(i * cols + j)] *
             (w[static_cast<size_t>(k * cols + j)] - scale[static_cast<size_t>(k)] * q[static_cast<size_t>(k * cols + j)]);
      }
      err += d * d;
    }
  }
  return err;
}

// n inputs of `cols` correlated features (each mixes a few shared factors) as rows of x, and
// their Hessian sum(x x^T) (cols x cols).
struct CorrelatedInputs {
  std::vector<double> x, h;
};
CorrelatedInputs correlated_inputs(int64_t n, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<double> g(0.0, 1.0);
  CorrelatedInputs c;
  c.x.resize(static_cast<size_t>(n * cols));
  for (int64_t i = 0; i < n; ++i) {
    const double f0 = g(rng), f1 = g(rng);
    for (int64_t j = 0; j < cols; ++j) c.x[static_cast<size_t>(i * cols + j)] = f0 + 0.5 * f1 * (j % 3) + 0.3 * g(rng);
  }
  c.h.assign(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t a = 0; a < cols; ++a) {
      for (int64_t b = 0; b < cols; ++b) {
        c.h[static_cast<size_t>(a * cols + b)] += c.x[static_cast<size_t>(i * cols + a)] * c.x[static_cast<size_t>(i * cols + b)];
      }
    }
  }
  return c;
}

TEST(Gptq, BeatsRoundingOnCorrelatedInputsAndEqualsItOnWhiteOnes) {
  const int64_t rows = 8, cols = 24, n = 400;
  std::mt19937 rng(7);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> w(static_cast<size_t>(rows * cols));
  for (auto& v : w) v = g(rng);
  const auto [x, h] = correlated_inputs(n, cols, rng);
  const double levels = 7.0;
  std::vector<double> scale(rows);
  std::vector<double> rtn(static_cast<size_t>(rows * cols));
  for (int64_t k = 0; k < rows; ++k) {
    double top = 0.0;
    for (int64_t j = 0; j < cols; ++j) top = std::max(top, std::abs(w[static_cast<size_t>(k * cols + j)]));
    scale[static_cast<size_t>(k)] = top / levels;
    for (int64_t j = 0; j < cols; ++j) {
      rtn[static_cast<size_t>(k * cols + j)] = std::nearbyint(w[static_cast<size_t>(k * cols + j)] / scale[static_cast<size_t>(k)]);
    }
  }
  const auto q = quant::gptq_quantize(w, rows, cols, h, scale, levels);
  for (double v : q) {
    EXPECT_EQ(v, std::nearbyint(v));
    EXPECT_LE(std::abs(v), levels);
  }
  const double e_gptq = output_error(x, n, w, q, scale, rows, cols), e_rtn = output_error(x, n, w, rtn, scale, rows, cols);
  EXPECT_LT(e_gptq, 0.7 * e_rtn) << e_gptq << " vs " << e_rtn;
  // With a diagonal Hessian no column informs another: GPTQ is plain rounding.
  std::vector<double> eye(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t j = 0; j < cols; ++j) eye[static_cast<size_t>(j * cols + j)] = 1.0;
  EXPECT_EQ(quant::gptq_quantize(w, rows, cols, eye, scale, levels), rtn);
}

TEST(Dpq, GroupAwareOrderKeepsGroupsWhole) {
  // Groups of 3: {0,1,2} top 5, {3,4,5} top 9, {6,7} top 1 -> group 1, group 0, group 2.
  const std::vector<double> diag = {1, 5, 2, 9, 0.5, 3, 1, 0.25};
  EXPECT_EQ(quant::group_aware_order(diag, 3), (std::vector<int64_t>{3, 5, 4, 1, 2, 0, 6, 7}));
  EXPECT_EQ(quant::group_aware_order(diag, 8), (std::vector<int64_t>{3, 1, 5, 2, 0, 6, 4, 7}));
}

TEST(Dpq, CompositeRoundingWithCompensationBeatsPlainRounding) {
  const int64_t rows = 8, cols = 48, n = 400, group = 16;
  std::mt19937 rng(11);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> w(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < w.size(); ++i) w[i] = g(rng) * (i % 7 == 0 ? 3.0 : 0.05);  // channels and groups of unlike range
  const auto [x, h] = correlated_inputs(n, cols, rng);
  // The weights each result computes with, and ||X (W - W_hat)^T||^2.
  auto error = [&](const quant::DpqWeights& d) {
    const int64_t groups = static_cast<int64_t>(d.group_scale.size()) / rows;
    std::vector<double> deq(w.size()), unit(static_cast<size_t>(rows), 1.0);
    for (int64_t k = 0; k < rows; ++k) {
      for (int64_t j = 0; j < cols; ++j) {
        const size_t i = static_cast<size_t>(k * cols + j);
        EXPECT_EQ(d.levels[i], std::nearbyint(d.levels[i]));
        EXPECT_LE(std::abs(d.levels[i]), 7.0);
        deq[i] = quant::dpq_weight(d.levels[i], d.group_scale[static_cast<size_t>(k * groups + j / group)], d.tensor_scale);
      }
    }
    return output_error(x, n, w, deq, unit, rows, cols);
  };
  const quant::DpqWeights plain = quant::dpq_quantize(w, rows, cols, {}, group, false);
  double top = 0.0;
  for (double v : w) top = std::max(top, std::abs(v));
  EXPECT_EQ(plain.tensor_scale, std::exp2(std::round(std::log2(plain.tensor_scale))));  // a power of two
  EXPECT_GT(top / plain.tensor_scale, 224.0);
  EXPECT_LE(top / plain.tensor_scale, 448.0);
  ASSERT_EQ(plain.group_scale.size(), static_cast<size_t>(rows * cols / group));
  // Plain rounding through INT4 then FP8: the nearest level in the weight's group.
  for (int64_t k = 0; k < rows; ++k) {
    for (int64_t j = 0; j < cols; ++j) {
      const double gs = plain.group_scale[static_cast<size_t>(k * (cols / group) + j / group)];
      const double want = std::clamp(std::nearbyint(w[static_cast<size_t>(k * cols + j)] / plain.tensor_scale / gs), -7.0, 7.0);
      ASSERT_EQ(plain.levels[static_cast<size_t>(k * cols + j)], want) << k << " " << j;
    }
  }
  const quant::DpqWeights dpq = quant::dpq_quantize(w, rows, cols, h, group, true);
  const quant::DpqWeights dpq_stored = quant::dpq_quantize(w, rows, cols, h, group, false);
  for (size_t i = 0; i < dpq.group_scale.size(); ++i) {  // fitted on the compensated weights, at most the plain maximum
    EXPECT_GT(dpq.group_scale[i], 0.0f);
  }
  const double e_plain = error(plain), e_dpq = error(dpq), e_stored = error(dpq_stored);
  EXPECT_LT(e_dpq, 0.7 * e_plain) << e_dpq << " vs " << e_plain;
  EXPECT_LT(e_stored, 0.7 * e_plain) << e_stored << " vs " << e_plain;
  // Group scales beat one scale per channel: INT4 with per-channel scales (GPTQ) errs more here.
  std::vector<double> scale(static_cast<size_t>(rows));
  for (int64_t k = 0; k < rows; ++k) {
    double m = 0.0;
    for (int64_t j = 0; j < cols; ++j) m = std::max(m, std::abs(w[static_cast<size_t>(k * cols + j)]));
    scale[static_cast<size_t>(k)] = m / 7.0;
  }
  const auto q = quant::gptq_quantize(w, rows, cols, h, scale, 7.0);
  EXPECT_LT(e_dpq, output_error(x, n, w, q, scale, rows, cols));
  // A diagonal Hessian: nothing to compensate, so DPQ is plain composite rounding.
  std::vector<double> eye(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t j = 0; j < cols; ++j) eye[static_cast<size_t>(j * cols + j)] = 1.0 + static_cast<double>(j % 5);
  EXPECT_EQ(quant::dpq_quantize(w, rows, cols, eye, group, true).levels, plain.levels);
}

TEST(Dpq, AimingThroughFp8InputsLowersTheOutputError) {
  // The inputs' FP8 form x8 differs from x by e4m3's rounding (about 3% of each value):
  // rounding W against sum(x8 x8^T) and sum(x x8^T) must leave a smaller ||W X - W_hat X8||
  // than rounding against the FP32 Hessian alone (measured: 2.7% smaller; the rounding of each
  // row is greedy, so enough rows are needed for the mean to show).
  const int64_t rows = 64, cols = 32, n = 600, group = 8;
  std::mt19937 rng(5);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> w(static_cast<size_t>(rows * cols));
  for (auto& v : w) v = g(rng);
  const auto [x, h] = correlated_inputs(n, cols, rng);
  const double scale = 1.0 / 16.0;
  std::vector<double> x8(x.size());
  for (size_t i = 0; i < x.size(); ++i) x8[i] = scale * e4m3_bits_to_f32(f32_to_e4m3_bits(static_cast<float>(x[i] / scale)));
  std::vector<double> h8(static_cast<size_t>(cols * cols), 0.0), c(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t a = 0; a < cols; ++a) {
      for (int64_t b = 0; b < cols; ++b) {
        h8[static_cast<size_t>(a * cols + b)] += x8[static_cast<size_t>(i * cols + a)] * x8[static_cast<size_t>(i * cols + b)];
        c[static_cast<size_t>(a * cols + b)] += x[static_cast<size_t>(i * cols + a)] * x8[static_cast<size_t>(i * cols + b)];
      }
    }
  }
  auto error = [&](const quant::DpqWeights& d) {  // ||W X - W_hat X8||^2
    const int64_t groups = static_cast<int64_t>(d.group_scale.size()) / rows;
    double err = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < rows; ++k) {
        double e = 0.0;
        for (int64_t j = 0; j < cols; ++j) {
          const size_t at = static_cast<size_t>(k * cols + j);
          e += w[at] * x[static_cast<size_t>(i * cols + j)] -
               quant::dpq_weight(d.levels[at], d.group_scale[static_cast<size_t>(k * groups + j / group)], d.tensor_scale) *
                   x8[static_cast<size_t>(i * cols + j)];
        }
        err += e * e;
      }
    }
    return err;
  };
  const double plain = error(quant::dpq_quantize(w, rows, cols, h, group, true));
  const double aimed = error(quant::dpq_quantize(w, rows, cols, h8, group, true, 0, false, c));
  EXPECT_LT(aimed, 0.99 * plain) << aimed << " vs " << plain;
}

TEST(Gptq, HessiansDoNotDependOnHowTheDataIsSplit) {
  const Graph g = load_model(kModel);
  const Tensor x = images(12, "train");
  quant::HessianCollector one(g), split(g);
  one.observe(x, 0);
  split.observe(slice(x, 5, 12), 5);
  split.observe(slice(x, 0, 5), 0);
  const auto a = one.hessians(), b = split.hessians();
  ASSERT_EQ(a.size(), 12u);
  for (const auto& [node, h] : a) {
    const auto& hb = b.at(node);
    ASSERT_EQ(h.size(), hb.size());
    for (size_t i = 0; i < h.size(); ++i) ASSERT_NEAR(h[i], hb[i], 1e-9 * (1.0 + std::abs(h[i]))) << node;
  }
}

class Quantize : public testing_util::TempDirTest {
 protected:
  static void SetUpTestSuite() {
    graph_ = new Graph(load_model(kModel));
    calib_x_ = new Tensor(images(200, "train"));
    test_x_ = new Tensor(images(64, "test"));
    table_ = new quant::CalibTable(calibrate(*graph_, *calib_x_, 16, quant::CalibSpec::parse("max")));
    fp32_ = new Tensor(run_graph(*graph_, *test_x_));
  }
  static void TearDownTestSuite() {
    delete graph_;
    delete calib_x_;
    delete test_x_;
    delete table_;
    delete fp32_;
  }
  static Graph* graph_;
  static Tensor* calib_x_;
  static Tensor* test_x_;
  static quant::CalibTable* table_;
  static Tensor* fp32_;
};
Graph* Quantize::graph_ = nullptr;
Tensor* Quantize::calib_x_ = nullptr;
Tensor* Quantize::test_x_ = nullptr;
quant::CalibTable* Quantize::table_ = nullptr;
Tensor* Quantize::fp32_ = nullptr;

TEST_F(Quantize, EveryLayerFloatReproducesTheFp32Model) {
  // With every layer excluded, only BatchNormalization folding and the float layer types remain.
  quant::QuantizeOptions opt;
  for (const auto& [layer, node] : quant::quantizable_layers(*graph_)) opt.exclude.insert(layer);
  const auto r = quant::quantize_model(*graph_, *table_, opt);
  for (const auto& l : r.layers) EXPECT_EQ(l.precision, quant::Precision::f32) << l.layer;
  const Tensor y = run_graph(quantized(r.model), *test_x_);
  ASSERT_EQ(y.shape(), fp32_->shape());
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_NEAR(y.get(i), fp32_->get(i), 2e-4 * (1 + std::abs(fp32_->get(i))));
}

TEST_F(Quantize, Int8FusesEveryConvAndTracksFp32) {
  const auto r = quant::quantize_model(*graph_, *table_, {});
  ASSERT_EQ(r.layers.size(), 12u);
  for (const auto& l : r.layers) EXPECT_EQ(l.precision, quant::Precision::int8) << l.layer;
  Graph g = graph_from_model_dir(r.model);
  EXPECT_EQ(fuse_int_conv_epilogues(g), 11);
  const Tensor y = run_graph(g, *test_x_);
  EXPECT_GT(cosine(y, *fp32_), 0.999);
  EXPECT_GE(argmax_agreement(y, *fp32_), 62);
  // The integer path: 11 fused convs, one integer linear layer, no float conv.
  int fused = 0, linear = 0;
  for (const Node& n : g.nodes) {
    fused += n.op_type == "nibble:IntConvFused";
    linear += n.op_type == "nibble:IntLinear";
    EXPECT_NE(n.op_type, "Conv");
  }
  EXPECT_EQ(fused, 11);
  EXPECT_EQ(linear, 1);
}

// A conv read only by a later conv's residual Add (the downsampling blocks' conv2 here, which the
// exporter puts before the shortcut conv) hands over its s32 sums by default; with
// requantize_shortcuts it is requantized at its calibrated range instead, so no fused conv
// writes s32 and the network still tracks FP32.
TEST_F(Quantize, RequantizedShortcutsLeaveNoS32BetweenLayers) {
  auto s32_outputs = [](const Graph& g) {
    int n = 0;
    for (const Node& node : g.nodes) {
      // An s32 output: no requantization, or one to more than 8 bits (a residual rescale).
      const bool conv = node.op_type == "nibble:IntConvFused" || node.op_type == "nibble:IntConv";
      n += conv && (node.inputs.size() <= 4 || node.inputs[4].empty() || node.attr_int("bits", 32) > 8);
    }
    return n;
  };
  quant::QuantizeOptions sums;
  sums.requantize_shortcuts = false;
  Graph exact = graph_from_model_dir(quant::quantize_model(*graph_, *table_, sums).model);
  EXPECT_EQ(fuse_int_conv_epilogues(exact), 11);
  EXPECT_GT(s32_outputs(exact), 0);
  const auto r = quant::quantize_model(*graph_, *table_, {});  // the default requantizes them
  Graph g = graph_from_model_dir(r.model);
  EXPECT_EQ(fuse_int_conv_epilogues(g), 11);
  EXPECT_EQ(s32_outputs(g), 0);
  const Tensor y = run_graph(g, *test_x_);
  EXPECT_GT(cosine(y, *fp32_), 0.999);
  EXPECT_GE(argmax_agreement(y, *fp32_), 62);
}

TEST_F(Quantize, FourBitWeightsAreSmallerAndFirstLastStayAtEightBits) {
  quant::QuantizeOptions opt;
  opt.precision = quant::Precision::int4;
  const auto r = quant::quantize_model(*graph_, *table_, opt);
  EXPECT_EQ(r.layers.front().precision, quant::Precision::int8);
  EXPECT_EQ(r.layers.back().precision, quant::Precision::int8);
  for (size_t i = 1; i + 1 < r.layers.size(); ++i) EXPECT_EQ(r.layers[i].precision, quant::Precision::int4);
  const LayerFile& conv = r.model.layer("layers_layers_0_conv1");
  EXPECT_EQ(conv.get_string("compute_mode"), "u4s4s32");
  EXPECT_EQ(conv.get_tensor("weight").dtype(), DType::s4);
  for (int64_t i = 0; i < conv.get_tensor("weight").numel(); ++i) EXPECT_LE(std::abs(conv.get_tensor("weight").get(i)), 7);
  const Tensor y = run_graph(quantized(r.model), *test_x_);
  EXPECT_GT(cosine(y, *fp32_), 0.9);
  // w4a8 keeps 8-bit activations.
  opt.precision = quant::Precision::w4a8;
  const auto w = quant::quantize_model(*graph_, *table_, opt);
  EXPECT_EQ(w.model.layer("layers_layers_0_conv1").get_string("compute_mode"), "u8s4s32");
}

TEST_F(Quantize, W4a8Fp8ComputesInE4m3AndTracksFp32) {
  quant::QuantizeOptions opt;
  opt.precision = quant::Precision::w4a8_fp8;
  const auto r = quant::quantize_model(*graph_, *table_, opt);
  EXPECT_EQ(r.layers.front().precision, quant::Precision::int8);
  EXPECT_EQ(r.layers[1].precision, quant::Precision::w4a8_fp8);
  const LayerFile& conv = r.model.layer("layers_layers_0_conv1");
  EXPECT_EQ(conv.get_string("compute_mode"), "f8s4f32");
  EXPECT_EQ(conv.get_tensor("weight").dtype(), DType::s4);
  const Graph g = quantized(r.model);
  int fp8 = 0;
  for (const Node& n : g.nodes) fp8 += n.op_type == "nibble:Fp8Conv";
  EXPECT_EQ(fp8, 10);
  // A residual Add after an FP8 layer reads the e4m3 form of its shortcut (codes times their
  // scale), as an INT8 layer reads the 8-bit form: no f32 tensor passes between FP8 blocks.
  int adds = 0;
  for (const auto& [name, layer] : r.model.layers) {
    if (layer.type != "Add") continue;
    const std::vector<std::string> in = split_name_list(layer.get_string("inputs"));
    ASSERT_EQ(in.size(), 2u) << name;
    const LayerFile& deq = r.model.layer(in[1]);
    EXPECT_EQ(deq.type, "Dequantize") << name;
    const LayerFile& codes = r.model.layer(split_name_list(deq.get_string("inputs")).at(0));
    EXPECT_EQ(codes.type, "QuantizeFloat") << name;
    EXPECT_EQ(codes.get_string("compute_mode"), "f32f32f8") << name;
    EXPECT_EQ(deq.get_string("scale"), codes.get_string("scale")) << name;
    ++adds;
  }
  EXPECT_GT(adds, 0);
  const Tensor y = run_graph(g, *test_x_);
  // 4-bit weights rounded to nearest (no GPTQ) lose some accuracy; docs/accuracy.md has the
  // measured top-1.
  EXPECT_GT(cosine(y, *fp32_), 0.95);
  EXPECT_GE(argmax_agreement(y, *fp32_), 54);
  // The reference and CPU engines agree exactly (the FP8 sum is exact).
  const Tensor ref = Engine(g, Backend::ref).run({*test_x_}).at(0);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(y.get(i), ref.get(i));
}

TEST_F(Quantize, DpqWritesGroupScalesThatEveryEngineRunsAlike) {
  quant::QuantizeOptions opt;
  opt.precision = quant::Precision::w4a8_fp8;
  opt.dpq = true;
  opt.group_size = 16;
  quant::HessianCollector hc(*graph_);
  hc.observe(*calib_x_, 0);
  opt.hessians = hc.hessians();
  const auto r = quant::quantize_model(*graph_, *table_, opt);
  const LayerFile& conv = r.model.layer("layers_layers_0_conv1");
  EXPECT_EQ(conv.get_string("compute_mode"), "f8s4f32");
  EXPECT_EQ(conv.get_int("weight_group_size"), 16);
  const Tensor& w = conv.get_tensor("weight");
  const Tensor& gs = conv.get_tensor("weight_group_scale");
  EXPECT_EQ(gs.shape(), (Shape{w.dim(0), (w.numel() / w.dim(0) + 15) / 16}));
  const Tensor& ws = conv.get_tensor("weight_scale");
  for (int64_t i = 1; i < ws.numel(); ++i) EXPECT_EQ(ws.get(i), ws.get(0));  // one scale per tensor
  write_model_dir(r.model, path("dpq.nbl"));
  const Graph g = load_model(path("dpq.nbl"));
  const Tensor y = run_graph(g, *test_x_);
  EXPECT_GT(cosine(y, *fp32_), 0.99);
  const Tensor ref = Engine(g, Backend::ref).run({*test_x_}).at(0);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(y.get(i), ref.get(i));
  // A group scale that is not a positive number is refused with the layer's file named.
  ModelDir bad = r.model;
  Tensor broken = gs;
  broken.set(3, -1.0);
  for (auto& f : bad.layers.at("layers_layers_0_conv1").fields) {
    if (f.key == "weight_group_scale") f.tensor = broken;
  }
  write_model_dir(bad, path("bad.nbl"));
  try {
    load_model(path("bad.nbl"));
    ADD_FAILURE() << "a negative group scale was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers_layers_0_conv1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not a positive finite number"), std::string::npos) << e.what();
  }
}

TEST_F(Quantize, MixedPrecisionRescalesResidualsOfAnyWidth) {
  // An int8 conv whose residual comes from a 4-bit tensor needs a large rescale factor.
  quant::QuantizeOptions opt;
  opt.first_last_8bit = false;
  opt.layer_precision["layers_layers_3_conv1"] = quant::Precision::int4;
  const auto r = quant::quantize_model(*graph_, *table_, opt);
  for (const auto& l : r.layers) EXPECT_NE(l.precision, quant::Precision::f32) << l.layer << ": " << l.note;
  const Tensor y = run_graph(quantized(r.model), *test_x_);
  EXPECT_GT(cosine(y, *fp32_), 0.99);
}

TEST_F(Quantize, ModelDirectoryRoundTripGivesTheSameOutputs) {
  quant::QuantizeOptions opt;
  opt.precision = quant::Precision::int4;
  auto r = quant::quantize_model(*graph_, *table_, opt);
  const Tensor before = run_graph(quantized(r.model), *test_x_);
  write_model_dir(r.model, path("q.nbl"));
  const Tensor after = run_graph(load_model(path("q.nbl")), *test_x_);
  ASSERT_EQ(before.shape(), after.shape());
  for (int64_t i = 0; i < before.numel(); ++i) ASSERT_EQ(before.get(i), after.get(i));
  // The reference and CPU backends agree exactly on the quantized model.
  const Tensor ref = Engine(load_model(path("q.nbl")), Backend::ref).run({*test_x_}).at(0);
  for (int64_t i = 0; i < before.numel(); ++i) ASSERT_EQ(before.get(i), ref.get(i));
}

TEST_F(Quantize, QdqExportAndImportRoundTripExactly) {
  // INT4, and INT8 with requantized shortcuts (whose QuantizeLinear pairs tell the importer).
  for (const bool shortcuts : {false, true}) {
    SCOPED_TRACE(shortcuts ? "int8, requantized shortcuts" : "int4");
    quant::QuantizeOptions opt;
    opt.precision = shortcuts ? quant::Precision::int8 : quant::Precision::int4;
    opt.requantize_shortcuts = shortcuts;
    auto r = quant::quantize_model(*graph_, *table_, opt);
    const std::string dir = shortcuts ? "q8" : "q4";
    r.model.path = path(dir + ".nbl");
    EXPECT_EQ(export_qdq_onnx(r.model, path(dir + ".onnx")), 13);
    const Graph qdq = load_model(path(dir + ".onnx"));
    ASSERT_TRUE(quant::is_qdq(qdq));
    // The QDQ graph, run in float, stays close to the integer model.
    const Tensor yq = run_graph(qdq, *test_x_);
    const Tensor yi = run_graph(quantized(r.model), *test_x_);
    EXPECT_GT(cosine(yq, yi), 0.99);
    EXPECT_GE(argmax_agreement(yq, yi), 60);
    // Importing it takes its scales and widths: every tensor of the model comes back equal.
    const quant::QdqModel imported = quant::import_qdq(qdq);
    EXPECT_EQ(imported.weights, 12);
    const auto back = quant::quantize_model(imported.fp32, imported.calib, imported.options);
    ASSERT_EQ(back.layers.size(), r.layers.size());
    ASSERT_EQ(back.model.layers.size(), r.model.layers.size());
    for (size_t i = 0; i < r.layers.size(); ++i) EXPECT_EQ(back.layers[i].precision, r.layers[i].precision);
    for (const auto& [name, layer] : r.model.layers) {
      for (const auto& f : layer.fields) {
        if (!f.is_tensor) continue;
        // The pooled layer is renamed in the round trip (the exporter names its values).
        const std::string other = back.model.has_layer(name) ? name : "";
        ASSERT_FALSE(other.empty()) << name;
        const Tensor& t = back.model.layer(other).get_tensor(f.key);
        ASSERT_EQ(t.shape(), f.tensor.shape()) << name << "." << f.key;
        for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(t.get(i), f.tensor.get(i)) << name << "." << f.key << "[" << i << "]";
      }
    }
    const Tensor yb = run_graph(quantized(back.model), *test_x_);
    for (int64_t i = 0; i < yb.numel(); ++i) ASSERT_EQ(yb.get(i), yi.get(i));
  }
}

// The newer opsets: 4-bit weights as int4 and 4-bit activations through uint4 (opset 21), FP8
// activations and DPQ's FP8 weights through float8e4m3fn (opset 19); this ONNX library's checker
// and importer stop at opset 17, so the protobuf is checked field by field against the model.
TEST_F(Quantize, QdqExportWritesFp8AndInt4Types) {
  auto read = [](const std::string& file) {
    onnx::ModelProto m;
    std::ifstream f(file, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    EXPECT_TRUE(m.ParseFromString(bytes)) << file;
    return m;
  };
  auto find_init = [](const onnx::ModelProto& m, const std::string& name) -> const onnx::TensorProto* {
    for (const auto& t : m.graph().initializer()) {
      if (t.name() == name) return &t;
    }
    return nullptr;
  };
  {
    quant::QuantizeOptions opt;
    opt.precision = quant::Precision::int4;
    auto r = quant::quantize_model(*graph_, *table_, opt);
    r.model.path = path("q4.nbl");
    export_qdq_onnx(r.model, path("q4.onnx"), 21);
    const onnx::ModelProto m = read(path("q4.onnx"));
    ASSERT_EQ(m.opset_import_size(), 1);
    EXPECT_EQ(m.opset_import(0).version(), 21);
    EXPECT_EQ(m.ir_version(), 10);
    int int4_weights = 0, uint4_points = 0;
    for (const auto& [name, layer] : r.model.layers) {
      if (!layer.has("weight") || layer.get_tensor("weight").dtype() != DType::s4) continue;
      const Tensor& w = layer.get_tensor("weight");
      const onnx::TensorProto* t = find_init(m, name + ".weight_quantized");
      ASSERT_NE(t, nullptr) << name;
      ASSERT_EQ(t->data_type(), 22) << name;  // INT4
      ASSERT_EQ(t->raw_data().size(), static_cast<size_t>((w.numel() + 1) / 2)) << name;
      for (int64_t i = 0; i < w.numel(); ++i) {
        ASSERT_EQ(unpack_s4(reinterpret_cast<const uint8_t*>(t->raw_data().data()), i), w.get(i)) << name << "[" << i << "]";
      }
      ++int4_weights;
    }
    for (const auto& t : m.graph().initializer()) uint4_points += t.data_type() == 21;  // UINT4 zero points
    EXPECT_GT(int4_weights, 0);
    EXPECT_GT(uint4_points, 0);
    // At opset 13 the same weights are int8 values.
    export_qdq_onnx(r.model, path("q4_13.onnx"), 13);
    const onnx::ModelProto m13 = read(path("q4_13.onnx"));
    for (const auto& t : m13.graph().initializer()) EXPECT_LE(t.data_type(), 16) << t.name();
  }
  {
    quant::QuantizeOptions opt;
    opt.precision = quant::Precision::w4a8_fp8;
    opt.dpq = true;
    opt.group_size = 16;
    auto r = quant::quantize_model(*graph_, *table_, opt);
    r.model.path = path("fp8.nbl");
    EXPECT_TRUE(has_fp8_layers(r.model));
    EXPECT_THROW(export_qdq_onnx(r.model, path("fp8_13.onnx"), 13), Error);
    EXPECT_FALSE(std::filesystem::exists(path("fp8_13.onnx")));
    EXPECT_EQ(export_qdq_onnx(r.model, path("fp8.onnx")), 19);  // opset 19 by default
    const onnx::ModelProto m = read(path("fp8.onnx"));
    ASSERT_EQ(m.opset_import_size(), 1);
    EXPECT_EQ(m.opset_import(0).version(), 19);
    EXPECT_EQ(m.ir_version(), 9);
    int fp8_layers = 0;
    for (const auto& [name, layer] : r.model.layers) {
      if (!layer.has("weight_group_scale")) continue;
      const Tensor& w = layer.get_tensor("weight");
      const Tensor& g = layer.get_tensor("weight_group_scale");
      const int64_t size = layer.get_int("weight_group_size"), per = w.numel() / w.dim(0);
      const onnx::TensorProto* t = find_init(m, name + ".weight_quantized");
      ASSERT_NE(t, nullptr) << name;
      ASSERT_EQ(t->data_type(), 17) << name;  // FLOAT8E4M3FN
      ASSERT_EQ(t->raw_data().size(), static_cast<size_t>(w.numel()));
      for (int64_t i = 0; i < w.numel(); ++i) {
        const float want = static_cast<float>(w.get(i)) * static_cast<float>(g.get((i / per) * g.dim(1) + (i % per) / size));
        ASSERT_EQ(static_cast<uint8_t>(t->raw_data()[static_cast<size_t>(i)]), f32_to_e4m3_bits(want)) << name << "[" << i << "]";
      }
      ++fp8_layers;
    }
    EXPECT_GT(fp8_layers, 0);
    int fp8_points = 0;
    for (const auto& n : m.graph().node()) {
      if (n.op_type() != "QuantizeLinear") continue;
      const onnx::TensorProto* zp = find_init(m, n.input(2));
      ASSERT_NE(zp, nullptr);
      fp8_points += zp->data_type() == 17;
    }
    EXPECT_GT(fp8_points, 0);
  }
}

TEST_F(Quantize, BrokenGraphQuantizedModelsAreClearErrors) {
  const auto r = quant::quantize_model(*graph_, *table_, {});
  auto field_of = [](ModelDir& m, const std::string& layer, const std::string& key) -> std::string& {
    for (auto& f : m.layers.at(layer).fields) {
      if (f.key == key) return f.value;
    }
    throw std::runtime_error("no field " + key);
  };
  auto error_for = [&](const std::function<void(ModelDir&)>& change) {
    ModelDir m = r.model;
    m.path = "q.nbl";
    change(m);
    return error_of([&] { graph_from_model_dir(m); });
  };
  EXPECT_NE(error_for([&](ModelDir& m) { field_of(m, "model", "layers") += ",ghost"; }).find("'ghost', which has no layer file"),
            std::string::npos);
  EXPECT_NE(error_for([&](ModelDir& m) { field_of(m, "layers_layers_0_conv1", "inputs") = "fc"; })
                .find("input 'fc' is neither the model input nor an earlier layer"),
            std::string::npos);
  EXPECT_NE(error_for([&](ModelDir& m) { field_of(m, "layers_layers_0_conv2_add", "inputs") = "layers_layers_0_conv2"; })
                .find("a Add layer takes 2 input(s)"),
            std::string::npos);
  EXPECT_NE(error_for([&](ModelDir& m) { field_of(m, "model", "layers") += ",fc"; }).find("'fc' twice"), std::string::npos);
  EXPECT_NE(error_for([&](ModelDir& m) { field_of(m, "input_quantize", "scale") = "-1"; }).find("not a positive finite scale"),
            std::string::npos);
  // An integer conv fed float values.
  EXPECT_NE(error_for([&](ModelDir& m) { field_of(m, "stem_stem_0", "inputs") = "input"; }).find("receives f32 values"),
            std::string::npos);
  EXPECT_NE(error_for([&](ModelDir& m) { field_of(m, "model", "outputs") = "nope"; }).find("output 'nope'"), std::string::npos);
}

TEST_F(Quantize, BadOptionsAndTablesAreClearErrors) {
  quant::QuantizeOptions opt;
  opt.layer_precision["no_such_layer"] = quant::Precision::int4;
  EXPECT_NE(error_of([&] { quant::quantize_model(*graph_, *table_, opt); }).find("no conv or linear layer is named 'no_such_layer'"),
            std::string::npos);
  quant::QuantizeOptions ex;
  ex.exclude.insert("missing");
  EXPECT_NE(error_of([&] { quant::quantize_model(*graph_, *table_, ex); }).find("--exclude"), std::string::npos);
  quant::CalibTable extra = *table_;
  extra.entries.push_back({"not_a_tensor", "max", 0.0, 1.0});
  EXPECT_NE(error_of([&] { quant::quantize_model(*graph_, extra, {}); }).find("'not_a_tensor'"), std::string::npos);
  quant::CalibTable missing = *table_;
  missing.entries.erase(missing.entries.begin() + 3);
  EXPECT_NE(error_of([&] { quant::quantize_model(*graph_, missing, {}); }).find("has no range for tensor"), std::string::npos);
}

}  // namespace
}  // namespace nibble
