// The fuzz targets of nibble's parsers. Each takes one input (bytes, as libFuzzer hands them
// over), feeds it to the public parsing functions through a scratch file or directory, and
// returns 0. A nibble::Error is the expected rejection of a bad input; anything else escaping
// (another exception, a crash, a sanitizer report, an allocation past the limit) is a bug.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace nibble::fuzz {

using Target = int (*)(const uint8_t* data, size_t size);

struct Entry {
  const char* name;
  Target fn;
};
// Every target, by name (the corpus and regression folders are named the same).
const std::vector<Entry>& targets();

// A directory of this process's own for scratch files, created on first use.
const std::string& scratch_dir();
// Writes `size` bytes to `path` (replacing it).
void write_bytes(const std::string& path, const uint8_t* data, size_t size);

int npy(const uint8_t* data, size_t size);
int idx(const uint8_t* data, size_t size);
int image(const uint8_t* data, size_t size);
int image_folder(const uint8_t* data, size_t size);
int calib_table(const uint8_t* data, size_t size);
int onnx_import(const uint8_t* data, size_t size);
int onnx_run(const uint8_t* data, size_t size);
int qdq_import(const uint8_t* data, size_t size);
int model_dir(const uint8_t* data, size_t size);

}  // namespace nibble::fuzz
