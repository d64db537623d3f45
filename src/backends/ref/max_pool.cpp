// The reference MaxPool: N-d max over dilated windows, with optional flattened argmax Indices.
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "backends/ref/kernels.h"
#include "backends/ref/window.h"

namespace nibble::ref {

namespace {

template <typename T>
bool is_nan(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    return std::isnan(v);
  } else {
    return false;
  }
}

// Maximum of each window over real input elements only (padding never wins). NaNs are skipped as
// in the ONNX reference, unless a window holds nothing else. A window made only of padding gives
// the type's lowest value (-inf for floats) and index -1.
template <typename T>
void max_pool_planes(const Window& g, int64_t planes, bool column_major, const T* x, T* y, int64_t* indices) {
  const int64_t in_d = g.input[0], in_h = g.input[1], in_w = g.input[2];
  const int64_t out_d = g.output[0], out_h = g.output[1], out_w = g.output[2];
  const int64_t in_plane = in_d * in_h * in_w;
  const int64_t out_plane = out_d * out_h * out_w;
  // Index strides of (d, h, w) within a plane: row-major, or column-major for storage_order 1.
  const int64_t step_d = column_major ? 1 : in_h * in_w;
  const int64_t step_h = column_major ? in_d : in_w;
  const int64_t step_w = column_major ? in_d * in_h : 1;
  const T empty = std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity()
                                                       : std::numeric_limits<T>::lowest();

  for (int64_t plane = 0; plane < planes; ++plane) {
    const T* x_plane = x + plane * in_plane;
    for (int64_t od = 0; od < out_d; ++od) {
      const int64_t id0 = od * g.strides[0] - g.pad_begin[0];
      const auto [kd_first, kd_last] = taps_within(id0, g.dilations[0], g.kernel[0], 0, in_d);
      for (int64_t oh = 0; oh < out_h; ++oh) {
        const int64_t ih0 = oh * g.strides[1] - g.pad_begin[1];
        const auto [kh_first, kh_last] = taps_within(ih0, g.dilations[1], g.kernel[1], 0, in_h);
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const int64_t iw0 = ow * g.strides[2] - g.pad_begin[2];
          const auto [kw_first, kw_last] = taps_within(iw0, g.dilations[2], g.kernel[2], 0, in_w);
          T best = empty;
          int64_t best_index = -1;
          for (int64_t kd = kd_first; kd < kd_last; ++kd) {
            const int64_t id = id0 + kd * g.dilations[0];
            for (int64_t kh = kh_first; kh < kh_last; ++kh) {
              const int64_t ih = ih0 + kh * g.dilations[1];
              const T* x_row = x_plane + (id * in_h + ih) * in_w;
              for (int64_t kw = kw_first; kw < kw_last; ++kw) {
                const int64_t iw = iw0 + kw * g.dilations[2];
                const T v = x_row[iw];
                if (best_index < 0 || v > best || (is_nan(best) && !is_nan(v))) {
                  best = v;
                  best_index = id * step_d + ih * step_h + iw * step_w;
                }
              }
            }
          }
          const int64_t o = plane * out_plane + (od * out_h + oh) * out_w + ow;
          y[o] = best;
          if (indices) indices[o] = best_index < 0 ? -1 : plane * in_plane + best_index;
        }
      }
    }
  }
}

}  // namespace

void max_pool(const Node& node, const Inputs& in, Outputs& out) {
  const Tensor& x = required_input(node, in, 0);
  if (x.dtype() != DType::f32 && x.dtype() != DType::u8 && x.dtype() != DType::s8) {
    kernel_fail("MaxPool expects f32, u8 or s8 input X, got {}", dtype_name(x.dtype()));
  }
  if (x.rank() < 3 || x.rank() > 2 + kMaxSpatialRank) {
    kernel_fail("MaxPool expects X of rank 3 to {} (N x C x spatial), got shape {}", 2 + kMaxSpatialRank,
                shape_str(x.shape()));
  }
  const std::vector<int64_t> spatial(x.shape().begin() + 2, x.shape().end());
  const std::vector<int64_t> kernel = pool_kernel_shape(node, static_cast<int>(spatial.size()));
  const Window window = make_window(node, spatial, kernel, WindowRules{.ceil_mode_allowed = true});
  const int64_t storage_order = node.attr_int("storage_order", 0);
  if (storage_order != 0 && storage_order != 1) {
    kernel_fail("MaxPool attribute storage_order must be 0 or 1, got {}", storage_order);
  }

  Shape out_shape{x.dim(0), x.dim(1)};
  out_shape.insert(out_shape.end(), window.output.begin(), window.output.end());
  Tensor y(x.dtype(), out_shape);
  const bool want_indices = node.outputs.size() > 1 && out.size() > 1 && !node.outputs[1].empty();
  Tensor indices = want_indices ? Tensor(DType::s64, out_shape) : Tensor();
  int64_t* index_data = want_indices ? indices.data<int64_t>() : nullptr;

  const Window g = window.as_3d();
  const int64_t planes = x.dim(0) * x.dim(1);
  const bool column_major = storage_order == 1;
  switch (x.dtype()) {
    case DType::f32:
      max_pool_planes<float>(g, planes, column_major, x.data<float>(), y.data<float>(), index_data);
      break;
    case DType::u8:
      max_pool_planes<uint8_t>(g, planes, column_major, x.data<uint8_t>(), y.data<uint8_t>(), index_data);
      break;
    default:
      max_pool_planes<int8_t>(g, planes, column_major, x.data<int8_t>(), y.data<int8_t>(), index_data);
      break;
  }
  out.at(0) = std::move(y);
  if (want_indices) out[1] = std::move(indices);
}

}  // namespace nibble::ref
