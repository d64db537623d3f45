// Model inputs from a dataset, an .npy batch or a directory of images, as one f32 tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nibble/tensor.h"

namespace nibble {

struct InputData {
  std::string name;             // what was loaded, for reports ("fashion-mnist:test", a path)
  Tensor inputs;                // f32 N x C x H x W, normalized: (pixel / 255 - mean) / std
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
//                                resized (bilinear) to H x W, made grey when C = 1.
// `chw` is the model's input shape without the batch dimension (C x H x W): images are resized
// to it; the caller checks other sources against the model. `limit` > 0 keeps the first `limit` inputs. Throws nibble::Error naming
// the file or directory on any problem.
InputData load_input_data(const std::string& spec, const Shape& chw, float mean, float std,
                          const std::string& data_dir = "", int64_t limit = 0);

}  // namespace nibble
