// The input step: NCHW as the caller passes it (u8, s8, or f32 through nibble:QuantizeFloat) to
// the NHWC rows the convolutions read, channels padded with zeros to whole words, or to the
// unfolded rows of the stem convolution (InputUnfold in plan.h).
#include <cuda_fp8.h>

#include <type_traits>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

namespace {

// One input value as the byte the network reads: as it is, or (f32) quantize_float's f32
// quotient rounded half to even, NaN to 0, clamped to [lo, hi]; with kFp8 the quotient's e4m3
// code (nearest even, saturating at +-448, NaN to 0x7F as f32_to_e4m3_bits).
template <typename Src, bool kFp8 = false>
__device__ __forceinline__ uint32_t input_byte(Src x, const float* scale, int64_t scale_count, int64_t ch, int64_t lo,
                                               int64_t hi) {
  int32_t q = 0;
  if constexpr (kFp8) {
    return quantize_float_e4m3(x, scale[scale_count == 1 ? 0 : ch]);
  } else if constexpr (std::is_same_v<Src, float>) {
    q = quantize_float_int(x, scale[scale_count == 1 ? 0 : ch], lo, hi);
  } else {
    q = x;
  }
  return static_cast<uint32_t>(q) & 0xFFu;
}

template <typename Src, bool kFp8 = false>
__global__ void input_kernel(const Src* src, int64_t words, int64_t words_per_pixel, int64_t c, int64_t plane,
                             const float* scale, int64_t scale_count, int64_t lo, int64_t hi, uint32_t* dst) {
  grid_dependency_sync();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= words) return;
  const int64_t pixel = i / words_per_pixel;  // n x plane + p
  const int64_t wd = i - pixel * words_per_pixel;
  const int64_t n = pixel / plane, p = pixel - n * plane;
  uint32_t out = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t ch = wd * 4 + j;
    if (ch >= c) break;
    out |= input_byte<Src, kFp8>(src[(n * c + ch) * plane + p], scale, scale_count, ch, lo, hi) << (8 * j);
  }
  dst[i] = out;
}

// The unfolded stem input: one block per unfolded row (a pair of input rows) of one image, grid
// (rows, images). The block first gathers the pair's rows (every channel, as the bytes the
// network reads, one word per column: channel ch in byte ch) into shared memory with coalesced
// reads, then writes the row's unfolded pixels 16 bytes per thread: 4 taps of one input row.
template <typename Src>
__global__ void unfold_kernel(const Src* src, int c, int h, int w, int ow, int row_offset, int stride_w, int pad_w,
                              const float* scale, int64_t scale_count, int64_t lo, int64_t hi, uint4* dst) {
  extern __shared__ uint32_t pair_rows[];  // [2][w] words
  grid_dependency_sync();
  const int y2 = static_cast<int>(blockIdx.x), n = static_cast<int>(blockIdx.y);
  for (int i = threadIdx.x; i < 2 * w; i += blockDim.x) {
    const int half = i / w, x = i - half * w;
    const int y = 2 * y2 + row_offset + half;
    uint32_t word = 0;
    if (y >= 0 && y < h) {
      const Src* col = src + (static_cast<int64_t>(n) * c * h + y) * w + x;
      for (int ch = 0; ch < c && ch < 4; ++ch) {
        word |= input_byte(col[static_cast<int64_t>(ch) * h * w], scale, scale_count, ch, lo, hi) << (8 * ch);
      }
    }
    pair_rows[i] = word;
  }
  __syncthreads();
  uint4* out = dst + (static_cast<int64_t>(n) * gridDim.x + y2) * ow * 4;
  for (int i = threadIdx.x; i < 4 * ow; i += blockDim.x) {
    const int ox = i >> 2, half = (i >> 1) & 1, tap0 = 4 * (i & 1);
    uint32_t word[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int x = ox * stride_w - pad_w + tap0 + j;
      word[j] = x >= 0 && x < w ? pair_rows[half * w + x] : 0u;
    }
    out[i] = make_uint4(word[0], word[1], word[2], word[3]);
  }
}

template <typename Src>
void launch_typed(const Src* src, int64_t batch, int64_t c, int64_t h, int64_t w, const float* scale,
                  int64_t scale_count, int64_t lo, int64_t hi, uint8_t* dst, int64_t row, const InputUnfold& u,
                  cudaStream_t stream) {
  const int threads = 256;
  if (u.on) {
    if (batch > 65535 || w > 6144) {
      throw_cuda_error(cudaErrorInvalidValue, "launch_input: more than 65535 images or 6144 columns to unfold", __FILE__,
                       __LINE__);
    }
    const dim3 grid(static_cast<unsigned>(u.h2), static_cast<unsigned>(batch));
    launch_kernel(unfold_kernel<Src>, grid, dim3(threads), static_cast<size_t>(2 * w * 4), stream, src,
                  static_cast<int>(c), static_cast<int>(h), static_cast<int>(w), static_cast<int>(u.ow), u.row_offset,
                  u.stride_w, u.pad_w, scale, scale_count, lo, hi, reinterpret_cast<uint4*>(dst));
  } else {
    const int64_t words = batch * h * w * (row / 4);
    const unsigned blocks = static_cast<unsigned>((words + threads - 1) / threads);
    launch_kernel(input_kernel<Src>, dim3(blocks), dim3(threads), 0, stream, src, words, row / 4, c, h * w, scale,
                  scale_count, lo, hi, reinterpret_cast<uint32_t*>(dst));
  }
}

}  // namespace

void launch_input(const void* src, DType src_dtype, int64_t batch, int64_t c, int64_t h, int64_t w,
                  const float* scale, int64_t scale_count, int64_t lo, int64_t hi, uint8_t* dst, Storage storage,
                  int64_t row, const InputUnfold& unfold, cudaStream_t stream) {
  // u8 or s8: the bytes are the same. e4m3 (from f32 only): FP8 codes, rows of whole K tiles.
  if (storage == Storage::e4m3) {
    if (src_dtype != DType::f32 || unfold.on) {
      throw_cuda_error(cudaErrorInvalidValue, "launch_input: FP8 inputs come from f32, not unfolded", __FILE__, __LINE__);
    }
    const int threads = 256;
    const int64_t words = batch * h * w * (row / 4);
    const unsigned blocks = static_cast<unsigned>((words + threads - 1) / threads);
    launch_kernel(input_kernel<float, true>, dim3(blocks), dim3(threads), 0, stream, static_cast<const float*>(src), words,
                  row / 4, c, h * w, scale, scale_count, lo, hi, reinterpret_cast<uint32_t*>(dst));
    return;
  }
  switch (src_dtype) {
    case DType::u8:
      launch_typed(static_cast<const uint8_t*>(src), batch, c, h, w, scale, scale_count, lo, hi, dst, row, unfold, stream);
      break;
    case DType::s8:
      launch_typed(static_cast<const int8_t*>(src), batch, c, h, w, scale, scale_count, lo, hi, dst, row, unfold, stream);
      break;
    default:
      launch_typed(static_cast<const float*>(src), batch, c, h, w, scale, scale_count, lo, hi, dst, row, unfold, stream);
      break;
  }
}

}  // namespace nibble::cuda
