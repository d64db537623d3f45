// The convolution loop and shape checks shared by the reference Conv, ConvInteger and QLinearConv.
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "backends/ref/kernels.h"
#include "backends/ref/window.h"
#include "nibble/graph.h"
#include "nibble/tensor.h"

namespace nibble::ref {

// One grouped convolution: X is N x C x spatial, W is M x C/group x kernel, Y is N x M x output.
struct ConvProblem {
  int64_t batch = 0;
  int64_t in_channels = 0;   // C
  int64_t out_channels = 0;  // M
  int64_t group = 1;
  Window window;    // in the op's own spatial rank, for output shapes
  Window window3d;  // the same, widened to three spatial dims for the loop nest

  Shape output_shape() const {
    Shape s{batch, out_channels};
    s.insert(s.end(), window.output.begin(), window.output.end());
    return s;
  }
};

// Checks the X and W shapes against each other and the node's attributes.
inline ConvProblem make_conv_problem(const Node& node, const Tensor& x, const Tensor& w) {
  const std::string& op = node.op_type;
  if (x.rank() < 3 || x.rank() > 2 + kMaxSpatialRank) {
    kernel_fail("{} expects X of rank 3 to {} (N x C x spatial), got shape {}", op, 2 + kMaxSpatialRank,
                shape_str(x.shape()));
  }
  if (w.rank() != x.rank()) {
    kernel_fail("{} expects W of the same rank as X ({}), got W {} and X {}", op, x.rank(),
                shape_str(w.shape()), shape_str(x.shape()));
  }
  ConvProblem p;
  p.batch = x.dim(0);
  p.in_channels = x.dim(1);
  p.out_channels = w.dim(0);
  p.group = node.attr_int("group", 1);
  if (p.group < 1) kernel_fail("{} attribute group must be >= 1, got {}", op, p.group);
  if (p.in_channels % p.group != 0) {
    kernel_fail("{} X has {} channels, which group = {} does not divide", op, p.in_channels, p.group);
  }
  if (p.out_channels % p.group != 0) {
    kernel_fail("{} W has {} output channels, which group = {} does not divide", op, p.out_channels, p.group);
  }
  if (w.dim(1) != p.in_channels / p.group) {
    kernel_fail("{} W has {} input channels per group but X has {} ({} channels in {} groups)", op, w.dim(1),
                p.in_channels / p.group, p.in_channels, p.group);
  }
  const std::vector<int64_t> kernel(w.shape().begin() + 2, w.shape().end());
  if (node.has_attr("kernel_shape") && node.attr_ints("kernel_shape") != kernel) {
    kernel_fail("{} attribute kernel_shape [{}] does not match W's spatial shape [{}]", op,
                fmt::join(node.attr_ints("kernel_shape"), ", "), fmt::join(kernel, ", "));
  }
  const std::vector<int64_t> spatial(x.shape().begin() + 2, x.shape().end());
  p.window = make_window(node, spatial, kernel, WindowRules{});
  p.window3d = p.window.as_3d();
  return p;
}

namespace conv_detail {

// Writes outputs ow0 .. ow0 + kBlock - 1 of one output row. `x_row` points at output ow0's
// window start in the group's first padded channel; tap t of channel c is read at
// x_row + c * plane + tap_offsets[t] + j for output ow0 + j. The kBlock sums live in registers
// across the whole reduction, which runs in the fixed order c, kd, kh, kw for every output.
template <int kBlock, typename Acc>
void conv_block(int64_t channels, int64_t plane, const std::vector<int64_t>& tap_offsets, const Acc* x_row,
                const Acc* w_map, Acc* y) {
  const size_t taps = tap_offsets.size();
  Acc acc[kBlock] = {};
  for (int64_t c = 0; c < channels; ++c) {
    const Acc* x_channel = x_row + c * plane;
    for (size_t t = 0; t < taps; ++t) {
      const Acc wv = *w_map++;
      const Acc* x_tap = x_channel + tap_offsets[t];
#pragma GCC unroll 8
      for (int j = 0; j < kBlock; ++j) acc[j] += x_tap[j] * wv;
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < kBlock; ++j) y[j] = acc[j];
}

// One output row of `width` outputs: blocks of eight, then of four, two and one for the rest.
template <typename Acc>
void conv_row(int64_t width, int64_t channels, int64_t plane, const std::vector<int64_t>& tap_offsets,
              const Acc* x_row, const Acc* w_map, Acc* y_row) {
  int64_t ow = 0;
  for (; ow + 8 <= width; ow += 8) conv_block<8>(channels, plane, tap_offsets, x_row + ow, w_map, y_row + ow);
  if (ow + 4 <= width) {
    conv_block<4>(channels, plane, tap_offsets, x_row + ow, w_map, y_row + ow);
    ow += 4;
  }
  if (ow + 2 <= width) {
    conv_block<2>(channels, plane, tap_offsets, x_row + ow, w_map, y_row + ow);
    ow += 2;
  }
  if (ow < width) conv_block<1>(channels, plane, tap_offsets, x_row + ow, w_map, y_row + ow);
}

}  // namespace conv_detail

// Writes y[n, m, o] = sum over c, kd, kh, kw of (x - x_zero) * w into y (N x M x OD x OH x OW),
// taking padded positions as x_zero. Each output is accumulated from zero in the fixed order
// c, kd, kh, kw, so float results do not depend on how the loops are blocked. `w` is
// M x C/group x KD x KH x KW, already converted to Acc (and zero-point adjusted for the integer
// ops). Acc is float, or uint32_t for the integer ops: unsigned arithmetic wraps like the int32
// accumulators of ONNX runtimes, without signed overflow.
template <typename Acc, typename X>
void conv_accumulate(const ConvProblem& p, const X* x, Acc x_zero, const Acc* w, Acc* y) {
  static_assert(std::is_same_v<Acc, float> || std::is_same_v<Acc, uint32_t>);
  const Window& win = p.window3d;
  const int64_t in_d = win.input[0], in_h = win.input[1], in_w = win.input[2];
  const int64_t out_d = win.output[0], out_h = win.output[1], out_w = win.output[2];
  const int64_t stride_h = win.strides[1], stride_w = win.strides[2];

  // The loop reads a copy of one group's input, converted to Acc with the zero point taken off
  // and surrounded by its padding (0, which is what x_zero becomes), so every window lies inside
  // it and the hot loop needs no bounds checks. Each depth slice is stored polyphase: padded
  // column c goes to column block c % stride_w at position c / stride_w, and padded row r to row
  // block r % stride_h at position r / stride_h. Output (oh, ow) then reads, through any one tap,
  // slice + tap offset + oh * phase_len + ow: consecutive outputs read consecutive memory
  // whatever the strides.
  const int64_t padded_d = in_d + win.pad_begin[0] + win.pad_end[0];
  const int64_t padded_h = in_h + win.pad_begin[1] + win.pad_end[1];
  const int64_t padded_w = in_w + win.pad_begin[2] + win.pad_end[2];
  const int64_t phase_len = ceil_div(padded_w, stride_w);       // stored row length
  const int64_t rows_per_phase = ceil_div(padded_h, stride_h);  // stored rows per row block
  const int64_t column_block = stride_h * rows_per_phase * phase_len;
  const int64_t slice = stride_w * column_block;
  const int64_t plane = padded_d * slice;
  auto offset_in_slice = [&](int64_t padded_row, int64_t padded_col) {
    return (padded_col % stride_w) * column_block +
           ((padded_row % stride_h) * rows_per_phase + padded_row / stride_h) * phase_len +
           padded_col / stride_w;
  };

  std::vector<int64_t> tap_offsets;
  for (int64_t kd = 0; kd < win.kernel[0]; ++kd) {
    for (int64_t kh = 0; kh < win.kernel[1]; ++kh) {
      for (int64_t kw = 0; kw < win.kernel[2]; ++kw) {
        tap_offsets.push_back(kd * win.dilations[0] * slice +
                              offset_in_slice(kh * win.dilations[1], kw * win.dilations[2]));
      }
    }
  }
  std::vector<int64_t> column_offsets(static_cast<size_t>(in_w));  // of input column iw in row 0
  for (int64_t iw = 0; iw < in_w; ++iw) {
    column_offsets[static_cast<size_t>(iw)] = offset_in_slice(0, iw + win.pad_begin[2]);
  }

  // Rows shorter than two full blocks would spend much of each pass on partial blocks; instead
  // all rows of a slice run as one virtual row q = oh * phase_len + ow, whose outputs at
  // ow >= out_w are computed and discarded. Long rows run one at a time, keeping the input rows
  // under them in cache while every map reads them.
  const bool flatten_rows = out_w < 16 && out_h > 1;
  const int64_t virtual_width = (out_h - 1) * phase_len + out_w;
  std::vector<Acc> virtual_row(flatten_rows ? static_cast<size_t>(virtual_width) : 0);

  const int64_t channels_per_group = p.in_channels / p.group;
  const int64_t maps_per_group = p.out_channels / p.group;
  const int64_t in_plane = in_d * in_h * in_w;
  const int64_t out_plane = out_d * out_h * out_w;
  const int64_t taps = static_cast<int64_t>(tap_offsets.size());
  std::vector<Acc> padded(static_cast<size_t>(channels_per_group * plane));
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t grp = 0; grp < p.group; ++grp) {
      const X* x_group = x + (n * p.in_channels + grp * channels_per_group) * in_plane;
      for (int64_t c = 0; c < channels_per_group; ++c) {
        for (int64_t id = 0; id < in_d; ++id) {
          for (int64_t ih = 0; ih < in_h; ++ih) {
            const X* src = x_group + c * in_plane + (id * in_h + ih) * in_w;
            Acc* dst = padded.data() + c * plane + (id + win.pad_begin[0]) * slice +
                       offset_in_slice(ih + win.pad_begin[1], 0);
            for (int64_t iw = 0; iw < in_w; ++iw) {
              if constexpr (std::is_same_v<Acc, float>) {
                dst[column_offsets[static_cast<size_t>(iw)]] = static_cast<float>(src[iw]);
              } else {
                dst[column_offsets[static_cast<size_t>(iw)]] = static_cast<Acc>(src[iw]) - x_zero;
              }
            }
          }
        }
      }
      for (int64_t od = 0; od < out_d; ++od) {
        const Acc* x_slice = padded.data() + od * win.strides[0] * slice;
        if (flatten_rows) {
          for (int64_t mg = 0; mg < maps_per_group; ++mg) {
            const int64_t m = grp * maps_per_group + mg;
            conv_detail::conv_row(virtual_width, channels_per_group, plane, tap_offsets, x_slice,
                                  w + m * channels_per_group * taps, virtual_row.data());
            Acc* y_slice = y + (n * p.out_channels + m) * out_plane + od * out_h * out_w;
            for (int64_t oh = 0; oh < out_h; ++oh) {
              for (int64_t ow = 0; ow < out_w; ++ow) {
                y_slice[oh * out_w + ow] = virtual_row[static_cast<size_t>(oh * phase_len + ow)];
              }
            }
          }
          continue;
        }
        for (int64_t oh = 0; oh < out_h; ++oh) {
          for (int64_t mg = 0; mg < maps_per_group; ++mg) {
            const int64_t m = grp * maps_per_group + mg;
            Acc* y_row = y + (n * p.out_channels + m) * out_plane + (od * out_h + oh) * out_w;
            conv_detail::conv_row(out_w, channels_per_group, plane, tap_offsets, x_slice + oh * phase_len,
                                  w + m * channels_per_group * taps, y_row);
          }
        }
      }
    }
  }
}

