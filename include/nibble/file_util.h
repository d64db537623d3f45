// Whole-file reads and atomic writes shared by every format.
#pragma once

#include <string>
#include <string_view>

namespace nibble {

// Reads a whole file; throws nibble::Error naming `path` when it cannot be opened.
std::string read_file(const std::string& path);

// Writes `bytes` to a temporary file beside `path`, then renames it into place.
void write_file_atomic(const std::string& path, std::string_view bytes);

// Throws nibble::Error naming `path` unless a file can be created there: its directory exists and
// is writable. Commands check their outputs so before long work, not after it.
void check_writable(const std::string& path);

// check_writable() for an output that must not exist yet (a model directory, an exported file).
void check_new_output(const std::string& path);

// A temporary output (a file, or a directory with its contents) being written before it is
// renamed into place. While one is alive, SIGINT, SIGTERM and SIGHUP remove it before the process
// ends, so that an interrupt leaves no half-written `.tmp.PID` behind (a handler is installed for
// the signals still at their default action). At most 8 at a time; release() once renamed.
class TempOutput {
 public:
  explicit TempOutput(const std::string& path);
  ~TempOutput();
  void release();
  TempOutput(const TempOutput&) = delete;
  TempOutput& operator=(const TempOutput&) = delete;

 private:
  int slot_ = -1;
};

}  // namespace nibble
