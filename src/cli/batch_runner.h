// Shared by the commands that run a model over a dataset: data flags, parallel batches, top-1.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "nibble/engine.h"
#include "nibble/input_data.h"

namespace nibble::cli {

struct DataArgs {
  std::string data;
  std::string data_dir;
  int64_t limit = 0;
  Preprocess pre;
  int64_t batch = 50;
  int threads = 0;
};

// --data (with `default_data`), --data-dir, --mean, --std, --resize, --batch, --threads; and the limit
// flag under `limit_flag` ("--limit" or "--samples") when it is not empty.
void add_data_flags(CLI::App& cmd, DataArgs& args, const std::string& default_data, const std::string& limit_flag,
                    const std::string& limit_help);

// `target` with the data directory, normalization, batch and threads of `from` (a second data
// source of a command shares the first one's settings).
DataArgs sharing_settings(DataArgs target, const DataArgs& from);

// The model's input shape without the batch dimension.
Shape input_chw(const Graph& graph, const std::string& model);

InputData load_data(const DataArgs& args, const Graph& graph, const std::string& model);

// Whether a model input of `chw` (without the batch) takes images as H x W x C: C of 1 or 3, the
// first dimension not.
bool nhwc_images(const Shape& chw);
// f32 N x C x H x W to N x H x W x C.
Tensor nchw_to_nhwc(const Tensor& x);

// Calls fn(begin, end) for each batch of [0, n) on up to `threads` workers (0: one per core),
// with a progress bar. The first exception stops the loop and is rethrown.
void for_each_batch(const std::string& label, int64_t n, int64_t batch, int threads,
                    const std::function<void(int64_t, int64_t)>& fn);

// The argmax of the model's first f32 N x K output for every input.
std::vector<int64_t> predict(const Engine& engine, const InputData& data, const DataArgs& args,
                             const std::string& label, const std::string& model);

// Correct predictions over labelled inputs; throws nibble::Error when `data` has no labels.
int64_t count_correct(const std::vector<int64_t>& predictions, const InputData& data);

}  // namespace nibble::cli
