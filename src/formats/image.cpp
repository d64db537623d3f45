// Image decoding with stb_image, PIL-compatible bilinear resizing and the seed model's preprocessing.
#include "nibble/image.h"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "nibble/error.h"
#include "nibble/file_util.h"

// stb_image is compiled into this file with every function static: nibble then needs no stb library
// at link time and cannot clash with another copy of stb in the program. <stb/...> is a system header,
// so the compiler keeps its warnings to itself.
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

namespace nibble {
namespace {

constexpr int64_t kImagenetResize = 256;
constexpr int64_t kImagenetCrop = 224;
constexpr double kImagenetMean[3] = {0.485, 0.456, 0.406};
constexpr double kImagenetStd[3] = {0.229, 0.224, 0.225};
// The seed model's input scale: normalised values in [-2.64, 2.64] map to [-127, 127].
constexpr double kInputRange = 2.64;
// Pillow's fixed-point precision for 8-bit resampling: 32 bits less 8 for the pixel, 2 for headroom.
constexpr int kPilPrecisionBits = 22;

void check_hwc_u8(const Tensor& t, const char* fn) {
  if (!t.defined() || t.dtype() != DType::u8 || t.rank() != 3 || t.dim(2) != 3 || t.dim(0) < 1 ||
      t.dim(1) < 1) {
    throw std::invalid_argument(fmt::format("{}: expected a u8 H x W x 3 image, got {} {}", fn,
                                            dtype_name(t.dtype()), shape_str(t.shape())));
  }
}

void check_out_size(int64_t out_h, int64_t out_w, const char* fn) {
  if (out_h < 1 || out_w < 1 || out_h > kMaxImagePixels / out_w) {
    throw std::invalid_argument(fmt::format("{}: bad output size {} x {}", fn, out_h, out_w));
  }
}

// The input taps of a run of outputs along one axis: output k reads inputs [first[k], first[k] +
// count[k]) with weights[k * stride ...], normalised to sum to 1.
struct AxisTaps {
  std::vector<int64_t> first;
  std::vector<int64_t> count;
  std::vector<double> weights;
  int64_t stride = 0;
};

double triangle(double t) {
  t = std::fabs(t);
  return t < 1.0 ? 1.0 - t : 0.0;
}

// Taps of outputs [o0, o0 + n) of an n_in -> n_out resize. The expressions and their order follow
// Pillow's so that the doubles, and hence its fixed-point weights, come out bit-identical.
AxisTaps bilinear_taps(int64_t n_in, int64_t n_out, int64_t o0, int64_t n) {
  const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;  // the triangle reaches 1 input pixel, widened when shrinking
  const double inv_filter_scale = 1.0 / filter_scale;
  AxisTaps taps;
  taps.stride = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  taps.first.resize(static_cast<size_t>(n));
  taps.count.resize(static_cast<size_t>(n));
  taps.weights.assign(static_cast<size_t>(n * taps.stride), 0.0);
  for (int64_t k = 0; k < n; ++k) {
    const double center = (static_cast<double>(o0 + k) + 0.5) * scale;
    // Truncation, then the clamp at 0, equals floor for every value that survives the clamp.
    const int64_t lo = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    const int64_t hi = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), n_in);
    double* w = &taps.weights[static_cast<size_t>(k * taps.stride)];
    double sum = 0.0;
    for (int64_t i = lo; i < hi; ++i) {
      w[i - lo] = triangle((static_cast<double>(i) - center + 0.5) * inv_filter_scale);
      sum += w[i - lo];
    }
    // The input pixel under the centre always has a positive weight, so sum > 0.
    for (int64_t i = lo; i < hi; ++i) w[i - lo] /= sum;
    taps.first[static_cast<size_t>(k)] = lo;
    taps.count[static_cast<size_t>(k)] = hi - lo;
  }
  return taps;
}

// Pillow rounds each weight to fixed point on its own (the sum may miss 2^22 by a few units).
std::vector<int32_t> fixed_point_weights(const AxisTaps& taps) {
  std::vector<int32_t> fixed(taps.weights.size());
  constexpr double kOne = static_cast<double>(1 << kPilPrecisionBits);
  for (size_t i = 0; i < fixed.size(); ++i) {
    const double w = taps.weights[i];  // never negative for the triangle filter
    fixed[i] = static_cast<int32_t>(0.5 + w * kOne);
  }
  return fixed;
}

// Pillow's clip8: the accumulator already holds the +0.5 rounding term.
uint8_t clip8(int64_t acc) {
  return static_cast<uint8_t>(std::clamp<int64_t>(acc >> kPilPrecisionBits, 0, 255));
}

// The rows of the input that the vertical taps read: [lo, hi).
std::pair<int64_t, int64_t> rows_read(const AxisTaps& ty) {
  const int64_t lo = ty.first.front();
  const int64_t hi = ty.first.back() + ty.count.back();  // both first and first + count are monotonic
  return {lo, hi};
}

