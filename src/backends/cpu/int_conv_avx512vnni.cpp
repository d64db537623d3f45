// The AVX-512 VNNI convolution: the AVX2 panels and epilogue around 8 x 16 vpdpbusd / vpdpwssd tiles.
#include <immintrin.h>

#include <cstring>

#include "backends/cpu/conv_task_avx2.h"
#include "backends/cpu/int_conv.h"
#include "backends/cpu/isa_kernels.h"

// AVX2 and FMA are listed too so that the AVX2 helpers may inline here.
#define NIBBLE_AVX512VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

namespace nibble::cpu {

namespace {

constexpr int kMr = 8;  // output maps per tile: 8 zmm accumulators of 16 pixels

NIBBLE_AVX512VNNI inline __m512i broadcast_u32_avx512(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

// One panel step is one zmm: 16 pixels x 4 bytes (or 2 s16), and one weight step holds 4 bytes per
// map. vpdpbusd sums four u8 x s8 products (each exact in s16) into s32 without saturation, so any
// u8 activation is exact; vpdpwssd does the same for two s16 x s16 products.
template <bool kS16>
NIBBLE_AVX512VNNI void tile_8x16_avx512vnni(const uint8_t* panel, const void* w, int64_t k_steps, bool narrow,
                                            int32_t* acc) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  __m512i c[kMr];
  for (int r = 0; r < kMr; ++r) c[r] = _mm512_setzero_si512();
  for (int64_t s = 0; s < k_steps; ++s) {
    const __m512i a = _mm512_loadu_si512(panel + s * kPanelStepBytes);
#pragma GCC unroll 16
    for (int r = 0; r < kMr; ++r) {
      const __m512i wv = broadcast_u32_avx512(wb + (s * kMr + r) * 4);
      c[r] = kS16 ? _mm512_dpwssd_epi32(c[r], a, wv) : _mm512_dpbusd_epi32(c[r], a, wv);
    }
  }
  for (int r = 0; r < kMr; ++r) _mm512_storeu_si512(acc + r * kPanelNr, c[r]);
}

void run_conv_task_avx512vnni(const ConvJob& job, int64_t task) {
  run_conv_task_with_avx2(job, task, kMr, tile_8x16_avx512vnni<false>, tile_8x16_avx512vnni<true>,
                          epilogue_tile_avx512);
}

}  // namespace

const ConvIsa& conv_isa_avx512vnni() {
  static const ConvIsa isa{"avx512vnni", kMr, kPanelNr, true, pack_chunk_avx2, run_conv_task_avx512vnni};
  return isa;
}

void int_conv_avx512vnni(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  int_conv_cpu(node, in, out, conv_isa_avx512vnni(), false);
}

void int_conv_fused_avx512vnni(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  int_conv_cpu(node, in, out, conv_isa_avx512vnni(), true);
}

}  // namespace nibble::cpu
