// Numpy-style multidirectional broadcasting for the elementwise reference kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "nibble/tensor.h"

namespace nibble::ref {

// The broadcast shape of a and b; throws KernelError when they are incompatible.
Shape broadcast_shape(const Shape& a, const Shape& b);

// For every element of `out_shape` (row-major), the flat index of the element of a tensor
// of shape `in_shape` that broadcasts onto it.
std::vector<int64_t> broadcast_index(const Shape& in_shape, const Shape& out_shape);

}  // namespace nibble::ref
