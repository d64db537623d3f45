// Whole-file reads and atomic writes shared by every format.
#pragma once

#include <string>
#include <string_view>

namespace nibble {

// Reads a whole file; throws nibble::Error naming `path` when it cannot be opened.
std::string read_file(const std::string& path);

// Writes `bytes` to a temporary file beside `path`, then renames it into place.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace nibble
