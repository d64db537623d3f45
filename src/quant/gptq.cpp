// GPTQ-style weight rounding and the Hessians it needs.
#include "quant/gptq.h"

#include <algorithm>
#include <cmath>

#include "nibble/engine.h"
#include "nibble/error.h"
#include "quant/observer.h"

namespace nibble::quant {

namespace {

// In-place Cholesky factorization A = L L^T (lower, row-major n x n). False if not positive definite.
bool cholesky(std::vector<double>& a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double d = a[static_cast<size_t>(j * n + j)];
    for (int64_t k = 0; k < j; ++k) d -= a[static_cast<size_t>(j * n + k)] * a[static_cast<size_t>(j * n + k)];
    if (!(d > 0.0)) return false;
    d = std::sqrt(d);
    a[static_cast<size_t>(j * n + j)] = d;
    for (int64_t i = j + 1; i < n; ++i) {
      double v = a[static_cast<size_t>(i * n + j)];
      for (int64_t k = 0; k < j; ++k) v -= a[static_cast<size_t>(i * n + k)] * a[static_cast<size_t>(j * n + k)];
      a[static_cast<size_t>(i * n + j)] = v / d;
    }
    for (int64_t k = j + 1; k < n; ++k) a[static_cast<size_t>(j * n + k)] = 0.0;
  }
  return true;
}

// The inverse of a symmetric positive definite matrix from its Cholesky factor L.
std::vector<double> inverse_from_cholesky(const std::vector<double>& l, int64_t n) {
  // L^-1 by forward substitution, then A^-1 = L^-T L^-1.
  std::vector<double> li(static_cast<size_t>(n * n), 0.0);
  for (int64_t col = 0; col < n; ++col) {
    for (int64_t i = col; i < n; ++i) {
      double v = i == col ? 1.0 : 0.0;
      for (int64_t k = col; k < i; ++k) v -= l[static_cast<size_t>(i * n + k)] * li[static_cast<size_t>(k * n + col)];
      li[static_cast<size_t>(i * n + col)] = v / l[static_cast<size_t>(i * n + i)];
    }
  }
  std::vector<double> inv(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      double v = 0.0;
      for (int64_t k = i; k < n; ++k) v += li[static_cast<size_t>(k * n + i)] * li[static_cast<size_t>(k * n + j)];
      inv[static_cast<size_t>(i * n + j)] = inv[static_cast<size_t>(j * n + i)] = v;
    }
  }
  return inv;
}

}  // namespace

std::vector<double> gptq_quantize(std::vector<double> w, int64_t rows, int64_t cols, std::vector<double> h,
                                  const std::vector<double>& scale, double levels) {
  const int64_t n = cols;
  double mean_diag = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double& d = h[static_cast<size_t>(i * n + i)];
    if (d == 0.0) {
      d = 1.0;  // a dead input: its weights do not matter, so they become 0
      for (int64_t k = 0; k < rows; ++k) w[static_cast<size_t>(k * n + i)] = 0.0;
    }
    mean_diag += d;
  }
  mean_diag /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) h[static_cast<size_t>(i * n + i)] += 0.01 * mean_diag;
  // U: the upper Cholesky factor of H^-1 (H^-1 = U^T U). Its row i holds the update weights.
  if (!cholesky(h, n)) throw std::invalid_argument("gptq: the damped Hessian is not positive definite");
  std::vector<double> u = inverse_from_cholesky(h, n);
  // The upper factor of H^-1 is the transpose of the lower factor of H^-1.
  if (!cholesky(u, n)) throw std::invalid_argument("gptq: the inverse Hessian is not positive definite");
  std::vector<double> q(static_cast<size_t>(rows * n));
  for (int64_t i = 0; i < n; ++i) {
    const double uii = u[static_cast<size_t>(i * n + i)];
    for (int64_t k = 0; k < rows; ++k) {
      double* row = &w[static_cast<size_t>(k * n)];
      const double s = scale[static_cast<size_t>(k)];
      const double qi = std::clamp(std::nearbyint(row[i] / s), -levels, levels);
      q[static_cast<size_t>(k * n + i)] = qi;
      const double err = (row[i] - qi * s) / uii;
      // Row j of U^T is column j of L (lower factor): U[i][j] = L[j][i].
      for (int64_t j = i + 1; j < n; ++j) row[j] -= err * u[static_cast<size_t>(j * n + i)];
    }
  }
  return q;
}

