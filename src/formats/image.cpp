// Image decoding with stb_image, PIL-compatible bilinear resizing and the seed model's preprocessing.
#include "nibble/image.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "nibble/error.h"
#include "nibble/file_util.h"

// stb_image is compiled into this file with every function static: nibble then needs no stb library
// at link time and cannot clash with another copy of stb in the program. <stb/...> is a system header,
// so the compiler keeps its warnings to itself.
// Only the formats nibble decodes with it are compiled in (JPEG goes to libjpeg-turbo, PNG to
// libpng, PNM to the few lines below).
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_TGA
#define STBI_NO_STDIO
#define STBI_MAX_DIMENSIONS (1 << 16)
#include <png.h>
#include <stb/stb_image.h>
#include <turbojpeg.h>

#include <csetjmp>

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

namespace {

bool is_jpeg(const std::string& bytes) {
  return bytes.size() >= 3 && static_cast<unsigned char>(bytes[0]) == 0xFF && static_cast<unsigned char>(bytes[1]) == 0xD8 &&
         static_cast<unsigned char>(bytes[2]) == 0xFF;
}

void check_pixels(const std::string& path, int64_t w, int64_t h) {
  if (w < 1 || h < 1) fail(path, "image of {} x {} pixels is empty", w, h);
  if (w > kMaxImagePixels || h > kMaxImagePixels || w * h > kMaxImagePixels) {
    fail(path, "image of {} x {} pixels exceeds the limit of {} pixels", w, h, kMaxImagePixels);
  }
}

// ---- JPEG through libjpeg-turbo, as PIL decodes it (accurate integer IDCT, smooth upsampling).
Tensor decode_jpeg(const std::string& path, const std::string& bytes) {
  std::unique_ptr<void, int (*)(tjhandle)> tj(tjInitDecompress(), tjDestroy);
  if (!tj) fail(path, "cannot start the JPEG decoder");
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto len = static_cast<unsigned long>(bytes.size());
  int w = 0, h = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj.get(), data, len, &w, &h, &subsamp, &colorspace) != 0) {
    fail(path, "not a readable JPEG: {}", tjGetErrorStr2(tj.get()));
  }
  check_pixels(path, w, h);
  // Compressed data can cover at most about 1000 pixels per byte: a header that claims more
  // than that much image for the file is a decompression bomb, refused before decoding.
  if (w * static_cast<int64_t>(h) > 1024 * static_cast<int64_t>(bytes.size()) + (1 << 20)) {
    fail(path, "JPEG header claims {} x {} pixels, far more than {} bytes of data can hold", w, h, bytes.size());
  }
  Tensor out(DType::u8, {h, w, 3});
  if (tjDecompress2(tj.get(), data, len, out.bytes(), w, w * 3, h, TJPF_RGB, TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING) != 0) {
    fail(path, "cannot decode JPEG: {}", tjGetErrorStr2(tj.get()));
  }
  return out;
}

// ---- PNG through libpng ----
// libpng reports errors by longjmp: the decoder below keeps no C++ object alive across it.

struct PngSource {
  const unsigned char* data;
  size_t size;
  size_t pos;
  int64_t max_pixels;  // the most pixels the header may claim for this file
  char message[200];
  bool own_message;    // message holds the whole error, not one of libpng's
};

void png_read_bytes(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->pos) png_error(png, "truncated file");
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

void png_fail(png_structp png, png_const_charp msg) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  if (!src->own_message) std::snprintf(src->message, sizeof(src->message), "cannot decode PNG: %s", msg);
  std::longjmp(png_jmpbuf(png), 1);
}

void png_ignore_warning(png_structp, png_const_charp) {}

