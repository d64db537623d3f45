// The fused integer convolution as an implicit GEMM on the tensor cores (mma.sync IMMA,
// m16n8k32, s32 accumulators), NHWC.
//
// GEMM view: rows are output pixels (batch x OH x OW), columns are output maps, and the
// reduction runs over (kh, kw, input row bytes). A block computes BM pixels x BN maps; each warp
// 64 x 32. K advances in tiles of 64 channels (64 bytes at 8 bits, 32 bytes at 4 bits), staged
// through shared memory by cp.async in a 4-deep pipeline. The epilogue stages the accumulators
// through shared memory so that every thread then handles 8 consecutive maps of one pixel:
// residuals are read and outputs written as whole words, coalesced across the warp.
// Small problems (a batch of one) split K over up to 4 blocks per output tile (grid z), whose
// partial sums the last block to finish adds before the epilogue (reduce_split_k).
//
// 4-bit operands: Hopper has no 4-bit MMA, so packed activations and weights are loaded as they
// are stored (half the bytes) and widened to s8 in registers right before the MMA. A thread's
// fragment register of 4 packed bytes holds 8 channels; its low nibbles go to the MMA's k slots
// [4t, 4t+4) and its high nibbles to [16+4t, 16+4t+4). Activations and weights are split the same
// way, so both sides see one permutation of k and the dot product is unchanged: exact.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "backends/cuda/common.cuh"
#include "backends/cuda/epilogue.cuh"
#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

