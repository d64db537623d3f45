// The input step: NCHW as the caller passes it (u8, s8, or f32 through nibble:QuantizeFloat) to
// the NHWC rows the convolutions read, channels padded with zeros to whole words.
#include <type_traits>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

namespace {

template <typename Src>
__global__ void input_kernel(const Src* src, int64_t words, int64_t words_per_pixel, int64_t c, int64_t plane,
                             const float* scale, int64_t scale_count, int64_t lo, int64_t hi, uint32_t* dst) {
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
    const Src x = src[(n * c + ch) * plane + p];
    int32_t q;
    if constexpr (std::is_same_v<Src, float>) {
      // quantize_float: the f32 quotient rounded half to even, NaN to 0, clamped.
      const float r = rintf(x / scale[scale_count == 1 ? 0 : ch]);
      float v = r != r ? 0.0f : r;
      v = v < static_cast<float>(lo) ? static_cast<float>(lo) : (v > static_cast<float>(hi) ? static_cast<float>(hi) : v);
      q = static_cast<int32_t>(v);
    } else {
      q = x;
    }
    out |= (static_cast<uint32_t>(q) & 0xFFu) << (8 * j);
  }
  dst[i] = out;
}

}  // namespace

void launch_input(const void* src, DType src_dtype, int64_t batch, int64_t c, int64_t h, int64_t w,
                  const float* scale, int64_t scale_count, int64_t lo, int64_t hi, uint8_t* dst, Storage storage,
                  int64_t row, cudaStream_t stream) {
  (void)storage;  // u8 or s8: the bytes are the same
  const int64_t plane = h * w;
  const int64_t words = batch * plane * (row / 4);
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>((words + threads - 1) / threads);
  auto* out = reinterpret_cast<uint32_t*>(dst);
  switch (src_dtype) {
    case DType::u8:
      input_kernel<<<blocks, threads, 0, stream>>>(static_cast<const uint8_t*>(src), words, row / 4, c, plane, scale,
                                                    scale_count, lo, hi, out);
      break;
    case DType::s8:
      input_kernel<<<blocks, threads, 0, stream>>>(static_cast<const int8_t*>(src), words, row / 4, c, plane, scale,
                                                    scale_count, lo, hi, out);
      break;
    default:
      input_kernel<<<blocks, threads, 0, stream>>>(static_cast<const float*>(src), words, row / 4, c, plane, scale,
                                                    scale_count, lo, hi, out);
      break;
  }
  NIBBLE_CUDA_LAUNCHED();
}

}  // namespace nibble::cuda
