// The ISA-independent half of the CPU integer convolution.
#pragma once

#include "backends/cpu/conv_job.h"
#include "backends/ref/kernels.h"

namespace nibble::cpu {

// nibble:IntConv (fused = false: conv + bias, s32) or nibble:IntConvFused with `isa`'s kernels.
// Anything the fast path does not cover (other ranks or dtypes, odd epilogue inputs, empty
// tensors) goes to the reference kernel, which also raises the reference's errors.
// u8 activations take `isa`; s8 ones (and u8 ones its u8 x s8 products could saturate) take
// isa.s16s16_isa where it names one.
void int_conv_cpu(const Node& node, const ref::Inputs& in, ref::Outputs& out, const ConvIsa& isa, bool fused);

// The convolution instruction sets that others build on.
const ConvIsa& conv_isa_avx512vnni();
// AMX: whether this processor has it and the operating system granted the tile state.
bool amx_usable();

}  // namespace nibble::cpu