namespace {

constexpr int kStages = 4;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

template <bool kUnsignedA>
__device__ __forceinline__ void mma_k32(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kUnsignedA) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Four packed nibbles per byte lane -> the low nibbles and the high nibbles as bytes.
__device__ __forceinline__ uint32_t lo_u4(uint32_t v) { return v & 0x0F0F0F0Fu; }
__device__ __forceinline__ uint32_t hi_u4(uint32_t v) { return (v >> 4) & 0x0F0F0F0Fu; }
__device__ __forceinline__ uint32_t sext4(uint32_t b) { return __vsub4(b ^ 0x08080808u, 0x08080808u); }

template <Storage kA>
__device__ __forceinline__ uint32_t widen_lo(uint32_t v) {
  return kA == Storage::s4 ? sext4(lo_u4(v)) : lo_u4(v);
}
template <Storage kA>
__device__ __forceinline__ uint32_t widen_hi(uint32_t v) {
  return kA == Storage::s4 ? sext4(hi_u4(v)) : hi_u4(v);
}

template <int BM, int BN, Storage kA, ConvLoad kLoad>
struct Tile {
  static constexpr bool kPacked = kA == Storage::u4 || kA == Storage::s4;
  static constexpr int kThreads = (BM / 64) * (BN / 32) * 32;
  static constexpr int kBK = kPacked ? 32 : 64;  // bytes of one K tile
  static constexpr int kRow = kBK + 16;          // shared-memory row, padded against bank conflicts
  static constexpr int kStageBytes = (BM + BN) * kRow;
  // Register caps: 128 per thread (512 threads per SM, two 128 x 128 blocks) for the main
  // kernels; about 170 for the stem's taps mode (its small tiles, three blocks per SM).
  static constexpr int kMinBlocks = kLoad == ConvLoad::taps ? (kThreads <= 128 ? 384 / kThreads : 1) : 512 / kThreads;
  static constexpr int kCRow = BN + 8;  // s32 accumulator row in the epilogue (conflict-free stores)
  static constexpr int kSmem = kStages * kStageBytes > BM * kCRow * 4 ? kStages * kStageBytes : BM * kCRow * 4;
  static constexpr bool kVec = kLoad == ConvLoad::vec;
  static constexpr int kChunk = kVec ? 16 : 4;  // bytes per A copy
  static constexpr int kAPerRow = kBK / kChunk;
  static constexpr int kACopies = BM * kAPerRow / kThreads;
  // taps mode: each thread copies kACopies consecutive words of the tile row of pixel tid % BM.
  static_assert(kThreads % BM == 0, "threads must cover whole A rows");
  static constexpr int kBPerRow = kBK / 16;
  static constexpr int kBCopies = BN * kBPerRow / kThreads;
  static_assert(BM * kAPerRow % kThreads == 0 && BN * kBPerRow % kThreads == 0, "copies must divide evenly");
};

// Split K: every block of the output tile stores its partial sums (the tile staged in shared
// memory, rows `row` words apart) in the workspace; the last of them to finish adds the others'
// into its staged tile and goes on to the epilogue (returns true), the rest are done (false).
// s32 sums wrap modulo 2^32 in any order, as the tensor cores' accumulation does: the result is
// the unsplit one exactly. The last block also resets the tile's arrival counter for the next launch.
template <int BM, int BN, int kRow, int kThreads>
__device__ __forceinline__ bool reduce_split_k(const ConvArgs& a, int32_t* ctile, int split, int zs, int tid) {
  __shared__ int last;
  const int64_t tile = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  constexpr int kVecs = BM * BN / 4;
  int4* mine = reinterpret_cast<int4*>(a.split_partials) + (tile * split + zs) * kVecs;
  for (int i = tid; i < kVecs; i += kThreads) {
    const int row = i / (BN / 4), c4 = i % (BN / 4);
    __stcg(mine + i, *reinterpret_cast<const int4*>(ctile + row * kRow + c4 * 4));
  }
  __threadfence();  // this block's partial sums, before its arrival is counted
  __syncthreads();
  if (tid == 0) last = atomicAdd(a.split_arrivals + tile, 1u) == static_cast<unsigned>(split - 1);
  __syncthreads();
  if (!last) return false;
  __threadfence();  // every other block's partial sums are visible now
  const int4* all = reinterpret_cast<const int4*>(a.split_partials) + tile * split * kVecs;
  for (int i = tid; i < kVecs; i += kThreads) {
    const int row = i / (BN / 4), c4 = i % (BN / 4);
    int4* dst = reinterpret_cast<int4*>(ctile + row * kRow + c4 * 4);
    uint4 s = *reinterpret_cast<const uint4*>(dst);
    for (int z = 0; z < split; ++z) {
      if (z == zs) continue;
      const int4 p = __ldcg(all + z * kVecs + i);
      s.x += static_cast<uint32_t>(p.x);
      s.y += static_cast<uint32_t>(p.y);
      s.z += static_cast<uint32_t>(p.z);
      s.w += static_cast<uint32_t>(p.w);
    }
    *reinterpret_cast<uint4*>(dst) = s;
  }
  if (tid == 0) a.split_arrivals[tile] = 0;
  __syncthreads();
  return true;
}

template <int BM, int BN, Storage kA, ConvLoad kLoad>
__global__ void __launch_bounds__(Tile<BM, BN, kA, kLoad>::kThreads, Tile<BM, BN, kA, kLoad>::kMinBlocks)
    conv_igemm_kernel(const ConvArgs a) {
  using T = Tile<BM, BN, kA, kLoad>;
  extern __shared__ __align__(128) uint8_t smem[];
  grid_dependency_sync();
  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int wm = warp % (BM / 64), wn = warp / (BM / 64);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN;
  const int plane = a.oh * a.ow;
  // Split K (gridDim.z > 1): this block reduces K tiles [kt0, kt0 + k_tiles) of its output tile.
  const int all_k_tiles = static_cast<int>(a.k_pad / T::kBK);
  const int split = static_cast<int>(gridDim.z), zs = static_cast<int>(blockIdx.z);
  const int kt0 = static_cast<int>(int64_t{all_k_tiles} * zs / split);
  const int k_tiles = static_cast<int>(int64_t{all_k_tiles} * (zs + 1) / split) - kt0;

  // The pixel of A row `row`: its image's base pixel and its window's top-left input coordinate.
  auto locate = [&](int row, int64_t& base, int& ih, int& iw) {
    const int64_t p = m0 + row;
    if (p < a.pixels) {
      const int64_t img = p / plane;
      const int rem = static_cast<int>(p - img * plane);
      const int oy = rem / a.ow, ox = rem - oy * a.ow;
      base = img * a.h * a.w;
      ih = oy * a.sh - a.ph;
      iw = ox * a.sw - a.pw;
    } else {
      base = 0;
      ih = -(1 << 28);  // never inside the image
      iw = 0;
    }
  };
  constexpr int kRows = kLoad == ConvLoad::vec ? T::kACopies : (kLoad == ConvLoad::taps ? 1 : 0);
  int64_t a_base[kRows > 0 ? kRows : 1];
  int a_ih[kRows > 0 ? kRows : 1], a_iw[kRows > 0 ? kRows : 1];
  if constexpr (kLoad == ConvLoad::vec) {
#pragma unroll
    for (int i = 0; i < T::kACopies; ++i) locate((tid + i * T::kThreads) / T::kAPerRow, a_base[i], a_ih[i], a_iw[i]);
  } else if constexpr (kLoad == ConvLoad::taps) {
    locate(tid % BM, a_base[0], a_ih[0], a_iw[0]);
  }

  auto load_tile = [&](int kt, int stage) {
    uint8_t* sa = smem + stage * T::kStageBytes;
    uint8_t* sb = sa + BM * T::kRow;
    const int64_t kb0 = static_cast<int64_t>(kt) * T::kBK;
    if constexpr (kLoad == ConvLoad::vec) {
      const int64_t tap = kb0 / a.x_row;
      const int64_t coff = kb0 - tap * a.x_row;
      const int r = static_cast<int>(tap / a.kw), s = static_cast<int>(tap - static_cast<int64_t>(r) * a.kw);
#pragma unroll
      for (int i = 0; i < T::kACopies; ++i) {
        const int id = tid + i * T::kThreads;
        const int row = id / T::kAPerRow, col = id % T::kAPerRow;
        const int ih = a_ih[i] + r * a.dh, iw = a_iw[i] + s * a.dw;
        const bool ok = ih >= 0 && ih < a.h && iw >= 0 && iw < a.w;
        const uint8_t* src = ok ? a.x + (a_base[i] + static_cast<int64_t>(ih) * a.w + iw) * a.x_row + coff + col * 16 : a.x;
        cp_async16(smem_addr(sa + row * T::kRow + col * 16), src, ok);
      }
    } else if constexpr (kLoad == ConvLoad::taps) {
      // One pixel row per thread; word col is tap (col % kTapRow) of kernel row kb0 / 32 + col / kTapRow.
      const int row = tid % BM;
#pragma unroll
      for (int i = 0; i < T::kACopies; ++i) {
        const int col = (tid / BM) * T::kACopies + i;
        const int r = static_cast<int>(kb0 / (kTapRow * 4)) + col / kTapRow, s = col % kTapRow;
        const int ih = a_ih[0] + r * a.dh, iw = a_iw[0] + s * a.dw;
        const bool ok = r < a.kh && ih >= 0 && ih < a.h && iw >= 0 && iw < a.w;
        const uint8_t* src = ok ? a.x + (a_base[0] + static_cast<int64_t>(ih) * a.w + iw) * 4 : a.x;
        cp_async4(smem_addr(sa + row * T::kRow + col * 4), src, ok);
      }
    } else {
#pragma unroll 4
      for (int i = 0; i < T::kACopies; ++i) {
        const int id = tid + i * T::kThreads;
        const int row = id / T::kAPerRow, col = id % T::kAPerRow;
        const int64_t kb = kb0 + col * 4;
        int64_t base;
        int ih, iw;
        locate(row, base, ih, iw);
        bool ok = kb < a.k_bytes;
        const uint8_t* src = a.x;
        if (ok) {
          const int64_t tap = kb / a.x_row;
          const int64_t coff = kb - tap * a.x_row;
          const int r = static_cast<int>(tap / a.kw), s = static_cast<int>(tap - static_cast<int64_t>(r) * a.kw);
          ih += r * a.dh;
          iw += s * a.dw;
          ok = ih >= 0 && ih < a.h && iw >= 0 && iw < a.w;
          if (ok) src = a.x + (base + static_cast<int64_t>(ih) * a.w + iw) * a.x_row + coff;
        }
        cp_async4(smem_addr(sa + row * T::kRow + col * 4), src, ok);
      }
    }
#pragma unroll
    for (int i = 0; i < T::kBCopies; ++i) {
      const int id = tid + i * T::kThreads;
      const int row = id / T::kBPerRow, col = id % T::kBPerRow;
      const int8_t* src = a.weights + static_cast<int64_t>(n0 + row) * a.k_pad + kb0 + col * 16;
      cp_async16(smem_addr(sb + row * T::kRow + col * 16), src, true);
    }
  };

  int32_t acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;
    }
  }

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_tile(kt0 + s, s);
    cp_async_commit();
  }

  // ldmatrix lane addresses: A x4 = (rows 0-7, bytes 0-15), (rows 8-15, 0-15), (0-7, 16-31),
  // (8-15, 16-31); B x4 = (maps 0-7, bytes 0-15), (0-7, 16-31), (8-15, 0-15), (8-15, 16-31).
  const int a_row = wm * 64 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int a_col = (lane >> 4) * 16;
  const int b_row = wn * 32 + (lane & 7) + (lane >> 4) * 8;
  const int b_col = ((lane >> 3) & 1) * 16;
  constexpr bool kUnsignedA = kA == Storage::u8;

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = kt + kStages - 1;
    if (next < k_tiles) load_tile(kt0 + next, next % kStages);
    cp_async_commit();

    const uint8_t* sa = smem + (kt % kStages) * T::kStageBytes;
    const uint8_t* sb = sa + BM * T::kRow;
    if constexpr (!T::kPacked) {
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        uint32_t af[4][4], bf[2][4];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
          ldmatrix_x4(smem_addr(sa + (a_row + mi * 16) * T::kRow + ks * 32 + a_col), af[mi][0], af[mi][1], af[mi][2],
                      af[mi][3]);
        }
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) {
          ldmatrix_x4(smem_addr(sb + (b_row + nj * 16) * T::kRow + ks * 32 + b_col), bf[nj][0], bf[nj][1], bf[nj][2],
                      bf[nj][3]);
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) {
            mma_k32<kUnsignedA>(acc[mi][ni], af[mi], bf[ni >> 1][(ni & 1) * 2], bf[ni >> 1][(ni & 1) * 2 + 1]);
          }
        }
      }
    } else {
      uint32_t ap[4][4], bp[2][4];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        ldmatrix_x4(smem_addr(sa + (a_row + mi * 16) * T::kRow + a_col), ap[mi][0], ap[mi][1], ap[mi][2], ap[mi][3]);
      }
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        ldmatrix_x4(smem_addr(sb + (b_row + nj * 16) * T::kRow + b_col), bp[nj][0], bp[nj][1], bp[nj][2], bp[nj][3]);
      }
      // Two k32 steps: packed bytes 0-15 (registers 0, 1 of A; 0 of each B pair) and 16-31.
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        uint32_t af[4][4];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
          const uint32_t r0 = ap[mi][ks * 2], r1 = ap[mi][ks * 2 + 1];
          af[mi][0] = widen_lo<kA>(r0);
          af[mi][1] = widen_lo<kA>(r1);
          af[mi][2] = widen_hi<kA>(r0);
          af[mi][3] = widen_hi<kA>(r1);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const uint32_t r = bp[ni >> 1][(ni & 1) * 2 + ks];
          const uint32_t b0 = sext4(lo_u4(r)), b1 = sext4(hi_u4(r));
