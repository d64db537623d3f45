// The fused integer convolution on Hopper's warpgroup MMA (wgmma, sm_90a), NHWC, as an implicit
// GEMM: rows are output pixels (batch x OH x OW), columns output maps, the reduction runs over
// (kh, kw, input channels).
//
// Block: three warpgroups. Warpgroup 0 is the producer: one thread drives the tensor memory
// accelerator, which gathers each activation tile in im2col mode (128 consecutive output pixels,
// one filter tap, 64 channels; padding and image borders read zeros) and each weight tile in
// tiled mode, into a ring of shared-memory stages guarded by mbarriers. Warpgroups 1 and 2 are
// the consumers: each multiplies its 64 pixel rows of the stage by the BN maps with wgmma
// (m64 x BN x k32, s32 accumulators in registers), then runs the fused epilogue. The grid is
// persistent: every block walks tiles blockIdx.x, + gridDim.x, ..., maps fastest, so the producer
// fetches the next tile while the consumers finish the current one.
//
// 8-bit activations go to the tensor cores straight from shared memory (64-byte swizzle). 4-bit
// activations are copied as stored (32 bytes per 64 channels, 32-byte swizzle); each consumer
// loads its fragment with ldmatrix and widens it to 8 bits in registers (wgmma with A from
// registers). A fragment register of 4 packed bytes holds 8 channels: its low nibbles feed k
// slots [4t, 4t+4) and its high nibbles [16+4t, 16+4t+4). The weights of a 4-bit input are
// stored widened to s8 with the same permutation of k (wgmma_weights in plan.cpp), so the dot
// product is unchanged: exact.
//
// Epilogue: per 64-map chunk each consumer stages its s32 accumulators in shared memory, then
// every thread handles 8 consecutive maps of one pixel (epilogue.cuh), coalesced across the
// warp. Where the residual is narrow (or absent) the producer also copies each tile's residual
// tile and per-map constants (bias, thresholds, factors) into a double buffer ahead of the
// epilogue (`prefetch`); otherwise the epilogue reads them from global memory (`staged`).
// With weights whose maps are permuted inside each 64-map block (ConvArgs::perm_weights, opt-in by
// NIBBLE_WGMMA_PERMUTE=1) the direct epilogue gives each thread 16 consecutive maps of its rows
// (direct_epilogue_perm): wide shared-memory accesses instead of 2-byte ones.
// The 4-bit path waits for its MMAs before the next stage's A fragments are loaded: the
// tensor cores read them from registers until they complete.
#include <cuda.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>

#include <cuda_fp8.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/divide.h"
#include "backends/cuda/epilogue.cuh"
#include "backends/cuda/kernels.cuh"
#include "backends/cuda/wgmma.cuh"

// The sm_80 pass compiles the kernels' bodies away (they need sm_90a): their tile constants
// are then unreferenced, which is expected.
#pragma nv_diag_suppress 177

namespace nibble::cuda {

namespace {

constexpr int kBM = 128;       // pixels per tile: two consumer warpgroups of 64 rows
constexpr int kThreads = 384;  // producer + two consumers
constexpr int kEpiCols = 64;   // maps per chunk of the staged epilogue
constexpr int kEpiRow = kEpiCols + 8;  // its s32 row, padded: conflict-free fragment stores
constexpr int kSmemLimit = 232448;     // the largest dynamic shared memory of a Hopper block
constexpr int kSmemLimit2 = 115712;    // of each of two blocks on one multiprocessor (228 KB, 1 KB each reserved)

// Epilogue modes. `staged` and `prefetch` stage each 64-map chunk of s32 accumulators in shared
// memory and run the general 8-maps-per-thread epilogue of epilogue.cuh on it. `prefetch` (narrow
// residuals, 8- or 4-bit outputs in rows of whole 16 bytes) has the producer copy each tile's
// residual tile and per-map constants into a double buffer ahead of time; `staged` (anything
// else) reads them from global memory. `direct` (the common case of a requantized output of the
// input's width, saturation thresholds, and no residual or a narrow requantized one) takes the
// constants and residual tile as `prefetch` does, requantizes straight from the accumulator
// fragments with code specialized at compile time, writes the packed outputs into a swizzled
// shared-memory tile and stores it with the copy engine.
// `direct_perm` is `direct` on weights in the map order of permute_map_rows (plan.h): each thread
// then holds 16 consecutive maps of its rows (direct_epilogue_perm).
enum class Epi { staged, prefetch, direct, direct_perm };
__host__ __device__ constexpr bool is_direct(Epi e) { return e == Epi::direct || e == Epi::direct_perm; }

// kCtas: blocks per multiprocessor. Two (direct epilogue only) halve the shared memory and
// registers of each, for twice the warps to run the epilogue of short reductions.
// kResW (two blocks only): the block's weights stay in shared memory for all its tiles, loaded
// once (up to kWBytes: short reductions, and a block whose tiles all have the same maps); the
// pipeline stages then carry activations only, a third less traffic from L2 for 64-map tiles.
template <int BN, Storage kA, Epi kE, int kCtas = 1, bool kResW = false>
struct WgTile {
  static constexpr bool kPacked = kA == Storage::u4 || kA == Storage::s4;
  static constexpr bool kUnsignedA = kA == Storage::u8 || kA == Storage::u4;
  static constexpr int kARow = kPacked ? 32 : 64;  // bytes of one pixel's 64 channels
  static constexpr int kABytes = kBM * kARow;
  static constexpr int kBBytes = BN * 64;          // 64 s8 weights per map
  static_assert(!kResW || kCtas == 2, "resident weights only with two blocks per multiprocessor");
  static constexpr int kWBytes = kResW ? (BN == 64 ? 48 * 1024 : 16 * 1024) : 0;
  static constexpr int kStageBytes = kABytes + (kResW ? 0 : kBBytes);
  // Staging of the accumulators (64 rows x 64 maps per consumer); prefetch: two residual tiles
  // (128 rows, up to BN bytes) and two sets of per-map constants (bias s32, sat u32, factor u16,
  // residual factor u16).
  // FP8 (e4m3) tiles have their own epilogue straight from the fragments (fp8_epilogue), whose
  // e4m3 output tile of 64 rows x (BN + 16) bytes per consumer takes the staging area.
  static constexpr bool kFp8 = kA == Storage::e4m3;
  static_assert(kCtas == 1 || is_direct(kE) || kFp8, "two blocks per multiprocessor only with the direct or FP8 epilogue");
  static constexpr int kLimit = kCtas == 2 ? kSmemLimit2 : kSmemLimit;
  static constexpr int kStageEpi = kCtas == 2 ? 2 * 64 * (kFp8 ? BN + 16 : BN) : 2 * 64 * kEpiRow * 4;
  // One block: the producer warpgroup first, registers rebalanced by setmaxnreg (the producer's
  // 40, the consumers' 232). Two blocks: the producer is one warp after the consumers (wgmma
  // needs warpgroups aligned to 4 warps), and every thread has 96 registers: each of the four
  // schedulers' register files (16K) then holds the 5 warps that 18 warps per multiprocessor need.
  static constexpr int kThreadsT = kCtas == 2 ? 288 : kThreads;
  static constexpr bool kPre = kE != Epi::staged;  // the producer copies residual and constants
  static constexpr int kResBytes = kPre ? 2 * kBM * BN : 0;
  static constexpr int kParBytes = kPre ? 2 * 12 * BN : 0;
  // direct: the packed output tile of each consumer (64 rows of BN maps, 4 or 8 bits) in the
  // staging area, as boxes of up to 128 bytes under the copy engine's swizzle of that width.
  static constexpr int kOutRow = BN;  // bytes of a row at 8 bits, the widest output
  static constexpr int kEpiBytes = kStageEpi + kResBytes + kParBytes;
  static constexpr int kFixed = kEpiBytes + kWBytes + 1024 + 512;  // + alignment slack + barriers
  static constexpr int kStagesFit = (kLimit - kFixed) / kStageBytes;
  static constexpr int kStages = kStagesFit > 8 ? 8 : kStagesFit;
  static constexpr int kWOffset = kStages * kStageBytes;  // resident weights: k tile kt at kWOffset + kt x kBBytes
  static constexpr int kEpiOffset = kWOffset + kWBytes;
  static constexpr int kResOffset = kEpiOffset + kStageEpi;
  static constexpr int kParOffset = kResOffset + kResBytes;
  static constexpr int kBarOffset = kEpiOffset + kEpiBytes;
  static constexpr int kSmem = kBarOffset + 512 + 1024;
  static_assert(kABytes % 1024 == 0 && kBBytes % 1024 == 0, "stages must keep the swizzle alignment");
  static_assert(kStages >= 3, "too few pipeline stages");
  static_assert(kResOffset % 1024 == 0, "residual tiles keep the swizzle alignment");
  static_assert(kSmem <= kLimit, "shared memory");
  static_assert(2 * 64 * kOutRow <= kStageEpi, "the output tiles fit the staging area");
};

// 4 packed bytes -> their low and their high nibbles as 4 bytes, zero- or sign-extended.
template <bool kSigned>
__device__ __forceinline__ uint32_t widen_lo(uint32_t v) {
  const uint32_t b = v & 0x0F0F0F0Fu;
  return kSigned ? __vsub4(b ^ 0x08080808u, 0x08080808u) : b;
}
template <bool kSigned>
__device__ __forceinline__ uint32_t widen_hi(uint32_t v) {
  const uint32_t b = (v >> 4) & 0x0F0F0F0Fu;
  return kSigned ? __vsub4(b ^ 0x08080808u, 0x08080808u) : b;
}

struct WgShape {
  int k_iters;   // kh x kw x channel chunks
  int c_chunks;  // 64-channel chunks of the input row
  int n_tiles;   // map tiles
  int tiles;     // pixel tiles x map tiles
  int res_bytes, res_width, res_lw;  // prefetch: residual bytes of a map tile, of one box, log2 of that (0: none)
  int par_bytes[4];                  // prefetch: bytes per map of bias, sat, factor, residual factor (0: none)
  int direct_kind;                   // direct: the variant (direct_dispatch)
  int out_cols;                      // direct: bytes of the output's maps in a row
  int out_row, out_box;              // direct: bytes of a tile's row, of one store's box
};

// Byte `c` (< BN bytes) of row `r` of a tile of `rows` rows stored as boxes of 2^lw bytes under
// the copy engine's swizzle of that width; `x` is the row's swizzle pattern (swizzle_of).
__device__ __forceinline__ uint32_t box_offset(int r, int c, int rows, int lw, int x) {
  const int width = 1 << lw;
  const int cc = c & (width - 1);
  return static_cast<uint32_t>((((c >> lw) * rows + r) << lw) + ((((cc >> 4) ^ x)) << 4) + (cc & 15));
}
// The swizzle pattern of rows r with r & 7 == g (the copy engine XORs the 16-byte chunk index with the row bits above the span), for boxes of 2^lw bytes.
__device__ __forceinline__ int swizzle_of(int g, int lw) { return lw == 7 ? g : (lw == 6 ? (g >> 1) & 3 : (g >> 2) & 1); }

// The epilogue of one staged 64-map chunk (from map `cmap` of the tile) of one consumer's 64
// rows: each thread takes maps (tid % 8) x 8.. of 4 rows. prefetch: the tile's residual and
// constants (BN maps) are in shared memory.
template <bool kPre>
__device__ __forceinline__ void epilogue_chunk(const ConvArgs& a, const WgShape& shape, const int32_t* epi, int64_t row0,
                                               int tile_map0, int cmap, int bn, int tid, int cw, const uint8_t* res,
                                               const uint8_t* par) {
  const int grp = tid & 7;
  const int cl = cmap + grp * 8;  // within the tile
  const int c0 = tile_map0 + cl;
  if (c0 >= a.m) return;
  const bool full = c0 + 8 <= a.m;
  MapGroup mg;
  if (kPre) {
    const int4 b0 = *reinterpret_cast<const int4*>(par + 4 * cl), b1 = *reinterpret_cast<const int4*>(par + 4 * cl + 16);
    mg.bias[0] = b0.x; mg.bias[1] = b0.y; mg.bias[2] = b0.z; mg.bias[3] = b0.w;
    mg.bias[4] = b1.x; mg.bias[5] = b1.y; mg.bias[6] = b1.z; mg.bias[7] = b1.w;
    if (a.sat) {
      const uint4 t0 = *reinterpret_cast<const uint4*>(par + 4 * bn + 4 * cl), t1 = *reinterpret_cast<const uint4*>(par + 4 * bn + 4 * cl + 16);
      mg.sat[0] = t0.x; mg.sat[1] = t0.y; mg.sat[2] = t0.z; mg.sat[3] = t0.w;
      mg.sat[4] = t1.x; mg.sat[5] = t1.y; mg.sat[6] = t1.z; mg.sat[7] = t1.w;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) mg.sat[j] = 0;
    }
    const uint4 f = *reinterpret_cast<const uint4*>(par + 8 * bn + 2 * cl);
    const uint4 rf = shape.par_bytes[3] ? *reinterpret_cast<const uint4*>(par + 10 * bn + 2 * cl) : make_uint4(0, 0, 0, 0);
    const uint32_t fw[4] = {f.x, f.y, f.z, f.w}, rwd[4] = {rf.x, rf.y, rf.z, rf.w};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      mg.fac[j] = (fw[j / 2] >> (16 * (j & 1))) & 0xFFFF;
      mg.rfac[j] = (rwd[j / 2] >> (16 * (j & 1))) & 0xFFFF;
    }
  } else {
    load_map_group(a, c0, mg);
  }
  const bool narrow_res = narrow_residual(a, full);
  const bool four = a.res_storage == Storage::u4 || a.res_storage == Storage::s4;
  uint32_t rw[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = (tid >> 3) + 16 * i;
    const int64_t p = row0 + row;
    rw[i][0] = rw[i][1] = 0;
    if (narrow_res && p < a.pixels) {
      if (kPre) {
        const int r = cw * 64 + row;
        const uint8_t* src = res + box_offset(r, four ? cl / 2 : cl, kBM, shape.res_lw, swizzle_of(r & 7, shape.res_lw));
        rw[i][0] = *reinterpret_cast<const uint32_t*>(src);
        if (!four) rw[i][1] = *reinterpret_cast<const uint32_t*>(src + 4);
      } else {
        load_residual_words(a, p, c0, rw[i]);
      }
    }
  }
  // The 8 threads of a row read their two halves in an order that spreads them over all banks.
  const int h0 = (grp >> 2) & 1;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = (tid >> 3) + 16 * i;
    const int64_t p = row0 + row;
    if (p >= a.pixels) continue;
    const int32_t* src = epi + row * kEpiRow + grp * 8;
    const int4 first = *reinterpret_cast<const int4*>(src + 4 * h0);
    const int4 second = *reinterpret_cast<const int4*>(src + 4 * (1 - h0));
    const int4 lo4 = h0 ? second : first, hi4 = h0 ? first : second;
    int32_t v[8] = {lo4.x, lo4.y, lo4.z, lo4.w, hi4.x, hi4.y, hi4.z, hi4.w};
    finish_group(a, mg, p, c0, full, narrow_res, rw[i], v);
  }
}

