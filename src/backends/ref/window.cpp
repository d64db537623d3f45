// Sliding-window geometry: the ONNX strides/dilations/pads/auto_pad/ceil_mode rules in one place.
#include "backends/ref/window.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <string>

#include "backends/ref/kernels.h"

namespace nibble::ref {

namespace {

int64_t product(const std::vector<int64_t>& v) {
  int64_t p = 1;
  for (int64_t d : v) p *= d;
  return p;
}

// An optional per-spatial-dim attribute; absent means all `fill`, every entry must be >= `min`.
std::vector<int64_t> per_dim_attr(const Node& node, const char* key, size_t count, int64_t fill,
                                  int64_t min) {
  std::vector<int64_t> v = node.attr_ints(key, std::vector<int64_t>(count, fill));
  if (v.size() != count) {
    kernel_fail("{} attribute '{}' has {} entries but the input's spatial dims need {}", node.op_type, key,
                v.size(), count);
  }
  for (int64_t x : v) {
    if (x < min) {
      kernel_fail("{} attribute '{}' = [{}] must have entries >= {}", node.op_type, key, fmt::join(v, ", "),
                  min);
    }
  }
  return v;
}

}  // namespace

int64_t Window::input_size() const { return product(input); }
int64_t Window::output_size() const { return product(output); }
int64_t Window::kernel_size() const { return product(kernel); }

Window Window::as_3d() const {
  Window w;
  w.rank = kMaxSpatialRank;
  const size_t missing = static_cast<size_t>(kMaxSpatialRank - rank);
  auto widen = [missing](const std::vector<int64_t>& v, int64_t fill) {
    std::vector<int64_t> out(missing, fill);
    out.insert(out.end(), v.begin(), v.end());
    return out;
  };
  w.input = widen(input, 1);
  w.kernel = widen(kernel, 1);
  w.strides = widen(strides, 1);
  w.dilations = widen(dilations, 1);
  w.pad_begin = widen(pad_begin, 0);
  w.pad_end = widen(pad_end, 0);
  w.output = widen(output, 1);
  return w;
}

Window make_window(const Node& node, std::span<const int64_t> input_spatial, std::span<const int64_t> kernel,
                   const WindowRules& rules) {
  const std::string& op = node.op_type;
  const int rank = static_cast<int>(input_spatial.size());
  if (rank < 1 || rank > kMaxSpatialRank) {
    kernel_fail("{} supports 1 to {} spatial dims, got an input with {}", op, kMaxSpatialRank, rank);
  }
  if (kernel.size() != input_spatial.size()) {
    kernel_fail("{} kernel has {} spatial dims but the input has {}", op, kernel.size(), rank);
  }
  const size_t n = static_cast<size_t>(rank);

  Window w;
  w.rank = rank;
  w.input.assign(input_spatial.begin(), input_spatial.end());
  w.kernel.assign(kernel.begin(), kernel.end());
  for (int64_t k : w.kernel) {
    if (k < 1) kernel_fail("{} kernel shape [{}] must be positive", op, fmt::join(w.kernel, ", "));
  }
  w.strides = per_dim_attr(node, "strides", n, 1, 1);
  w.dilations = per_dim_attr(node, "dilations", n, 1, 1);
  const std::vector<int64_t> pads = per_dim_attr(node, "pads", 2 * n, 0, 0);

  int64_t ceil_mode = 0;
  if (rules.ceil_mode_allowed) {
    ceil_mode = node.attr_int("ceil_mode", 0);
    if (ceil_mode != 0 && ceil_mode != 1)
      kernel_fail("{} attribute ceil_mode must be 0 or 1, got {}", op, ceil_mode);
  }

  std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  if (auto_pad.empty()) auto_pad = "NOTSET";  // some exporters write an empty string for the default
  const bool explicit_pads = auto_pad == "NOTSET";
  if (!explicit_pads && auto_pad != "VALID" && auto_pad != "SAME_UPPER" && auto_pad != "SAME_LOWER") {
    kernel_fail("{} attribute auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, got '{}'", op,
                auto_pad);
  }
  if (!explicit_pads) {
    for (int64_t p : pads) {
      if (p != 0) kernel_fail("{} cannot use both auto_pad={} and explicit pads", op, auto_pad);
    }
  }

  w.pad_begin.assign(n, 0);
  w.pad_end.assign(n, 0);
  w.output.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const int64_t in = w.input[i];
    const int64_t stride = w.strides[i];
    const int64_t extent = w.extent(static_cast<int>(i));
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      // Pad just enough that ceil(in / stride) windows fit; an odd total puts the extra
      // element at the end (UPPER) or the beginning (LOWER).
      const int64_t out = ceil_div(in, stride);
      const int64_t total = std::max<int64_t>(0, (out - 1) * stride + extent - in);
      const int64_t smaller = total / 2;
      w.pad_begin[i] = auto_pad == "SAME_UPPER" ? smaller : total - smaller;
      w.pad_end[i] = total - w.pad_begin[i];
      w.output[i] = out;
    } else {
      if (explicit_pads) {
        w.pad_begin[i] = pads[i];
        w.pad_end[i] = pads[i + n];
      }
      const int64_t span = in + w.pad_begin[i] + w.pad_end[i] - extent;
      if (span < 0) {
        w.output[i] = 0;
      } else if (ceil_mode) {
        int64_t out = ceil_div(span, stride) + 1;
        // A window that would start in the right padding is dropped (the ONNX ceil_mode rule).
        if ((out - 1) * stride >= in + w.pad_begin[i]) --out;
        w.output[i] = out;
      } else {
        w.output[i] = span / stride + 1;
      }
    }
    if (w.output[i] < 1) {
      kernel_fail(
          "{} output is empty along spatial dim {}: input {}, kernel extent {}, pads {}+{}, stride {}", op, i,
          in, extent, w.pad_begin[i], w.pad_end[i], stride);
    }
  }
  return w;
}

std::vector<int64_t> pool_kernel_shape(const Node& node, int spatial_rank) {
  if (!node.has_attr("kernel_shape")) kernel_fail("{} requires the kernel_shape attribute", node.op_type);
  std::vector<int64_t> k = node.attr_ints("kernel_shape");
  if (k.size() != static_cast<size_t>(spatial_rank)) {
    kernel_fail("{} kernel_shape has {} entries but the input has {} spatial dims", node.op_type, k.size(),
                spatial_rank);
  }
  for (int64_t d : k) {
    if (d < 1) kernel_fail("{} kernel_shape [{}] must be positive", node.op_type, fmt::join(k, ", "));
  }
  return k;
}

}  // namespace nibble::ref
