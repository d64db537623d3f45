// Entry point of the nibble command: subcommand dispatch and the one-line error contract.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "nibble/error.h"

namespace nibble::cli {

void add_normalization_flags(CLI::App& cmd, Preprocess& pre) {
  cmd.add_option("--mean", pre.mean,
                 "Subtract M from every pixel after scaling to [0, 1]: one value, or one per channel "
                 "(ImageNet: 0.485,0.456,0.406)")
      ->delimiter(',')
      ->default_str("0");
  cmd.add_option("--std", pre.std, "Divide by S after subtracting the mean: one value, or one per channel (ImageNet: 0.229,0.224,0.225)")
      ->delimiter(',')
      ->default_str("1")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--resize", pre.resize,
                 "Image directories: resize the shorter side to N pixels, then crop the centre to the model's input "
                 "(ImageNet: 256 for 224); 0: the shorter side becomes the input's size")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
}

}  // namespace nibble::cli

int main(int argc, char** argv) {
  CLI::App app{"nibble: a low-precision inference engine and quantization toolkit"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "nibble 0.1.0");
  nibble::cli::add_inspect_command(app);
  nibble::cli::add_run_command(app);
  nibble::cli::add_calibrate_command(app);
  nibble::cli::add_quantize_command(app);
  nibble::cli::add_eval_command(app);
  nibble::cli::add_compare_command(app);
  nibble::cli::add_export_command(app);
  nibble::cli::add_prune_command(app);
  nibble::cli::add_classify_command(app);
  nibble::cli::add_bench_command(app);
  if (argc > 1 && argv[1][0] != '-') {
    std::string names;
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands({})) {
      known = known || sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      fmt::print(stderr, "nibble: error: unknown command '{}' (commands: {})\n", argv[1], names);
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // A bad command line gets the same one-line error as everything else.
    std::string command = "nibble";
    for (const CLI::App* sub = &app; !sub->get_subcommands().empty();) {
      sub = sub->get_subcommands().front();
      command += " " + sub->get_name();
    }
    fmt::print(stderr, "nibble: error: {} (see '{} --help')\n", e.what(), command);
    return 2;
  } catch (const nibble::Error& e) {
    fmt::print(stderr, "nibble: error: {}\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "nibble: error: out of memory\n");
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "nibble: error: {}\n", e.what());
    return 2;
  }
  return 0;
}