#pragma unroll
          for (int mi = 0; mi < 4; ++mi) mma_k32<false>(acc[mi][ni], af[mi], b0, b1);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the pipeline's shared memory

  // Accumulators to shared memory: element e of tile (mi, ni) is row g (+8 for e >= 2), map 2t + (e & 1).
  int32_t* ctile = reinterpret_cast<int32_t*>(smem);
  {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = wm * 64 + mi * 16 + g + half * 8, col = wn * 32 + ni * 8 + 2 * t;
          *reinterpret_cast<int2*>(ctile + row * T::kCRow + col) = make_int2(acc[mi][ni][half * 2], acc[mi][ni][half * 2 + 1]);
        }
      }
    }
  }
  __syncthreads();
  if (split > 1 && !reduce_split_k<BM, BN, T::kCRow, T::kThreads>(a, ctile, split, zs, tid)) return;

  // Epilogue, 8 maps of one pixel per unit: bias, residual, ReLU, requantization, store. The
  // threads of a block cover whole rows, so a thread keeps one group of 8 maps for all its units:
  // its bias and factors are read once, and all its residual words are requested before any is used.
  constexpr int kGroups = BN / 8;
  constexpr int kUnits = BM * kGroups / T::kThreads;
  static_assert(T::kThreads % kGroups == 0, "a thread keeps one map group");
  const int c8 = (tid % kGroups) * 8;
  const int c0 = n0 + c8;
  if (c0 >= a.m) return;
  const bool full = c0 + 8 <= a.m;
  MapGroup g;
  load_map_group(a, c0, g);
  const bool narrow_res = narrow_residual(a, full);
  uint32_t rw[kUnits][2];
