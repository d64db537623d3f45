// Dual Precision Quantization: composite INT4 -> FP8 rounding inside GPTQ's compensation loop.
#include "quant/dpq.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include <cblas.h>
#include <lapacke.h>

#include "nibble/dtype.h"
#include "quant/gptq.h"

namespace nibble::quant {

namespace {

constexpr double kLevels = 7.0;
constexpr double kFp8Max = 448.0;

double to_e4m3(double v) { return e4m3_bits_to_f32(f32_to_e4m3_bits(static_cast<float>(v))); }

}  // namespace

double dpq_weight(double level, float group_scale, double tensor_scale) {
  return tensor_scale * to_e4m3(static_cast<float>(level * static_cast<double>(group_scale)));
}

std::vector<int64_t> group_aware_order(const std::vector<double>& diag, int64_t group_size) {
  const int64_t n = static_cast<int64_t>(diag.size());
  if (group_size < 1) throw std::invalid_argument("dpq: the group size must be positive");
  const int64_t groups = (n + group_size - 1) / group_size;
  std::vector<double> top(static_cast<size_t>(groups), -INFINITY);
  for (int64_t i = 0; i < n; ++i) top[static_cast<size_t>(i / group_size)] = std::max(top[static_cast<size_t>(i / group_size)], diag[static_cast<size_t>(i)]);
  std::vector<int64_t> group_order(static_cast<size_t>(groups));
  std::iota(group_order.begin(), group_order.end(), 0);
  std::stable_sort(group_order.begin(), group_order.end(),
                   [&](int64_t a, int64_t b) { return top[static_cast<size_t>(a)] > top[static_cast<size_t>(b)]; });
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(n));
  for (int64_t g : group_order) {
    const size_t first = order.size();
    for (int64_t i = g * group_size; i < std::min(n, (g + 1) * group_size); ++i) order.push_back(i);
    std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(first), order.end(),
                     [&](int64_t a, int64_t b) { return diag[static_cast<size_t>(a)] > diag[static_cast<size_t>(b)]; });
  }
  return order;
}

// The group scale for weights `v` (n values, original units) under tensor scale s: the one of
// max|e4m3(v / s)| / 7 times 1, 0.95, ..., 0.5 whose composite rounding s * e4m3(l * g) leaves
// the least squared error (clipping the few largest weights can pay for a finer step).
static float fit_group_scale(const double* v, int64_t n, double s) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(to_e4m3(v[i] / s)));
  if (m == 0.0) return 1.0f;
  float best = static_cast<float>(m / kLevels);
  double best_err = INFINITY;
  for (int step = 0; step <= 10; ++step) {
    const float g = static_cast<float>(m / kLevels * (1.0 - 0.05 * step));
    double err = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double x = v[i];
      const double l = std::clamp(std::nearbyint(x / s / static_cast<double>(g)), -kLevels, kLevels);
      const double d = x - dpq_weight(l, g, s);
      err += d * d;
    }
    if (err < best_err) {
      best_err = err;
      best = g;
    }
  }
  return best;
}

// W* = W + W (C - H)(H + lambda I)^-1 with lambda 1% of H's mean diagonal (see dpq.h).
static std::vector<double> fp8_target(const std::vector<double>& w, int64_t rows, int64_t cols, const std::vector<double>& h,
                               const std::vector<double>& cross, int threads) {
  const ScopedBlasThreads blas(threads);
  const blasint d = static_cast<blasint>(cols), k = static_cast<blasint>(rows);
  std::vector<double> diff(cross);
  for (size_t i = 0; i < diff.size(); ++i) diff[i] -= h[i];
  // B^T = (C - H)^T W^T (D x K), then (H + lambda I) Z = B^T: Z = (W* - W)^T.
  std::vector<double> bt(static_cast<size_t>(cols * rows));
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasTrans, d, k, d, 1.0, diff.data(), d, w.data(), d, 0.0, bt.data(), k);
  std::vector<double> a(h);
  double mean = 0.0;
  for (int64_t i = 0; i < cols; ++i) mean += a[static_cast<size_t>(i * cols + i)];
  mean /= static_cast<double>(cols);
  for (int64_t i = 0; i < cols; ++i) {
    double& v = a[static_cast<size_t>(i * cols + i)];
    if (v == 0.0) v = 1.0;  // a dead input, as GPTQ treats it
    v += 0.01 * mean;
  }
  if (LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', d, k, a.data(), d, bt.data(), k) != 0) {
    throw std::invalid_argument("dpq: the damped FP8 Hessian is not positive definite");
  }
  std::vector<double> target(w);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) target[static_cast<size_t>(r * cols + c)] += bt[static_cast<size_t>(c * rows + r)];
  }
  return target;
}

