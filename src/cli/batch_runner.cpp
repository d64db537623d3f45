// Data flags, parallel batches and top-1 for the commands that evaluate models.
#include "cli/batch_runner.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>

#include "cli/commands.h"
#include "cli/progress.h"
#include "nibble/dataset.h"
#include "nibble/error.h"

namespace nibble::cli {

void add_data_flags(CLI::App& cmd, DataArgs& args, const std::string& default_data, const std::string& limit_flag,
                    const std::string& limit_help) {
  cmd.add_option("--data", args.data,
                 "Inputs: fashion-mnist[:test|:train], an .npy batch (N x C x H x W) or a directory of images "
                 "(one subfolder per class gives labels)")
      ->default_val(default_data);
  cmd.add_option("--data-dir", args.data_dir, "Directory with Fashion-MNIST's IDX files")->default_str(kFashionMnistDir);
  if (!limit_flag.empty()) {
    cmd.add_option(limit_flag, args.limit, limit_help)->default_val(args.limit)->check(CLI::NonNegativeNumber);
  }
  cmd.add_option("--batch", args.batch, "Inputs per inference")->default_val(args.batch)->check(CLI::PositiveNumber);
  cmd.add_option("--threads", args.threads, "Worker threads (0: one per core)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  add_normalization_flags(cmd, args.pre);
}

DataArgs sharing_settings(DataArgs target, const DataArgs& from) {
  target.data_dir = from.data_dir;
  target.pre = from.pre;
  target.batch = from.batch;
  target.threads = from.threads;
  return target;
}

Shape input_chw(const Graph& graph, const std::string& model) {
  if (graph.inputs.size() != 1) fail(model, "the model must have one input, it has {}", graph.inputs.size());
  const ValueInfo& in = graph.inputs[0];
  if (!in.shape || in.shape->size() < 2) fail(model, "the input '{}' has no known shape", in.name);
  Shape chw(in.shape->begin() + 1, in.shape->end());
  for (int64_t d : chw) {
    if (d <= 0) fail(model, "the input '{}' has a dynamic dimension other than the batch", in.name);
  }
  return chw;
}

bool nhwc_images(const Shape& chw) {
  return chw.size() == 3 && (chw[2] == 1 || chw[2] == 3) && chw[0] != 1 && chw[0] != 3;
}

Tensor nchw_to_nhwc(const Tensor& x) {
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3), hw = h * w;
  Tensor t(DType::f32, {n, h, w, c});
  const float* src = x.data<float>();
  float* dst = t.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t p = 0; p < hw; ++p) dst[(i * hw + p) * c + ch] = src[(i * c + ch) * hw + p];
    }
  }
  return t;
}

InputData load_data(const DataArgs& args, const Graph& graph, const std::string& model) {
  const Shape chw = input_chw(graph, model);
  // A model that declares N x H x W x C takes decoded images in that layout; an .npy batch is
  // taken as it is.
  const bool npy = args.data.size() > 4 && args.data.substr(args.data.size() - 4) == ".npy";
  if (nhwc_images(chw) && !npy) {
    InputData d = load_input_data(args.data, {chw[2], chw[0], chw[1]}, args.pre, args.data_dir, args.limit);
    d.inputs = nchw_to_nhwc(d.inputs);
    return d;
  }
  InputData d = load_input_data(args.data, chw, args.pre, args.data_dir, args.limit);
  const Shape got(d.inputs.shape().begin() + 1, d.inputs.shape().end());
  if (got != chw) fail(model, "the model's input shape is {} but {} gives {}", shape_str(chw), d.name, shape_str(got));
  return d;
}

void for_each_batch(const std::string& label, int64_t n, int64_t batch, int threads,
                    const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t batches = (n + batch - 1) / batch;
  const int64_t want = threads > 0 ? threads : static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min(want, batches)));
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
  ProgressBar bar(label, n);
  auto worker = [&] {
    try {
      for (int64_t b = next++; b < batches; b = next++) {
        const int64_t lo = b * batch, hi = std::min(n, lo + batch);
        fn(lo, hi);
        bar.advance(hi - lo);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      next = batches;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < workers; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  bar.finish();
  if (error) std::rethrow_exception(error);
}

std::vector<int64_t> predict(const Engine& engine, const InputData& data, const DataArgs& args, const std::string& label,
                             const std::string& model) {
  const int64_t n = data.size();
  if (const auto bad = engine.check_inputs({data.batch(0, std::min<int64_t>(1, n))})) {
    fail(model, "{} ({} gives f32 {})", bad->problem, data.name, shape_str(data.inputs.shape()));
  }
  std::vector<int64_t> out(static_cast<size_t>(n), -1);
  for_each_batch(label, n, args.batch, args.threads, [&](int64_t lo, int64_t hi) {
    const auto outputs = engine.run({data.batch(lo, hi)});
    const Tensor* logits = nullptr;
    for (const auto& t : outputs) {
      if (t.dtype() == DType::f32 && t.rank() == 2) {
        logits = &t;
        break;
      }
    }
    if (!logits) fail(model, "the model has no f32 N x classes output to take the class from");
    const int64_t k = logits->dim(1);
    const float* p = logits->data<float>();
    for (int64_t r = 0; r < hi - lo; ++r) {
      out[static_cast<size_t>(lo + r)] = std::max_element(p + r * k, p + (r + 1) * k) - (p + r * k);
    }
  });
  return out;
}

int64_t count_correct(const std::vector<int64_t>& predictions, const InputData& data) {
  if (data.labels.size() != predictions.size()) fail(data.name, "the data has no labels, so accuracy cannot be measured");
  int64_t correct = 0;
  for (size_t i = 0; i < predictions.size(); ++i) correct += predictions[i] == data.labels[i];
  return correct;
}

}  // namespace nibble::cli