// Decodes to malloc'ed 8-bit RGB rows (the caller frees), or returns nullptr with src->message
// set. Samples are taken as stored, as stb_image and PIL do: no gamma conversion, 16-bit
// samples keep their high byte, palettes and grey expand to RGB, alpha is dropped.
unsigned char* png_decode_rgb(PngSource* src, png_uint_32* w, png_uint_32* h) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, src, png_fail, png_ignore_warning);
  if (!png) {
    std::snprintf(src->message, sizeof(src->message), "cannot start the PNG decoder");
    return nullptr;
  }
  png_infop info = png_create_info_struct(png);
  unsigned char* volatile pixels = nullptr;
  png_bytep* volatile rows = nullptr;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    std::free(pixels);
    std::free(rows);
    return nullptr;
  }
  if (!info) png_error(png, "out of memory");
  png_set_read_fn(png, src, png_read_bytes);
  png_set_user_limits(png, 1 << 16, 1 << 16);
  png_set_chunk_malloc_max(png, 16 << 20);  // ancillary chunks (text, ICC profiles) beyond this are refused
  png_read_info(png, info);
  *w = png_get_image_width(png, info);
  *h = png_get_image_height(png, info);
  const int64_t pixels_claimed = int64_t{*w} * *h;
  if (pixels_claimed > kMaxImagePixels || pixels_claimed > src->max_pixels) {
    std::snprintf(src->message, sizeof(src->message),
                  pixels_claimed > kMaxImagePixels ? "image of %u x %u pixels exceeds the limit of %lld pixels"
                                                   : "PNG header claims %u x %u pixels, more than the %lld its data can hold",
                  static_cast<unsigned>(*w), static_cast<unsigned>(*h),
                  static_cast<long long>(pixels_claimed > kMaxImagePixels ? kMaxImagePixels : src->max_pixels));
    src->own_message = true;
    png_error(png, "");
  }
  png_set_expand(png);
  png_set_strip_16(png);
  png_set_strip_alpha(png);
  png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const size_t row = png_get_rowbytes(png, info);
  if (row != size_t{*w} * 3) png_error(png, "unexpected row layout");
  pixels = static_cast<unsigned char*>(std::malloc(row * *h));
  rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * *h));
  if (!pixels || !rows) png_error(png, "out of memory");
  for (png_uint_32 y = 0; y < *h; ++y) rows[y] = pixels + y * row;
  png_read_image(png, rows);
  png_destroy_read_struct(&png, &info, nullptr);
  std::free(rows);
  return pixels;
}

bool is_png(const std::string& bytes) { return bytes.size() >= 8 && png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) == 0; }

Tensor decode_png(const std::string& path, const std::string& bytes) {
  PngSource src{reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), 0, 0, {0}, false};
  // Deflate expands a byte to at most 1032; 1-bit pixels pack 8 to a byte.
  src.max_pixels = 8256 * static_cast<int64_t>(bytes.size()) + (1 << 20);
  // IHDR comes first: its size is checked before libpng reads further.
  if (bytes.size() >= 24 && bytes.compare(12, 4, "IHDR") == 0) {
    const auto be32 = [&](size_t i) {
      return int64_t{static_cast<unsigned char>(bytes[i])} << 24 | int64_t{static_cast<unsigned char>(bytes[i + 1])} << 16 |
             int64_t{static_cast<unsigned char>(bytes[i + 2])} << 8 | int64_t{static_cast<unsigned char>(bytes[i + 3])};
    };
    const int64_t hw = be32(16), hh = be32(20);
    if (hw > 0 && hh > 0) check_pixels(path, hw, hh);
  }
  png_uint_32 w = 0, h = 0;
  std::unique_ptr<unsigned char, void (*)(void*)> pixels(png_decode_rgb(&src, &w, &h), std::free);
  if (!pixels) fail(path, "{}", src.message);
  check_pixels(path, w, h);
  Tensor out(DType::u8, {static_cast<int64_t>(h), static_cast<int64_t>(w), 3});
  std::memcpy(out.bytes(), pixels.get(), out.nbytes());
  return out;
}

// ---- PNM: binary greymap (P5) and pixmap (P6) ----

bool is_pnm(const std::string& bytes) { return bytes.size() >= 2 && bytes[0] == 'P' && (bytes[1] == '5' || bytes[1] == '6'); }

