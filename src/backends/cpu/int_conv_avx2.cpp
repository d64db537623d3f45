// The AVX2 convolution: im2col panels of 16 pixels, 4 x 16 s32 micro-tiles, vector epilogue.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/avx2_common.h"
#include "backends/cpu/conv_task_avx2.h"
#include "backends/cpu/int_conv.h"
#include "backends/cpu/isa_kernels.h"

namespace nibble::cpu {

namespace {

constexpr int kMr = 4;  // output maps per tile: 8 s32 accumulators plus operands fit 16 ymm
constexpr int kNr = kPanelNr;
constexpr int64_t kStepBytes = kPanelStepBytes;

// pshufb masks that pick the lanes of one 32-byte window from its two 16-byte halves: an index
// with bit 7 set gives 0, so OR-ing the picks of every half and window assembles the block.
struct WindowPicks {
  __m128i lo, hi;
};
NIBBLE_AVX2 inline WindowPicks window_picks(__m128i span, int window) {
  const __m128i rel = _mm_sub_epi8(span, _mm_set1_epi8(static_cast<char>(32 * window)));
  const __m128i in_lo =
      _mm_and_si128(_mm_cmpgt_epi8(rel, _mm_set1_epi8(-1)), _mm_cmplt_epi8(rel, _mm_set1_epi8(16)));
  const __m128i in_hi =
      _mm_and_si128(_mm_cmpgt_epi8(rel, _mm_set1_epi8(15)), _mm_cmplt_epi8(rel, _mm_set1_epi8(32)));
  const __m128i off = _mm_set1_epi8(-128);
  return {
      _mm_or_si128(_mm_and_si128(in_lo, rel), _mm_andnot_si128(in_lo, off)),
      _mm_or_si128(_mm_and_si128(in_hi, _mm_sub_epi8(rel, _mm_set1_epi8(16))), _mm_andnot_si128(in_hi, off))};
}

NIBBLE_AVX2 inline __m128i pick_window(const uint8_t* p, const WindowPicks& w) {
  return _mm_or_si128(_mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), w.lo),
                      _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)), w.hi));
}

// Packs one block of 16 pixels for u8s8: step s holds, per pixel, the bytes of taps 4s .. 4s + 3.
NIBBLE_AVX2 void pack_block_u8_avx2(const uint8_t* src, const int64_t* k_offset, int64_t k_steps,
                                    const int64_t* pixel_offset, BlockKind kind, const uint8_t* span,
                                    int64_t anchor, uint8_t* panel) {
  WindowPicks w0{}, w1{};
  if (kind == kSpans) {
    const __m128i sp = _mm_loadu_si128(reinterpret_cast<const __m128i*>(span));
    w0 = window_picks(sp, 0);
    w1 = window_picks(sp, 1);
  }
  alignas(16) uint8_t gathered[4][kNr];
  for (int64_t s = 0; s < k_steps; ++s) {
    __m128i r[4];
    for (int i = 0; i < 4; ++i) {
      const uint8_t* first = src + k_offset[s * 4 + i] + pixel_offset[0];
      if (kind == kContiguous) {
        r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(first));
        // Each tap is its own plane (a stream the hardware prefetchers rarely follow): ask for the
        // line that the blocks after this one read.
        _mm_prefetch(reinterpret_cast<const char*>(first) + 64, _MM_HINT_T0);
      } else if (kind == kSpans) {
        r[i] = pick_window(first, w0);
        _mm_prefetch(reinterpret_cast<const char*>(first) + 64, _MM_HINT_T0);
        if (anchor != 0) r[i] = _mm_or_si128(r[i], pick_window(first + anchor, w1));
      } else {
        const uint8_t* tap = src + k_offset[s * 4 + i];
        for (int j = 0; j < kNr; ++j) gathered[i][j] = tap[pixel_offset[j]];
        r[i] = _mm_load_si128(reinterpret_cast<const __m128i*>(gathered[i]));
      }
    }
    // Bytes of taps (0, 1) and (2, 3) side by side, then the two pairs: 4 bytes per pixel.
    const __m128i t01_lo = _mm_unpacklo_epi8(r[0], r[1]), t01_hi = _mm_unpackhi_epi8(r[0], r[1]);
    const __m128i t23_lo = _mm_unpacklo_epi8(r[2], r[3]), t23_hi = _mm_unpackhi_epi8(r[2], r[3]);
    __m128i* out = reinterpret_cast<__m128i*>(panel + s * kStepBytes);
    _mm_storeu_si128(out + 0, _mm_unpacklo_epi16(t01_lo, t23_lo));
    _mm_storeu_si128(out + 1, _mm_unpackhi_epi16(t01_lo, t23_lo));
    _mm_storeu_si128(out + 2, _mm_unpacklo_epi16(t01_hi, t23_hi));
    _mm_storeu_si128(out + 3, _mm_unpackhi_epi16(t01_hi, t23_hi));
  }
}

