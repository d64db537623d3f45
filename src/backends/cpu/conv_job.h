// The CPU convolution's shared plan: packed weight layouts, the per-call job and the ISA hooks.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nibble/dtype.h"
#include "nibble/tensor.h"

namespace nibble::cpu {

// How the reduction is multiplied. u8s8: unsigned bytes times signed bytes, four k per 32-bit
// lane (maddubs / dpbusd); only valid when no pair sum can saturate s16 (see choose_s16_group).
// s16s16: both operands widened to s16, two k per 32-bit lane (madd); always exact.
enum class ConvMode { u8s8, s16s16 };

// Weights W (M x C/group x KH x KW, s4 or s8) rearranged for the micro-kernels. For each group and
// each block of `mr` output maps, the reduction runs in steps of `lanes` k (4 for u8s8, 2 for
// s16s16); one step holds mr x lanes values, map-major, so that one 32-bit broadcast feeds one map.
// Maps past the group's end and k past K are zero.
struct PackedConvWeights {
  ConvMode mode = ConvMode::u8s8;
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
// that every run reads again. Entries are found by data pointer and checked against a private copy
// of the raw bytes, so a freed tensor whose address is reused, or one modified in place, is never
// served stale. Thread-safe; the cache drops its oldest entries past a size budget.
std::shared_ptr<const PackedConvWeights> packed_conv_weights(const Tensor& w, int64_t group, int mr,
                                                             ConvMode mode);

// Whether u8 x s8 maddubs products are exact: each s16 result is the sum of two products, so it
// stays within s16 when 2 * max_x * max_w <= 32767 (true for any u8 <= 127 and |w| <= 128:
// 2 * 127 * 128 = 32512).
inline bool maddubs_is_exact(int max_x, int max_w) { return 2 * static_cast<int64_t>(max_x) * max_w <= 32767; }

// The fused epilogue: acc + bias [+ residual] [max 0] [requantize], written as out_dtype.
struct ConvEpilogue {
  const int32_t* bias = nullptr;      // M values
  const int32_t* residual = nullptr;  // s32 N x M x OH x OW, or nullptr
  bool relu = false;
  const uint16_t* factor = nullptr;  // M factors, nullptr for no requantization (s32 output)
  int shift = 0;
  int64_t hi = 0;  // clamp [lo, hi] with lo = is_signed ? -hi : 0
  bool is_signed = false;
  DType out_dtype = DType::s32;  // s32, u8 or s8
  void* out = nullptr;           // N x M x OH x OW
};

// How the im2col packing reads a block of nr output pixels for one tap. Stride-1 convolutions read
// consecutive elements within an output row; a block that wraps to the next row of a padded input
// still lies within 32 elements (the padded copy carries slack so that 32 can always be read).
enum BlockKind : uint8_t { kGather = 0, kContiguous = 1, kSpan32 = 2 };

// One convolution call, prepared by the ISA-independent glue. Activations come from `src`: per
// image and group, channel c's plane starts at c * channel_stride and holds the input (zero-padded
// when the conv pads), as bytes for u8s8 or as s16 for s16s16. Tap k reads src + k_offset[k] +
// pixel_offset[p] for output pixel p (flattened OH x OW).
struct ConvJob {
  ConvMode mode = ConvMode::u8s8;
  int64_t batch = 0, group = 0, out_channels = 0, plane = 0;  // plane = OH x OW
  const void* src = nullptr;
  int64_t image_stride = 0;   // elements between images of src
  int64_t group_stride = 0;   // elements between groups of src
  const int64_t* k_offset = nullptr;      // k_steps x lanes entries (k past K read offset 0)
  const int64_t* pixel_offset = nullptr;  // plane entries, then offset 0 up to a whole pixel block
  const uint8_t* block_kind = nullptr;    // per pixel block, a BlockKind
  // Per pixel block of kind kSpan32, nr offsets relative to its first pixel, all below 32.
  const uint8_t* block_span = nullptr;
  const PackedConvWeights* weights = nullptr;
  ConvEpilogue epilogue;
  // When set, the panels of every image, group and pixel block were packed beforehand (pack_chunk)
  // in this order, k_steps x nr x 4 bytes per block; otherwise each task packs its own.
  uint8_t* panels = nullptr;
  // Task grid: image x group x pixel chunk x map chunk.
  int64_t pixel_blocks = 0;           // ceil(plane / nr)
  int64_t blocks_per_chunk = 0;       // pixel blocks per task
  int64_t pixel_chunks = 0;
  int64_t m_blocks_per_chunk = 0;     // map blocks per task
  int64_t m_chunks = 0;
  int64_t tasks() const { return batch * group * pixel_chunks * m_chunks; }
};

// What an instruction set supplies to the convolution: its tile shape, the im2col packing of one
// (image, group, pixel chunk) into job.panels, and the task body (pack the task's panel unless
// job.panels holds it, run the micro-kernel per tile, apply the epilogue).
struct ConvIsa {
  const char* name;
  int mr;  // output maps per micro-tile
  int nr;  // output pixels per micro-tile
  void (*pack_chunk)(const ConvJob& job, int64_t chunk);
  void (*run_task)(const ConvJob& job, int64_t task);
};

}  // namespace nibble::cpu
