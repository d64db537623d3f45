// Dual Precision Quantization: composite INT4 -> FP8 rounding inside GPTQ's compensation loop.
#include "quant/dpq.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

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

DpqWeights dpq_quantize(const std::vector<double>& w, int64_t rows, int64_t cols, const std::vector<double>& hessian,
                        int64_t group_size, bool reorder, int threads, bool keep_zeros) {
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
  // Group scales from the FP8 form of the original weights, so l * g never passes 448.
  out.group_scale.assign(static_cast<size_t>(rows * groups), 1.0f);
  for (int64_t k = 0; k < rows; ++k) {
    for (int64_t g = 0; g < groups; ++g) {
      double m = 0.0;
      for (int64_t c = g * gs; c < std::min(cols, (g + 1) * gs); ++c) m = std::max(m, std::abs(to_e4m3(w[static_cast<size_t>(k * cols + c)] / s)));
      if (m > 0.0) out.group_scale[static_cast<size_t>(k * groups + g)] = static_cast<float>(m / kLevels);
    }
  }
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
      for (int64_t c = 0; c < cols; ++c) composite(k, c, w[static_cast<size_t>(k * cols + c)], out.levels[static_cast<size_t>(k * cols + c)]);
    }
    return out;
  }
  if (static_cast<int64_t>(hessian.size()) != cols * cols) throw std::invalid_argument("dpq: the Hessian is not cols x cols");
  std::vector<int64_t> order;
  if (reorder) {
    std::vector<double> diag(static_cast<size_t>(cols));
    for (int64_t i = 0; i < cols; ++i) diag[static_cast<size_t>(i)] = hessian[static_cast<size_t>(i * cols + i)];
    order = group_aware_order(diag, gs);
  }
  out.levels = gptq_round(w, rows, cols, hessian, composite, threads, order);
  return out;
}

}  // namespace nibble::quant