// The even s16 elements of p[0 .. 31], in order.
NIBBLE_AVX2 inline __m256i even_s16_avx2(const int16_t* p) {
  const __m256i pick = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5,
                                        8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i lo = _mm256_permute4x64_epi64(
      _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), pick), 0xD8);
  const __m256i hi = _mm256_permute4x64_epi64(
      _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)), pick), 0xD8);
  return _mm256_permute2x128_si256(lo, hi, 0x20);
}

// Packs one block of 16 pixels for s16s16: step s holds, per pixel, taps 2s and 2s + 1.
NIBBLE_AVX2 void pack_block_s16_avx2(const int16_t* src, const int64_t* k_offset, int64_t k_steps,
                                     const int64_t* pixel_offset, BlockKind kind, int16_t* panel) {
  alignas(32) int16_t gathered[2][kNr];
  for (int64_t s = 0; s < k_steps; ++s) {
    __m256i r[2];
    for (int i = 0; i < 2; ++i) {
      const int16_t* tap = src + k_offset[s * 2 + i];
      if (kind == kContiguous) {
        r[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tap + pixel_offset[0]));
      } else if (kind == kStride2) {
        r[i] = even_s16_avx2(tap + pixel_offset[0]);
      } else {
        for (int j = 0; j < kNr; ++j) gathered[i][j] = tap[pixel_offset[j]];
        r[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(gathered[i]));
      }
    }
    // unpack works within 128-bit lanes: pixels 0-3 | 8-11 and 4-7 | 12-15, put back in order.
    const __m256i lo = _mm256_unpacklo_epi16(r[0], r[1]);
    const __m256i hi = _mm256_unpackhi_epi16(r[0], r[1]);
    __m256i* out = reinterpret_cast<__m256i*>(panel + s * (kStepBytes / 2));
    _mm256_storeu_si256(out + 0, _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(lo, hi, 0x31));
  }
}

NIBBLE_AVX2 inline __m256i broadcast_u32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm256_set1_epi32(v);
}

// 4 maps x 8 kNv pixels of u8 x s8 sums. maddubs adds two u8 x s8 products into s16, which the
// caller proved cannot saturate; madd with ones widens the pairs to s32. (Summing several maddubs
// results in s16 before widening measured no faster on Zen 3, so the kernel stays this simple.)
// kNv = 1 serves a last block of at most 8 pixels.
template <int kNv>
NIBBLE_AVX2 void tile_u8s8s32_4x16_avx2(const uint8_t* panel, const int8_t* w, int64_t k_steps,
                                        int32_t* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c[kMr][kNv];
  for (int r = 0; r < kMr; ++r) {
    for (int j = 0; j < kNv; ++j) c[r][j] = _mm256_setzero_si256();
  }
  for (int64_t s = 0; s < k_steps; ++s) {
    __m256i a[kNv];
    for (int j = 0; j < kNv; ++j) {
      a[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * kStepBytes + 32 * j));
    }
#pragma GCC unroll 16
    for (int r = 0; r < kMr; ++r) {
      const __m256i wv = broadcast_u32(w + (s * kMr + r) * 4);
      for (int j = 0; j < kNv; ++j) {
        c[r][j] = _mm256_add_epi32(c[r][j], _mm256_madd_epi16(_mm256_maddubs_epi16(a[j], wv), ones));
      }
    }
  }
  for (int r = 0; r < kMr; ++r) {
    for (int j = 0; j < kNv; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kNr + 8 * j), c[r][j]);
    for (int j = kNv; j < 2; ++j) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kNr + 8 * j), _mm256_setzero_si256());
    }
  }
}

