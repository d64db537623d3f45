// The target table and the scratch files of the fuzz targets.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "../targets.h"

namespace nibble::fuzz {

const std::vector<Entry>& targets() {
  static const std::vector<Entry> all = {
      {"npy", npy},
      {"idx", idx},
      {"image", image},
      {"image_folder", image_folder},
      {"calib_table", calib_table},
      {"onnx_import", onnx_import},
      {"onnx_run", onnx_run},
      {"qdq_import", qdq_import},
      {"model_dir", model_dir},
  };
  return all;
}

const std::string& scratch_dir() {
  static const std::string dir = [] {
    const auto d = std::filesystem::temp_directory_path() / ("nibble-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d.string();
  }();
  return dir;
}

void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!f) throw std::runtime_error("fuzz: cannot write the scratch file " + path);
}

}  // namespace nibble::fuzz
