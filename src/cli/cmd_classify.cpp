// `nibble classify MODEL_DIR IMAGE...`: top-k ImageNet classes of photos with the seed preprocessing.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "cli/batch_runner.h"
#include "cli/commands.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/image.h"
#include "nibble/input_data.h"
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
  std::string classes;
  int top = 5;
  int64_t batch = 16;
  Preprocess pre;
};

// The seed's models: one s8 N x 3 x 224 x 224 input and an f32 "scores" output, fed by the
// seed's own preprocessing.
bool seed_format(const Graph& g) {
  if (g.inputs.size() != 1 || g.inputs[0].dtype != DType::s8 || !g.inputs[0].shape) return false;
  const Shape& s = *g.inputs[0].shape;
  if (s.size() != 4 || s[1] != 3 || s[2] != 224 || s[3] != 224) return false;
  for (const ValueInfo& o : g.outputs) {
    if (o.name == "scores") return true;
  }
  return false;
}

// The output holding the class scores: "scores" where there is one, else the first f32 output.
size_t scores_output(const Graph& g, const std::string& model) {
  for (size_t i = 0; i < g.outputs.size(); ++i) {
    if (g.outputs[i].name == "scores") return i;
  }
  for (size_t i = 0; i < g.outputs.size(); ++i) {
    if (!g.outputs[i].dtype || *g.outputs[i].dtype == DType::f32) return i;
  }
  fail(model, "the model has no f32 output of class scores");
}

void classify(const ClassifyArgs& args) {
  const Graph graph = load_model(args.model);
  const bool seed = seed_format(graph);
  Shape chw;
  bool nhwc = false;
  if (!seed) {
    chw = input_chw(graph, args.model);
    if (graph.inputs[0].dtype != DType::f32) {
      fail(args.model, "classify takes a model with one f32 image input (or the seed's s8 one), this one's is {}",
           graph.inputs[0].dtype ? dtype_name(*graph.inputs[0].dtype) : "untyped");
    }
    nhwc = nhwc_images(chw);
    if (nhwc) chw = {chw[2], chw[0], chw[1]};
  }
  const Engine engine(graph);
  const size_t scores_index = scores_output(engine.graph(), args.model);
  std::vector<std::string> names;
  bool names_checked = false;

  const int64_t total = static_cast<int64_t>(args.images.size());
  for (int64_t lo = 0; lo < total; lo += args.batch) {
    const int64_t hi = std::min(total, lo + args.batch);
    Tensor x;
    if (seed) {
      x = Tensor(DType::s8, {hi - lo, 3, 224, 224});
      const size_t image_bytes = 3 * 224 * 224;
      for (int64_t i = lo; i < hi; ++i) {
        const Tensor pre = preprocess_imagenet_s8(read_image_rgb(args.images[static_cast<size_t>(i)]));
        std::memcpy(x.bytes() + (i - lo) * image_bytes, pre.bytes(), image_bytes);
      }
    } else {
      x = load_image_files({args.images.begin() + lo, args.images.begin() + hi}, chw, args.pre);
      if (nhwc) x = nchw_to_nhwc(x);
    }
    const Tensor scores = engine.run({x})[scores_index];
    const int64_t classes = scores.numel() / (hi - lo);
    if (!names_checked) {
      // The given class names must match; the default ImageNet ones are used where they do.
      const std::string file = args.classes.empty() ? default_class_names() : args.classes;
      names = read_class_names(file);
      if (static_cast<int64_t>(names.size()) != classes) {
        if (!args.classes.empty()) fail(file, "lists {} class names but the model scores {} classes", names.size(), classes);
        names.clear();
      }
      names_checked = true;
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
        const std::string name = names.empty() ? fmt::format("class {}", c) : names[static_cast<size_t>(c)];
        fmt::print("  {}. {:>4} {:<32} score {:8.3f}  p {:5.1f}%\n", r + 1, c, name, s[c],
                   100.0 * std::exp(static_cast<double>(s[c] - top)) / sum);
      }
    }
  }
}

}  // namespace

void add_classify_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "classify", "Top-k classes of photos (PNG, JPEG, ...) with an image classifier: the seed's INT4 ResNet-50, or "
                  "any model of one f32 image input (ONNX or quantized) given its preprocessing");
  auto args = std::make_shared<ClassifyArgs>();
  cmd->add_option("model", args->model, "Model: an ONNX file or a model directory")->required();
  cmd->add_option("images", args->images, "Image files")->required();
  cmd->add_option("--classes", args->classes,
                  "Class names, one per line in index order (default: the ImageNet ones where the model scores 1000 "
                  "classes, else class numbers)")
      ->default_str(default_class_names());
  cmd->add_option("--top", args->top, "Classes to print per image")->default_val(5)->check(CLI::PositiveNumber);
  cmd->add_option("--batch", args->batch, "Images per inference")->default_val(16)->check(CLI::PositiveNumber);
  // The seed's models take their own preprocessing (shorter side 256, centre 224, ImageNet mean
  // and std, int8); other models these flags.
  add_normalization_flags(*cmd, args->pre);
  cmd->callback([args] { classify(*args); });
}

}  // namespace nibble::cli