// 4 maps x 8 kNv pixels of s16 x s16 sums: madd forms exact s32 pair sums, so any s8/u8 input works.
template <int kNv>
NIBBLE_AVX2 void tile_s16s16s32_4x16_avx2(const int16_t* panel, const int16_t* w, int64_t k_steps,
                                          int32_t* acc) {
  __m256i c[kMr][kNv];
  for (int r = 0; r < kMr; ++r) {
    for (int j = 0; j < kNv; ++j) c[r][j] = _mm256_setzero_si256();
  }
  for (int64_t s = 0; s < k_steps; ++s) {
    __m256i a[kNv];
    for (int j = 0; j < kNv; ++j)
      a[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * 32 + 16 * j));
#pragma GCC unroll 16
    for (int r = 0; r < kMr; ++r) {
      const __m256i wv = broadcast_u32(w + (s * kMr + r) * 2);
      for (int j = 0; j < kNv; ++j) c[r][j] = _mm256_add_epi32(c[r][j], _mm256_madd_epi16(a[j], wv));
    }
  }
  for (int r = 0; r < kMr; ++r) {
    for (int j = 0; j < kNv; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kNr + 8 * j), c[r][j]);
    for (int j = kNv; j < 2; ++j) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kNr + 8 * j), _mm256_setzero_si256());
    }
  }
}

// The tiles of the AVX2 table: 4 maps x 16 pixels, or x 8 for a narrow last block.
NIBBLE_AVX2 void tile_u8s8_avx2(const uint8_t* panel, const void* w, int64_t k_steps, bool narrow,
                                int32_t* acc) {
  if (narrow) {
    tile_u8s8s32_4x16_avx2<1>(panel, static_cast<const int8_t*>(w), k_steps, acc);
  } else {
    tile_u8s8s32_4x16_avx2<2>(panel, static_cast<const int8_t*>(w), k_steps, acc);
  }
}

NIBBLE_AVX2 void tile_s16s16_avx2(const uint8_t* panel, const void* w, int64_t k_steps, bool narrow,
                                  int32_t* acc) {
  const int16_t* panel16 = reinterpret_cast<const int16_t*>(panel);
  if (narrow) {
    tile_s16s16s32_4x16_avx2<1>(panel16, static_cast<const int16_t*>(w), k_steps, acc);
  } else {
    tile_s16s16s32_4x16_avx2<2>(panel16, static_cast<const int16_t*>(w), k_steps, acc);
  }
}

void run_conv_task_avx2(const ConvJob& job, int64_t task) {
  run_conv_task_with_avx2(job, task, kMr, tile_u8s8_avx2, tile_s16s16_avx2);
}

const ConvIsa kConvAvx2{"avx2", kMr, kNr, false, pack_chunk_avx2, run_conv_task_avx2};

}  // namespace