// Window [y0, y0 + wh) x [x0, x0 + ww) of the out_h x out_w resize, in doubles, to f32.
Tensor resize_window_f32(const Tensor& img, int64_t out_h, int64_t out_w, int64_t y0, int64_t x0, int64_t wh,
                         int64_t ww) {
  const int64_t in_h = img.dim(0), in_w = img.dim(1);
  const AxisTaps tx = bilinear_taps(in_w, out_w, x0, ww);
  const AxisTaps ty = bilinear_taps(in_h, out_h, y0, wh);
  const auto [r_lo, r_hi] = rows_read(ty);
  const uint8_t* in = img.data<uint8_t>();
  std::vector<double> mid(static_cast<size_t>((r_hi - r_lo) * ww * 3));
  for (int64_t r = r_lo; r < r_hi; ++r) {
    const uint8_t* row = in + r * in_w * 3;
    for (int64_t x = 0; x < ww; ++x) {
      const double* w = &tx.weights[static_cast<size_t>(x * tx.stride)];
      const uint8_t* src = row + tx.first[static_cast<size_t>(x)] * 3;
      double acc[3] = {0.0, 0.0, 0.0};
      for (int64_t i = 0; i < tx.count[static_cast<size_t>(x)]; ++i) {
        for (int c = 0; c < 3; ++c) acc[c] += w[i] * src[i * 3 + c];
      }
      double* dst = &mid[static_cast<size_t>(((r - r_lo) * ww + x) * 3)];
      for (int c = 0; c < 3; ++c) dst[c] = acc[c];
    }
  }
  Tensor out(DType::f32, {wh, ww, 3});
  float* o = out.data<float>();
  for (int64_t y = 0; y < wh; ++y) {
    const double* w = &ty.weights[static_cast<size_t>(y * ty.stride)];
    const int64_t first = ty.first[static_cast<size_t>(y)] - r_lo;
    for (int64_t x = 0; x < ww; ++x) {
      double acc[3] = {0.0, 0.0, 0.0};
      for (int64_t j = 0; j < ty.count[static_cast<size_t>(y)]; ++j) {
        const double* src = &mid[static_cast<size_t>(((first + j) * ww + x) * 3)];
        for (int c = 0; c < 3; ++c) acc[c] += w[j] * src[c];
      }
      for (int c = 0; c < 3; ++c) o[(y * ww + x) * 3 + c] = static_cast<float>(acc[c]);
    }
  }
  return out;
}

// The same window with Pillow's arithmetic: fixed-point weights, u8 between and after the passes.
Tensor resize_window_pil_u8(const Tensor& img, int64_t out_h, int64_t out_w, int64_t y0, int64_t x0,
                            int64_t wh, int64_t ww) {
  const int64_t in_h = img.dim(0), in_w = img.dim(1);
  const AxisTaps tx = bilinear_taps(in_w, out_w, x0, ww);
  const AxisTaps ty = bilinear_taps(in_h, out_h, y0, wh);
  const std::vector<int32_t> kx = fixed_point_weights(tx);
  const std::vector<int32_t> ky = fixed_point_weights(ty);
  const auto [r_lo, r_hi] = rows_read(ty);
  constexpr int64_t kHalf = int64_t{1} << (kPilPrecisionBits - 1);
  const uint8_t* in = img.data<uint8_t>();
  std::vector<uint8_t> mid(static_cast<size_t>((r_hi - r_lo) * ww * 3));
  for (int64_t r = r_lo; r < r_hi; ++r) {
    const uint8_t* row = in + r * in_w * 3;
    for (int64_t x = 0; x < ww; ++x) {
      const int32_t* k = &kx[static_cast<size_t>(x * tx.stride)];
      const uint8_t* src = row + tx.first[static_cast<size_t>(x)] * 3;
      int64_t acc[3] = {kHalf, kHalf, kHalf};
      for (int64_t i = 0; i < tx.count[static_cast<size_t>(x)]; ++i) {
        for (int c = 0; c < 3; ++c) acc[c] += int64_t{k[i]} * src[i * 3 + c];
      }
      uint8_t* dst = &mid[static_cast<size_t>(((r - r_lo) * ww + x) * 3)];
      for (int c = 0; c < 3; ++c) dst[c] = clip8(acc[c]);
    }
  }
  Tensor out(DType::u8, {wh, ww, 3});
  uint8_t* o = out.data<uint8_t>();
  for (int64_t y = 0; y < wh; ++y) {
    const int32_t* k = &ky[static_cast<size_t>(y * ty.stride)];
    const int64_t first = ty.first[static_cast<size_t>(y)] - r_lo;
    for (int64_t x = 0; x < ww; ++x) {
      int64_t acc[3] = {kHalf, kHalf, kHalf};
      for (int64_t j = 0; j < ty.count[static_cast<size_t>(y)]; ++j) {
        const uint8_t* src = &mid[static_cast<size_t>(((first + j) * ww + x) * 3)];
        for (int c = 0; c < 3; ++c) acc[c] += int64_t{k[j]} * src[c];
      }
      for (int c = 0; c < 3; ++c) o[(y * ww + x) * 3 + c] = clip8(acc[c]);
    }
  }
  return out;
}

}  // namespace

