// Labelled image datasets (Fashion-MNIST IDX files) and their float batches.
#pragma once

#include <cstdint>
#include <string>

#include "nibble/tensor.h"

namespace nibble {

// Reads an IDX file (optionally gzip-compressed) holding u8 or s8 data.
Tensor read_idx(const std::string& path);

struct Dataset {
  std::string name;  // e.g. "fashion-mnist:test"
  Tensor images;     // u8, N x H x W
  Tensor labels;     // u8, N
  int64_t size() const { return images.defined() ? images.dim(0) : 0; }
};

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Loads "fashion-mnist", "fashion-mnist:test" or "fashion-mnist:train". `data_dir`
// overrides the directory holding the IDX files; `limit` > 0 keeps the first `limit` images.
Dataset load_dataset(const std::string& spec, const std::string& data_dir = "", int64_t limit = 0);

// Images [begin, end) as f32 (end - begin) x 1 x H x W: pixel / 255, then (x - mean) / std.
Tensor image_batch_f32(const Dataset& data, int64_t begin, int64_t end, float mean = 0.0f, float std = 1.0f);

}  // namespace nibble
