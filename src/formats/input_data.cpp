// Loading model inputs: Fashion-MNIST, .npy batches and directories of images.
#include "nibble/input_data.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <vector>

#include "nibble/dataset.h"
#include "nibble/error.h"
#include "nibble/image.h"
#include "nibble/npy.h"

namespace nibble {

namespace fs = std::filesystem;

std::string Preprocess::describe() const { return fmt::format("mean {}, std {}", fmt::join(mean, ","), fmt::join(std, ",")); }

void Preprocess::check(int64_t channels) const {
  for (float s : std) {
    if (!(s > 0.0f) || !std::isfinite(s)) fail("--std", "must be positive numbers, got {}", fmt::join(std, ","));
  }
  for (float m : mean) {
    if (!std::isfinite(m)) fail("--mean", "must be finite numbers, got {}", fmt::join(mean, ","));
  }
  if (mean.empty() || std.empty()) fail("--mean/--std", "need at least one value each");
  if (mean.size() != 1 && static_cast<int64_t>(mean.size()) != channels) {
    fail("--mean", "has {} values but the model input has {} channels (give one, or one per channel)", mean.size(), channels);
  }
  if (std.size() != 1 && static_cast<int64_t>(std.size()) != channels) {
    fail("--std", "has {} values but the model input has {} channels (give one, or one per channel)", std.size(), channels);
  }
  if (resize < 0) fail("--resize", "must be 0 or a size in pixels, got {}", resize);
}

Tensor InputData::batch(int64_t begin, int64_t end) const {
  Shape s = inputs.shape();
  s[0] = end - begin;
  Tensor out(DType::f32, s);
  const int64_t per = inputs.numel() / inputs.dim(0);
  std::memcpy(out.data<float>(), inputs.data<float>() + begin * per, static_cast<size_t>((end - begin) * per) * sizeof(float));
  return out;
}

namespace {

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* e : {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga", ".pgm", ".ppm", ".pnm"}) {
    if (ext == e) return true;
  }
  return false;
}

std::vector<fs::path> sorted_entries(const fs::path& dir, bool directories) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (directories ? e.is_directory() : (e.is_regular_file() && is_image_file(e.path()))) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// One image as normalized f32 C x H x W: shorter side to pre.resize, centre crop H x W.
void image_to_chw(const fs::path& path, const Shape& chw, const Preprocess& pre, float* out) {
  const Tensor rgb = read_image_rgb(path.string());
  const int64_t h = chw[1], w = chw[2];
  const int64_t shorter = pre.resize > 0 ? pre.resize : std::max(h, w);
  const auto [rh, rw] = resize_shorter_side_dims(rgb.dim(0), rgb.dim(1), shorter);
  if (rh < h || rw < w) {
    fail(path.string(), "resized to {} x {} (shorter side {}), it is smaller than the model's {} x {} crop", rh, rw,
         shorter, h, w);
  }
  const Tensor resized = resize_bilinear_u8(rgb, rh, rw);  // f32 rh x rw x 3, values 0..255
  const int64_t top = center_crop_offset(rh, h), left = center_crop_offset(rw, w);
  const float* p = resized.data<float>();
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const float* px = p + ((y + top) * rw + x + left) * 3;
      if (chw[0] == 1) {
        const float grey = 0.299f * px[0] + 0.587f * px[1] + 0.114f * px[2];
        out[y * w + x] = (grey / 255.0f - pre.mean_of(0)) / pre.std_of(0);
      } else {
        for (int c = 0; c < 3; ++c) out[(c * h + y) * w + x] = (px[c] / 255.0f - pre.mean_of(c)) / pre.std_of(c);
      }
    }
  }
}

// Bilinear resize of one h x w plane to oh x ow with half-pixel centres (PyTorch's
// F.interpolate(mode="bilinear", align_corners=False), no antialiasing), computed in double and
// rounded to f32 once: nibble_qat feeds its models the same values.
void resize_plane_f32(const float* src, int64_t h, int64_t w, int64_t oh, int64_t ow, float* dst) {
  struct Tap {
    int64_t i0, i1;
    double l0, l1;
  };
  auto taps = [](int64_t in, int64_t out) {
    std::vector<Tap> t(static_cast<size_t>(out));
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    for (int64_t o = 0; o < out; ++o) {
      double s = (static_cast<double>(o) + 0.5) * scale - 0.5;
      if (s < 0) s = 0;
      const int64_t i0 = static_cast<int64_t>(s);
      const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
      const double l1 = s - static_cast<double>(i0);
      t[static_cast<size_t>(o)] = {i0, i1, 1.0 - l1, l1};
    }
    return t;
  };
  const std::vector<Tap> ty = taps(h, oh), tx = taps(w, ow);
  for (int64_t y = 0; y < oh; ++y) {
    const Tap& a = ty[static_cast<size_t>(y)];
    for (int64_t x = 0; x < ow; ++x) {
      const Tap& b = tx[static_cast<size_t>(x)];
      const double top = b.l0 * src[a.i0 * w + b.i0] + b.l1 * src[a.i0 * w + b.i1];
      const double bottom = b.l0 * src[a.i1 * w + b.i0] + b.l1 * src[a.i1 * w + b.i1];
      dst[y * ow + x] = static_cast<float>(a.l0 * top + a.l1 * bottom);
    }
  }
}