HessianCollector::HessianCollector(const Graph& fp32, int64_t positions) : positions_(positions) {
  std::vector<std::string> wanted;
  for (const Node& n : fp32.nodes) {
    const bool conv = n.op_type == "Conv";
    if (!conv && n.op_type != "Gemm" && n.op_type != "MatMul") continue;
    const auto w = fp32.initializers.find(n.inputs.size() > 1 ? n.inputs[1] : "");
    if (w == fp32.initializers.end()) continue;
    Layer l;
    l.node = n.name;
    l.input = n.inputs[0];
    l.conv = conv;
    if (conv) {
      if (w->second.rank() != 4 || n.attr_int("group", 1) != 1) continue;
      const auto st = n.attr_ints("strides", {1, 1}), pd = n.attr_ints("pads", {0, 0, 0, 0}), dl = n.attr_ints("dilations", {1, 1});
      l.c = w->second.dim(1);
      l.r = w->second.dim(2);
      l.s = w->second.dim(3);
      l.stride_h = st[0];
      l.stride_w = st[1];
      l.pad_h = pd[0];
      l.pad_w = pd[1];
      l.dil_h = dl[0];
      l.dil_w = dl[1];
      l.dim = l.c * l.r * l.s;
    } else {
      if (w->second.rank() != 2) continue;
      const bool trans_b = n.op_type == "Gemm" && n.attr_int("transB", 0) != 0;
      l.dim = trans_b ? w->second.dim(1) : w->second.dim(0);
    }
    layers_.push_back(l);
    wanted.push_back(l.input);
  }
  Graph g = with_outputs(fp32, wanted);
  for (const auto& o : g.outputs) outputs_.push_back(o.name);
  engine_ = std::make_unique<Engine>(std::move(g), Backend::cpu);
}

void HessianCollector::observe(const Tensor& input, int64_t first) {
  const auto outs = engine_->run({input});
  std::vector<std::vector<double>> sums;
  for (const Layer& l : layers_) {
    const Tensor* x = &input;
    for (size_t i = 0; i < outputs_.size(); ++i) {
      if (outputs_[i] == l.input) x = &outs[i];
    }
    std::vector<double> h(static_cast<size_t>(l.dim * l.dim), 0.0);
    std::vector<double> col(static_cast<size_t>(l.dim));
    auto add = [&] {
      for (int64_t i = 0; i < l.dim; ++i) {
        const double ci = col[static_cast<size_t>(i)];
        if (ci == 0.0) continue;
        double* hr = &h[static_cast<size_t>(i * l.dim)];
        for (int64_t j = i; j < l.dim; ++j) hr[j] += ci * col[static_cast<size_t>(j)];
      }
    };
    const float* p = x->data<float>();
    const int64_t batch = x->dim(0);
    if (!l.conv) {
      if (x->numel() / batch != l.dim) fail(engine_->graph().source, "gptq: node '{}' reads {} values per input, expected {}", l.node, x->numel() / batch, l.dim);
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t i = 0; i < l.dim; ++i) col[static_cast<size_t>(i)] = p[b * l.dim + i];
        add();
      }
    } else {
      const int64_t hh = x->dim(2), ww = x->dim(3);
      const int64_t oh = (hh + 2 * l.pad_h - l.dil_h * (l.r - 1) - 1) / l.stride_h + 1;
      const int64_t ow = (ww + 2 * l.pad_w - l.dil_w * (l.s - 1) - 1) / l.stride_w + 1;
      const int64_t total = oh * ow;
      const int64_t step = std::max<int64_t>(1, total / positions_);
      for (int64_t b = 0; b < batch; ++b) {
        const float* img = p + b * l.c * hh * ww;
        for (int64_t pos = 0; pos < total; pos += step) {
          const int64_t oy = pos / ow, ox = pos % ow;
          size_t k = 0;
          for (int64_t c = 0; c < l.c; ++c) {
            for (int64_t r = 0; r < l.r; ++r) {
              for (int64_t s = 0; s < l.s; ++s, ++k) {
                const int64_t y = oy * l.stride_h - l.pad_h + r * l.dil_h, xx = ox * l.stride_w - l.pad_w + s * l.dil_w;
                col[k] = (y < 0 || y >= hh || xx < 0 || xx >= ww) ? 0.0 : img[(c * hh + y) * ww + xx];
              }
            }
          }
          add();
        }
      }
    }
    sums.push_back(std::move(h));
  }
  std::lock_guard<std::mutex> lock(mu_);
  partial_[first] = std::move(sums);
}

std::map<std::string, std::vector<double>> HessianCollector::hessians() const {
  std::map<std::string, std::vector<double>> out;
  for (size_t li = 0; li < layers_.size(); ++li) {
    const int64_t d = layers_[li].dim;
    std::vector<double> h(static_cast<size_t>(d * d), 0.0);
    for (const auto& [first, sums] : partial_) {
      for (size_t i = 0; i < h.size(); ++i) h[i] += sums[li][i];
    }
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t j = 0; j < i; ++j) h[static_cast<size_t>(i * d + j)] = h[static_cast<size_t>(j * d + i)];
    }
    out[layers_[li].node] = std::move(h);
  }
  return out;
}

}  // namespace nibble::quant
