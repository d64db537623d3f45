// The steps around the FP8 convolutions that are not convolutions: 8-bit values to e4m3 through a
// table, and the global average of f32 values quantized to 8 bits.
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

namespace {

// One thread per output word (4 e4m3 codes); channels past `c` (the row's padding) are zero.
__global__ void lut_e4m3_kernel(const uint8_t* x, int64_t x_row, uint8_t* y, int64_t y_row, int64_t c, int64_t pixels,
                                const uint8_t* lut) {
  grid_dependency_sync();
  const int64_t words = y_row / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= pixels * words) return;
  const int64_t p = i / words, ch = (i % words) * 4;
  const uint8_t* src = x + p * x_row;
  uint32_t out = 0;
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    if (ch + b < c) out |= static_cast<uint32_t>(lut[src[ch + b]]) << (8 * b);
  }
  reinterpret_cast<uint32_t*>(y + p * y_row)[i % words] = out;
}

// One thread per (image, channel): the plane's values summed in double in row order, divided by
// their count and rounded to f32 (the reference AveragePool), then x / scale rounded half to
// even, NaN to 0, clamped to [lo, hi] (the reference QuantizeFloat).
__global__ void mean_quantize_kernel(const float* x, int64_t x_row_floats, int64_t c, int64_t images, int64_t plane,
                                     const float* scale, int64_t lo, int64_t hi, uint8_t* y, int64_t y_row) {
  grid_dependency_sync();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= images * c) return;
  const int64_t n = i / c, ch = i % c;
  const float* src = x + n * plane * x_row_floats + ch;
  double sum = 0.0;
  for (int64_t p = 0; p < plane; ++p) sum += static_cast<double>(src[p * x_row_floats]);
  const float mean = static_cast<float>(sum / static_cast<double>(plane));
  y[n * y_row + ch] = static_cast<uint8_t>(quantize_float_int(mean, scale[0], lo, hi) & 0xFF);
}

}  // namespace

void launch_lut_e4m3(const uint8_t* x, int64_t x_row, uint8_t* y, int64_t y_row, int64_t c, int64_t pixels,
                     const uint8_t* lut, cudaStream_t stream) {
  const int threads = 256;
  const int64_t total = pixels * (y_row / 4);
  launch_kernel(lut_e4m3_kernel, dim3(static_cast<unsigned>((total + threads - 1) / threads)), dim3(threads), 0, stream,
                x, x_row, y, y_row, c, pixels, lut);
}

void launch_mean_quantize(const float* x, int64_t x_row, int64_t c, int64_t images, int64_t plane, const float* scale,
                          int64_t lo, int64_t hi, uint8_t* y, int64_t y_row, cudaStream_t stream) {
  const int threads = 128;
  const int64_t total = images * c;
  launch_kernel(mean_quantize_kernel, dim3(static_cast<unsigned>((total + threads - 1) / threads)), dim3(threads), 0,
                stream, x, x_row / 4, c, images, plane, scale, lo, hi, y, y_row);
}

}  // namespace nibble::cuda
