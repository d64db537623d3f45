// The AVX2 convolution task: im2col panels of 16 pixels, 4 x 16 s32 micro-tiles, vector epilogue.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/avx2_common.h"
#include "backends/cpu/int_conv.h"
#include "backends/cpu/isa_kernels.h"

namespace nibble::cpu {

namespace {

constexpr int kMr = 4;   // output maps per tile: 8 s32 accumulators plus operands fit 16 ymm
constexpr int kNr = 16;  // output pixels per tile: two ymm of s32
// A panel step is 16 pixels x 4 bytes (u8s8) or 16 pixels x 2 s16 (s16s16): 64 bytes either way.
constexpr int64_t kStepBytes = 64;

// Packs one block of 16 pixels for u8s8: step s holds, per pixel, the bytes of taps 4s .. 4s + 3.
NIBBLE_AVX2 void pack_block_u8_avx2(const uint8_t* src, const int64_t* k_offset, int64_t k_steps,
                                    const int64_t* pixel_offset, BlockKind kind, const uint8_t* span,
                                    uint8_t* panel) {
  // kSpan32: the block's bytes sit within 32 of its first pixel; pshufb picks them out of two
  // 16-byte loads (an index with bit 7 set gives 0, so each half keeps only its own bytes).
  __m128i pick_lo = _mm_setzero_si128(), pick_hi = _mm_setzero_si128();
  if (kind == kSpan32) {
    const __m128i rel = _mm_loadu_si128(reinterpret_cast<const __m128i*>(span));
    const __m128i in_hi = _mm_cmpgt_epi8(rel, _mm_set1_epi8(15));
    pick_lo = _mm_or_si128(rel, in_hi);
    pick_hi = _mm_or_si128(_mm_sub_epi8(rel, _mm_set1_epi8(16)), _mm_andnot_si128(in_hi, _mm_set1_epi8(-128)));
  }
  alignas(16) uint8_t gathered[4][kNr];
  for (int64_t s = 0; s < k_steps; ++s) {
    __m128i r[4];
    for (int i = 0; i < 4; ++i) {
      const uint8_t* first = src + k_offset[s * 4 + i] + pixel_offset[0];
      if (kind == kContiguous) {
        r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(first));
      } else if (kind == kSpan32) {
        const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(first));
        const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(first + 16));
        r[i] = _mm_or_si128(_mm_shuffle_epi8(lo, pick_lo), _mm_shuffle_epi8(hi, pick_hi));
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

// Packs one block of 16 pixels for s16s16: step s holds, per pixel, taps 2s and 2s + 1.
NIBBLE_AVX2 void pack_block_s16_avx2(const int16_t* src, const int64_t* k_offset, int64_t k_steps,
                                     const int64_t* pixel_offset, BlockKind kind, int16_t* panel) {
  const bool contiguous = kind == kContiguous;
  alignas(32) int16_t gathered[2][kNr];
  for (int64_t s = 0; s < k_steps; ++s) {
    __m256i r[2];
    for (int i = 0; i < 2; ++i) {
      const int16_t* tap = src + k_offset[s * 2 + i];
      if (contiguous) {
        r[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tap + pixel_offset[0]));
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

// 4 maps x 16 pixels of u8 x s8 sums. maddubs adds two u8 x s8 products into s16, which the caller
// proved cannot saturate; madd with ones widens the pairs to s32. (Summing several maddubs results
// in s16 before widening measured no faster on Zen 3, so the kernel stays this simple.)
NIBBLE_AVX2 void tile_u8s8s32_4x16_avx2(const uint8_t* panel, const int8_t* w, int64_t k_steps, int32_t* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c[kMr][2];
  for (int r = 0; r < kMr; ++r) c[r][0] = c[r][1] = _mm256_setzero_si256();
  for (int64_t s = 0; s < k_steps; ++s) {
    const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * kStepBytes));
    const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * kStepBytes + 32));
    for (int r = 0; r < kMr; ++r) {
      const __m256i wv = broadcast_u32(w + (s * kMr + r) * 4);
      c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(a0, wv), ones));
      c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(a1, wv), ones));
    }
  }
  for (int r = 0; r < kMr; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kNr), c[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kNr + 8), c[r][1]);
  }
}