// Bias, residual, ReLU and requantization of `rows` maps of one tile, written to the segments.
NIBBLE_AVX2 void epilogue_tile_avx2(const ConvEpilogue& ep, const Segment* segs, int nsegs, int64_t plane,
                                    int64_t m0, int rows, const int32_t* acc) {
  const EpilogueConstsAvx2 k = epilogue_consts_avx2(ep.shift, ep.hi);
  const EpilogueConstsAvx2 kr = epilogue_consts_avx2(ep.res_shift, ep.res_hi);
  const bool direct = nsegs == 1 && segs[0].lane_begin == 0;  // lanes map 1:1 onto consecutive outputs
  const size_t out_size = ep.out_dtype == DType::s32 ? 4 : 1;
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    const __m256i bias = _mm256_set1_epi32(ep.bias[m]);
    __m256i v[2];
    for (int j = 0; j < 2; ++j) {
      v[j] =
          _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + r * kNr + 8 * j)), bias);
    }
    if (ep.residual) {
      alignas(32) int32_t res[kNr] = {};
      const int32_t* rp;
      if (direct && segs[0].lane_end == kNr) {
        rp = ep.residual + segs[0].first + m * plane;
      } else {
        gather_segments(res, ep.residual, sizeof(int32_t), segs, nsegs, m * plane);
        rp = res;
      }
      for (int j = 0; j < 2; ++j) {
        v[j] = _mm256_add_epi32(v[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rp + 8 * j)));
      }
    } else if (ep.res_src) {
      alignas(16) uint8_t res[kNr] = {};
      gather_segments(res, ep.res_src, 1, segs, nsegs, m * plane);
      const __m128i b = _mm_load_si128(reinterpret_cast<const __m128i*>(res));
      const __m256i x[2] = {ep.res_src_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b),
                            ep.res_src_signed ? _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))
                                              : _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8))};
      for (int j = 0; j < 2; ++j) {
        v[j] = _mm256_add_epi32(v[j], requantize_s32_avx2(x[j], ep.res_factor[m], kr, ep.res_is_signed));
      }
    }
    if (ep.relu) {
      for (int j = 0; j < 2; ++j) v[j] = _mm256_max_epi32(v[j], _mm256_setzero_si256());
    }
    if (ep.factor) {
      for (int j = 0; j < 2; ++j) v[j] = requantize_s32_avx2(v[j], ep.factor[m], k, ep.is_signed);
    }
    if (direct) {
      store_s32x16_as_avx2(v[0], v[1], ep.out_dtype, ep.out, segs[0].first + m * plane, segs[0].lane_end);
    } else {
      alignas(32) uint8_t tmp[kNr * 4];
      store_s32x16_as_avx2(v[0], v[1], ep.out_dtype, tmp, 0, kNr);
      scatter_segments(ep.out, tmp, out_size, segs, nsegs, m * plane);
    }
  }
}

// Packs pixel blocks [b_begin, b_end) of group g into `panel`.
NIBBLE_AVX2 void pack_blocks_avx2(const ConvJob& job, int64_t g, int64_t b_begin, int64_t b_end,
                                  uint8_t* panel) {
  const int64_t k_steps = job.weights->k_steps;
  for (int64_t b = b_begin; b < b_end; ++b) {
    uint8_t* dst = panel + (b - b_begin) * k_steps * kStepBytes;
    const int64_t* po = job.pixel_offset + b * kNr;
    const BlockKind kind = static_cast<BlockKind>(job.block_kind[b]);
    if (job.mode == ConvMode::u8s8) {
      pack_block_u8_avx2(static_cast<const uint8_t*>(job.src) + g * job.group_stride, job.k_offset, k_steps,
                         po, kind, job.block_span + b * kNr, job.block_anchor[b], dst);
    } else {
      pack_block_s16_avx2(static_cast<const int16_t*>(job.src) + g * job.group_stride, job.k_offset, k_steps,
                          po, kind, reinterpret_cast<int16_t*>(dst));
    }
  }
}

// chunk = g x pixel_chunks + pixel chunk, the task order without the map split.
NIBBLE_AVX2 void pack_chunk_avx2(const ConvJob& job, int64_t chunk) {
  const int64_t b_begin = chunk % job.pixel_chunks * job.blocks_per_chunk;
  const int64_t b_end = std::min(job.pixel_blocks, b_begin + job.blocks_per_chunk);
  pack_blocks_avx2(job, chunk / job.pixel_chunks, b_begin, b_end,
                   job.panels + chunk * job.blocks_per_chunk * job.weights->k_steps * kStepBytes);
}

NIBBLE_AVX2 const uint8_t* task_panel(const ConvJob& job, int64_t g, int64_t chunk, int64_t b_begin, int64_t b_end) {
  const int64_t block_bytes = job.weights->k_steps * kStepBytes;
  if (job.panels) return job.panels + chunk * job.blocks_per_chunk * block_bytes;
  thread_local std::vector<uint8_t> storage;
  const size_t need = static_cast<size_t>((b_end - b_begin) * block_bytes + 64);
  if (storage.size() < need) storage.resize(need);
  uint8_t* own = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
  pack_blocks_avx2(job, g, b_begin, b_end, own);
  return own;
}

