// The AVX2 convolution task body, which wider instruction sets reuse around their own micro-tiles.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "backends/cpu/conv_job.h"

namespace nibble::cpu {

// The im2col panel: blocks of 16 pixels; one reduction step is 16 pixels x 4 bytes (u8s8) or
// 16 pixels x 2 s16 (s16s16), 64 bytes either way.
inline constexpr int kPanelNr = 16;
inline constexpr int64_t kPanelStepBytes = 64;
// The most maps a micro-tile may cover.
inline constexpr int kMaxTileMaps = 16;

// Where a block's pixels land in the output: runs of lanes within one image, whose elements for
// map m start at first + m * plane.
struct Segment {
  int lane_begin, lane_end;
  int64_t first;
};

// The elements (elem_size bytes each) of one map row of `src` that the segments cover, copied to
// their lanes of `dst`; `row` is that map's offset (m x plane). Other lanes keep their contents.
inline void gather_segments(void* dst, const void* src, size_t elem_size, const Segment* segs, int nsegs,
                            int64_t row) {
  for (int s = 0; s < nsegs; ++s) {
    std::memcpy(static_cast<uint8_t*>(dst) + segs[s].lane_begin * elem_size,
                static_cast<const uint8_t*>(src) + (segs[s].first + row) * static_cast<int64_t>(elem_size),
                elem_size * static_cast<size_t>(segs[s].lane_end - segs[s].lane_begin));
  }
}
// The reverse: the segments' lanes of `src` written to one map row of `dst`.
inline void scatter_segments(void* dst, const void* src, size_t elem_size, const Segment* segs, int nsegs,
                             int64_t row) {
  for (int s = 0; s < nsegs; ++s) {
    std::memcpy(static_cast<uint8_t*>(dst) + (segs[s].first + row) * static_cast<int64_t>(elem_size),
                static_cast<const uint8_t*>(src) + segs[s].lane_begin * elem_size,
                elem_size * static_cast<size_t>(segs[s].lane_end - segs[s].lane_begin));
  }
}

// Packs pixel blocks [b_begin, b_end) of group g into `panel` (AVX2 byte shuffles).
void pack_blocks_avx2(const ConvJob& job, int64_t g, int64_t b_begin, int64_t b_end, uint8_t* panel);
// ConvIsa::pack_chunk for the 16-pixel panel.
void pack_chunk_avx2(const ConvJob& job, int64_t chunk);

// Bias, residual, ReLU and requantization of `rows` maps from m0 of one tile (acc: rows x 16),
// written to the block's segments; with AVX2 or with AVX-512 (F, BW, VL).
void epilogue_tile_avx2(const ConvEpilogue& ep, const Segment* segs, int nsegs, int64_t plane, int64_t m0,
                        int rows, const int32_t* acc);
void epilogue_tile_avx512(const ConvEpilogue& ep, const Segment* segs, int nsegs, int64_t plane, int64_t m0,
                          int rows, const int32_t* acc);
// Prefetches the residual and output lines the epilogue of `rows` maps from m0 of one block reads
// and writes (its first segment), so that they arrive while the tile multiplies.
void prefetch_epilogue(const ConvEpilogue& ep, const Segment* segs, int nsegs, int64_t plane, int64_t m0, int rows);
using ConvEpilogueFn = void (*)(const ConvEpilogue& ep, const Segment* segs, int nsegs, int64_t plane, int64_t m0,
                                int rows, const int32_t* acc);

// The panel of task blocks [b_begin, b_end) of group g (pixel chunk `chunk`): its part of
// job.panels, or packed here into thread-local storage (valid until the next call on the thread).
const uint8_t* task_panel(const ConvJob& job, int64_t g, int64_t chunk, int64_t b_begin, int64_t b_end);

// The output segments of each pixel block of a task, thread-local (valid until the next call).
struct TaskSegments {
  std::vector<Segment> all;
  std::vector<int> begin;  // per block its first segment, then the end
  const Segment* of_block(int64_t i) const { return all.data() + begin[static_cast<size_t>(i)]; }
  int count(int64_t i) const { return begin[static_cast<size_t>(i) + 1] - begin[static_cast<size_t>(i)]; }
};
const TaskSegments& task_segments(const ConvJob& job, int64_t b_begin, int64_t b_end);

// One task's share of the job (ConvJob's task grid): group g, pixel blocks [b_begin, b_end) with
// their panel and output segments (task_panel, task_segments), map blocks [mb_begin, mb_end).
struct ConvTask {
  int64_t g = 0, b_begin = 0, b_end = 0, mb_begin = 0, mb_end = 0;
  const uint8_t* panel = nullptr;
  const TaskSegments* segs = nullptr;
};
ConvTask conv_task(const ConvJob& job, int64_t task);

// One micro-tile: mr maps x 16 pixels of s32 sums over k_steps panel steps into acc (mr x 16),
// from the mr-map weight block `w`. `narrow`: only the first 8 pixels are needed.
using ConvTileFn = void (*)(const uint8_t* panel, const void* w, int64_t k_steps, bool narrow, int32_t* acc);

// ConvIsa::run_task with tiles of `mr` (<= kMaxTileMaps) maps: takes or packs the task's panel,
// runs the tile of job.mode per block and map block, and applies the epilogue.
void run_conv_task_with_avx2(const ConvJob& job, int64_t task, int mr, ConvTileFn u8s8, ConvTileFn s16s16,
                             ConvEpilogueFn epilogue = epilogue_tile_avx2);

}  // namespace nibble::cpu