#pragma unroll
  for (int i = 0; i < kUnits; ++i) {
    const int row = tid / kGroups + i * (T::kThreads / kGroups);
    const int64_t p = m0 + row;
    rw[i][0] = rw[i][1] = 0;
    if (narrow_res && p < a.pixels) load_residual_words(a, p, c0, rw[i]);
  }
#pragma unroll
  for (int i = 0; i < kUnits; ++i) {
    const int row = tid / kGroups + i * (T::kThreads / kGroups);
    const int64_t p = m0 + row;
    if (p >= a.pixels) continue;
    int32_t v[8];
    const int4 lo4 = *reinterpret_cast<const int4*>(ctile + row * T::kCRow + c8);
    const int4 hi4 = *reinterpret_cast<const int4*>(ctile + row * T::kCRow + c8 + 4);
    v[0] = lo4.x; v[1] = lo4.y; v[2] = lo4.z; v[3] = lo4.w;
    v[4] = hi4.x; v[5] = hi4.y; v[6] = hi4.z; v[7] = hi4.w;
    finish_group(a, g, p, c0, full, narrow_res, rw[i], v);
  }
}

template <int BM, int BN, Storage kA, ConvLoad kLoad>
void launch_tile(const ConvArgs& a, cudaStream_t stream, int split) {
  using T = Tile<BM, BN, kA, kLoad>;
  static bool configured = false;  // the attribute is per function; setting it again is harmless
  if (!configured) {
    NIBBLE_CUDA_CHECK(cudaFuncSetAttribute(conv_igemm_kernel<BM, BN, kA, kLoad>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmem));
    configured = true;
  }
  const dim3 grid(static_cast<unsigned>((a.pixels + BM - 1) / BM), static_cast<unsigned>((a.m + BN - 1) / BN),
                  static_cast<unsigned>(split));
  launch_kernel(conv_igemm_kernel<BM, BN, kA, kLoad>, grid, dim3(T::kThreads), T::kSmem, stream, a);
}

