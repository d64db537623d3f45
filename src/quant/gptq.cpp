// GPTQ-style weight rounding and the Hessians it needs.
#include "quant/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "nibble/dtype.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "quant/observer.h"

namespace nibble::quant {

namespace {

constexpr int64_t kBlock = 128;  // columns per lazy batch update

}  // namespace

ScopedBlasThreads::ScopedBlasThreads(int threads) : saved_(openblas_get_num_threads()) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  openblas_set_num_threads(n);
}

ScopedBlasThreads::~ScopedBlasThreads() { openblas_set_num_threads(saved_); }

std::vector<double> gptq_round(std::vector<double> w, int64_t rows, int64_t cols, std::vector<double> h,
                               const ElementQuantizer& quantize, int threads, const std::vector<int64_t>& order,
                               const RowHook& before) {
  const int64_t n = cols;
  if (!order.empty()) {
    // Process the columns in `order`: permute W's columns and H's rows and columns alike.
    if (static_cast<int64_t>(order.size()) != n) throw std::invalid_argument("gptq: the column order has the wrong length");
    std::vector<double> wp(w.size()), hp(h.size());
    for (int64_t k = 0; k < rows; ++k) {
      for (int64_t j = 0; j < n; ++j) wp[static_cast<size_t>(k * n + j)] = w[static_cast<size_t>(k * n + order[static_cast<size_t>(j)])];
    }
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        hp[static_cast<size_t>(i * n + j)] =
            h[static_cast<size_t>(order[static_cast<size_t>(i)] * n + order[static_cast<size_t>(j)])];
      }
    }
    w.swap(wp);
    h.swap(hp);
  }
  auto original = [&](int64_t j) { return order.empty() ? j : order[static_cast<size_t>(j)]; };
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
  const ScopedBlasThreads blas(threads);
  // U: the upper Cholesky factor of H^-1 (H^-1 = U^T U). Its row i holds the update weights.
  const lapack_int ld = static_cast<lapack_int>(n);
  if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', ld, h.data(), ld) != 0) {
    throw std::invalid_argument("gptq: the damped Hessian is not positive definite");
  }
  if (LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', ld, h.data(), ld) != 0) {
    throw std::invalid_argument("gptq: the damped Hessian is singular");
  }
  for (int64_t i = 0; i < n; ++i) {  // dpotri leaves the lower triangle; dpotrf 'U' reads the upper
    for (int64_t j = 0; j < i; ++j) h[static_cast<size_t>(j * n + i)] = h[static_cast<size_t>(i * n + j)];
  }
  if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', ld, h.data(), ld) != 0) {
    throw std::invalid_argument("gptq: the inverse Hessian is not positive definite");
  }
  const std::vector<double>& u = h;
  std::vector<double> q(static_cast<size_t>(rows * n));
  std::vector<double> err(static_cast<size_t>(rows * kBlock));
  for (int64_t i1 = 0; i1 < n; i1 += kBlock) {
    const int64_t i2 = std::min(i1 + kBlock, n), b = i2 - i1;
    // Inside the block, column by column; each row's errors go to its later columns.
    for (int64_t k = 0; k < rows; ++k) {
      double* row = &w[static_cast<size_t>(k * n)];
      for (int64_t i = i1; i < i2; ++i) {
        const int64_t c = original(i);
        double level = 0.0;
        if (before) before(k, i, row);
        const double value = quantize(k, c, row[i], level);
        q[static_cast<size_t>(k * n + c)] = level;
        const double e = (row[i] - value) / u[static_cast<size_t>(i * n + i)];
        const double* ui = &u[static_cast<size_t>(i * n)];
        for (int64_t j = i + 1; j < i2; ++j) row[j] -= e * ui[j];
        err[static_cast<size_t>(k * b + (i - i1))] = e;
      }
    }
    // The block's errors on every later column at once: W[:, i2:] -= E U[i1:i2, i2:].
    if (i2 < n) {
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(rows), static_cast<blasint>(n - i2),
                  static_cast<blasint>(b), -1.0, err.data(), static_cast<blasint>(b), &u[static_cast<size_t>(i1 * n + i2)],
                  static_cast<blasint>(n), 1.0, &w[static_cast<size_t>(i2)], static_cast<blasint>(n));
    }
  }
  return q;
}

