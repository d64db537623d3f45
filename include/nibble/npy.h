// NumPy .npy files (format versions 1-3, little-endian, C order).
#pragma once

#include <string>

#include "nibble/tensor.h"

namespace nibble {

// Supported dtypes: f32, f64, s64, s32, s16, s8, u8, bool. Throws nibble::Error naming
// `path` for a missing, malformed or truncated file or an unsupported dtype.
Tensor read_npy(const std::string& path);

// Writes through a temporary file renamed into place, so `path` is never half-written.
void write_npy(const std::string& path, const Tensor& t);

}  // namespace nibble
