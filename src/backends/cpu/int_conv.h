// The ISA-independent half of the CPU integer convolution.
#pragma once

#include "backends/cpu/conv_job.h"
#include "backends/ref/kernels.h"

namespace nibble::cpu {

// nibble:IntConv (fused = false: conv + bias, s32) or nibble:IntConvFused with `isa`'s kernels.
// Anything the fast path does not cover (other ranks or dtypes, odd epilogue inputs, empty
// tensors) goes to the reference kernel, which also raises the reference's errors.
void int_conv_cpu(const Node& node, const ref::Inputs& in, ref::Outputs& out, const ConvIsa& isa, bool fused);

}  // namespace nibble::cpu