Tensor read_image_rgb(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    fail(path, "file of {} bytes is too large to decode", bytes.size());
  }
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int len = static_cast<int>(bytes.size());
  int w = 0, h = 0, channels = 0;
  // The header alone gives the size, so an absurd one is refused before any pixel memory is taken.
  if (!stbi_info_from_memory(data, len, &w, &h, &channels)) {
    fail(path, "not a readable image: {}", stbi_failure_reason());
  }
  if (int64_t{w} * h > kMaxImagePixels) {
    fail(path, "image of {} x {} pixels exceeds the limit of {} pixels", w, h, kMaxImagePixels);
  }
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load_from_memory(data, len, &w, &h, &channels, 3),
                                                   stbi_image_free);
  if (!pixels) fail(path, "cannot decode image: {}", stbi_failure_reason());
  if (w < 1 || h < 1 || int64_t{w} * h > kMaxImagePixels) fail(path, "decoded to a bad size {} x {}", w, h);
  Tensor out(DType::u8, {h, w, 3});
  std::memcpy(out.bytes(), pixels.get(), out.nbytes());
  return out;
}

Tensor resize_bilinear_u8(const Tensor& hwc, int64_t out_h, int64_t out_w) {
  check_hwc_u8(hwc, "resize_bilinear_u8");
  check_out_size(out_h, out_w, "resize_bilinear_u8");
  return resize_window_f32(hwc, out_h, out_w, 0, 0, out_h, out_w);
}

Tensor resize_bilinear_pil_u8(const Tensor& hwc, int64_t out_h, int64_t out_w) {
  check_hwc_u8(hwc, "resize_bilinear_pil_u8");
  check_out_size(out_h, out_w, "resize_bilinear_pil_u8");
  return resize_window_pil_u8(hwc, out_h, out_w, 0, 0, out_h, out_w);
}

std::pair<int64_t, int64_t> resize_shorter_side_dims(int64_t h, int64_t w, int64_t shorter) {
  if (h < 1 || w < 1 || shorter < 1) {
    throw std::invalid_argument(
        fmt::format("resize_shorter_side_dims: bad sizes {} x {} -> {}", h, w, shorter));
  }
  const int64_t short_side = std::min(h, w), long_side = std::max(h, w);
  // Python's int(shorter * long / short): an exact integer product, one correctly rounded division,
  // then truncation.
  const auto new_long =
      static_cast<int64_t>(static_cast<double>(shorter * long_side) / static_cast<double>(short_side));
  if (h <= w) return {shorter, new_long};
  return {new_long, shorter};
}

int64_t center_crop_offset(int64_t size, int64_t crop) {
  if (crop < 1 || size < crop) {
    throw std::invalid_argument(fmt::format("center_crop_offset: cannot crop {} from {}", crop, size));
  }
  const int64_t d = size - crop;
  if (d % 2 == 0) return d / 2;
  // A half: Python's round goes to the even neighbour.
  const int64_t below = d / 2;
  return below % 2 == 0 ? below : below + 1;
}

Tensor preprocess_imagenet_s8(const Tensor& hwc_u8) {
  check_hwc_u8(hwc_u8, "preprocess_imagenet_s8");
  const auto [rh, rw] = resize_shorter_side_dims(hwc_u8.dim(0), hwc_u8.dim(1), kImagenetResize);
  const int64_t y0 = center_crop_offset(rh, kImagenetCrop);
  const int64_t x0 = center_crop_offset(rw, kImagenetCrop);
  const Tensor crop = resize_window_pil_u8(hwc_u8, rh, rw, y0, x0, kImagenetCrop, kImagenetCrop);

  // A pixel has 256 values per channel, so the whole normalise-and-quantise step is a table.
  // torchvision computes it in f32 and this in f64; for all 768 entries both give the same integer,
  // no entry lying within 6e-5 of a rounding tie. nearbyint rounds ties to even, as numpy.round does.
  int8_t table[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int p = 0; p < 256; ++p) {
      const double x = (p / 255.0 - kImagenetMean[c]) / kImagenetStd[c];
      const double q = std::nearbyint(x * 127.0 / kInputRange);
      table[c][p] = static_cast<int8_t>(std::clamp(q, -127.0, 127.0));
    }
  }
  Tensor out(DType::s8, {3, kImagenetCrop, kImagenetCrop});
  int8_t* o = out.data<int8_t>();
  const uint8_t* in = crop.data<uint8_t>();
  constexpr int64_t kPlane = kImagenetCrop * kImagenetCrop;
  for (int64_t i = 0; i < kPlane; ++i) {
    for (int c = 0; c < 3; ++c) o[c * kPlane + i] = table[c][in[i * 3 + c]];
  }
  return out;
}

std::vector<std::string> read_class_names(const std::string& path) {
  const std::string text = read_file(path);
  std::vector<std::string> names;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string name = text.substr(pos, end - pos);
    if (!name.empty() && name.back() == '\r') name.pop_back();
    if (name.empty()) fail(fmt::format("{}:{}", path, names.size() + 1), "empty class name");
    names.push_back(std::move(name));
    pos = end + 1;
  }
  if (names.empty()) fail(path, "no class names");
  return names;
}

}  // namespace nibble