// The same as a call: the kernels of 256-map tiles run it four times per tile, and one copy of
// this branchy code keeps the instruction cache warm (inlined four times, the warps stalled on
// instruction fetch half of the time).
template <bool kPre>
__device__ __noinline__ void epilogue_chunk_call(const ConvArgs& a, const WgShape& shape, const int32_t* epi,
                                                 int64_t row0, int tile_map0, int cmap, int bn, int tid, int cw,
                                                 const uint8_t* res, const uint8_t* par) {
  epilogue_chunk<kPre>(a, shape, epi, row0, tile_map0, cmap, bn, tid, cw, res, par);
}

// Residual kinds of the direct epilogue: none; unsigned at the output's width; s8; unsigned at
// the other width (4-bit residuals of an 8-bit output, 8-bit ones of a 4-bit output).
enum class DRes { none, same_unsigned, s8, other_unsigned };

// The shared-memory tiles of the direct epilogues: the residual's width in bits, and log2 of the
// box width (at most 128 bytes) of the residual tile and of the output tile, whose rows are BN maps.
template <int BN, int kBits, DRes kRes>
struct DirectTiles {
  static constexpr int box_log2(int row) { return row >= 128 ? 7 : (row == 64 ? 6 : (row == 32 ? 5 : 4)); }
  static constexpr int kResBits = kRes == DRes::s8 ? 8 : (kRes == DRes::other_unsigned ? 12 - kBits : kBits);
  static constexpr int kResLw = box_log2(BN * kResBits / 8);
  static constexpr int kOutLw = box_log2(BN * kBits / 8);
};

// requantize_narrow where the result is known to be inside its range (ConvArgs::res_in_range).
__device__ __forceinline__ int32_t requantize_narrow_in_range(int32_t x, uint32_t factor, int shift, uint32_t round) {
  const uint32_t mag = (static_cast<uint32_t>(abs(x)) * factor + round) >> shift;
  return x < 0 ? -static_cast<int32_t>(mag) : static_cast<int32_t>(mag);
}

