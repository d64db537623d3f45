// Calibration: |x| histograms, threshold selection and the calibration table file.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "nibble/error.h"
#include "nibble/file_util.h"
#include "quant/calibration.h"
#include "test_util.h"

namespace nibble::quant {
namespace {

using testing_util::error_of;
using CalibFile = testing_util::TempDirTest;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> gaussian(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = dist(rng);
  return x;
}

AbsHistogram histogram_of(const std::vector<float>& x, int bins = 8192) {
  MinMax mm;
  mm.add(x.data(), static_cast<int64_t>(x.size()));
  AbsHistogram h(mm.abs_max(), bins);
  h.add(x.data(), static_cast<int64_t>(x.size()));
  return h;
}

double threshold(const AbsHistogram& h, const std::string& spec, int levels) {
  return choose_threshold(h, CalibSpec::parse(spec), levels);
}

// ---- AbsHistogram and MinMax ----

TEST(AbsHistogram, BinsByMagnitudeWithEdgesFromTheLimit) {
  AbsHistogram h(1.0, 4);
  EXPECT_EQ(h.bins(), 4);
  EXPECT_EQ(h.limit(), 1.0);
  EXPECT_EQ(h.bin_width(), 0.25);
  const std::vector<float> x = {0.0f, -0.0f, 0.24f, 0.25f, -0.3f, 0.5f, 0.99f, 1.0f, -5.0f, kInf, -kInf, kNaN};
  h.add(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(h.counts(), (std::vector<int64_t>{3, 2, 1, 5}));
  EXPECT_EQ(h.total(), 11);
  EXPECT_EQ(h.nan_count(), 1);
}

TEST(AbsHistogram, ZeroLimitPutsEverythingInTheFirstBin) {
  for (double limit : {0.0, -1.0}) {
    AbsHistogram h(limit, 16);
    EXPECT_EQ(h.bin_width(), 0.0);
    const std::vector<float> x = {0.0f, 3.0f, -kInf, kNaN, kNaN};
    h.add(x.data(), static_cast<int64_t>(x.size()));
    EXPECT_EQ(h.counts()[0], 3);
    EXPECT_EQ(h.total(), 3);
    EXPECT_EQ(h.nan_count(), 2);
    for (const char* spec : {"max", "percentile:50", "entropy", "mse"}) EXPECT_EQ(threshold(h, spec, 127), 0.0) << spec;
  }
}

TEST(AbsHistogram, TinyLimitKeepsZeroInTheFirstBin) {
  AbsHistogram h(1e-310, 8192);  // bins / limit overflows a double
  const std::vector<float> x = {0.0f, -0.0f, 1e-30f, -kInf};
  h.add(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(h.counts().front(), 2);
  EXPECT_EQ(h.counts().back(), 2);
}

TEST(AbsHistogram, CountsDoNotDependOnBatchSplitOrOrder) {
  std::vector<float> x = gaussian(100003, 1);
  x[17] = kNaN;
  x[99] = 40.0f;  // an outlier sets the limit
  const AbsHistogram whole = histogram_of(x);

  std::vector<float> shuffled = x;
  std::mt19937 rng(2);
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  for (int64_t chunk : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{65536}, int64_t{0}}) {
    AbsHistogram h(whole.limit(), whole.bins());
    std::uniform_int_distribution<int64_t> random_size(1, 5000);
    for (int64_t at = 0; at < static_cast<int64_t>(shuffled.size());) {
      const int64_t n = std::min(chunk > 0 ? chunk : random_size(rng), static_cast<int64_t>(shuffled.size()) - at);
      h.add(shuffled.data() + at, n);
      at += n;
    }
    EXPECT_EQ(h.counts(), whole.counts()) << "chunk " << chunk;
    EXPECT_EQ(h.total(), whole.total());
    EXPECT_EQ(h.nan_count(), 1);
  }

  // Partial histograms filled separately (as by several threads) merge to the same counts.
  AbsHistogram a(whole.limit(), whole.bins());
  AbsHistogram b(whole.limit(), whole.bins());
  a.add(shuffled.data(), 12345);
  b.add(shuffled.data() + 12345, static_cast<int64_t>(shuffled.size()) - 12345);
  b.merge(a);
  EXPECT_EQ(b.counts(), whole.counts());
  EXPECT_EQ(b.total(), whole.total());
  EXPECT_EQ(b.nan_count(), whole.nan_count());
  for (const char* spec : {"max", "percentile:99.9", "entropy", "mse"}) {
    EXPECT_EQ(threshold(b, spec, 127), threshold(whole, spec, 127)) << spec;
  }
}

TEST(AbsHistogram, RejectsBadArguments) {
  AbsHistogram h(1.0, 16);
  EXPECT_NE(error_of([&] { h.merge(AbsHistogram(2.0, 16)); }).find("cannot merge"), std::string::npos);
  EXPECT_NE(error_of([&] { h.merge(AbsHistogram(1.0, 8)); }).find("cannot merge"), std::string::npos);
  EXPECT_NE(error_of([] { (void)AbsHistogram(std::numeric_limits<double>::infinity()); }).find("must be finite"),
            std::string::npos);
  EXPECT_NE(error_of([] { (void)AbsHistogram(std::nan("")); }).find("must be finite"), std::string::npos);
  EXPECT_THROW((void)AbsHistogram(1.0, 0), std::invalid_argument);
  EXPECT_THROW(threshold(h, "max", 0), std::invalid_argument);
  CalibSpec bad;
  bad.method = CalibMethod::percentile;
  bad.percentile = 101;
  EXPECT_THROW(choose_threshold(h, bad, 127), std::invalid_argument);
}

TEST(MinMax, TracksTheRangeAndSkipsNaN) {
  MinMax m;
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.abs_max(), 0.0);
  const std::vector<float> nans = {kNaN, kNaN};
  m.add(nans.data(), 2);
  EXPECT_TRUE(m.empty());
  const std::vector<float> x = {kNaN, 0.5f, -3.25f, 2.0f};
  m.add(x.data(), static_cast<int64_t>(x.size()));
  EXPECT_FALSE(m.empty());
  EXPECT_EQ(m.lo, -3.25);
  EXPECT_EQ(m.hi, 2.0);
  EXPECT_EQ(m.abs_max(), 3.25);

  MinMax other;
  const std::vector<float> y = {7.5f, 1.0f};
  other.add(y.data(), 2);
  m.merge(other);
  EXPECT_EQ(m.lo, -3.25);
  EXPECT_EQ(m.hi, 7.5);
  m.merge(MinMax{});
  EXPECT_EQ(m.abs_max(), 7.5);
}

// ---- thresholds ----

TEST(Threshold, EmptyHistogramGivesZero) {
  AbsHistogram h(3.0);
  for (const char* spec : {"max", "percentile:99", "entropy", "mse"}) EXPECT_EQ(threshold(h, spec, 255), 0.0) << spec;
}

TEST(Threshold, MaxIsTheLimit) {
  const std::vector<float> x = gaussian(10000, 3);
  const AbsHistogram h = histogram_of(x);
  float top = 0;
  for (float v : x) top = std::max(top, std::fabs(v));
  EXPECT_EQ(h.limit(), static_cast<double>(top));
  EXPECT_EQ(threshold(h, "max", 255), h.limit());
  EXPECT_EQ(threshold(h, "max", 7), h.limit());
}

TEST(Threshold, PercentileOfEvenlySpacedValues) {
  const int n = 100000;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = (static_cast<float>(i) + 0.5f) / n;
  const AbsHistogram h = histogram_of(x);
  const double w = h.bin_width();
  for (double p : {1.0, 50.0, 99.0, 99.9}) {
    const double t = threshold(h, fmt::format("percentile:{}", p), 255);
    EXPECT_GE(t, p / 100.0 - 2 * w) << p;
    EXPECT_LE(t, p / 100.0 + 2 * w) << p;
  }
  EXPECT_EQ(threshold(h, "percentile:100", 255), h.limit());
}

TEST(Threshold, PercentileIsTheUpperEdgeOfTheBinHoldingTheRankedValue) {
  const int n = 100000;
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  const AbsHistogram h = histogram_of(x);
  std::vector<float> sorted = x;
  std::sort(sorted.begin(), sorted.end());
  for (int p : {1, 10, 50, 90, 99}) {
    const double t = threshold(h, fmt::format("percentile:{}", p), 255);
    const double ranked = sorted[static_cast<size_t>(p) * n / 100 - 1];  // the value that reaches p%
    EXPECT_GE(t, ranked) << p;
    EXPECT_LT(t - h.bin_width() * (1 + 1e-9), ranked) << p;
    EXPECT_NEAR(t, p / 100.0, 0.01) << p;
  }
}

// The expected squared error that mse minimizes, computed from the definition with bin centres.
double mse_error(const AbsHistogram& h, double t, int levels) {
  const double w = h.bin_width();
  const double step = t / levels;
  double err = 0;
  for (int j = 0; j < h.bins(); ++j) {
    const auto n = static_cast<double>(h.counts()[j]);
    const double c = (j + 0.5) * w;
    err += c <= t ? n * step * step / 12 : n * (c - t) * (c - t);
  }
  return err;
}

TEST(Threshold, MseFindsTheLowestErrorOverAllBinEdges) {
  std::mt19937 rng(5);
  std::exponential_distribution<float> expo(1.0f);
  std::vector<float> laplace(200000);
  for (float& v : laplace) v = expo(rng) * (rng() % 2 ? 1.0f : -1.0f);
  std::vector<float> relu = gaussian(200000, 6);
  for (float& v : relu) v = std::max(v, 0.0f);
  std::vector<float> with_outlier = gaussian(200000, 7);
  with_outlier[5] = 30.0f;

  for (const auto* data : {&laplace, &relu, &with_outlier}) {
    const AbsHistogram h = histogram_of(*data, 4096);
    const double w = h.bin_width();
    const double spacing = std::ceil(h.bins() / 512.0) * w;
    for (int levels : {255, 127, 15, 7}) {
      double best_t = 0;
      double best_err = std::numeric_limits<double>::infinity();
      for (int k = 1; k <= h.bins(); ++k) {
        const double t = h.limit() * k / h.bins();
        const double err = mse_error(h, t, levels);
        if (err < best_err) {
          best_err = err;
          best_t = t;
        }
      }
      const double t = threshold(h, "mse", levels);
      EXPECT_NEAR(t, best_t, spacing) << "levels " << levels;
      EXPECT_LE(mse_error(h, t, levels), best_err * (1 + 1e-9)) << "levels " << levels;
    }
  }
}

TEST(Threshold, MseMatchesTheAnalyticOptimumForUniformData) {
  // For |x| uniform on [0, L] the error N T^3 / (12 l^2 L) + N (L - T)^3 / (3 L) is smallest at
  // T = L / (1 + 1 / (2 l)).
  const int n = 1000000;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = (static_cast<float>(i) + 0.5f) / n;
  const AbsHistogram h = histogram_of(x);
  for (int levels : {7, 15, 127}) {
    const double expected = h.limit() / (1 + 1.0 / (2 * levels));
    EXPECT_NEAR(threshold(h, "mse", levels), expected, 3 * h.bin_width()) << levels;
  }
}

// KL(P || Q) for a threshold of i bins, from the definition, bin by bin.
double kl_divergence(const AbsHistogram& h, int i, int levels) {
  std::vector<double> c(h.counts().begin(), h.counts().end());
  c[0] = c[1];
  double total = 0;
  for (double v : c) total += v;
  const int groups = levels + 1;
  std::vector<double> p(c.begin(), c.begin() + i);
  for (int j = i; j < h.bins(); ++j) p[i - 1] += c[j];
  std::vector<double> q(i, 0.0);
  for (int g = 0; g < groups; ++g) {
    double mass = 0;
    int filled = 0;
    for (int j = 0; j < i; ++j) {
      if (static_cast<int64_t>(j) * groups / i == g && c[j] > 0) {
        mass += c[j];
        ++filled;
      }
    }
    for (int j = 0; j < i; ++j) {
      if (static_cast<int64_t>(j) * groups / i == g && c[j] > 0) q[j] = mass / filled;
    }
  }
  double q_total = 0;
  for (double v : q) q_total += v;
  double kl = 0;
  for (int j = 0; j < i; ++j) {
    if (p[j] == 0) continue;
    const double pj = p[j] / total;
    const double qj = std::max(q[j] / q_total, 1e-12);
    kl += pj * std::log(pj / qj);
  }
  return kl;
}

TEST(Threshold, EntropyFindsALowDivergence) {
  std::vector<float> x = gaussian(100000, 8);
  x[3] = 12.0f;
  const AbsHistogram h = histogram_of(x, 1024);  // small enough to try every candidate here
  for (int levels : {127, 15, 7}) {
    std::vector<double> kl(h.bins() + 1, std::numeric_limits<double>::infinity());
    for (int i = levels + 1; i <= h.bins(); ++i) kl[i] = kl_divergence(h, i, levels);
    const double t = threshold(h, "entropy", levels);
    const int chosen = static_cast<int>(std::lround(t / h.bin_width()));
    ASSERT_GE(chosen, levels + 1);
    ASSERT_LE(chosen, h.bins());
    EXPECT_NEAR(t, h.limit() * chosen / h.bins(), 1e-12);
    // The chosen candidate is at least as good as every one the coarse scan tried (which include
    // every other one with 1024 bins and 128 groups), and close to the overall best.
    const double best = *std::min_element(kl.begin(), kl.end());
    EXPECT_LE(kl[chosen], best + 0.05 * (kl[levels + 1] - best)) << "levels " << levels;
    for (int i = chosen - 1; i <= chosen + 1; ++i) {
      if (i >= levels + 1 && i <= h.bins()) {
        EXPECT_LE(kl[chosen], kl[i] + 1e-9) << "levels " << levels << " i " << i;
      }
    }
  }
}

TEST(Threshold, EntropyKeepsTheWholeRangeOfUniformData) {
  const int n = 1000000;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = (static_cast<float>(i) + 0.5f) / n;
  const AbsHistogram h = histogram_of(x);
  for (int levels : {255, 7}) EXPECT_GT(threshold(h, "entropy", levels), 0.97 * h.limit()) << levels;
}

TEST(Threshold, EntropyAndMseIgnoreASingleHugeOutlier) {
  std::vector<float> x = gaussian(1 << 20, 9);
  const float outlier = 50.0f;
  x[777] = outlier;
  const AbsHistogram h = histogram_of(x);
  ASSERT_EQ(h.limit(), outlier);
  for (const char* method : {"entropy", "mse"}) {
    const double t8 = threshold(h, method, 127);
    const double t4 = threshold(h, method, 7);
    EXPECT_GT(t8, 2.0) << method;
    EXPECT_LT(t8, outlier / 4) << method;
    EXPECT_GT(t4, 1.0) << method;
    EXPECT_LT(t4, t8) << method;
    EXPECT_LT(threshold(h, method, 15), threshold(h, method, 255)) << method;
  }
  // The 99.99th percentile is blind to a single value as well; max is not.
  EXPECT_LT(threshold(h, "percentile:99.99", 127), 5.0);
  EXPECT_EQ(threshold(h, "max", 127), outlier);
}

TEST(Threshold, ThresholdsAreBinEdgesWithinTheLimit) {
  const std::vector<float> x = gaussian(50000, 10, 0.1f);
  const AbsHistogram h = histogram_of(x, 2000);
  for (const char* spec : {"max", "percentile:99.99", "percentile:100", "entropy", "mse"}) {
    for (int levels : {255, 127, 15, 7, 1}) {
      const double t = threshold(h, spec, levels);
      EXPECT_GT(t, 0.0) << spec;
      EXPECT_LE(t, h.limit()) << spec;
      const double k = t / h.bin_width();
      EXPECT_NEAR(k, std::round(k), 1e-6) << spec;
      EXPECT_EQ(t, threshold(h, spec, levels)) << spec;  // deterministic
    }
  }
}

TEST(Threshold, FewBinsAndAllZeroData) {
  const std::vector<float> x = {0.0f, 0.0f, 0.0f, 1.0f};
  const AbsHistogram h = histogram_of(x, 4);
  for (const char* spec : {"entropy", "mse"}) {
    for (int levels : {255, 1}) {
      const double t = threshold(h, spec, levels);
      EXPECT_GT(t, 0.0) << spec;
      EXPECT_LE(t, 1.0) << spec;
    }
  }
  // Only exact zeros inside a fixed range: the zero spike is discounted, so the edge of the only
  // non-empty bin is chosen.
  AbsHistogram zeros(2.0, 8);
  zeros.add(x.data(), 3);
  EXPECT_EQ(threshold(zeros, "entropy", 127), 0.25);
  AbsHistogram one_bin(2.0, 1);
  one_bin.add(x.data(), 4);
  for (const char* spec : {"percentile:50", "entropy", "mse"}) EXPECT_EQ(threshold(one_bin, spec, 127), 2.0) << spec;
}

// ---- CalibSpec ----

TEST(CalibSpec, ParsesAndPrintsEveryMethod) {
  EXPECT_EQ(CalibSpec{}.text(), "max");
  for (const char* s : {"max", "entropy", "mse", "percentile:99.99", "percentile:99.999", "percentile:100",
                        "percentile:0.5", "percentile:1e-05"}) {
    EXPECT_EQ(CalibSpec::parse(s).text(), s);
    EXPECT_EQ(CalibSpec::parse(CalibSpec::parse(s).text()), CalibSpec::parse(s));
  }
  EXPECT_EQ(CalibSpec::parse("entropy").method, CalibMethod::entropy);
  EXPECT_EQ(CalibSpec::parse("mse").method, CalibMethod::mse);
  const CalibSpec p = CalibSpec::parse("percentile:99.9");
  EXPECT_EQ(p.method, CalibMethod::percentile);
  EXPECT_EQ(p.percentile, 99.9);
  EXPECT_EQ(CalibSpec::parse("percentile:50.000").text(), "percentile:50");
}

TEST(CalibSpec, RejectsBadSpecs) {
  for (const char* s : {"", "MAX", "kl", "percentile", "percentile99", " max", "max ", "entropy\n"}) {
    const std::string msg = error_of([&] { CalibSpec::parse(s); });
    EXPECT_NE(msg.find("unknown calibration method"), std::string::npos) << s;
    EXPECT_NE(msg.find("(expected max, percentile:P, entropy or mse)"), std::string::npos) << s;
  }
  for (const char* s : {"percentile:", "percentile:0", "percentile:-1", "percentile:100.5", "percentile:nan",
                        "percentile:inf", "percentile:99x", "percentile: 99", "percentile:99.9.9"}) {
    const std::string msg = error_of([&] { CalibSpec::parse(s); });
    EXPECT_NE(msg.find("(0, 100]"), std::string::npos) << s;
  }
}

// ---- calibration table file ----

TEST_F(CalibFile, RoundTripsF32RangesExactly) {
  CalibTable t;
  t.comments = {"nibble calibration table", "", "  indented comment"};
  const std::vector<float> special = {0.0f,
                                      -0.0f,
                                      0.1f,
                                      1.0f / 3.0f,
                                      std::numeric_limits<float>::max(),
                                      std::numeric_limits<float>::min(),
                                      std::numeric_limits<float>::denorm_min(),
                                      16777217.0f,
                                      1e-30f};
  for (size_t i = 0; i < special.size(); ++i) {
    t.entries.push_back({fmt::format("special{}", i), "max", -static_cast<double>(special[i]), special[i]});
  }
  std::mt19937 rng(11);
  for (int i = 0; i < 2000; ++i) {
    float a = 0, b = 0;
    do {
      a = std::bit_cast<float>(static_cast<uint32_t>(rng()));
      b = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    } while (!std::isfinite(a) || !std::isfinite(b));
    if (a > b) std::swap(a, b);
    t.entries.push_back({fmt::format("/layer{}/Relu_output_0", i), i % 2 ? "entropy" : "percentile:99.999", a, b});
  }
  write_calib(t, path("model.calib"));
  const CalibTable back = read_calib(path("model.calib"));
  EXPECT_EQ(back.comments, t.comments);
  ASSERT_EQ(back.entries.size(), t.entries.size());
  for (size_t i = 0; i < t.entries.size(); ++i) {
    EXPECT_EQ(back.entries[i].tensor, t.entries[i].tensor);
    EXPECT_EQ(back.entries[i].method, t.entries[i].method);
    EXPECT_EQ(back.entries[i].lo, t.entries[i].lo) << t.entries[i].tensor;
    EXPECT_EQ(back.entries[i].hi, t.entries[i].hi) << t.entries[i].tensor;
    EXPECT_EQ(std::signbit(back.entries[i].lo), std::signbit(t.entries[i].lo)) << t.entries[i].tensor;
  }
  EXPECT_EQ(format_calib(back), read_file(path("model.calib")));
}

TEST_F(CalibFile, TextFormat) {
  CalibTable t;
  t.comments = {"calibrated on fashion-mnist:train"};
  t.entries.push_back({"input", "max", 0.0, 1.0});
  t.entries.push_back({"conv1/out", "percentile:99.990", -0.5, 6.25});
  EXPECT_EQ(format_calib(t),
            "# calibrated on fashion-mnist:train\n"
            "input max 0 1\n"
            "conv1/out percentile:99.99 -0.5 6.25\n");
  ASSERT_NE(t.find("conv1/out"), nullptr);
  EXPECT_EQ(t.find("conv1/out")->hi, 6.25);
  EXPECT_EQ(t.find("conv1"), nullptr);

  const CalibTable parsed = parse_calib(
      "\n"
      "  # leading blanks\r\n"
      "#no space\n"
      "a\tmse  +1.5e0 2\r\n"
      "   \t\n"
      "b entropy -3 -1e-2 \n"
      "# a trailing comment\n"
      "c percentile:99.9000 0.1 0.1",  // no final newline
      "t.calib");
  EXPECT_EQ(parsed.comments, (std::vector<std::string>{"leading blanks", "no space", "a trailing comment"}));
  ASSERT_EQ(parsed.entries.size(), 3u);
  EXPECT_EQ(parsed.entries[0].tensor, "a");
  EXPECT_EQ(parsed.entries[0].method, "mse");
  EXPECT_EQ(parsed.entries[0].lo, 1.5);
  EXPECT_EQ(parsed.entries[0].hi, 2.0);
  EXPECT_EQ(parsed.entries[1].lo, -3.0);
  EXPECT_EQ(parsed.entries[1].hi, static_cast<double>(-1e-2f));
  EXPECT_EQ(parsed.entries[2].method, "percentile:99.9");
  EXPECT_EQ(parsed.entries[2].lo, static_cast<double>(0.1f));
  EXPECT_EQ(parsed.entries[2].hi, static_cast<double>(0.1f));
  ASSERT_NE(parsed.find("b"), nullptr);
  EXPECT_EQ(parsed.find("b")->method, "entropy");

  EXPECT_TRUE(parse_calib("", "empty.calib").entries.empty());
}

TEST_F(CalibFile, ReadErrorsNameTheFileAndLine) {
  const std::string header = "# header\nok max 0 1\n";  // the bad line is line 3
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"x max 0", "expected '<tensor> <method> <lo> <hi>', got 3 fields"},
      {"x max 0 1 2", "got 5 fields"},
      {"x", "got 1 field"},
      {"x max zero 1", "lo 'zero' of tensor 'x' is not a number"},
      {"x max 0 1.0x", "hi '1.0x' of tensor 'x' is not a number"},
      {"x max 0 0x10", "is not a number"},
      {"x max 0 1,5", "is not a number"},
      {"x max ++1 2", "is not a number"},
      {"x max nan 1", "lo of tensor 'x' is not finite"},
      {"x max 0 inf", "hi of tensor 'x' is not finite"},
      {"x max -infinity 0", "is not finite"},
      {"x max 0 1e39", "outside the f32 range"},
      {"x max 0 1e999", "outside the f32 range"},
      {"x max 2 1", "inverted range for tensor 'x': lo 2 > hi 1"},
      {"ok max 0 1", "duplicate tensor 'ok' (first given on line 2)"},
      {"x kl 0 1", "unknown calibration method 'kl'"},
      {"x percentile:0 0 1", "(0, 100]"},
  };
  for (const auto& [line, problem] : cases) {
    const std::string file = path("bad.calib");
    write_file_atomic(file, header + line + "\nlater max 0 1\n");
    const std::string msg = error_of([&] { read_calib(file); });
    EXPECT_NE(msg.find(file + ":3: "), std::string::npos) << line << " -> " << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << line << " -> " << msg;
  }
  // Lines are counted the same way with CRLF endings.
  const std::string msg = error_of([] { parse_calib("# a\r\n\r\nx max 1 0\r\n", "crlf.calib"); });
  EXPECT_NE(msg.find("crlf.calib:3: inverted range"), std::string::npos) << msg;