template <int BM, int BN>
const char* launch_storage(const ConvArgs& a, cudaStream_t stream, int split = 1) {
  switch (a.load) {
    case ConvLoad::vec:
      switch (a.x_storage) {
        case Storage::u8: launch_tile<BM, BN, Storage::u8, ConvLoad::vec>(a, stream, split); return "igemm_u8s8";
        case Storage::s8: launch_tile<BM, BN, Storage::s8, ConvLoad::vec>(a, stream, split); return "igemm_s8s8";
        case Storage::u4: launch_tile<BM, BN, Storage::u4, ConvLoad::vec>(a, stream, split); return "igemm_u4s4";
        case Storage::s4: launch_tile<BM, BN, Storage::s4, ConvLoad::vec>(a, stream, split); return "igemm_s4s4";
        default: break;
      }
      break;
    case ConvLoad::taps:
      switch (a.x_storage) {
        case Storage::u8: launch_tile<BM, BN, Storage::u8, ConvLoad::taps>(a, stream, split); return "igemm_u8s8_taps";
        case Storage::s8: launch_tile<BM, BN, Storage::s8, ConvLoad::taps>(a, stream, split); return "igemm_s8s8_taps";
        default: break;
      }
      break;
    case ConvLoad::gather:
      switch (a.x_storage) {
        case Storage::u8: launch_tile<BM, BN, Storage::u8, ConvLoad::gather>(a, stream, split); return "igemm_u8s8_gather";
        case Storage::s8: launch_tile<BM, BN, Storage::s8, ConvLoad::gather>(a, stream, split); return "igemm_s8s8_gather";
        default: break;
      }
      break;
  }
  throw_cuda_error(cudaErrorInvalidValue, "launch_conv: unsupported input storage", __FILE__, __LINE__);
}