// The direct epilogue of one consumer's 64 rows x BN maps: from the accumulator fragments
// (element (j, e): row 16 x warp + g (+ 8 for e >= 2), map 8j + 2t + (e & 1)) through bias,
// residual, ReLU and requantization to packed kBits-wide outputs in the shared output tile `out`.
// The same integer arithmetic as group_math (epilogue.cuh) for these cases, without its
// runtime branches and clamps that cannot act: kRelu (unsigned outputs, thresholds `sat_top`
// in the constants, so no clamp after the requantization; otherwise signed outputs and the
// `sat` thresholds), factors present, the residual (if any) narrow with a factor whose
// requantization stays in range (direct_kind checks all of this).
template <int BN, int kBits, DRes kRes, bool kRelu>
__device__ __forceinline__ void direct_epilogue(const ConvArgs& a, const int32_t (&acc)[BN / 2], const uint8_t* res,
                                                const uint8_t* par, uint8_t* out, int cw, int warp, int g, int t) {
  using L = DirectTiles<BN, kBits, kRes>;
  constexpr int kResBits = L::kResBits, kResLw = L::kResLw, kOutLw = L::kOutLw;
  const int32_t lo = static_cast<int32_t>(a.lo), hi = static_cast<int32_t>(a.hi);
  const uint32_t round = a.shift > 0 ? 1u << (a.shift - 1) : 0u;
  const uint32_t res_round = a.res_shift > 0 ? 1u << (a.res_shift - 1) : 0u;
  const int shift = a.shift, res_shift = a.res_shift;
  // Every row of this thread has r & 7 == g: one swizzle pattern per tile.
  const int rx = swizzle_of(g, kResLw), ox = swizzle_of(g, kOutLw);
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int cl = 8 * j + 2 * t;  // the first of this thread's two maps
    const int2 bias = *reinterpret_cast<const int2*>(par + 4 * cl);
    const uint2 sat = *reinterpret_cast<const uint2*>(par + 4 * BN + 4 * cl);
    const uint32_t fw = *reinterpret_cast<const uint32_t*>(par + 8 * BN + 2 * cl);
    const uint32_t f0 = fw & 0xFFFF, f1 = fw >> 16;
    uint32_t q0 = 0, q1 = 0;
    if constexpr (kRes != DRes::none) {
      const uint32_t qw = *reinterpret_cast<const uint32_t*>(par + 10 * BN + 2 * cl);
      q0 = qw & 0xFFFF;
      q1 = qw >> 16;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp * 16 + g + 8 * h;  // of this consumer's 64
      int32_t v0 = wrap_add(acc[4 * j + 2 * h], bias.x), v1 = wrap_add(acc[4 * j + 2 * h + 1], bias.y);
      if constexpr (kRes != DRes::none) {
        const int r = cw * 64 + row;
        const uint8_t* rp = res + box_offset(r, cl * kResBits / 8, kBM, kResLw, rx);
        int32_t r0, r1;
        if constexpr (kRes == DRes::s8) {
          const uint32_t w = *reinterpret_cast<const uint16_t*>(rp);
          r0 = requantize_narrow_in_range(static_cast<int32_t>(w << 24) >> 24, q0, res_shift, res_round);
          r1 = requantize_narrow_in_range(static_cast<int32_t>(w << 16) >> 24, q1, res_shift, res_round);
        } else {
          uint32_t u0, u1;
          if constexpr (kResBits == 8) {
            const uint32_t w = *reinterpret_cast<const uint16_t*>(rp);
            u0 = w & 0xFF;
            u1 = w >> 8;
          } else {
            const uint32_t w = *rp;
            u0 = w & 0xF;
            u1 = w >> 4;
          }
          // Unsigned and below 2^8, factor below 2^16: fits 32 bits, is >= 0 and in range.
          r0 = static_cast<int32_t>((u0 * q0 + res_round) >> res_shift);
          r1 = static_cast<int32_t>((u1 * q1 + res_round) >> res_shift);
        }
        v0 = wrap_add(v0, r0);
        v1 = wrap_add(v1, r1);
      }
      if constexpr (kRelu) {
        // Nothing is negative after ReLU: clamp to the largest acc that stays within hi (which
        // it reaches), one multiply-add, shift.
        const uint32_t x0 = min(static_cast<uint32_t>(max(v0, 0)), sat.x), x1 = min(static_cast<uint32_t>(max(v1, 0)), sat.y);
        v0 = static_cast<int32_t>((x0 * f0 + round) >> shift);
        v1 = static_cast<int32_t>((x1 * f1 + round) >> shift);
      } else {
        v0 = requantize_saturating(v0, f0, sat.x, shift, lo, hi);
        v1 = requantize_saturating(v1, f1, sat.y, shift, lo, hi);
      }
      uint8_t* op = out + box_offset(row, cl * kBits / 8, 64, kOutLw, ox);
      // Both values are inside the output's range: their low bytes (nibbles) are the packed values.
      if constexpr (kBits == 8) {
        *reinterpret_cast<uint16_t*>(op) = static_cast<uint16_t>(__byte_perm(v0, v1, 0x0040));
      } else if constexpr (kRelu) {
        *op = static_cast<uint8_t>(v0 | (v1 << 4));  // unsigned: both below 16
      } else {
        *op = static_cast<uint8_t>((v0 & 0xF) | (v1 << 4));
      }
    }
  }
}

// direct_epilogue on weights in the map order of permute_map_rows: in each 64-map block b of the
// tile, fragment element (j, e) of thread t (j < 8 within the block) is map 64b + 16t + 2j + e.
// Each thread then holds 16 consecutive maps of each of its two rows: their residual comes in and
// their outputs go out in one 16-byte (8-bit) or 8-byte (4-bit) access per row and block, and
// the constants of 4 maps in one access each (bias, thresholds) or half of one (factors).
// kRows: rows that share one load of the constants (2; 1 where the registers are short: the
// 128-map tiles of two blocks per multiprocessor spilled with 2).
template <int BN, int kBits, DRes kRes, bool kRelu, int kRows>
__device__ __forceinline__ void direct_epilogue_perm(const ConvArgs& a, const int32_t (&acc)[BN / 2],
                                                     const uint8_t* res, const uint8_t* par, uint8_t* out, int cw,
                                                     int warp, int g, int t) {
  using L = DirectTiles<BN, kBits, kRes>;
  constexpr int kResBits = L::kResBits, kResLw = L::kResLw, kOutLw = L::kOutLw;
  constexpr int kResWords = kResBits / 2, kOutWords = kBits / 2;  // 32-bit words of 16 maps
  const int32_t lo = static_cast<int32_t>(a.lo), hi = static_cast<int32_t>(a.hi);
  const uint32_t round = a.shift > 0 ? 1u << (a.shift - 1) : 0u;
  const uint32_t res_round = a.res_shift > 0 ? 1u << (a.res_shift - 1) : 0u;
  const int shift = a.shift, res_shift = a.res_shift;
  const int rx = swizzle_of(g, kResLw), ox = swizzle_of(g, kOutLw);
#pragma unroll
  for (int b = 0; b < BN / 64; ++b) {
    const int m0 = 64 * b + 16 * t;  // this thread's first map of the block, within the tile
#pragma unroll
    for (int h0 = 0; h0 < 2; h0 += kRows) {
      uint32_t rw[kRows][4] = {}, ow[kRows][4] = {};
      if constexpr (kRes != DRes::none) {
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
          const int row = warp * 16 + g + 8 * (h0 + i);  // of this consumer's 64
          const uint8_t* rp = res + box_offset(cw * 64 + row, m0 * kResBits / 8, kBM, kResLw, rx);
          if constexpr (kResWords == 4) {
            const uint4 w = *reinterpret_cast<const uint4*>(rp);
            rw[i][0] = w.x; rw[i][1] = w.y; rw[i][2] = w.z; rw[i][3] = w.w;
          } else {
            const uint2 w = *reinterpret_cast<const uint2*>(rp);
            rw[i][0] = w.x; rw[i][1] = w.y;
          }
        }
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int ml = m0 + 4 * q;
        const int4 bias = *reinterpret_cast<const int4*>(par + 4 * ml);
        const uint4 sat = *reinterpret_cast<const uint4*>(par + 4 * BN + 4 * ml);
        const uint2 fw = *reinterpret_cast<const uint2*>(par + 8 * BN + 2 * ml);
        const int32_t bi[4] = {bias.x, bias.y, bias.z, bias.w};
        const uint32_t sa[4] = {sat.x, sat.y, sat.z, sat.w};
        const uint32_t f[4] = {fw.x & 0xFFFF, fw.x >> 16, fw.y & 0xFFFF, fw.y >> 16};
        uint32_t qf[4] = {0, 0, 0, 0};
        if constexpr (kRes != DRes::none) {
          const uint2 qw = *reinterpret_cast<const uint2*>(par + 10 * BN + 2 * ml);
          qf[0] = qw.x & 0xFFFF; qf[1] = qw.x >> 16; qf[2] = qw.y & 0xFFFF; qf[3] = qw.y >> 16;
        }
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
          const int h = h0 + i;
          int32_t v[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const int j = 8 * b + 2 * q + k / 2;  // the fragment's column group of map ml + k
            v[k] = wrap_add(acc[4 * j + 2 * h + (k & 1)], bi[k]);
            if constexpr (kRes != DRes::none) {
              int32_t r;
              if constexpr (kRes == DRes::s8) {
                const int32_t sv = static_cast<int32_t>(rw[i][q] << (24 - 8 * k)) >> 24;
                r = requantize_narrow_in_range(sv, qf[k], res_shift, res_round);
              } else {
                // Unsigned and below 2^8, factor below 2^16: fits 32 bits, is >= 0 and in range.
                const uint32_t u = kResBits == 8 ? (rw[i][q] >> (8 * k)) & 0xFF : (rw[i][q >> 1] >> (4 * (4 * (q & 1) + k))) & 0xF;
                r = static_cast<int32_t>((u * qf[k] + res_round) >> res_shift);
              }
              v[k] = wrap_add(v[k], r);
            }
            if constexpr (kRelu) {
              const uint32_t x = min(static_cast<uint32_t>(max(v[k], 0)), sa[k]);
              v[k] = static_cast<int32_t>((x * f[k] + round) >> shift);
            } else {
              v[k] = requantize_saturating(v[k], f[k], sa[k], shift, lo, hi);
            }
          }
          // Every value is inside the output's range: its low byte (nibble) is the packed value.
          if constexpr (kBits == 8) {
            ow[i][q] = __byte_perm(__byte_perm(v[0], v[1], 0x0040), __byte_perm(v[2], v[3], 0x0040), 0x5410);
          } else {
            const uint32_t n = kRelu ? static_cast<uint32_t>(v[0] | (v[1] << 4) | (v[2] << 8) | (v[3] << 12))
                                     : static_cast<uint32_t>((v[0] & 0xF) | ((v[1] & 0xF) << 4) | ((v[2] & 0xF) << 8) |
                                                             ((v[3] & 0xF) << 12));
            ow[i][q >> 1] |= n << (16 * (q & 1));
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        uint8_t* op = out + box_offset(warp * 16 + g + 8 * (h0 + i), m0 * kBits / 8, 64, kOutLw, ox);
        if constexpr (kOutWords == 4) {
          *reinterpret_cast<uint4*>(op) = make_uint4(ow[i][0], ow[i][1], ow[i][2], ow[i][3]);
        } else {
          *reinterpret_cast<uint2*>(op) = make_uint2(ow[i][0], ow[i][1]);
        }
      }
    }
  }
}