  EXPECT_NE(error_of([&] { read_calib(path("absent.calib")); }).find("cannot open"), std::string::npos);
}

TEST_F(CalibFile, WriteRefusesWhatCannotBeReadBack) {
  const auto one = [](CalibEntry e) {
    CalibTable t;
    t.entries.push_back({"fine", "max", 0, 1});
    t.entries.push_back(std::move(e));
    return t;
  };
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<std::pair<CalibTable, std::string>> cases = {
      {one({"has space", "max", 0, 1}), "tensor name 'has space' contains whitespace"},
      {one({"has\ttab", "max", 0, 1}), "tensor name 'has\\ttab' contains whitespace"},
      {one({"new\nline", "max", 0, 1}), "tensor name 'new\\nline' contains whitespace"},
      {one({"", "max", 0, 1}), "empty tensor name"},
      {one({"#hash", "max", 0, 1}), "tensor name '#hash' starts with '#'"},
      {one({"fine", "max", 0, 1}), "duplicate calibration entry for tensor 'fine'"},
      {one({"m", "kl", 0, 1}), "tensor 'm': unknown calibration method 'kl'"},
      {one({"r", "max", 0, std::nan("")}), "tensor 'r': range [0, nan] is not finite"},
      {one({"r", "max", -inf, 0}), "is not finite"},
      {one({"r", "max", 0, 1e39}), "tensor 'r': 1e+39 is outside the f32 range"},
      {one({"r", "max", 1, 0}), "tensor 'r': inverted range [1, 0]"},
  };
  for (const auto& c : cases) {
    const CalibTable& table = c.first;
    const std::string& problem = c.second;
    const std::string msg = error_of([&] { format_calib(table); });
    EXPECT_NE(msg.find(problem), std::string::npos) << msg;
    const std::string file = path("out.calib");
    const std::string write_msg = error_of([&] { write_calib(table, file); });
    EXPECT_NE(write_msg.find(file + ": "), std::string::npos) << write_msg;
    EXPECT_NE(write_msg.find(problem), std::string::npos) << write_msg;
    EXPECT_FALSE(std::filesystem::exists(file));
  }
  CalibTable multi_line;
  multi_line.comments = {"two\nlines"};
  EXPECT_NE(error_of([&] { format_calib(multi_line); }).find("does not fit on one line"), std::string::npos);
  multi_line.comments = {"ends in CR\r"};
  EXPECT_NE(error_of([&] { format_calib(multi_line); }).find("does not fit on one line"), std::string::npos);
  multi_line.comments = {"inner\rCR"};
  EXPECT_EQ(parse_calib(format_calib(multi_line), "cr.calib").comments, multi_line.comments);
}

}  // namespace
}  // namespace nibble::quant
