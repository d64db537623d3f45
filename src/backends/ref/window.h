// Sliding-window geometry shared by the reference Conv, ConvInteger, QLinearConv and pooling kernels.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "nibble/graph.h"

namespace nibble::ref {

// The placement of a kernel window over the spatial dims of an N x C x D1 x ... x Dk input.
// Window (o, k) along dim i reads input position o * strides[i] - pad_begin[i] + k * dilations[i];
// positions outside [0, input[i]) are padding.
struct Window {
  int rank = 0;  // number of spatial dims
  std::vector<int64_t> input;
  std::vector<int64_t> kernel;
  std::vector<int64_t> strides;
  std::vector<int64_t> dilations;
  std::vector<int64_t> pad_begin;
  std::vector<int64_t> pad_end;
  std::vector<int64_t> output;

  // Input span covered by one dilated window along dim i.
  int64_t extent(int i) const { return (kernel[i] - 1) * dilations[i] + 1; }
  int64_t input_size() const;   // product of the spatial input dims
  int64_t output_size() const;  // product of the spatial output dims
  int64_t kernel_size() const;  // product of the kernel dims

  // The same geometry with singleton dims prepended up to three spatial dims, so that kernels
  // can run one 3-D loop nest for 1-D, 2-D and 3-D inputs.
  Window as_3d() const;
};

struct WindowRules {
  bool ceil_mode_allowed = false;  // pools read the ceil_mode attribute; Conv has none
};

// The most spatial dims the reference kernels handle.
inline constexpr int kMaxSpatialRank = 3;

// Builds the geometry from the node's strides, dilations, pads, auto_pad (and ceil_mode for pools)
// attributes, following the ONNX output-size formulas. `kernel` is the kernel's spatial shape;
// kernel_fails on attributes of the wrong length, non-positive sizes or an empty output.
Window make_window(const Node& node, std::span<const int64_t> input_spatial, std::span<const int64_t> kernel,
                   const WindowRules& rules);

// The pools' kernel_shape attribute, checked to have one positive entry per spatial dim.
std::vector<int64_t> pool_kernel_shape(const Node& node, int spatial_rank);

// Floor and ceiling of a / b for b > 0 and any sign of a.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// The taps k in [0, kernel) whose position start + k * dilation lies in [lo, hi), as [first, last).
// The window's taps are evenly spaced, so the in-range ones form one contiguous run.
inline std::pair<int64_t, int64_t> taps_within(int64_t start, int64_t dilation, int64_t kernel, int64_t lo,
                                               int64_t hi) {
  int64_t first = start >= lo ? 0 : ceil_div(lo - start, dilation);
  int64_t last = start >= hi ? 0 : floor_div(hi - 1 - start, dilation) + 1;
  if (last > kernel) last = kernel;
  if (first > last) first = last;
  return {first, last};
}

}  // namespace nibble::ref