// The direct epilogue's variants, chosen per launch (the same for every tile): `kind` as
// direct_kind returns it (kinds kDirectVariants and up: the variants with outputs of the other
// width than the input's: 8-bit outputs of a 4-bit input, 4-bit outputs of an 8-bit one).
constexpr int kDirectVariants = 5;
template <int BN, int kBits, DRes kRes, bool kRelu, int kPerm>
__device__ __forceinline__ void direct_one(const ConvArgs& a, const int32_t (&acc)[BN / 2], const uint8_t* res,
                                           const uint8_t* par, uint8_t* out, int cw, int warp, int g, int t) {
  if constexpr (kPerm > 0) {
    direct_epilogue_perm<BN, kBits, kRes, kRelu, kPerm>(a, acc, res, par, out, cw, warp, g, t);
  } else {
    direct_epilogue<BN, kBits, kRes, kRelu>(a, acc, res, par, out, cw, warp, g, t);
  }
}
template <int BN, int kBits, int kPerm>
__device__ __forceinline__ void direct_variant(int variant, const ConvArgs& a, const int32_t (&acc)[BN / 2],
                                               const uint8_t* res, const uint8_t* par, uint8_t* out, int cw, int warp,
                                               int g, int t) {
  switch (variant) {
    case 0: direct_one<BN, kBits, DRes::none, true, kPerm>(a, acc, res, par, out, cw, warp, g, t); break;
    case 1: direct_one<BN, kBits, DRes::none, false, kPerm>(a, acc, res, par, out, cw, warp, g, t); break;
    case 2: direct_one<BN, kBits, DRes::same_unsigned, true, kPerm>(a, acc, res, par, out, cw, warp, g, t); break;
    case 3: direct_one<BN, kBits, DRes::s8, true, kPerm>(a, acc, res, par, out, cw, warp, g, t); break;
    default: direct_one<BN, kBits, DRes::other_unsigned, true, kPerm>(a, acc, res, par, out, cw, warp, g, t); break;
  }
}
// kPerm: 0 for the plain map order, else the permuted order with kPerm rows per load of the constants.
template <int BN, bool kPackedInput, int kPerm>
__device__ __forceinline__ void direct_dispatch(int kind, const ConvArgs& a, const int32_t (&acc)[BN / 2],
                                                const uint8_t* res, const uint8_t* par, uint8_t* out, int cw, int warp,
                                                int g, int t) {
  if ((kind >= kDirectVariants) == kPackedInput) {
    direct_variant<BN, 8, kPerm>(kind % kDirectVariants, a, acc, res, par, out, cw, warp, g, t);
  } else {
    direct_variant<BN, 4, kPerm>(kind % kDirectVariants, a, acc, res, par, out, cw, warp, g, t);
  }
}

#if NIBBLE_SM90A
// One fragment pair (maps m, m + 1) of the FP8 epilogue below, before its store.
template <int BN>
__device__ __forceinline__ void fp8_value_pair(const ConvArgs& a, const float (&acc)[BN / 2], int j, int h, int m,
                                               const uint8_t* res, float& v0, float& v1) {
  v0 = __fadd_rn(__fmul_rn(acc[4 * j + 2 * h], a.fscale[m]), a.fbias[m]);
  v1 = __fadd_rn(__fmul_rn(acc[4 * j + 2 * h + 1], a.fscale[m + 1]), a.fbias[m + 1]);
  if (res) {
    if (m < a.m) v0 = __fadd_rn(v0, __fmul_rn(e4m3_value(res[0]), a.fres_scale));
    if (m + 1 < a.m) v1 = __fadd_rn(v1, __fmul_rn(e4m3_value(res[1]), a.fres_scale));
  }
  if (a.relu) {
    v0 = v0 < 0.0f ? 0.0f : v0;
    v1 = v1 < 0.0f ? 0.0f : v1;
  }
}

// The FP8 epilogue of one consumer's 64 rows x BN maps, straight from the accumulator fragments
// (element (j, e): row 16 x warp + g (+ 8 for e >= 2), map 8j + 2t + (e & 1)): y = sum x fscale
// + fbias with the multiply and the add rounded separately (as the reference's f32 steps); with an
// e4m3 residual, + f32(its value x fres_scale) (the reference's DequantizeLinear, then Add);
// ReLU; stored as f32 rows, or as e4m3 rows of e4m3(y / fout_scale) (the reference's
// QuantizeFloat) whose padding maps get zero. fscale and fbias are padded to m_pad maps. The e4m3
// rows pass through `stage`, the consumer's tile of 64 rows x BN maps (rows of kRow bytes, padded
// so that the fragment stores of a warp's 8 rows fall in different banks and rows stay 16-byte
// aligned).
template <int BN>
__device__ __forceinline__ void fp8_epilogue(const ConvArgs& a, const float (&acc)[BN / 2], int64_t row0, int map0,
                                             int warp, int g, int t, uint8_t* stage, int tid, int cw) {
  if (a.y_storage != Storage::e4m3) {  // f32 rows (the last block, read by the average pool)
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int m = map0 + 8 * j + 2 * t;
      if (m >= a.m) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t p = row0 + warp * 16 + g + 8 * h;
        if (p >= a.pixels) continue;
        float v0, v1;
        fp8_value_pair<BN>(a, acc, j, h, m, a.res ? a.res + p * a.res_row + m : nullptr, v0, v1);
        float* dst = reinterpret_cast<float*>(a.y + p * a.y_row) + m;
        dst[0] = v0;
        if (m + 1 < a.m) dst[1] = v1;
      }
    }
    return;
  }
  // e4m3 rows through shared memory: the residual tile in with 16-byte loads, the codes written
  // over it in place, the tile out with 16-byte stores (the row's padding maps get code 0).
  constexpr int kRow = BN + 16;
  const int cols = static_cast<int>(min(static_cast<int64_t>(BN), a.y_row - map0));  // a multiple of 64
  const int chunks = cols / 16;
  sm90::named_barrier(1 + cw, 128);  // this consumer's previous tile has left the staging area
  if (a.res) {
    for (int i = tid; i < 64 * chunks; i += 128) {
      const int r = i / chunks, c = (i % chunks) * 16;
      if (row0 + r < a.pixels) {
        *reinterpret_cast<uint4*>(stage + r * kRow + c) =
            *reinterpret_cast<const uint4*>(a.res + (row0 + r) * a.res_row + map0 + c);
      }
    }
    sm90::named_barrier(1 + cw, 128);
  }
  // Per value: a multiply and an add (and the residual's), the division by the output scale as
  // divide_by (a multiply and two FMAs), a pair of values per conversion. The padding maps (a.m
  // up to the row's end) need no test: their scale, bias, weights and residual codes are 0, so
  // their values are +0 and their codes 0.
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int col = 8 * j + 2 * t, m = map0 + col;
    if (col >= cols) continue;
    const float2 sc = *reinterpret_cast<const float2*>(a.fscale + m);
    const float2 bi = *reinterpret_cast<const float2*>(a.fbias + m);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = warp * 16 + g + 8 * h;
      if (row0 + r >= a.pixels) continue;
      uint16_t* at = reinterpret_cast<uint16_t*>(stage + r * kRow + col);
      float v0 = __fadd_rn(__fmul_rn(acc[4 * j + 2 * h], sc.x), bi.x);
      float v1 = __fadd_rn(__fmul_rn(acc[4 * j + 2 * h + 1], sc.y), bi.y);
      if (a.res) {
        const float2 rv = e4m3_values(*at);
        v0 = __fadd_rn(v0, __fmul_rn(rv.x, a.fres_scale));
        v1 = __fadd_rn(v1, __fmul_rn(rv.y, a.fres_scale));
      }
      if (a.relu) {
        v0 = v0 < 0.0f ? 0.0f : v0;
        v1 = v1 < 0.0f ? 0.0f : v1;
      }
      *at = static_cast<uint16_t>(e4m3_codes(divide_by(v0, a.fout_scale, a.fout_inv), divide_by(v1, a.fout_scale, a.fout_inv)));
    }
  }
  sm90::named_barrier(1 + cw, 128);
  for (int i = tid; i < 64 * chunks; i += 128) {
    const int r = i / chunks, c = (i % chunks) * 16;
    if (row0 + r < a.pixels) {
      *reinterpret_cast<uint4*>(a.y + (row0 + r) * a.y_row + map0 + c) = *reinterpret_cast<const uint4*>(stage + r * kRow + c);
    }
  }
}
#endif  // NIBBLE_SM90A

