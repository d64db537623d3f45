// The CPU convolution's shared plan: packed weight layouts, the per-call job and the ISA hooks.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nibble/dtype.h"
#include "nibble/tensor.h"

namespace nibble::cpu {

// How the reduction is multiplied. u8s8: unsigned bytes times signed bytes, four k per 32-bit
// lane (maddubs / dpbusd); only valid when no pair sum can saturate s16 (maddubs_is_exact) or
// the instruction cannot saturate (vpdpbusd).
// s16s16: both operands widened to s16, two k per 32-bit lane (madd); always exact.
enum class ConvMode { u8s8, s16s16 };

// Weights W (M x C/group x KH x KW, s4 or s8) rearranged for the micro-kernels. For each group and
// each block of `mr` output maps, the reduction runs in steps of `lanes` k (4 for u8s8, 2 for
// s16s16); one step holds mr x lanes values, map-major, so that one 32-bit broadcast feeds one map.
// Maps past the group's end and k past K are zero.
// The tile layout (u8s8 with mr = 16, for AMX): k_steps is rounded up to whole chunks of
// kTileSteps steps, and each chunk of a block is 16 rows of 64 bytes, one row per map holding its
// 64 consecutive k (the A operand of one tile multiply).
inline constexpr int64_t kTileSteps = 16;
struct PackedConvWeights {
  ConvMode mode = ConvMode::u8s8;
  bool tile_layout = false;
  int mr = 0;
  int64_t groups = 0;
  int64_t maps_per_group = 0;  // Mg
  int64_t m_blocks = 0;        // ceil(Mg / mr) per group
  int64_t k = 0;               // C/group x KH x KW
  int64_t k_steps = 0;         // ceil(k / lanes)
  int max_abs = 0;             // largest |w|, for the saturation bound
  std::vector<int8_t> s8;      // u8s8 layout
  std::vector<int16_t> s16;    // s16s16 layout

