// Helpers shared by the layout kernels (Flatten, Reshape, Transpose, Concat).
#pragma once

#include <cstdint>

#include "backends/ref/kernels.h"

namespace nibble::ref {

// Normalizes a possibly negative axis into [0, rank) (or [0, rank] when `inclusive`).
int64_t normalize_axis(int64_t axis, int64_t rank, const char* op, bool inclusive = false);

// Element size in bytes; layout kernels move whole bytes, so 4-bit types are refused.
size_t element_bytes(const Tensor& t, const char* op);

// The integer values of a 1-D (or scalar) s64 or s32 tensor (shapes, axes, starts, pads).
std::vector<int64_t> int_values(const Tensor& t, const char* op, const char* what);

// The row-major strides of `shape` (in elements).
std::vector<int64_t> strides_of(const Shape& shape);

}  // namespace nibble::ref