DpqWeights dpq_quantize(const std::vector<double>& w, int64_t rows, int64_t cols, const std::vector<double>& hessian,
                        int64_t group_size, bool reorder, int threads, bool keep_zeros, const std::vector<double>& cross) {
  if (group_size < 1) throw std::invalid_argument("dpq: the group size must be positive");
  if (static_cast<int64_t>(w.size()) != rows * cols) throw std::invalid_argument("dpq: the weights are not rows x cols");
  DpqWeights out;
  out.group_size = std::min(group_size, cols);
  const int64_t gs = out.group_size;
  const int64_t groups = (cols + gs - 1) / gs;
  double top = 0.0;
  for (double v : w) top = std::max(top, std::abs(v));
  // The tensor scale: a power of two, so the FP8 form of the largest weight lies in (224, 448].
  out.tensor_scale = top > 0.0 ? std::exp2(std::ceil(std::log2(top / kFp8Max))) : 1.0;
  const double s = out.tensor_scale;
  // Group scales from the weights as they stand when the group's turn comes (the original ones
  // without a Hessian); l * g never passes 448 since g <= max|e4m3(w / s)| / 7.
  out.group_scale.assign(static_cast<size_t>(rows * groups), 1.0f);
  const ElementQuantizer composite = [&](int64_t k, int64_t c, double v, double& level) {
    if (keep_zeros && w[static_cast<size_t>(k * cols + c)] == 0.0) {
      level = 0.0;
      return 0.0;
    }
    const float g = out.group_scale[static_cast<size_t>(k * groups + c / gs)];
    level = std::clamp(std::nearbyint(v / s / static_cast<double>(g)), -kLevels, kLevels);
    return dpq_weight(level, g, s);
  };
  if (hessian.empty()) {
    out.levels.resize(w.size());
    for (int64_t k = 0; k < rows; ++k) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t first = g * gs, n = std::min(cols, first + gs) - first;
        out.group_scale[static_cast<size_t>(k * groups + g)] = fit_group_scale(&w[static_cast<size_t>(k * cols + first)], n, s);
      }
      for (int64_t c = 0; c < cols; ++c) composite(k, c, w[static_cast<size_t>(k * cols + c)], out.levels[static_cast<size_t>(k * cols + c)]);
    }
    return out;
  }
  if (static_cast<int64_t>(hessian.size()) != cols * cols) throw std::invalid_argument("dpq: the Hessian is not cols x cols");
  std::vector<int64_t> order(static_cast<size_t>(cols));
  std::iota(order.begin(), order.end(), 0);
  if (reorder) {
    std::vector<double> diag(static_cast<size_t>(cols));
    for (int64_t i = 0; i < cols; ++i) diag[static_cast<size_t>(i)] = hessian[static_cast<size_t>(i * cols + i)];
    order = group_aware_order(diag, gs);
  }
  // Groups are contiguous in the processing order: a group begins where the group changes.
  std::vector<int64_t> begins(static_cast<size_t>(cols), -1);  // position -> its group, at a group's first position
  for (int64_t p = 0; p < cols; ++p) {
    if (p == 0 || order[static_cast<size_t>(p)] / gs != order[static_cast<size_t>(p - 1)] / gs) {
      begins[static_cast<size_t>(p)] = order[static_cast<size_t>(p)] / gs;
    }
  }
  const RowHook fit = [&](int64_t k, int64_t p, const double* current) {
    const int64_t g = begins[static_cast<size_t>(p)];
    if (g < 0) return;
    const int64_t n = std::min(cols, (g + 1) * gs) - g * gs;
    out.group_scale[static_cast<size_t>(k * groups + g)] = fit_group_scale(current + p, n, s);
  };
  if (!cross.empty() && static_cast<int64_t>(cross.size()) != cols * cols) throw std::invalid_argument("dpq: the cross sums are not cols x cols");
  out.levels = gptq_round(cross.empty() ? w : fp8_target(w, rows, cols, hessian, cross, threads), rows, cols, hessian,
                          composite, threads, order, fit);
  return out;
}

}  // namespace nibble::quant
