// `nibble classify MODEL_DIR IMAGE...`: top-k ImageNet classes of photos with the seed preprocessing.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "cli/commands.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/image.h"
#include "nibble/model_loader.h"

namespace nibble::cli {

namespace {

// The ImageNet class names: installed beside the command (PREFIX/share/nibble), else in the
// source tree it was built from.
std::string default_class_names() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const std::filesystem::path installed = exe.parent_path().parent_path() / "share" / "nibble" / "imagenet_classes.txt";
    if (std::filesystem::exists(installed, ec)) return installed.string();
  }
  return std::string(NIBBLE_SOURCE_DIR) + "/data/imagenet_classes.txt";
}

struct ClassifyArgs {
  std::string model;
  std::vector<std::string> images;
  std::string classes = default_class_names();
  int top = 5;
  int64_t batch = 16;
};

void classify(const ClassifyArgs& args) {
  const std::vector<std::string> names = read_class_names(args.classes);
  const Engine engine(load_model(args.model));
  const Graph& g = engine.graph();
  if (g.inputs.size() != 1 || g.inputs[0].dtype != DType::s8) {
    fail(args.model, "classify needs a model with one s8 image input (a seed-format model directory)");
  }
  size_t scores_index = g.outputs.size();
  for (size_t i = 0; i < g.outputs.size(); ++i) {
    if (g.outputs[i].name == "scores") scores_index = i;
  }
  if (scores_index == g.outputs.size()) fail(args.model, "the model has no 'scores' output");

  const int64_t total = static_cast<int64_t>(args.images.size());
  for (int64_t lo = 0; lo < total; lo += args.batch) {
    const int64_t hi = std::min(total, lo + args.batch);
    Tensor x(DType::s8, {hi - lo, 3, 224, 224});
    const size_t image_bytes = 3 * 224 * 224;
    for (int64_t i = lo; i < hi; ++i) {
      const Tensor pre = preprocess_imagenet_s8(read_image_rgb(args.images[static_cast<size_t>(i)]));
      std::memcpy(x.bytes() + (i - lo) * image_bytes, pre.bytes(), image_bytes);
    }
    const Tensor scores = engine.run({x})[scores_index];
    const int64_t classes = scores.dim(1);
    if (static_cast<size_t>(classes) != names.size()) {
      fail(args.classes, "lists {} class names but the model scores {} classes", names.size(), classes);
    }
    for (int64_t i = lo; i < hi; ++i) {
      const float* s = scores.data<float>() + (i - lo) * classes;
      std::vector<int64_t> order(static_cast<size_t>(classes));
      std::iota(order.begin(), order.end(), 0);
      const int k = std::min<int>(args.top, static_cast<int>(classes));
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
        return s[a] != s[b] ? s[a] > s[b] : a < b;
      });
      // Softmax over the scores, for a readable confidence.
      const float top = s[order[0]];
      double sum = 0;
      for (int64_t c = 0; c < classes; ++c) sum += std::exp(static_cast<double>(s[c] - top));
      fmt::print("{}\n", args.images[static_cast<size_t>(i)]);
      for (int r = 0; r < k; ++r) {
        const int64_t c = order[static_cast<size_t>(r)];
        fmt::print("  {}. {:>4} {:<32} score {:8.3f}  p {:5.1f}%\n", r + 1, c, names[static_cast<size_t>(c)], s[c],
                   100.0 * std::exp(static_cast<double>(s[c] - top)) / sum);
      }
    }
  }
}

}  // namespace

void add_classify_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("classify", "Top-k ImageNet classes of photos (PNG, JPEG, ...) with a seed model");
  auto args = std::make_shared<ClassifyArgs>();
  cmd->add_option("model", args->model, "Model directory (seed format)")->required();
  cmd->add_option("images", args->images, "Image files")->required();
  cmd->add_option("--classes", args->classes, "Class names, one per line in index order")
      ->default_str(args->classes);
  cmd->add_option("--top", args->top, "Classes to print per image")->default_val(5)->check(CLI::PositiveNumber);
  cmd->add_option("--batch", args->batch, "Images per inference")->default_val(16)->check(CLI::PositiveNumber);
  cmd->callback([args] { classify(*args); });
}

}  // namespace nibble::cli
