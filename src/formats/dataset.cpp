// Named datasets: where their files live, how they load and how they become float batches.
#include <algorithm>
#include <filesystem>

#include "nibble/dataset.h"
#include "nibble/error.h"

namespace nibble {

namespace {

// The first existing file among `dir/stem` and `dir/stem.gz`.
std::string find_file(const std::string& dir, const std::string& stem) {
  namespace fs = std::filesystem;
  for (const std::string& name : {stem + ".gz", stem}) {
    const fs::path p = fs::path(dir) / name;
    std::error_code ec;
    if (fs::exists(p, ec)) return p.string();
  }
  fail((std::filesystem::path(dir) / (stem + ".gz")).string(),
       "file not found (install Debian's dataset-fashion-mnist, or pass --data-dir)");
}

}  // namespace

Dataset load_dataset(const std::string& spec, const std::string& data_dir, int64_t limit) {
  const auto colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const std::string split = colon == std::string::npos ? "test" : spec.substr(colon + 1);
  if (name != "fashion-mnist") fail(spec, "unknown dataset (known: fashion-mnist[:test|:train])");
  if (split != "test" && split != "train") fail(spec, "unknown split '{}' (use :test or :train)", split);
  const std::string dir = data_dir.empty() ? kFashionMnistDir : data_dir;
  const std::string prefix = split == "test" ? "t10k" : "train";
  const std::string images_path = find_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_file(dir, prefix + "-labels-idx1-ubyte");

  Dataset d;
  d.name = name + ":" + split;
  d.images = read_idx(images_path);
  d.labels = read_idx(labels_path);
  if (d.images.rank() != 3 || d.images.dtype() != DType::u8) {
    fail(images_path, "expected u8 images N x H x W, got {} {}", dtype_name(d.images.dtype()),
         shape_str(d.images.shape()));
  }
  if (d.labels.rank() != 1 || d.labels.dtype() != DType::u8) {
    fail(labels_path, "expected u8 labels N, got {} {}", dtype_name(d.labels.dtype()), shape_str(d.labels.shape()));
  }
  if (d.labels.dim(0) != d.images.dim(0)) {
    fail(labels_path, "has {} labels but {} holds {} images", d.labels.dim(0), images_path, d.images.dim(0));
  }
  if (limit > 0 && limit < d.size()) {
    const int64_t h = d.images.dim(1), w = d.images.dim(2);
    Tensor images(DType::u8, {limit, h, w});
    std::copy_n(d.images.bytes(), images.nbytes(), images.bytes());
    Tensor labels(DType::u8, {limit});
    std::copy_n(d.labels.bytes(), labels.nbytes(), labels.bytes());
    d.images = images;
    d.labels = labels;
  }
  return d;
}

Tensor image_batch_f32(const Dataset& data, int64_t begin, int64_t end, float mean, float std) {
  const int64_t h = data.images.dim(1), w = data.images.dim(2);
  Tensor batch(DType::f32, {end - begin, 1, h, w});
  const uint8_t* src = data.images.data<uint8_t>() + begin * h * w;
  float* dst = batch.data<float>();
  const int64_t n = (end - begin) * h * w;
  for (int64_t i = 0; i < n; ++i) dst[i] = (static_cast<float>(src[i]) / 255.0f - mean) / std;
  return batch;
}

}  // namespace nibble
