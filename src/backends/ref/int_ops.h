// Integer building blocks of the seed model's ops, shared by the unfused and fused kernels.
#pragma once

#include <cstdint>

#include "backends/ref/kernels.h"

namespace nibble::ref {

// `t` must be a per-channel vector: shape [M] or [1, M, 1, 1].
void check_channel_vector(const Node& node, const Tensor& t, int64_t channels, const char* what);

// Elementwise s32 a + b of equal shapes.
Tensor int_add_s32(const Node& node, const Tensor& a, const Tensor& b);

// max(x, 0) on s32.
Tensor int_relu_s32(const Tensor& x);

// The seed's Quantize on an N x C x ... tensor with the node's shift, bits and signed
// attributes and a per-channel u16 factor.
Tensor requantize_tensor(const Node& node, const Tensor& x, const Tensor& factor);

}  // namespace nibble::ref