const TaskSegments& task_segments(const ConvJob& job, int64_t b_begin, int64_t b_end) {
  // Output runs of each block: lanes split where the folded pixel axis crosses into the next image.
  const int64_t image_elems = job.out_channels * job.plane;
  thread_local TaskSegments s;
  s.all.clear();
  s.begin.clear();
  for (int64_t b = b_begin; b < b_end; ++b) {
    s.begin.push_back(static_cast<int>(s.all.size()));
    const int64_t q0 = b * kNr;
    const int count = static_cast<int>(std::min<int64_t>(kNr, job.pixels - q0));
    for (int lane = 0; lane < count;) {
      const int64_t q = q0 + lane;
      const int64_t n = q / job.plane, p = q % job.plane;
      const int run = static_cast<int>(std::min<int64_t>(count - lane, job.plane - p));
      s.all.push_back({lane, lane + run, n * image_elems + p});
      lane += run;
    }
  }
  s.begin.push_back(static_cast<int>(s.all.size()));
  return s;
}

ConvTask conv_task(const ConvJob& job, int64_t task) {
  ConvTask t;
  const int64_t mc = task % job.m_chunks;
  const int64_t chunk = task / job.m_chunks;
  t.g = chunk / job.pixel_chunks;
  t.b_begin = chunk % job.pixel_chunks * job.blocks_per_chunk;
  t.b_end = std::min(job.pixel_blocks, t.b_begin + job.blocks_per_chunk);
  t.mb_begin = mc * job.m_blocks_per_chunk;
  t.mb_end = std::min(job.weights->m_blocks, t.mb_begin + job.m_blocks_per_chunk);
  t.panel = task_panel(job, t.g, chunk, t.b_begin, t.b_end);
  t.segs = &task_segments(job, t.b_begin, t.b_end);
  return t;
}

NIBBLE_AVX2 void run_conv_task_with_avx2(const ConvJob& job, int64_t task, int mr, ConvTileFn u8s8,
                                         ConvTileFn s16s16, ConvEpilogueFn epilogue) {
  const PackedConvWeights& pw = *job.weights;
  const ConvTask t = conv_task(job, task);
  const int64_t g = t.g, b_begin = t.b_begin, b_end = t.b_end;
  const int64_t block_bytes = pw.k_steps * kStepBytes;
  const uint8_t* panel = t.panel;
  const TaskSegments& segs = *t.segs;

  const ConvTileFn tile = job.mode == ConvMode::u8s8 ? u8s8 : s16s16;
  const void* weights = job.mode == ConvMode::u8s8 ? static_cast<const void*>(pw.s8.data()) : pw.s16.data();
  const size_t weight_size = job.mode == ConvMode::u8s8 ? 1 : 2;
  alignas(64) int32_t acc[kMaxTileMaps * kNr];
  for (int64_t mb = t.mb_begin; mb < t.mb_end; ++mb) {
    const uint8_t* w_block = static_cast<const uint8_t*>(weights) +
                             (g * pw.m_blocks + mb) * pw.block_elems() * static_cast<int64_t>(weight_size);
    const int64_t mg0 = mb * mr;  // first map of the tile within the group
    const int rows = static_cast<int>(std::min<int64_t>(mr, pw.maps_per_group - mg0));
    for (int64_t b = b_begin; b < b_end; ++b) {
      tile(panel + (b - b_begin) * block_bytes, w_block, pw.k_steps, job.pixels - b * kNr <= 8, acc);
      epilogue(job.epilogue, segs.of_block(b - b_begin), segs.count(b - b_begin), job.plane,
               g * pw.maps_per_group + mg0, rows, acc);
    }
  }
}

void int_conv_avx2(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  int_conv_cpu(node, in, out, kConvAvx2, false);
}

void int_conv_fused_avx2(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  int_conv_cpu(node, in, out, kConvAvx2, true);
}

}  // namespace nibble::cpu
