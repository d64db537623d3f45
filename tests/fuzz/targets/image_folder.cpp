// Fuzz target of image folders (`--data DIR`): the input describes a small directory tree of
// files, which load_input_data decodes and resizes to a 3 x 8 x 8 model input.
//
// Input: records of [class u8][kind u8][length u16 little-endian][length bytes]; class picks
// the subfolder (0 to 2, 3 for the top level), kind the file name's extension.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "../targets.h"
#include "nibble/error.h"
#include "nibble/input_data.h"

namespace nibble::fuzz {

int image_folder(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  static const char* kExt[] = {".png", ".jpg", ".bmp", ".gif", ".tga", ".pnm", ".jpeg", ".txt"};
  const fs::path dir = fs::path(scratch_dir()) / "images";
  fs::remove_all(dir);
  fs::create_directories(dir);
  size_t pos = 0;
  for (int file = 0; file < 6 && pos + 4 <= size; ++file) {
    const int cls = data[pos] % 4;
    const char* ext = kExt[data[pos + 1] % 8];
    const size_t len = std::min<size_t>(data[pos + 2] | (size_t{data[pos + 3]} << 8), size - pos - 4);
    pos += 4;
    const fs::path folder = cls == 3 ? dir : dir / fmt::format("class{}", cls);
    fs::create_directories(folder);
    write_bytes((folder / fmt::format("f{}{}", file, ext)).string(), data + pos, len);
    pos += len;
  }
  try {
    Preprocess pre;
    pre.mean = {0.5f, 0.4f, 0.3f};
    pre.std = {0.25f};
    pre.resize = 9;  // shorter side 9, centre crop 8 x 8
    load_input_data(dir.string(), Shape{3, 8, 8}, pre, "", 8);
  } catch (const Error&) {
  }
  return 0;
}

}  // namespace nibble::fuzz
