// 2:4 structured sparsity: eligibility and magnitude pruning.
#include "quant/sparsity.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <set>

#include "nibble/error.h"

namespace nibble::quant {

namespace {

// Calls fn(base) for the first element of every group of 4 along the reduction dimension;
// the group is base, base + stride, base + 2 stride, base + 3 stride.
template <typename F>
void for_each_group(const Tensor& w, const SparsityPlan& p, F&& fn) {
  const int64_t n = w.numel();
  if (p.op == "Conv") {
    // K x C x R x S: along C, stride R * S.
    const int64_t k = w.dim(0), c = w.dim(1), rs = w.dim(2) * w.dim(3);
    for (int64_t o = 0; o < k; ++o) {
      for (int64_t g = 0; g < c; g += 4) {
        for (int64_t i = 0; i < rs; ++i) fn((o * c + g) * rs + i);
      }
    }
  } else if (p.stride == 1) {
    for (int64_t b = 0; b < n; b += 4) fn(b);  // rows of in-features: Gemm with transB
  } else {
    // in x out (MatMul, Gemm without transB): along rows, stride out.
    const int64_t in = w.dim(0), out = w.dim(1);
    for (int64_t r = 0; r < in; r += 4) {
      for (int64_t col = 0; col < out; ++col) fn(r * out + col);
    }
  }
}

}  // namespace

std::vector<SparsityPlan> plan_2to4(const Graph& g, const std::vector<std::string>& exclude) {
  const std::set<std::string> skip(exclude.begin(), exclude.end());
  std::set<std::string> named;
  std::vector<SparsityPlan> out;
  for (const Node& n : g.nodes) {
    if (n.op_type != "Conv" && n.op_type != "Gemm" && n.op_type != "MatMul") continue;
    SparsityPlan p;
    p.node = n.name.empty() ? n.op_type : n.name;
    p.op = n.op_type;
    p.macs = node_macs(g, n);
    const auto w = n.inputs.size() > 1 ? g.initializers.find(n.inputs[1]) : g.initializers.end();
    if (w == g.initializers.end()) {
      p.reason = "the weight is not a constant";
      out.push_back(p);
      continue;
    }
    p.weight = w->first;
    p.shape = w->second.shape();
    if (skip.count(p.node) || skip.count(p.weight)) {
      named.insert(skip.count(p.node) ? p.node : p.weight);
      p.reason = "excluded with --exclude";
    } else if (w->second.dtype() != DType::f32) {
      p.reason = fmt::format("the weight is {}, not f32", dtype_name(w->second.dtype()));
    } else if (n.op_type == "Conv") {
      const int64_t group = n.attr_int("group", 1);
      if (w->second.rank() != 4) {
        p.reason = fmt::format("a {}-D convolution", w->second.rank() - 2);
      } else if (group != 1) {
        p.reason = w->second.dim(1) == 1 ? "depthwise" : fmt::format("grouped ({} groups)", group);
      } else if (w->second.dim(1) % 4 != 0) {
        p.reason = fmt::format("{} input channels, not a multiple of 4", w->second.dim(1));
      } else {
        p.eligible = true;
      }
    } else {
      const bool trans_b = n.op_type == "Gemm" && n.attr_int("transB", 0) != 0;
      if (w->second.rank() != 2) {
        p.reason = fmt::format("a weight of rank {}", w->second.rank());
      } else {
        const int64_t in = trans_b ? w->second.dim(1) : w->second.dim(0);
        p.stride = trans_b ? 1 : w->second.dim(1);
        if (in % 4 != 0) {
          p.reason = fmt::format("{} input features, not a multiple of 4", in);
        } else {
          p.eligible = true;
        }
      }
    }
    out.push_back(p);
  }
  for (const auto& e : skip) {
    if (!named.count(e)) fail("--exclude", "no Conv, Gemm or MatMul node or weight is named '{}'", e);
  }
  return out;
}

int64_t prune_2to4(Tensor& w, const SparsityPlan& p) {
  if (!p.eligible) fail(p.node, "internal: pruning a layer that cannot be 2:4 sparse");
  float* v = w.data<float>();
  const int64_t s = p.op == "Conv" ? w.dim(2) * w.dim(3) : p.stride;
  int64_t zeroed = 0;
  for_each_group(w, p, [&](int64_t base) {
    std::array<int, 4> order{0, 1, 2, 3};
    // Largest magnitude first; the lower index first among equals.
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return std::fabs(v[base + a * s]) > std::fabs(v[base + b * s]); });
    for (int j = 2; j < 4; ++j) {
      float& x = v[base + order[static_cast<size_t>(j)] * s];
      zeroed += x != 0.0f;
      x = 0.0f;
    }
  });
  return zeroed;
}

}  // namespace nibble::quant
