// Model inputs from a dataset, an .npy batch or a directory of images, as one f32 tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nibble/tensor.h"

namespace nibble {

// How pixels become model inputs: x = (pixel / 255 - mean[c]) / std[c].
struct Preprocess {
  std::vector<float> mean{0.0f};  // one value for every channel, or one per channel
  std::vector<float> std{1.0f};
  // Image directories: the shorter side is resized to `resize` (keeping the aspect ratio), then
  // the centre H x W is cropped, as torchvision's Resize + CenterCrop do. 0: the shorter side
  // becomes the model input's larger side (no crop for a square image of a square input).
  int64_t resize = 0;

  float mean_of(int64_t c) const { return mean.size() == 1 ? mean[0] : mean.at(static_cast<size_t>(c)); }
  float std_of(int64_t c) const { return std.size() == 1 ? std[0] : std.at(static_cast<size_t>(c)); }
  // "mean 0.485,0.456,0.406, std 0.229,0.224,0.225" for reports.
  std::string describe() const;
  // Throws nibble::Error when a std is not positive or a per-channel list does not match `channels`.
  void check(int64_t channels) const;
};

struct InputData {
  std::string name;             // what was loaded, for reports ("fashion-mnist:test", a path)
  Tensor inputs;                // f32 N x C x H x W, normalized: (pixel / 255 - mean[c]) / std[c]
  std::vector<int64_t> labels;  // one per input; empty when the source has none
  std::vector<std::string> classes;  // class names of an image directory (its subfolders)
  int64_t size() const { return inputs.defined() ? inputs.dim(0) : 0; }
  // Inputs [begin, end) (a copy).
  Tensor batch(int64_t begin, int64_t end) const;
};

// `spec` is one of:
//   fashion-mnist[:test|:train]  the IDX files under `data_dir` (default: the Debian package's)
//   FILE.npy                     an f32 (or u8: pixel values) array N x C x H x W or N x H x W,
//                                taken as is when f32; u8 values are normalized like images
//   DIRECTORY                    image files; one subfolder per class (sorted names give the
//                                labels) or images directly inside (no labels). Each image is
//                                resized (bilinear, antialiased) and centre-cropped to H x W
//                                (Preprocess::resize), made grey when C = 1.
// `chw` is the model's input shape without the batch dimension (C x H x W): images are resized
// to it; the caller checks other sources against the model. `limit` > 0 keeps the first `limit` inputs. Throws nibble::Error naming
// the file or directory on any problem.
InputData load_input_data(const std::string& spec, const Shape& chw, const Preprocess& pre,
                          const std::string& data_dir = "", int64_t limit = 0);

// Image files as model inputs (f32 N x C x H x W, C of 1 or 3), each decoded, resized and
// cropped as the images of a directory are.
Tensor load_image_files(const std::vector<std::string>& files, const Shape& chw, const Preprocess& pre);

}  // namespace nibble