template <int BN, Storage kA, Epi kE, int kCtas, bool kResW>
__global__ void __launch_bounds__(WgTile<BN, kA, kE, kCtas, kResW>::kThreadsT) __maxnreg__(kCtas == 2 ? 96 : 168)
    conv_wgmma_kernel(const __grid_constant__ CUtensorMap tma_x, const __grid_constant__ CUtensorMap tma_w,
                      const __grid_constant__ CUtensorMap tma_r, const __grid_constant__ CUtensorMap tma_y,
                      const __grid_constant__ ConvArgs a,
                      const __grid_constant__ WgShape shape) {
#if NIBBLE_SM90A
  using namespace sm90;
  using T = WgTile<BN, kA, kE, kCtas, kResW>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + T::kBarOffset);
  uint64_t* empty = full + T::kStages;
  uint64_t* rfull = empty + T::kStages;  // prefetch: residual tile and constants of a tile arrived
  uint64_t* rempty = rfull + 2;          // prefetch: both consumers are done with them
  uint64_t* wfull = rempty + 2;          // resident weights: arrived
  const bool producer = kCtas == 2 ? threadIdx.x >= 256 : threadIdx.x < 128;
  const int tid = threadIdx.x % 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::kStages; ++s) {
      mbar_init(&full[s], 1);   // the producer's arrive (plus the copies' bytes)
      mbar_init(&empty[s], 2);  // one arrive per consumer warpgroup
    }
    for (int b = 0; b < 2; ++b) {
      mbar_init(&rfull[b], 1);
      mbar_init(&rempty[b], 2);
    }
    mbar_init(wfull, 1);
    mbar_fence_init();
  }
  __syncthreads();
  grid_dependency_sync();  // the layer ahead has completed: its output (this one's input) is ready
  const int plane = a.oh * a.ow;

  if (producer) {
    if constexpr (kCtas == 1) setmaxnreg_dec<40>();
    if (tid == 0) {
      tma_prefetch_map(&tma_x);
      tma_prefetch_map(&tma_w);
      if constexpr (kResW) {
        // Every tile of this block has map tile blockIdx.x % n_tiles (the host checks): its
        // weights, all k tiles, once.
        const int nt = static_cast<int>(blockIdx.x) % shape.n_tiles;
        mbar_arrive_expect_tx(wfull, static_cast<uint32_t>(shape.k_iters * T::kBBytes));
        for (int kt = 0; kt < shape.k_iters; ++kt) {
          tma_load_2d(smem + T::kWOffset + kt * T::kBBytes, &tma_w, wfull, kt * 64, nt * BN);
        }
      }
      int stage = 0, local = 0;
      uint32_t phase = 0;
      for (int tile = blockIdx.x; tile < shape.tiles; tile += gridDim.x, ++local) {
        const int mt = tile / shape.n_tiles, nt = tile - mt * shape.n_tiles;
        if constexpr (T::kPre) {
          // The epilogue's inputs first: they are needed last but must not wait behind the mainloop.
          const int b = local & 1;
          mbar_wait(&rempty[b], ((local >> 1) & 1) ^ 1);
          uint8_t* res = smem + T::kResOffset + b * kBM * BN;
          uint8_t* par = smem + T::kParOffset + b * 12 * BN;
          // The constants are padded to whole 128-map blocks: the last map tile may copy fewer.
          const uint32_t maps = static_cast<uint32_t>(min(static_cast<int64_t>(BN), a.m_pad - static_cast<int64_t>(nt) * BN));
          uint32_t bytes = maps * (shape.par_bytes[0] + shape.par_bytes[1] + shape.par_bytes[2] + shape.par_bytes[3]);
          if (shape.res_bytes) bytes += kBM * shape.res_bytes;
          mbar_arrive_expect_tx(&rfull[b], bytes);
          if (shape.res_bytes) {
            for (int c = 0; c < shape.res_bytes; c += shape.res_width) {
              tma_load_2d(res + c * kBM, &tma_r, &rfull[b], nt * shape.res_bytes + c, mt * kBM);
            }
          }
          const void* src[4] = {a.bias + nt * BN, a.sat + nt * BN, a.factor + nt * BN, a.res_factor + nt * BN};
          const int off[4] = {0, 4 * BN, 8 * BN, 10 * BN};
          for (int i = 0; i < 4; ++i) {
            if (shape.par_bytes[i]) bulk_load(par + off[i], src[i], maps * shape.par_bytes[i], &rfull[b]);
          }
        }
        const int64_t p0 = static_cast<int64_t>(mt) * kBM;
        const int64_t img = p0 / plane;
        const int rem = static_cast<int>(p0 - img * plane);
        const int oy = rem / a.ow, ox = rem - (rem / a.ow) * a.ow;
        const int bw = ox * a.sw - a.pw, bh = oy * a.sh - a.ph;
        for (int kt = 0; kt < shape.k_iters; ++kt) {
          const int tap = kt / shape.c_chunks, cc = kt - tap * shape.c_chunks;
          const int r = tap / a.kw, s = tap - r * a.kw;
          mbar_wait(&empty[stage], phase ^ 1);
          uint8_t* sa = smem + stage * T::kStageBytes;
          mbar_arrive_expect_tx(&full[stage], T::kStageBytes);
          tma_load_im2col(sa, &tma_x, &full[stage], cc * T::kARow, bw, bh, static_cast<int>(img),
                          static_cast<uint16_t>(s * a.dw), static_cast<uint16_t>(r * a.dh));
          if constexpr (!kResW) tma_load_2d(sa + T::kABytes, &tma_w, &full[stage], kt * 64, nt * BN);
          if (++stage == T::kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
    }
  } else {
    if constexpr (kCtas == 1) setmaxnreg_inc<232>();
    const int cw = threadIdx.x / 128 - (kCtas == 1 ? 1 : 0);  // this consumer's 64 rows of the tile
    const int warp = tid / 32, lane = tid % 32;
    const int g = lane >> 2, t = lane & 3;
    int stage = 0, local = 0;
    uint32_t phase = 0;
    constexpr bool kFp8 = kA == Storage::e4m3;
    std::conditional_t<kFp8, float, int32_t> acc[BN / 2];
    // ldmatrix lane address of the 4-bit path: rows (lane & 7) + 8 x bit 3 of the warp's 16,
    // 16-byte chunk lane >> 4, under the 32-byte swizzle (chunk ^= bit 2 of the row).
    const int lrow = cw * 64 + warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
    const int lchunk = (lane >> 4) ^ ((lrow >> 2) & 1);
    const int a_lane_off = lrow * 32 + lchunk * 16;
    if constexpr (kResW) mbar_wait(wfull, 0);
    for (int tile = blockIdx.x; tile < shape.tiles; tile += gridDim.x, ++local) {
      const int mt = tile / shape.n_tiles, nt = tile - mt * shape.n_tiles;
      int prev = 0;
      if constexpr (!T::kPacked) {
#pragma unroll 1
        for (int kt = 0; kt < shape.k_iters; ++kt) {
          mbar_wait(&full[stage], phase);
          const uint8_t* sa = smem + stage * T::kStageBytes;
          const uint8_t* sb = kResW ? smem + T::kWOffset + kt * T::kBBytes : sa + T::kABytes;
          wgmma_fence();
          const uint8_t* mine = sa + cw * 64 * T::kARow;
          if constexpr (kFp8) {
            wgmma_fp8<BN>(acc, smem_desc<64>(mine), smem_desc<64>(sb), kt > 0);
            wgmma_fp8<BN>(acc, smem_desc<64>(mine + 32), smem_desc<64>(sb + 32), 1);
          } else {
            wgmma_ss<BN, T::kUnsignedA>(acc, smem_desc<64>(mine), smem_desc<64>(sb), kt > 0);
            wgmma_ss<BN, T::kUnsignedA>(acc, smem_desc<64>(mine + 32), smem_desc<64>(sb + 32), 1);
          }
          wgmma_commit();
          wgmma_wait<1>();  // the previous stage's MMAs are done: it can be refilled
          if (kt > 0 && tid == 0) mbar_arrive(&empty[prev]);
          prev = stage;
          if (++stage == T::kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
      } else {
#pragma unroll 1
        for (int kt = 0; kt < shape.k_iters; ++kt) {
          mbar_wait(&full[stage], phase);
          const uint8_t* sa = smem + stage * T::kStageBytes;
          const uint8_t* sb = kResW ? smem + T::kWOffset + kt * T::kBBytes : sa + T::kABytes;
          uint32_t r[4];
          ldmatrix_x4(smem_u32(sa) + a_lane_off, r);
          constexpr bool kS = !T::kUnsignedA;
          const uint32_t f0[4] = {widen_lo<kS>(r[0]), widen_lo<kS>(r[1]), widen_hi<kS>(r[0]), widen_hi<kS>(r[1])};
          const uint32_t f1[4] = {widen_lo<kS>(r[2]), widen_lo<kS>(r[3]), widen_hi<kS>(r[2]), widen_hi<kS>(r[3])};
          wgmma_fence();
          wgmma_rs<BN, T::kUnsignedA>(acc, f0, smem_desc<64>(sb), kt > 0);
          wgmma_rs<BN, T::kUnsignedA>(acc, f1, smem_desc<64>(sb + 32), 1);
          wgmma_commit();
          // The MMAs read their A fragments from registers until they complete, and the next
          // stage's fragments may take the same registers: wait for them here. (Two register
          // sets in turn with one stage in flight measured slower: ptxas serializes such MMAs.)
          wgmma_wait<0>();
          if (tid == 0) mbar_arrive(&empty[stage]);
          if (++stage == T::kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
      wgmma_wait<0>();
      fence_operands(acc);
      if (!T::kPacked && tid == 0) mbar_arrive(&empty[prev]);
      if constexpr (kFp8) {
        static_assert(64 * (BN + 16) <= T::kStageEpi / 2, "the e4m3 staging tile fits a consumer's share");
        fp8_epilogue<BN>(a, acc, static_cast<int64_t>(mt) * kBM + cw * 64, nt * BN, warp, g, t,
                         smem + T::kEpiOffset + cw * (T::kStageEpi / 2), tid, cw);
      } else {
        // Fragment element (j, e): row 16 x warp + lane / 4 (+ 8 for e >= 2), map 8j + 2 (lane % 4) + (e & 1).
        const int64_t row0 = static_cast<int64_t>(mt) * kBM + cw * 64;
        int32_t* epi = reinterpret_cast<int32_t*>(smem + T::kEpiOffset) + cw * 64 * kEpiRow;
        const uint8_t* res = nullptr;
        const uint8_t* par = nullptr;
        const int b = local & 1;
        if constexpr (T::kPre) {
          mbar_wait(&rfull[b], (local >> 1) & 1);
          res = smem + T::kResOffset + b * kBM * BN;
          par = smem + T::kParOffset + b * 12 * BN;
        }
        if constexpr (is_direct(kE)) {
          uint8_t* out = smem + T::kEpiOffset + cw * 64 * T::kOutRow;
          if (tid == 0) bulk_wait_read();  // the previous tile's stores have read the output tile
          named_barrier(1 + cw, 128);
          constexpr int kPerm = kE != Epi::direct_perm ? 0 : (kCtas == 2 && BN == 128 ? 1 : 2);
          direct_dispatch<BN, T::kPacked, kPerm>(shape.direct_kind, a, acc, res, par, out, cw, warp, g, t);
          fence_proxy_async();  // the tile's writes, before the copy engine reads them
          named_barrier(1 + cw, 128);
          if (tid == 0) {
            mbar_arrive(&rempty[b]);  // this consumer no longer reads the tile's residual or constants
            for (int x = 0; x < shape.out_row; x += shape.out_box) {
              const int col = nt * shape.out_row + x;
              if (col < shape.out_cols) tma_store_2d(&tma_y, out + x * 64, col, static_cast<int>(row0));
            }
            bulk_commit();
          }
        } else {
#pragma unroll
          for (int cb = 0; cb < BN / kEpiCols; ++cb) {
            named_barrier(1 + cw, 128);  // the previous chunk's readers are done
#pragma unroll
            for (int jj = 0; jj < 8; ++jj) {
              const int j = cb * 8 + jj;
              int32_t* dst = epi + (warp * 16 + g) * kEpiRow + jj * 8 + 2 * t;
              *reinterpret_cast<int2*>(dst) = make_int2(acc[4 * j], acc[4 * j + 1]);
              *reinterpret_cast<int2*>(dst + 8 * kEpiRow) = make_int2(acc[4 * j + 2], acc[4 * j + 3]);
            }
            named_barrier(1 + cw, 128);
            if constexpr (BN / kEpiCols > 2) {
              epilogue_chunk_call<kE == Epi::prefetch>(a, shape, epi, row0, nt * BN, cb * kEpiCols, BN, tid, cw, res, par);
            } else {
              epilogue_chunk<kE == Epi::prefetch>(a, shape, epi, row0, nt * BN, cb * kEpiCols, BN, tid, cw, res, par);
            }
          }
          if constexpr (kE == Epi::prefetch) {
            named_barrier(1 + cw, 128);
            if (tid == 0) mbar_arrive(&rempty[b]);  // this consumer no longer reads the tile's residual or constants
          }
        }
      }
    }
    if constexpr (is_direct(kE)) {
      if (tid == 0) bulk_wait();  // the last stores have read the output tile
    }
  }
#endif
}

// ---- host side: tensor maps ----

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
using EncodeIm2col = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                  const cuuint64_t*, const int*, const int*, cuuint32_t, cuuint32_t, const cuuint32_t*,
                                  CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                  CUtensorMapFloatOOBfill);

struct Encoders {
  EncodeTiled tiled = nullptr;
  EncodeIm2col im2col = nullptr;
  int driver = 0;
};

const Encoders& encoders() {
  static Encoders e;
  static std::once_flag once;
  std::call_once(once, [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    NIBBLE_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
    if (q == cudaDriverEntryPointSuccess) e.tiled = reinterpret_cast<EncodeTiled>(fn);
    fn = nullptr;
    NIBBLE_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeIm2col", &fn, 12000, cudaEnableDefault, &q));
    if (q == cudaDriverEntryPointSuccess) e.im2col = reinterpret_cast<EncodeIm2col>(fn);
    NIBBLE_CUDA_CHECK(cudaDriverGetVersion(&e.driver));
  });
  if (!e.tiled || !e.im2col) {
    throw_cuda_error(cudaErrorNotSupported, "the driver has no tensor-map encoder", __FILE__, __LINE__);
  }
  return e;
}

void check_encode(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) throw_cuda_error(cudaErrorInvalidValue, what, __FILE__, __LINE__);
}

// The activation as an NHWC byte tensor read in im2col columns of 128 pixels x `chunk` bytes.
CUtensorMap activation_map(const ConvArgs& a, int chunk) {
  const Encoders& e = encoders();
  const int64_t batch = a.pixels / (int64_t{a.oh} * a.ow);
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(a.x_row), static_cast<cuuint64_t>(a.w),
                              static_cast<cuuint64_t>(a.h), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(a.x_row), static_cast<cuuint64_t>(a.x_row * a.w),
                                 static_cast<cuuint64_t>(a.x_row * a.w * a.h)};
  // Corners (W, H): the base positions of the filter's top-left tap run from -pad to
  // extent - 1 + pad - (k - 1) x dilation.
  const int lower[2] = {-a.pw, -a.ph};
  const int upper[2] = {a.pw_end - (a.kw - 1) * a.dw, a.ph_end - (a.kh - 1) * a.dh};
  const cuuint32_t estrides[4] = {1, static_cast<cuuint32_t>(a.sw), static_cast<cuuint32_t>(a.sh), 1};
  CUtensorMap m;
  check_encode(e.im2col(&m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 4, const_cast<uint8_t*>(a.x), dims, strides, lower, upper,
                        static_cast<cuuint32_t>(chunk), kBM, estrides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        chunk == 64 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_32B,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
               "cuTensorMapEncodeIm2col");
  // Drivers up to 13.1 mis-handle im2col maps of tensors under 128 KiB unless bit 21 of the
  // descriptor's second word is cleared (the same correction CUTLASS applies).
  const int64_t bytes = a.x_row * a.w * a.h * batch;
  if (e.driver <= 13010 && bytes < 131072) reinterpret_cast<uint64_t*>(&m)[1] &= ~(uint64_t{1} << 21);
  return m;
}

// A 2-D byte matrix (`rows` x `cols`, rows `stride` bytes apart) read or written in boxes of
// `box_cols` x `box_rows` with the swizzle of the box width (32, 64 or 128 bytes; none for others).
CUtensorMap matrix_map(const void* base, int64_t cols, int64_t rows, int64_t stride, int box_cols, int box_rows,
                       CUtensorMapL2promotion promo) {
  const Encoders& e = encoders();
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t estrides[2] = {1, 1};
  const CUtensorMapSwizzle sw = box_cols == 128  ? CU_TENSOR_MAP_SWIZZLE_128B
                                : box_cols == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                                : box_cols == 32 ? CU_TENSOR_MAP_SWIZZLE_32B
                                                 : CU_TENSOR_MAP_SWIZZLE_NONE;
  CUtensorMap m;
  check_encode(e.tiled(&m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(base), dims, strides, box, estrides,
                       CU_TENSOR_MAP_INTERLEAVE_NONE, sw, promo, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
               "cuTensorMapEncodeTiled");
  return m;
}

int multiprocessors() {
  static int sms = [] {
    int dev = 0, n = 0;
    NIBBLE_CUDA_CHECK(cudaGetDevice(&dev));
    NIBBLE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return sms;
}

bool narrow(Storage s) { return s == Storage::u8 || s == Storage::s8 || s == Storage::u4 || s == Storage::s4; }
int storage_bits(Storage s) { return s == Storage::u4 || s == Storage::s4 ? 4 : 8; }

// The prefetch epilogue, for narrow folded residuals in rows the copy engine can address
// (multiples of 16 bytes). Without a residual the staged epilogue measured as fast or faster
// (its smaller shared memory leaves room for more pipeline stages).
bool prefetch_epilogue(const ConvArgs& a) {
  return a.res && narrow(a.res_storage) && a.res_factor && a.res_row % 16 == 0;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The direct epilogue's variant for `a`, whose input is `in_bits` wide, or -1 where it does not
// apply: requantized 4- or 8-bit outputs with thresholds (kinds + 4 where the output's width is
// not the input's), unsigned after ReLU or signed without it, in rows the copy engine can address;
// no residual, or one with a factor that is unsigned at the output's width or s8 (ReLU).
int direct_kind(const ConvArgs& a, int in_bits) {
  if (!a.factor || !a.sat || a.shift < 0 || a.shift > 31 || a.res_shift < 0 || a.res_shift > 31) return -1;
  if (a.relu && !a.sat_top) return -1;  // the clamp after the requantization stays
  if (!narrow(a.y_storage)) return -1;
  const int bits = storage_bits(a.y_storage);
  const Storage y_unsigned = bits == 8 ? Storage::u8 : Storage::u4, y_signed = bits == 8 ? Storage::s8 : Storage::s4;
  const Storage other_unsigned = bits == 8 ? Storage::u4 : Storage::u8;
  if (a.y_storage != (a.relu ? y_unsigned : y_signed)) return -1;
  if (a.y_row % 16 != 0 || !aligned16(a.y) || (int64_t{a.m} * bits) % 8 != 0 || a.pixels >= (int64_t{1} << 31)) {
    return -1;
  }
  const int wide = bits != in_bits ? kDirectVariants : 0;
  if (!a.res) return (a.relu ? 0 : 1) + wide;
  if (!a.relu || !a.res_factor || !a.res_in_range || a.res_row % 16 != 0 || !aligned16(a.res)) return -1;
  if (a.res_storage == y_unsigned) return 2 + wide;
  if (a.res_storage == Storage::s8) return 3 + wide;
  if (a.res_storage == other_unsigned) return 4 + wide;
  return -1;
}

template <int BN, Storage kA, Epi kE, int kCtas = 1, bool kResW = false>
void launch_wg(const ConvArgs& a, cudaStream_t stream) {
  using T = WgTile<BN, kA, kE, kCtas, kResW>;
  static std::once_flag once;
  std::call_once(once, [] {
    NIBBLE_CUDA_CHECK(cudaFuncSetAttribute(conv_wgmma_kernel<BN, kA, kE, kCtas, kResW>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmem));
    // All of the unified L1/shared storage as shared memory, so that kCtas blocks fit.
    NIBBLE_CUDA_CHECK(cudaFuncSetAttribute(conv_wgmma_kernel<BN, kA, kE, kCtas, kResW>,
                                           cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  });
  WgShape s{};
  s.c_chunks = static_cast<int>(a.x_row / T::kARow);
  s.k_iters = a.kh * a.kw * s.c_chunks;
  s.n_tiles = (a.m + BN - 1) / BN;
  const int64_t m_tiles = (a.pixels + kBM - 1) / kBM;
  s.tiles = static_cast<int>(m_tiles * s.n_tiles);
  const CUtensorMap tx = activation_map(a, T::kARow);
  const int8_t* weights = kE == Epi::direct_perm ? a.perm_weights : a.wide_weights;
  const CUtensorMap tw = matrix_map(weights, a.wide_k, a.m_pad, a.wide_k, 64, BN, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
  CUtensorMap tr = tw, ty = tw;  // placeholders where unused
  if constexpr (is_direct(kE)) {
    s.direct_kind = direct_kind(a, storage_bits(kA));
    const int bits = storage_bits(a.y_storage);
    s.out_cols = static_cast<int>(int64_t{a.m} * bits / 8);
    s.out_row = BN * bits / 8;
    s.out_box = std::min(128, s.out_row);
    ty = matrix_map(a.y, s.out_cols, a.pixels, a.y_row, s.out_box, 64, CU_TENSOR_MAP_L2_PROMOTION_NONE);
  }
  if constexpr (T::kPre) {
    if (a.res) {
      s.res_bytes = BN * storage_bits(a.res_storage) / 8;
      s.res_width = std::min(128, s.res_bytes);
      s.res_lw = s.res_width == 128 ? 7 : (s.res_width == 64 ? 6 : 5);
      tr = matrix_map(a.res, a.res_row, a.pixels, a.res_row, s.res_width, kBM, CU_TENSOR_MAP_L2_PROMOTION_L2_128B);
    }
    // Bytes per map of bias, sat, factor and residual factor (0: not copied).
    s.par_bytes[0] = 4;
    s.par_bytes[1] = a.sat ? 4 : 0;
    s.par_bytes[2] = a.factor ? 2 : 0;
    s.par_bytes[3] = a.res ? 2 : 0;
  }
  const int grid = std::min(s.tiles, kCtas * multiprocessors());
  if (kResW && (int64_t{s.k_iters} * T::kBBytes > T::kWBytes || (grid != s.tiles && grid % s.n_tiles != 0))) {
    throw_cuda_error(cudaErrorInvalidValue, "launch_wg: the weights cannot stay resident", __FILE__, __LINE__);
  }
  // The direct epilogue of a ReLU layer clamps to the thresholds that reach hi exactly.
  ConvArgs k = a;
  if (is_direct(kE) && a.relu) k.sat = a.sat_top;
  launch_kernel(conv_wgmma_kernel<BN, kA, kE, kCtas, kResW>, dim3(grid), dim3(T::kThreadsT), T::kSmem, stream, tx, tw,
                tr, ty, k, s);
}

// NIBBLE_WGMMA_EPILOGUE=staged forces the staged epilogue everywhere, =prefetch takes the
// prefetch epilogue where the direct one would apply (for measurements).
int epilogue_forced() {
  static const int forced = [] {
    const char* e = std::getenv("NIBBLE_WGMMA_EPILOGUE");
    if (!e) return 0;
    return std::string(e) == "staged" ? 1 : (std::string(e) == "prefetch" ? 2 : 0);
  }();
  return forced;
}

template <int BN, Storage kA>
int launch_epi(const ConvArgs& a, cudaStream_t stream) {
  const int forced = epilogue_forced();
  // The direct epilogue is compiled for unsigned inputs (every layer after the stem) and s8 ones
  // (the stem).
  constexpr bool kDirect = kA == Storage::u8 || kA == Storage::u4 || kA == Storage::s8;
  if constexpr (kDirect) {
    if (forced == 0 && direct_kind(a, storage_bits(kA)) >= 0) {
      if (a.perm_weights) {
        launch_wg<BN, kA, Epi::direct_perm>(a, stream);
        return 3;
      }
      launch_wg<BN, kA, Epi::direct>(a, stream);
      return 2;
    }
  }
  if (forced != 1 && (prefetch_epilogue(a) || (forced == 2 && kDirect && direct_kind(a, storage_bits(kA)) >= 0))) {
    launch_wg<BN, kA, Epi::prefetch>(a, stream);
    return 1;
  }
  launch_wg<BN, kA, Epi::staged>(a, stream);
  return 0;
}

// Variant names by map tile (64, 128, 256) and epilogue (staged, prefetch, direct, direct in
// the permuted map order).
using Names = const char* const[3][4];
#define NIBBLE_WGMMA_NAMES(p)                                                                        \
  {{p "_n64", p "_n64_pre", p "_n64_direct", p "_n64_direct_p"},                                    \
   {p "_n128", p "_n128_pre", p "_n128_direct", p "_n128_direct_p"},                                \
   {p "_n256", p "_n256_pre", p "_n256_direct", p "_n256_direct_p"}}

// NIBBLE_WGMMA_CTAS=1 keeps one block per multiprocessor everywhere (for measurements).
bool two_ctas_allowed() {
  static const bool allowed = [] {
    const char* e = std::getenv("NIBBLE_WGMMA_CTAS");
    return !(e && std::string(e) == "1");
  }();
  return allowed;
}

// Two blocks per multiprocessor, with the direct epilogue, where they measured faster on an H200
// (docs/performance.md): expanding 1x1 convolutions of at most 128 input channels to 256 maps or
// more, as 128-map tiles (the short reduction leaves the epilogue as the work, and twice the
// warps hide its latencies: layer1_0_conv3 0.274 against 0.313 ms), and convolutions of at most
// 64 maps. With 256 input channels or more one block of 256-map tiles is faster. Returns the map
// tile, or 0 for one block. NIBBLE_WGMMA_EXPAND_BN=64 takes 64-map tiles for those expanding
// layers instead (for measurements).
int two_ctas(const ConvArgs& a, int in_bits) {
  static const int expand_bn = [] {
    const char* e = std::getenv("NIBBLE_WGMMA_EXPAND_BN");
    return e && std::string(e) == "64" ? 64 : 128;
  }();
  // FP8 layers have one epilogue (fp8_epilogue), which two blocks run as well as one.
  const bool fp8 = a.x_storage == Storage::e4m3;
  if (!two_ctas_allowed() || epilogue_forced() != 0 || (!fp8 && direct_kind(a, in_bits) < 0)) return 0;
  const int64_t channels = in_bits == 4 ? 2 * a.x_row : a.x_row;
  if (a.kh * a.kw == 1 && a.m >= 256 && a.m > channels && channels <= 128) return expand_bn;
  return a.m <= 64 ? 64 : 0;
}

// Whether a two-block launch of BN-map tiles keeps its weights resident (WgTile::kResW): they
// fit, and every block's tiles share one map tile. NIBBLE_WGMMA_RESIDENT=0 never does (for
// measurements).
template <int BN, Storage kA>
bool resident_weights(const ConvArgs& a) {
  static const bool allowed = [] {
    const char* e = std::getenv("NIBBLE_WGMMA_RESIDENT");
    return !(e && std::string(e) == "0");
  }();
  using T = WgTile<BN, kA, Epi::direct, 2, true>;
  const int64_t k_iters = int64_t{a.kh} * a.kw * (a.x_row / T::kARow);
  const int64_t n_tiles = (a.m + BN - 1) / BN, tiles = (a.pixels + kBM - 1) / kBM * n_tiles;
  const int64_t grid = std::min<int64_t>(tiles, 2 * multiprocessors());
  return allowed && k_iters * T::kBBytes <= T::kWBytes && (grid == tiles || grid % n_tiles == 0);
}

// Two blocks per multiprocessor of BN-map tiles, with resident weights where they apply; returns
// the variant's name (`names`: without, with).
template <int BN, Storage kA, Epi kE = Epi::direct>
const char* launch_two(const ConvArgs& a, cudaStream_t stream, const char* const* names) {
  if (resident_weights<BN, kA>(a)) {
    launch_wg<BN, kA, kE, 2, true>(a, stream);
    return names[1];
  }
  launch_wg<BN, kA, kE, 2>(a, stream);
  return names[0];
}

template <Storage kA>
const char* launch_bn(const ConvArgs& a, cudaStream_t stream, const Names& names, const char* const (&two)[8]) {
  if constexpr (kA == Storage::u8 || kA == Storage::u4 || kA == Storage::s8) {
    const bool perm = a.perm_weights != nullptr;
    switch (two_ctas(a, storage_bits(kA))) {
      case 64: return perm ? launch_two<64, kA, Epi::direct_perm>(a, stream, two + 4) : launch_two<64, kA>(a, stream, two);
      case 128:
        return perm ? launch_two<128, kA, Epi::direct_perm>(a, stream, two + 6) : launch_two<128, kA>(a, stream, two + 2);
      default: break;
    }
  }
  if (a.m <= 64) return names[0][launch_epi<64, kA>(a, stream)];
  if (a.m <= 128) return names[1][launch_epi<128, kA>(a, stream)];
  return names[2][launch_epi<256, kA>(a, stream)];
}

}  // namespace

bool wgmma_conv_fits(const ConvArgs& a) {
  if (a.load != ConvLoad::vec || !a.wide_weights) return false;
  const bool packed = a.x_storage == Storage::u4 || a.x_storage == Storage::s4;
  const bool fp8 = a.x_storage == Storage::e4m3;
  if (!packed && !fp8 && a.x_storage != Storage::u8 && a.x_storage != Storage::s8) return false;
  if (a.x_row % (packed ? 32 : 64) != 0) return false;
  if (fp8 && ((a.y_storage != Storage::f32 && a.y_storage != Storage::e4m3) || !a.fscale || !a.fbias)) return false;
  if (fp8 && a.res && (a.res_storage != Storage::e4m3 || a.res_factor)) return false;
  if (fp8 && a.y_storage == Storage::e4m3 && !(a.fout_scale > 0.0f)) return false;
  // im2col limits of a 4-D tensor map: corners within [-128, 127], traversal strides 1..8,
  // tap offsets below 256.
  const int corners[4] = {-a.pw, -a.ph, a.pw_end - (a.kw - 1) * a.dw, a.ph_end - (a.kh - 1) * a.dh};
  for (int c : corners) {
    if (c < -128 || c > 127) return false;
  }
  if (a.sh < 1 || a.sh > 8 || a.sw < 1 || a.sw > 8) return false;
  if ((a.kh - 1) * a.dh > 255 || (a.kw - 1) * a.dw > 255) return false;
  const int64_t tiles = (a.pixels + kBM - 1) / kBM * ((a.m + 63) / 64);
  return tiles < (int64_t{1} << 31);
}

// Measured on an H200 (docs/performance.md): the wgmma kernels are faster on k x k convolutions,
// on 1x1 convolutions that reduce or keep the channel count, and, with the direct epilogue, on
// the expanding 1x1 ones too (each bottleneck's conv3 and the downsampling shortcuts: 0.33
// against 0.49 ms for layer1_0_conv3 at batch 256). Without it the expanding 1x1 layers stay on
// the mma kernels: the general epilogue of 4 x as many outputs per multiply, on the two consumer
// warpgroups, measured slower there (0.86 ms).
// Small problems (a batch of one, say) keep the mma kernels too: their smaller tiles give more
// blocks, where the wgmma kernels' 128-pixel tiles would leave most multiprocessors idle
// (SingleStream on the seed model, 2026-12-03: p90 0.835 ms with mma, 0.871 ms with wgmma).
bool wgmma_conv_preferred(const ConvArgs& a) {
  if (a.x_storage == Storage::e4m3) return true;  // the only family with FP8 kernels
  const int64_t bn = a.m <= 64 ? 64 : (a.m <= 128 ? 128 : 256);
  const int64_t tiles = (a.pixels + kBM - 1) / kBM * ((a.m + bn - 1) / bn);
  if (tiles < multiprocessors()) return false;
  if (a.kh * a.kw > 1) return true;
  const bool packed = a.x_storage == Storage::u4 || a.x_storage == Storage::s4;
  const bool unsigned_x = a.x_storage == Storage::u4 || a.x_storage == Storage::u8;
  if (unsigned_x && direct_kind(a, packed ? 4 : 8) >= 0) return true;
  return a.m <= (packed ? 2 * a.x_row : a.x_row);
}

const char* launch_conv_wgmma(const ConvArgs& a, cudaStream_t stream) {
  static Names u8 = NIBBLE_WGMMA_NAMES("wgmma_u8s8"), s8 = NIBBLE_WGMMA_NAMES("wgmma_s8s8");
  static Names u4 = NIBBLE_WGMMA_NAMES("wgmma_u4s4"), s4 = NIBBLE_WGMMA_NAMES("wgmma_s4s4");
  // Two blocks per multiprocessor: 64-map tiles, the same with resident weights, 128-map tiles, the
  // same; then the four in the permuted map order.
#define NIBBLE_WGMMA_TWO(p)                                                                          \
  {p "_n64_direct_x2", p "_n64_direct_x2_rw", p "_n128_direct_x2", p "_n128_direct_x2_rw",           \
   p "_n64_direct_x2_p", p "_n64_direct_x2_rw_p", p "_n128_direct_x2_p", p "_n128_direct_x2_rw_p"}
  static const char* const u8_two[8] = NIBBLE_WGMMA_TWO("wgmma_u8s8");
  static const char* const s8_two[8] = NIBBLE_WGMMA_TWO("wgmma_s8s8");
  static const char* const u4_two[8] = NIBBLE_WGMMA_TWO("wgmma_u4s4");
  static const char* const none[8] = {};
  static const char* const e4m3_two[4] = {"wgmma_e4m3_n64_x2", "wgmma_e4m3_n64_x2_rw", "wgmma_e4m3_n128_x2",
                                          "wgmma_e4m3_n128_x2_rw"};
#undef NIBBLE_WGMMA_TWO
  switch (a.x_storage) {
    case Storage::u8: return launch_bn<Storage::u8>(a, stream, u8, u8_two);
    case Storage::s8: return launch_bn<Storage::s8>(a, stream, s8, s8_two);
    case Storage::u4: return launch_bn<Storage::u4>(a, stream, u4, u4_two);
    case Storage::s4: return launch_bn<Storage::s4>(a, stream, s4, none);
    case Storage::e4m3:
      // FP8 (QGMMA): e4m3 activations and weight codes, f32 accumulators, the f32 epilogue; two
      // blocks per multiprocessor where the integer layers take them.
      switch (two_ctas(a, 8)) {
        case 64: return launch_two<64, Storage::e4m3, Epi::staged>(a, stream, e4m3_two);
        case 128: return launch_two<128, Storage::e4m3, Epi::staged>(a, stream, e4m3_two + 2);
        default: break;
      }
      if (a.m <= 64) {
        launch_wg<64, Storage::e4m3, Epi::staged>(a, stream);
        return "wgmma_e4m3_n64";
      }
      if (a.m <= 128) {
        launch_wg<128, Storage::e4m3, Epi::staged>(a, stream);
        return "wgmma_e4m3_n128";
      }
      launch_wg<256, Storage::e4m3, Epi::staged>(a, stream);
      return "wgmma_e4m3_n256";
    default: break;
  }
  throw_cuda_error(cudaErrorInvalidValue, "launch_conv_wgmma: unsupported input storage", __FILE__, __LINE__);
}

}  // namespace nibble::cuda