// Samples as stored (maxval is not rescaled, as stb_image and PIL leave 8-bit files); 16-bit
// files (maxval > 255) keep each sample's high byte.
Tensor decode_pnm(const std::string& path, const std::string& bytes) {
  const int channels = bytes[1] == '6' ? 3 : 1;
  size_t pos = 2;
  int64_t field[3] = {0, 0, 0};  // width, height, maxval
  for (int64_t& v : field) {
    // Whitespace and comments, then decimal digits.
    for (;;) {
      while (pos < bytes.size() && std::isspace(static_cast<unsigned char>(bytes[pos]))) ++pos;
      if (pos < bytes.size() && bytes[pos] == '#') {
        while (pos < bytes.size() && bytes[pos] != '\n') ++pos;
        continue;
      }
      break;
    }
    const size_t start = pos;
    while (pos < bytes.size() && std::isdigit(static_cast<unsigned char>(bytes[pos])) && pos - start < 9) {
      v = v * 10 + (bytes[pos] - '0');
      ++pos;
    }
    if (pos == start || (pos < bytes.size() && std::isdigit(static_cast<unsigned char>(bytes[pos])))) {
      fail(path, "malformed PNM header");
    }
  }
  if (pos >= bytes.size() || !std::isspace(static_cast<unsigned char>(bytes[pos]))) fail(path, "malformed PNM header");
  ++pos;  // the single whitespace before the samples
  const int64_t w = field[0], h = field[1], maxval = field[2];
  if (maxval < 1 || maxval > 65535) fail(path, "PNM maximum value {} is outside 1 to 65535", maxval);
  check_pixels(path, w, h);
  const int64_t sample_bytes = maxval > 255 ? 2 : 1;
  const int64_t need = w * h * channels * sample_bytes;
  if (static_cast<int64_t>(bytes.size() - pos) < need) fail(path, "truncated PNM: {} x {} pixels need {} bytes", w, h, need);
  Tensor out(DType::u8, {h, w, 3});
  const auto* src = reinterpret_cast<const unsigned char*>(bytes.data()) + pos;
  uint8_t* dst = out.bytes();
  for (int64_t i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) dst[i * 3 + c] = src[(i * channels + (channels == 3 ? c : 0)) * sample_bytes];
  }
  return out;
}

// Uncompressed BMP pixel rows must be in the file: a header may not claim more.
void check_bmp_size(const std::string& path, const std::string& bytes, int64_t w, int64_t h) {
  if (bytes.size() < 34 || bytes[0] != 'B' || bytes[1] != 'M') return;
  const auto u16 = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) |
                                          static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8; };
  const auto u32 = [&](size_t i) { return u16(i) | u16(i + 2) << 16; };
  const uint32_t compression = u32(30);
  const uint32_t bpp = u16(28);
  if (compression != 0 && compression != 3) return;  // RLE: stb refuses it
  const int64_t row = (w * bpp + 31) / 32 * 4;
  if (row * h > static_cast<int64_t>(bytes.size())) {
    fail(path, "BMP header claims {} x {} pixels of {} bits, more than the file's {} bytes", w, h, bpp, bytes.size());
  }
}

}  // namespace

Tensor read_image_rgb(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    fail(path, "file of {} bytes is too large to decode", bytes.size());
  }
  if (is_jpeg(bytes)) return decode_jpeg(path, bytes);
  if (is_png(bytes)) return decode_png(path, bytes);
  if (is_pnm(bytes)) return decode_pnm(path, bytes);
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int len = static_cast<int>(bytes.size());
  int w = 0, h = 0, channels = 0;
  // The header alone gives the size, so an absurd one is refused before any pixel memory is taken.
  if (!stbi_info_from_memory(data, len, &w, &h, &channels)) {
    fail(path, "not a readable image: {}", stbi_failure_reason());
  }
  check_pixels(path, w, h);
  check_bmp_size(path, bytes, w, h);
  // Run-length (TGA) and LZW (GIF) data expand far less than 1024 pixels a byte in any real
  // file; a header claiming more is a decompression bomb.
  if (int64_t{w} * h > 1024 * static_cast<int64_t>(bytes.size()) + (1 << 20)) {
    fail(path, "header claims {} x {} pixels, far more than {} bytes of data can hold", w, h, bytes.size());
  }
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load_from_memory(data, len, &w, &h, &channels, 3),
                                                   stbi_image_free);
  if (!pixels) fail(path, "cannot decode image: {}", stbi_failure_reason());
  check_pixels(path, w, h);
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