  int64_t block_elems() const { return k_steps * mr * (mode == ConvMode::u8s8 ? 4 : 2); }
};

// The packing of `w` for (group, mr, mode), from a process-wide cache: weights are initializers
// that every run reads again. Entries are found by data pointer, hold the tensor's storage (so its
// address cannot pass to another tensor) and its write count (Tensor::write_count), so a tensor
// modified in place through its accessors is packed again. Thread-safe; the cache drops its oldest
// entries past a size budget.
std::shared_ptr<const PackedConvWeights> packed_conv_weights(const Tensor& w, int64_t group, int mr,
                                                             ConvMode mode, bool tile_layout = false);

// Whether u8 x s8 maddubs products are exact: each s16 result is the sum of two products, so it
// stays within s16 when 2 * max_x * max_w <= 32767 (true for any u8 <= 127 and |w| <= 128:
// 2 * 127 * 128 = 32512).
inline bool maddubs_is_exact(int max_x, int max_w) {
  return 2 * static_cast<int64_t>(max_x) * max_w <= 32767;
}

// The fused epilogue: acc + bias [+ residual] [max 0] [requantize], written as out_dtype.
struct ConvEpilogue {
  const int32_t* bias = nullptr;      // M values
  const int32_t* residual = nullptr;  // s32 N x M x OH x OW, or nullptr
  bool relu = false;
  const uint16_t* factor = nullptr;  // M factors, nullptr for no requantization (s32 output)
  int shift = 0;
  int64_t hi = 0;  // clamp [lo, hi] with lo = is_signed ? -hi : 0
  // Per map quant::saturation_thresholds of factor, shift and the range, or nullptr: where set,
  // the requantization may run in 32 bits.
  const uint32_t* sat = nullptr;
  // The folded residual (nibble:IntConvFused inputs 5 and 6), instead of `residual`: u8 or s8
  // N x M x OH x OW values, each requantized by its map's res_factor, res_shift and the
  // symmetric (res_is_signed) or unsigned range of res_hi as it is read.
  const uint8_t* res_src = nullptr;
  bool res_src_signed = false;
  const uint16_t* res_factor = nullptr;
  int res_shift = 0;
  int64_t res_hi = 0;
  bool res_is_signed = false;
  const uint32_t* res_sat = nullptr;  // as `sat`, for the residual's requantization
  bool is_signed = false;
  DType out_dtype = DType::s32;  // s32, u8 or s8
  void* out = nullptr;           // N x M x OH x OW
};

// How the im2col packing reads a block of nr output pixels for one tap, from the fastest:
// kContiguous: consecutive elements (stride 1 within an output row, or 1x1 unpadded).
// kSpans (u8s8): the pixels lie in at most two windows of 32 elements, the first starting at the
//   block's first pixel, the second block_anchor[b] elements after it (a row wrap, stride 2);
//   block_span[b * nr + i] = pixel i's offset within its window + 32 x its window.
// kStride2 (s16s16): pixel i reads the first pixel's element + 2i (the stem).
// kGather: one element at a time.
// Vector reads may run up to 32 elements past a block's last pixel; the glue only picks them where
// that stays inside the source (a padded copy carries slack for it).
enum BlockKind : uint8_t { kGather = 0, kContiguous = 1, kSpans = 2, kStride2 = 3 };

// One convolution call, prepared by the ISA-independent glue. The images of the batch are folded
// into one pixel axis q = n x plane + p, so that small late layers still fill whole pixel blocks.
// Activations come from `src` as bytes (u8s8) or s16 (s16s16), zero-padded when the conv pads; tap
// k of pixel q of group g reads src[g * group_stride + k_offset[k] + pixel_offset[q]].
struct ConvJob {
  ConvMode mode = ConvMode::u8s8;
  // u8s8 mode with s8 activation bytes (ConvIsa::s8_bytes): the panels hold them as they are.
  bool x_signed = false;
  int64_t group = 0, out_channels = 0;
  int64_t plane = 0;   // OH x OW
  int64_t pixels = 0;  // batch x plane
  const void* src = nullptr;
  int64_t group_stride = 0;               // elements between groups of src
  const int64_t* k_offset = nullptr;      // k_steps x lanes entries (k past K read offset 0)
  const int64_t* pixel_offset = nullptr;  // `pixels` entries, then offset 0 up to a whole block
  const uint8_t* block_kind = nullptr;    // per pixel block, a BlockKind
  const uint8_t* block_span = nullptr;    // kSpans: nr entries per block
  const int64_t* block_anchor = nullptr;  // kSpans: one entry per block
  const PackedConvWeights* weights = nullptr;
  ConvEpilogue epilogue;
  // When set, the panels of every group and pixel chunk were packed beforehand (pack_chunk) in
  // this order, blocks_per_chunk x k_steps x nr x 4 bytes per chunk; otherwise each task packs its
  // own.
  uint8_t* panels = nullptr;
  // Task grid: group x pixel chunk x map chunk.
  int64_t pixel_blocks = 0;      // ceil(pixels / nr)
  int64_t blocks_per_chunk = 0;  // pixel blocks per task
  int64_t pixel_chunks = 0;
  int64_t m_blocks_per_chunk = 0;  // map blocks per task
  int64_t m_chunks = 0;
  int64_t chunks() const { return group * pixel_chunks; }
  int64_t tasks() const { return chunks() * m_chunks; }
};

// What an instruction set supplies to the convolution: its tile shape, the im2col packing of one
// (group, pixel chunk) into job.panels, and the task body (pack the task's panel unless
// job.panels holds it, run the micro-kernel per tile, apply the epilogue).
struct ConvIsa {
  const char* name;
  int mr;  // output maps per micro-tile
  int nr;  // output pixels per micro-tile
  // Whether its u8 x s8 products never saturate (vpdpbusd); else u8s8 needs maddubs_is_exact.
  bool u8s8_always_exact;
  void (*pack_chunk)(const ConvJob& job, int64_t chunk);
  void (*run_task)(const ConvJob& job, int64_t task);
  // u8s8 weights in the tile layout (PackedConvWeights::tile_layout).
  bool tile_layout = false;
  // Whether run_task also multiplies s8 activation bytes in the u8s8 layout (ConvJob::x_signed).
  bool s8_bytes = false;
  // The instruction set that runs the s16s16 mode instead, or nullptr for this one.
  const ConvIsa* s16s16_isa = nullptr;
};

}  // namespace nibble::cpu