// Split K where the output tiles would leave most multiprocessors idle (small batches, such as
// the single images of SingleStream): up to 4 blocks per 64 x 64 tile, each reducing at least 4
// K tiles, within the workspace. NIBBLE_CUDA_SPLIT_K=N sets the most blocks per tile (0 or 1: no
// split; for measurements).
int split_k(const ConvArgs& a, int64_t tiles, int sms) {
  static const int most = [] {
    const char* e = std::getenv("NIBBLE_CUDA_SPLIT_K");
    return e ? std::clamp(std::atoi(e), 1, 32) : 4;
  }();
  if (most < 2 || !a.split_partials || tiles * 2 > sms || tiles > a.split_tiles) return 1;
  const bool packed = a.x_storage == Storage::u4 || a.x_storage == Storage::s4;
  const int64_t k_tiles = a.k_pad / (packed ? 32 : 64);
  int64_t split = std::min<int64_t>({sms / tiles, k_tiles / 4, most});
  while (split > 1 && tiles * split * 64 * 64 * 4 > a.split_bytes) --split;
  return static_cast<int>(std::max<int64_t>(split, 1));
}

// The kernel name of a split-K launch: the plain one with "_splitk".
const char* split_name(const char* base) {
  static std::mutex mu;
  static std::map<std::string, std::string> names;
  const std::lock_guard<std::mutex> lock(mu);
  std::string& s = names[base];
  if (s.empty()) s = std::string(base) + "_splitk";
  return s.c_str();
}

}  // namespace

const char* launch_conv_mma(const ConvArgs& a, cudaStream_t stream) {
  // Tile choice: the largest tile that still gives every multiprocessor work (132 on H100/H200).
  static int sms = [] {
    int dev = 0, n = 0;
    NIBBLE_CUDA_CHECK(cudaGetDevice(&dev));
    NIBBLE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  auto blocks = [&](int bm, int bn) { return ((a.pixels + bm - 1) / bm) * ((a.m + bn - 1) / bn); };
  const int split = split_k(a, blocks(64, 64), sms);
  if (split > 1) return split_name(launch_storage<64, 64>(a, stream, split));
  if (a.m > 64 && blocks(128, 128) >= 2 * sms) return launch_storage<128, 128>(a, stream);
  if (blocks(128, 64) >= 2 * sms) return launch_storage<128, 64>(a, stream);
  return launch_storage<64, 64>(a, stream);
}

}  // namespace nibble::cuda