// 4 maps x 16 pixels of s16 x s16 sums: madd forms exact s32 pair sums, so any s8/u8 input works.
NIBBLE_AVX2 void tile_s16s16s32_4x16_avx2(const int16_t* panel, const int16_t* w, int64_t k_steps, int32_t* acc) {
  __m256i c[kMr][2];
  for (int r = 0; r < kMr; ++r) c[r][0] = c[r][1] = _mm256_setzero_si256();
  for (int64_t s = 0; s < k_steps; ++s) {
    const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * 32));
    const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + s * 32 + 16));
    for (int r = 0; r < kMr; ++r) {
      const __m256i wv = broadcast_u32(w + (s * kMr + r) * 2);
      c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(a0, wv));
      c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(a1, wv));
    }
  }
  for (int r = 0; r < kMr; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kNr), c[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kNr + 8), c[r][1]);
  }
}

// Bias, residual, ReLU and requantization of `rows` maps x `count` pixels of one tile.
NIBBLE_AVX2 void epilogue_tile_avx2(const ConvEpilogue& ep, int64_t first, int64_t map_stride, int64_t m0,
                                    int rows, int count, const int32_t* acc) {
  const EpilogueConstsAvx2 k = epilogue_consts_avx2(ep.shift, ep.hi);
  for (int r = 0; r < rows; ++r) {
    const int64_t m = m0 + r;
    const int64_t at = first + r * map_stride;
    const __m256i bias = _mm256_set1_epi32(ep.bias[m]);
    __m256i v[2];
    for (int j = 0; j < 2; ++j) {
      v[j] = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + r * kNr + 8 * j)), bias);
    }
    if (ep.residual) {
      alignas(32) int32_t res[kNr] = {};
      const int32_t* rp = ep.residual + at;
      if (count < kNr) {
        std::memcpy(res, rp, sizeof(int32_t) * static_cast<size_t>(count));
        rp = res;
      }
      for (int j = 0; j < 2; ++j) {
        v[j] = _mm256_add_epi32(v[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rp + 8 * j)));
      }
    }
    if (ep.relu) {
      for (int j = 0; j < 2; ++j) v[j] = _mm256_max_epi32(v[j], _mm256_setzero_si256());
    }
    if (ep.factor) {
      for (int j = 0; j < 2; ++j) v[j] = requantize_s32_avx2(v[j], ep.factor[m], k, ep.is_signed);
    }
    store_s32x16_as_avx2(v[0], v[1], ep.out_dtype, ep.out, at, count);
  }
}

// Packs pixel blocks [b_begin, b_end) of image n, group g into `panel`.
NIBBLE_AVX2 void pack_blocks_avx2(const ConvJob& job, int64_t n, int64_t g, int64_t b_begin, int64_t b_end,
                                  uint8_t* panel) {
  const int64_t k_steps = job.weights->k_steps;
  const int64_t src_base = n * job.image_stride + g * job.group_stride;
  for (int64_t b = b_begin; b < b_end; ++b) {
    uint8_t* dst = panel + (b - b_begin) * k_steps * kStepBytes;
    const int64_t* po = job.pixel_offset + b * kNr;
    const BlockKind kind = static_cast<BlockKind>(job.block_kind[b]);
    if (job.mode == ConvMode::u8s8) {
      pack_block_u8_avx2(static_cast<const uint8_t*>(job.src) + src_base, job.k_offset, k_steps, po, kind,
                         job.block_span + b * kNr, dst);
    } else {
      pack_block_s16_avx2(static_cast<const int16_t*>(job.src) + src_base, job.k_offset, k_steps, po, kind,
                          reinterpret_cast<int16_t*>(dst));
    }
  }
}