// A zero point that must be a single element (a scalar or a 1-element tensor) of `dtype`; 0 when
// the optional input is omitted.
inline int32_t scalar_zero_point(const Node& node, const Tensor* zp, DType dtype, const char* what) {
  if (!zp) return 0;
  if (zp->dtype() != dtype) {
    kernel_fail("{} expects {} of type {}, got {}", node.op_type, what, dtype_name(dtype),
                dtype_name(zp->dtype()));
  }
  if (zp->numel() != 1) {
    kernel_fail("{} expects {} to be a scalar, got shape {}", node.op_type, what, shape_str(zp->shape()));
  }
  return static_cast<int32_t>(zp->get(0));
}

// Per-output-channel values of a scalar or 1-D tensor of length M (a zero point or a scale),
// as M doubles.
inline std::vector<double> per_channel_values(const Node& node, const Tensor& t, int64_t channels,
                                              const char* what) {
  const bool scalar = t.numel() == 1 && t.rank() <= 1;
  if (!scalar && !(t.rank() == 1 && t.dim(0) == channels)) {
    kernel_fail("{} expects {} to be a scalar or a 1-D tensor of {} output channels, got shape {}",
                node.op_type, what, channels, shape_str(t.shape()));
  }
  std::vector<double> v(static_cast<size_t>(channels));
  for (int64_t m = 0; m < channels; ++m) v[static_cast<size_t>(m)] = t.get(scalar ? 0 : m);
  return v;
}

