// The nibble subcommands: each registers its options on the CLI11 app.
#pragma once

#include <CLI/CLI.hpp>

#include "nibble/input_data.h"

namespace nibble::cli {

void add_inspect_command(CLI::App& app);
void add_run_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_classify_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_calibrate_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_compare_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_prune_command(CLI::App& app);

// Adds --mean and --std (dataset normalization shared by every command reading a dataset).
void add_normalization_flags(CLI::App& cmd, Preprocess& pre);

}  // namespace nibble::cli