// Chunk = (image, group, pixel chunk), in the task order without the map split.
NIBBLE_AVX2 void pack_chunk_avx2(const ConvJob& job, int64_t chunk) {
  const int64_t pc = chunk % job.pixel_chunks;
  const int64_t g = chunk / job.pixel_chunks % job.group;
  const int64_t n = chunk / job.pixel_chunks / job.group;
  const int64_t b_begin = pc * job.blocks_per_chunk;
  const int64_t b_end = std::min(job.pixel_blocks, b_begin + job.blocks_per_chunk);
  pack_blocks_avx2(job, n, g, b_begin, b_end,
                   job.panels + chunk * job.blocks_per_chunk * job.weights->k_steps * kStepBytes);
}

NIBBLE_AVX2 void run_conv_task_avx2(const ConvJob& job, int64_t task) {
  const PackedConvWeights& pw = *job.weights;
  const int64_t mc = task % job.m_chunks;
  const int64_t chunk = task / job.m_chunks;
  const int64_t pc = chunk % job.pixel_chunks;
  const int64_t g = chunk / job.pixel_chunks % job.group;
  const int64_t n = chunk / job.pixel_chunks / job.group;

  const int64_t b_begin = pc * job.blocks_per_chunk;
  const int64_t b_end = std::min(job.pixel_blocks, b_begin + job.blocks_per_chunk);
  const int64_t block_bytes = pw.k_steps * kStepBytes;
  const uint8_t* panel;
  if (job.panels) {
    panel = job.panels + chunk * job.blocks_per_chunk * block_bytes;
  } else {
    thread_local std::vector<uint8_t> storage;
    const size_t need = static_cast<size_t>((b_end - b_begin) * block_bytes + 64);
    if (storage.size() < need) storage.resize(need);
    uint8_t* own = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
    pack_blocks_avx2(job, n, g, b_begin, b_end, own);
    panel = own;
  }

  const int64_t mb_begin = mc * job.m_blocks_per_chunk;
  const int64_t mb_end = std::min(pw.m_blocks, mb_begin + job.m_blocks_per_chunk);
  alignas(32) int32_t acc[kMr * kNr];
  for (int64_t mb = mb_begin; mb < mb_end; ++mb) {
    const int64_t w_at = (g * pw.m_blocks + mb) * pw.block_elems();
    const int64_t m0 = g * pw.maps_per_group + mb * kMr;
    const int rows = static_cast<int>(std::min<int64_t>(kMr, pw.maps_per_group - mb * kMr));
    for (int64_t b = b_begin; b < b_end; ++b) {
      const uint8_t* blk = panel + (b - b_begin) * block_bytes;
      if (job.mode == ConvMode::u8s8) {
        tile_u8s8s32_4x16_avx2(blk, pw.s8.data() + w_at, pw.k_steps, acc);
      } else {
        tile_s16s16s32_4x16_avx2(reinterpret_cast<const int16_t*>(blk), pw.s16.data() + w_at, pw.k_steps, acc);
      }
      const int64_t p0 = b * kNr;
      const int count = static_cast<int>(std::min<int64_t>(kNr, job.plane - p0));
      epilogue_tile_avx2(job.epilogue, (n * job.out_channels + m0) * job.plane + p0, job.plane, m0, rows, count,
                         acc);
    }
  }
}

const ConvIsa kConvAvx2{"avx2", kMr, kNr, pack_chunk_avx2, run_conv_task_avx2};

}  // namespace

void int_conv_avx2(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  int_conv_cpu(node, in, out, kConvAvx2, false);
}

void int_conv_fused_avx2(const Node& node, const ref::Inputs& in, ref::Outputs& out) {
  int_conv_cpu(node, in, out, kConvAvx2, true);
}

}  // namespace nibble::cpu