inline bool is_8bit_integer(DType t) { return t == DType::u8 || t == DType::s8; }

// The exact integer convolution shared by ConvInteger and QLinearConv: returns the N x M x output
// int32 sums of (x - x_zero) * (w - w_zero[m]); padding contributes nothing, as if padded with
// x_zero. x and w are u8 or s8 (checked by the caller), w_zero has M entries.
inline Tensor integer_conv(const ConvProblem& p, const Tensor& x, int32_t x_zero, const Tensor& w,
                           const std::vector<int32_t>& w_zero) {
  const int64_t per_map = w.numel() / (p.out_channels == 0 ? 1 : p.out_channels);
  std::vector<uint32_t> w_adjusted(static_cast<size_t>(w.numel()));
  for (int64_t i = 0; i < w.numel(); ++i) {
    const int32_t wv = static_cast<int32_t>(w.get(i)) - w_zero[static_cast<size_t>(i / per_map)];
    w_adjusted[static_cast<size_t>(i)] = static_cast<uint32_t>(wv);
  }
  Tensor y(DType::s32, p.output_shape());
  // uint32_t aliases int32_t legally, so the wrapping sums land in the s32 tensor directly.
  uint32_t* y_bits = reinterpret_cast<uint32_t*>(y.data<int32_t>());
  const uint32_t zero = static_cast<uint32_t>(x_zero);
  if (x.dtype() == DType::u8) {
    conv_accumulate<uint32_t, uint8_t>(p, x.data<uint8_t>(), zero, w_adjusted.data(), y_bits);
  } else {
    conv_accumulate<uint32_t, int8_t>(p, x.data<int8_t>(), zero, w_adjusted.data(), y_bits);
  }
  return y;
}

}  // namespace nibble::ref
