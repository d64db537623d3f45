// The CPU kernels of each instruction set, as the dispatch table names them.
#pragma once

#include "backends/ref/kernels.h"

namespace nibble::cpu {

// AVX2 (+FMA): u8 x s8 -> s16 pairs (vpmaddubsw) with s32 accumulation; s16 x s16 (vpmaddwd)
// where the u8 x s8 form could saturate.
void int_conv_avx2(const Node&, const ref::Inputs&, ref::Outputs&);
void int_conv_fused_avx2(const Node&, const ref::Inputs&, ref::Outputs&);
void int_linear_avx2(const Node&, const ref::Inputs&, ref::Outputs&);
void requantize_avx2(const Node&, const ref::Inputs&, ref::Outputs&);
void max_pool_u8_avx2(const Node&, const ref::Inputs&, ref::Outputs&);
// FP8 (e4m3) x integer or FP8 weights, summed exactly in doubles (results equal the reference).
void fp8_conv_avx2(const Node&, const ref::Inputs&, ref::Outputs&);
// nibble:QuantizeFloat to e4m3, eight values per step (integer outputs: the reference).
void quantize_float_avx2(const Node&, const ref::Inputs&, ref::Outputs&);

// AVX-512 VNNI (F, BW, VL, VNNI): u8 x s8 with vpdpbusd, s16 x s16 with vpdpwssd; the other ops
// take the AVX2 kernels.
void int_conv_avx512vnni(const Node&, const ref::Inputs&, ref::Outputs&);
void int_conv_fused_avx512vnni(const Node&, const ref::Inputs&, ref::Outputs&);

// AMX (INT8 tiles, with AVX-512 VNNI): u8 x s8 convolutions on 16 x 16 tile multiplies; s8
// activations take the AVX-512 VNNI kernels.
void int_conv_amx(const Node&, const ref::Inputs&, ref::Outputs&);
void int_conv_fused_amx(const Node&, const ref::Inputs&, ref::Outputs&);

}  // namespace nibble::cpu
