// Fuzz targets of the single-file formats: .npy, IDX, images, calibration tables.
#include "../targets.h"
#include "nibble/dataset.h"
#include "nibble/error.h"
#include "nibble/image.h"
#include "nibble/npy.h"
#include "quant/calibration.h"

namespace nibble::fuzz {

namespace {

// Writes the input to a scratch file named `name` and hands its path to `read`; a nibble::Error
// is the expected rejection of a bad file.
template <typename Read>
int on_file(const uint8_t* data, size_t size, const char* name, Read read) {
  const std::string path = scratch_dir() + "/" + name;
  write_bytes(path, data, size);
  try {
    read(path);
  } catch (const Error&) {
  }
  return 0;
}

}  // namespace

int npy(const uint8_t* data, size_t size) {
  return on_file(data, size, "input.npy", [](const std::string& p) { read_npy(p); });
}

// gzread takes plain and gzip files alike: the corpus holds both.
int idx(const uint8_t* data, size_t size) {
  return on_file(data, size, "input.idx", [](const std::string& p) { read_idx(p); });
}

int image(const uint8_t* data, size_t size) {
  return on_file(data, size, "input.img", [](const std::string& p) {
    const Tensor rgb = read_image_rgb(p);
    // The seed's preprocessing (resize of the shorter side, centre crop) on what decoded.
    if (rgb.numel() <= (int64_t{1} << 22)) preprocess_imagenet_s8(rgb);
  });
}

int calib_table(const uint8_t* data, size_t size) {
  return on_file(data, size, "input.calib", [](const std::string& p) { quant::read_calib(p); });
}

}  // namespace nibble::fuzz