std::vector<double> gptq_quantize(std::vector<double> w, int64_t rows, int64_t cols, std::vector<double> h,
                                  const std::vector<double>& scale, double levels, int threads, bool keep_zeros) {
  std::vector<bool> zero;
  if (keep_zeros) {
    zero.resize(w.size());
    for (size_t i = 0; i < w.size(); ++i) zero[i] = w[i] == 0.0;
  }
  const ElementQuantizer nearest = [&](int64_t k, int64_t c, double v, double& level) {
    const double s = scale[static_cast<size_t>(k)];
    level = keep_zeros && zero[static_cast<size_t>(k * cols + c)] ? 0.0 : std::clamp(std::nearbyint(v / s), -levels, levels);
    return level * s;
  };
  return gptq_round(std::move(w), rows, cols, std::move(h), nearest, threads);
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

void HessianCollector::set_fp8_scales(const CalibTable& table) {
  for (Layer& l : layers_) {
    const CalibEntry* e = table.find(l.input);
    l.fp8_scale = e ? fp8_activation_scale(*e) : 0.0;
  }
}

void HessianCollector::observe(const Tensor& input, int64_t first) {
  const auto outs = engine_->run({input});
  std::vector<Sums> sums;
  for (const Layer& l : layers_) {
    const Tensor* x = &input;
    for (size_t i = 0; i < outputs_.size(); ++i) {
      if (outputs_[i] == l.input) x = &outs[i];
    }
    // The sampled columns as rows of X (m x D); H += X^T X (upper triangle, one SYRK per chunk).
    const bool fp8 = l.fp8_scale > 0.0;
    const blasint d = static_cast<blasint>(l.dim);
    Sums sum;
    sum.h.assign(static_cast<size_t>(l.dim * l.dim), 0.0);
    if (fp8) {
      sum.h8.assign(static_cast<size_t>(l.dim * l.dim), 0.0);
      sum.c.assign(static_cast<size_t>(l.dim * l.dim), 0.0);
    }
    const int64_t chunk = std::max<int64_t>(64, (int64_t{1} << 22) / std::max<int64_t>(l.dim, 1));
    std::vector<double> rows_x, rows_x8;
    rows_x.reserve(static_cast<size_t>(chunk * l.dim));
    auto flush = [&] {
      const int64_t m = static_cast<int64_t>(rows_x.size()) / l.dim;
      if (m == 0) return;
      cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, static_cast<blasint>(m), 1.0, rows_x.data(), d, 1.0, sum.h.data(), d);
      if (fp8) {
        rows_x8.resize(rows_x.size());
        for (size_t i = 0; i < rows_x.size(); ++i) {
          rows_x8[i] = l.fp8_scale * e4m3_bits_to_f32(f32_to_e4m3_bits(static_cast<float>(rows_x[i] / l.fp8_scale)));
        }
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, static_cast<blasint>(m), 1.0, rows_x8.data(), d, 1.0, sum.h8.data(), d);
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, static_cast<blasint>(m), 1.0, rows_x.data(), d,
                    rows_x8.data(), d, 1.0, sum.c.data(), d);
      }
      rows_x.clear();
    };
    auto push = [&] {
      if (static_cast<int64_t>(rows_x.size()) >= chunk * l.dim) flush();
    };
    const float* p = x->data<float>();
    const int64_t batch = x->dim(0);
    if (!l.conv) {
      if (x->numel() / batch != l.dim) fail(engine_->graph().source, "gptq: node '{}' reads {} values per input, expected {}", l.node, x->numel() / batch, l.dim);
      for (int64_t b = 0; b < batch; ++b) {
        push();
        for (int64_t i = 0; i < l.dim; ++i) rows_x.push_back(p[b * l.dim + i]);
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
          push();
          const int64_t oy = pos / ow, ox = pos % ow;
          for (int64_t c = 0; c < l.c; ++c) {
            for (int64_t r = 0; r < l.r; ++r) {
              for (int64_t s = 0; s < l.s; ++s) {
                const int64_t y = oy * l.stride_h - l.pad_h + r * l.dil_h, xx = ox * l.stride_w - l.pad_w + s * l.dil_w;
                rows_x.push_back((y < 0 || y >= hh || xx < 0 || xx >= ww) ? 0.0 : img[(c * hh + y) * ww + xx]);
              }
            }
          }
        }
      }
    }
    flush();
    sums.push_back(std::move(sum));
  }
  std::lock_guard<std::mutex> lock(mu_);
  pending_[first] = {input.dim(0), std::move(sums)};
  for (auto it = pending_.begin(); it != pending_.end() && it->first == next_; it = pending_.begin()) {
    merge(it->second.second);
    next_ += it->second.first;
    pending_.erase(it);
  }
}

void HessianCollector::merge(std::vector<Sums>& sums) {
  if (total_.empty()) {
    total_ = std::move(sums);
    return;
  }
  auto add = [](std::vector<double>& to, const std::vector<double>& from) {
    for (size_t i = 0; i < to.size(); ++i) to[i] += from[i];
  };
  for (size_t li = 0; li < total_.size(); ++li) {
    add(total_[li].h, sums[li].h);
    add(total_[li].h8, sums[li].h8);
    add(total_[li].c, sums[li].c);
  }
}

std::map<std::string, std::vector<double>> HessianCollector::symmetric(const std::vector<double> Sums::*part) {
  std::lock_guard<std::mutex> lock(mu_);
  // Batches after a gap (inputs never observed) join in input order.
  for (auto& [first, batch] : pending_) merge(batch.second);
  pending_.clear();
  std::map<std::string, std::vector<double>> out;
  for (size_t li = 0; li < layers_.size(); ++li) {
    const int64_t d = layers_[li].dim;
    if (part != &Sums::h && !(layers_[li].fp8_scale > 0.0)) continue;
    std::vector<double> h = total_.empty() ? std::vector<double>(static_cast<size_t>(d * d), 0.0) : total_[li].*part;
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t j = 0; j < i; ++j) h[static_cast<size_t>(i * d + j)] = h[static_cast<size_t>(j * d + i)];
    }
    out[layers_[li].node] = std::move(h);
  }
  return out;
}

std::map<std::string, std::vector<double>> HessianCollector::hessians() { return symmetric(&Sums::h); }

std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> HessianCollector::fp8_statistics() {
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> out;
  const auto h8 = symmetric(&Sums::h8);
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t li = 0; li < layers_.size(); ++li) {
    const auto it = h8.find(layers_[li].node);
    if (it == h8.end()) continue;
    const int64_t d = layers_[li].dim;
    out[layers_[li].node] = {it->second, total_.empty() ? std::vector<double>(static_cast<size_t>(d * d), 0.0) : total_[li].c};
  }
  return out;
}

}  // namespace nibble::quant
