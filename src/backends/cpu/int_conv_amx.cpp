// The AMX convolution (Intel Advanced Matrix Extensions, INT8): the AVX2 panels and epilogue around
// 16 x 16 tile multiplies. One TDPBSUD multiplies 16 maps x 64 k of s8 weights (A, the tile
// layout of PackedConvWeights) by 64 k x 16 pixels of u8 activations (B: 16 panel steps of 16
// pixels x 4 bytes, exactly the im2col panel) into 16 x 16 s32 sums: each four-product group is
// summed exactly and added to s32 without saturation, so any u8 activation is exact, as with
// vpdpbusd. s8 activations (the stem's images) take TDPBSSD on the same byte panels. Tasks take two
// map blocks x two pixel blocks at a time (four accumulator tiles).
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/conv_task_avx2.h"
#include "backends/cpu/int_conv.h"
#include "backends/cpu/isa_kernels.h"

#define NIBBLE_AMX __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni,amx-tile,amx-int8")))

namespace nibble::cpu {

namespace {

constexpr int kMr = 16;
constexpr int64_t kChunkBytes = kTileSteps * kPanelStepBytes;  // one A or B tile: 16 rows x 64 bytes

// The tile configuration (palette 1): tiles 0-3 accumulate (map block i, pixel block j) at 2i + j,
// 4-5 hold the weights of the two map blocks, 6-7 the panels of the two pixel blocks; all 16 rows
// of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Loaded by every task, not once per thread: other AMX code in the process (another library on
// the same thread) may have configured the tiles differently or released them in between.
NIBBLE_AMX void configure_tiles() {
  static const TileConfig config = [] {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
      c.colsb[t] = 64;
      c.rows[t] = 16;
    }
    return c;
  }();
  _tile_loadconfig(&config);
}

// kM map blocks x kB pixel blocks (each 1 or 2) of sums over k_steps (a multiple of 16) into acc:
// the tile of map block i and pixel block j at acc + (2i + j) x 256, 16 maps x 16 pixels.
template <int kM, int kB, bool kSigned>
NIBBLE_AMX void tiles_amx(const uint8_t* p0, const uint8_t* p1, const int8_t* w0, const int8_t* w1, int64_t k_steps,
                          int32_t* acc) {
  _tile_zero(0);
  if constexpr (kB == 2) _tile_zero(1);
  if constexpr (kM == 2) _tile_zero(2);
  if constexpr (kM == 2 && kB == 2) _tile_zero(3);
  for (int64_t c = 0; c < k_steps / kTileSteps; ++c) {
    // Weights (A) are s8; activations (B) are u8 (TDPBSUD) or s8 (TDPBSSD).
#define NIBBLE_TDP(c, a, b)      \
  if constexpr (kSigned) {       \
    _tile_dpbssd(c, a, b);       \
  } else {                       \
    _tile_dpbsud(c, a, b);       \
  }
    _tile_loadd(4, w0 + c * kChunkBytes, 64);
    _tile_loadd(6, p0 + c * kChunkBytes, 64);
    NIBBLE_TDP(0, 4, 6)
    if constexpr (kB == 2) {
      _tile_loadd(7, p1 + c * kChunkBytes, 64);
      NIBBLE_TDP(1, 4, 7)
    }
    if constexpr (kM == 2) {
      _tile_loadd(5, w1 + c * kChunkBytes, 64);
      NIBBLE_TDP(2, 5, 6)
      if constexpr (kB == 2) {
        NIBBLE_TDP(3, 5, 7)
      }
    }
#undef NIBBLE_TDP
  }
  _tile_stored(0, acc, 64);
  if constexpr (kB == 2) _tile_stored(1, acc + 256, 64);
  if constexpr (kM == 2) _tile_stored(2, acc + 512, 64);
  if constexpr (kM == 2 && kB == 2) _tile_stored(3, acc + 768, 64);
}

template <bool kSigned>
NIBBLE_AMX void tiles_amx_any(int nm, int nb, const uint8_t* p0, const uint8_t* p1, const int8_t* w0,
                              const int8_t* w1, int64_t k_steps, int32_t* acc) {
  if (nm == 2 && nb == 2) {
    tiles_amx<2, 2, kSigned>(p0, p1, w0, w1, k_steps, acc);
  } else if (nm == 2) {
    tiles_amx<2, 1, kSigned>(p0, p1, w0, w1, k_steps, acc);
  } else if (nb == 2) {
    tiles_amx<1, 2, kSigned>(p0, p1, w0, w1, k_steps, acc);
  } else {
    tiles_amx<1, 1, kSigned>(p0, p1, w0, w1, k_steps, acc);
  }
}

NIBBLE_AMX void run_conv_task_amx(const ConvJob& job, int64_t task) {
  configure_tiles();
  const PackedConvWeights& pw = *job.weights;
  const ConvTask t = conv_task(job, task);
  const int64_t g = t.g, b_begin = t.b_begin, b_end = t.b_end, mb_begin = t.mb_begin, mb_end = t.mb_end;
  const int64_t block_bytes = pw.k_steps * kPanelStepBytes;
  const uint8_t* panel = t.panel;
  const TaskSegments& segs = *t.segs;
  const int8_t* weights = pw.s8.data();
  alignas(64) int32_t acc[4 * kMr * kPanelNr];
  for (int64_t mb = mb_begin; mb < mb_end; mb += 2) {
    const int nm = mb + 1 < mb_end ? 2 : 1;
    const int8_t* w0 = weights + (g * pw.m_blocks + mb) * pw.block_elems();
    const int8_t* w1 = w0 + pw.block_elems();
    for (int64_t b = b_begin; b < b_end; b += 2) {
      const int nb = b + 1 < b_end ? 2 : 1;
      const uint8_t* p0 = panel + (b - b_begin) * block_bytes;
      const uint8_t* p1 = p0 + block_bytes;
      const int64_t mg0 = mb * kMr;
      const int prefetch_rows = static_cast<int>(std::min<int64_t>(nm * kMr, pw.maps_per_group - mg0));
      prefetch_epilogue(job.epilogue, segs.of_block(b - b_begin), segs.count(b - b_begin), job.plane,
                        g * pw.maps_per_group + mg0, prefetch_rows);
      if (job.x_signed) {
        tiles_amx_any<true>(nm, nb, p0, p1, w0, w1, pw.k_steps, acc);
      } else {
        tiles_amx_any<false>(nm, nb, p0, p1, w0, w1, pw.k_steps, acc);
      }
      for (int i = 0; i < nm; ++i) {
        const int64_t tile_m0 = (mb + i) * kMr;  // first map of the tile within the group
        const int rows = static_cast<int>(std::min<int64_t>(kMr, pw.maps_per_group - tile_m0));
        for (int j = 0; j < nb; ++j) {
          epilogue_tile_avx512(job.epilogue, segs.of_block(b + j - b_begin), segs.count(b + j - b_begin), job.plane,
                               g * pw.maps_per_group + tile_m0, rows, acc + (2 * i + j) * kMr * kPanelNr);
        }
      }
    }
  }
}

}  // namespace

bool amx_usable() {
  static const bool usable = [] {
    __builtin_cpu_init();
    // CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8.
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__builtin_cpu_supports("avx512vnni") || !__get_cpuid_count(7, 0, &a, &b, &c, &d) ||
        !(d & (1u << 24)) || !(d & (1u << 25))) {
      return false;
    }
    // Linux hands out the tile data state only to processes that ask for it.
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

const ConvIsa& conv_isa_amx() {
  static const ConvIsa isa{"amx", kMr, kPanelNr, true, pack_chunk_avx2, run_conv_task_amx, true, true,
                           &conv_isa_avx512vnni()};
  return isa;
}

void int_conv_amx(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  int_conv_cpu(node, in, out, conv_isa_amx(), false);
}

void int_conv_fused_amx(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  int_conv_cpu(node, in, out, conv_isa_amx(), true);
}

}  // namespace nibble::cpu
