// ONNX Softmax: along one axis (opset >= 13) or over the flattened trailing dims from `axis` (opset < 13).
#include <cmath>
#include <vector>

#include "backends/ref/kernels.h"

namespace nibble::ref {

void softmax(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  if (x.dtype() != DType::f32) {
    kernel_fail("Softmax: input has dtype {}; the reference kernel supports f32", dtype_name(x.dtype()));
  }
  const bool legacy = node.opset < 13;
  const int64_t rank = x.rank();
  int64_t axis = node.attr_int("axis", legacy ? 1 : -1);
  if (rank == 0 || axis < -rank || axis >= rank) {
    kernel_fail("Softmax: axis {} is out of range for input of shape {}", axis, shape_str(x.shape()));
  }
  if (axis < 0) axis += rank;

  // Softmax runs over `len` elements spaced `inner` apart, once per (outer, inner) position. Before
  // opset 13 the input is coerced to 2-D [outer, len] at the axis, so inner is 1.
  int64_t outer = 1, len = 1, inner = 1;
  for (int64_t d = 0; d < rank; ++d) {
    const int64_t extent = x.dim(static_cast<int>(d));
    if (d < axis) {
      outer *= extent;
    } else if (d == axis || legacy) {
      len *= extent;
    } else {
      inner *= extent;
    }
  }

  Tensor y(DType::f32, x.shape());
  const float* px = x.data<float>();
  float* py = y.data<float>();
  // Exponentials and sums in f64, rounded once to f32 at the end: as close to the exact softmax as
  // f32 allows. Subtracting the maximum keeps exp from overflowing; it cancels in the ratio.
  std::vector<float> maxv(static_cast<size_t>(inner));
  std::vector<double> sum(static_cast<size_t>(inner));
  std::vector<double> e(static_cast<size_t>(len * inner));
  for (int64_t o = 0; o < outer; ++o) {
    const float* xb = px + o * len * inner;
    float* yb = py + o * len * inner;
    // The loops run l outside and the contiguous inner position inside.
    for (int64_t i = 0; i < inner; ++i) maxv[static_cast<size_t>(i)] = xb[i];
    for (int64_t l = 1; l < len; ++l) {
      for (int64_t i = 0; i < inner; ++i) {
        float& m = maxv[static_cast<size_t>(i)];
        const float v = xb[l * inner + i];
        // Written so that a NaN anywhere in the slice makes the maximum (and the result) NaN.
        if (!(v <= m)) m = std::isnan(m) ? m : v;
      }
    }
    for (double& s : sum) s = 0.0;
    for (int64_t l = 0; l < len; ++l) {
      for (int64_t i = 0; i < inner; ++i) {
        const size_t at = static_cast<size_t>(l * inner + i);
        e[at] = std::exp(static_cast<double>(xb[at]) - static_cast<double>(maxv[static_cast<size_t>(i)]));
        sum[static_cast<size_t>(i)] += e[at];
      }
    }
    for (int64_t l = 0; l < len; ++l) {
      for (int64_t i = 0; i < inner; ++i) {
        const size_t at = static_cast<size_t>(l * inner + i);
        yb[at] = static_cast<float>(e[at] / sum[static_cast<size_t>(i)]);
      }
    }
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
