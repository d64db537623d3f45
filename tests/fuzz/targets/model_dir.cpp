// Fuzz target of model directories: the input describes the directory's files, which are
// read (read_model_dir) and turned into a graph (graph_from_model_dir).
//
// Input: files introduced by a line "@@ <relative path>"; the bytes up to the next such line
// (binary data included) are the file. Paths are kept inside the directory.
#include <filesystem>
#include <stdexcept>
#include <string_view>

#include "../targets.h"
#include "nibble/error.h"
#include "nibble/model_dir.h"
#include "nibble/model_loader.h"

namespace nibble::fuzz {

int model_dir(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(scratch_dir()) / "models";
  const fs::path dir = root / "model";
  fs::remove_all(root);
  fs::create_directories(dir / "npdata");
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t pos = in.starts_with("@@ ") ? 0 : in.find("\n@@ ");
  int files = 0;
  while (pos != std::string_view::npos && files < 200) {
    if (in[pos] == '\n') ++pos;
    const size_t eol = in.find('\n', pos);
    if (eol == std::string_view::npos) break;
    std::string name(in.substr(pos + 3, eol - pos - 3));
    const size_t next = in.find("\n@@ ", eol);
    const std::string_view body = in.substr(eol + 1, next == std::string_view::npos ? std::string_view::npos : next - eol - 1);
    pos = next;
    // A plain name, or npdata/<plain name>.
    const std::string_view leaf = std::string_view(name).starts_with("npdata/") ? std::string_view(name).substr(7) : name;
    if (leaf.empty() || leaf[0] == '.' || leaf.find_first_of("/\\\0", 0, 3) != std::string_view::npos) continue;
    std::error_code ec;  // a name the file system refuses (too long) simply fails to write
    if (name.size() > 100 || fs::is_directory(dir / name, ec)) continue;  // "npdata" itself
    try {
      write_bytes((dir / name).string(), reinterpret_cast<const uint8_t*>(body.data()), body.size());
    } catch (const std::runtime_error&) {
      continue;  // a name the file system refuses
    }
    ++files;
  }
  try {
    const ModelDir m = read_model_dir(dir.string());
    graph_from_model_dir(m);
  } catch (const Error&) {
  }
  return 0;
}

}  // namespace nibble::fuzz