InputData from_images(const std::string& spec, const Shape& chw, const Preprocess& pre, int64_t limit) {
  if (chw.size() != 3 || (chw[0] != 1 && chw[0] != 3)) {
    fail(spec, "images need a model input of 1 or 3 channels x H x W, the model takes {}", shape_str(chw));
  }
  InputData d;
  d.name = spec;
  std::vector<std::pair<fs::path, int64_t>> files;
  const auto classes = sorted_entries(spec, true);
  if (!classes.empty()) {
    for (size_t c = 0; c < classes.size(); ++c) {
      d.classes.push_back(classes[c].filename().string());
      for (const auto& f : sorted_entries(classes[c], false)) files.emplace_back(f, static_cast<int64_t>(c));
    }
  } else {
    for (const auto& f : sorted_entries(spec, false)) files.emplace_back(f, -1);
  }
  if (files.empty()) fail(spec, "the directory holds no image files (png, jpg, bmp, gif, tga, pnm)");
  if (limit > 0 && static_cast<int64_t>(files.size()) > limit) files.resize(static_cast<size_t>(limit));
  const int64_t n = static_cast<int64_t>(files.size());
  d.inputs = Tensor(DType::f32, {n, chw[0], chw[1], chw[2]});
  const int64_t per = chw[0] * chw[1] * chw[2];
  for (int64_t i = 0; i < n; ++i) {
    image_to_chw(files[static_cast<size_t>(i)].first, chw, pre, d.inputs.data<float>() + i * per);
    if (!classes.empty()) d.labels.push_back(files[static_cast<size_t>(i)].second);
  }
  return d;
}

}  // namespace

Tensor load_image_files(const std::vector<std::string>& files, const Shape& chw, const Preprocess& pre) {
  if (chw.size() != 3 || (chw[0] != 1 && chw[0] != 3)) {
    fail(files.empty() ? std::string() : files[0], "images need a model input of 1 or 3 channels x H x W, the model takes {}",
         shape_str(chw));
  }
  pre.check(chw[0]);
  const int64_t n = static_cast<int64_t>(files.size()), per = chw[0] * chw[1] * chw[2];
  Tensor t(DType::f32, {n, chw[0], chw[1], chw[2]});
  for (int64_t i = 0; i < n; ++i) image_to_chw(files[static_cast<size_t>(i)], chw, pre, t.data<float>() + i * per);
  return t;
}

namespace {

InputData from_npy(const std::string& spec, const Shape& chw, const Preprocess& pre, int64_t limit) {
  Tensor t = read_npy(spec);
  if (t.rank() == 3) t = t.reshaped({t.dim(0), 1, t.dim(1), t.dim(2)});
  if (t.rank() != 4) fail(spec, "expected an array N x C x H x W (or N x H x W), got {}", shape_str(t.shape()));
  if (t.dtype() != DType::f32 && t.dtype() != DType::u8) {
    fail(spec, "expected f32 inputs or u8 pixels, got {}", dtype_name(t.dtype()));
  }
  const int64_t n = limit > 0 ? std::min(limit, t.dim(0)) : t.dim(0);
  if (n == 0) fail(spec, "the array holds no inputs");
  InputData d;
  d.name = spec;
  d.inputs = Tensor(DType::f32, {n, t.dim(1), t.dim(2), t.dim(3)});
  float* out = d.inputs.data<float>();
  const int64_t channels = t.dim(1), plane = t.dim(2) * t.dim(3);
  for (int64_t i = 0; i < d.inputs.numel(); ++i) {
    const int64_t c = (i / plane) % channels;
    out[i] = t.dtype() == DType::f32 ? t.data<float>()[i]
                                     : (static_cast<float>(t.data<uint8_t>()[i]) / 255.0f - pre.mean_of(c)) / pre.std_of(c);
  }
  return d;
}

}  // namespace

InputData load_input_data(const std::string& spec, const Shape& chw, const Preprocess& pre, const std::string& data_dir,
                          int64_t limit) {
  pre.check(chw.empty() ? 1 : chw[0]);
  if (spec == "fashion-mnist" || spec.rfind("fashion-mnist:", 0) == 0) {
    if (pre.mean.size() > 1 || pre.std.size() > 1) fail("--mean/--std", "Fashion-MNIST has one channel: give one value each");
    const Dataset ds = load_dataset(spec, data_dir, limit);
    InputData d;
    d.name = ds.name;
    d.inputs = image_batch_f32(ds, 0, ds.size(), pre.mean[0], pre.std[0]);
    // A one-channel model of a larger input (say 224 x 224) gets the images bilinearly upsampled,
    // as tools/train_fmnist.py trains such models; a smaller input stays a shape error.
    const int64_t h = d.inputs.dim(2), w = d.inputs.dim(3);
    if (chw.size() == 3 && chw[0] == 1 && chw[1] >= h && chw[2] >= w && (chw[1] != h || chw[2] != w)) {
      Tensor resized(DType::f32, {ds.size(), 1, chw[1], chw[2]});
      for (int64_t i = 0; i < ds.size(); ++i) {
        resize_plane_f32(d.inputs.data<float>() + i * h * w, h, w, chw[1], chw[2],
                         resized.data<float>() + i * chw[1] * chw[2]);
      }
      d.inputs = std::move(resized);
    }
    for (int64_t i = 0; i < ds.size(); ++i) d.labels.push_back(ds.labels.data<uint8_t>()[i]);
    return d;
  }
  std::error_code ec;
  if (fs::is_directory(spec, ec)) return from_images(spec, chw, pre, limit);
  if (spec.size() > 4 && spec.substr(spec.size() - 4) == ".npy") return from_npy(spec, chw, pre, limit);
  fail(spec, "unknown dataset, and no such .npy file or image directory (--data takes fashion-mnist[:test|:train], "
             "an .npy file or a directory of images)");
}

}  // namespace nibble
