// nibble:Requantize as a step of its own (one no convolution could fold into its residual read).
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

namespace {

__global__ void requantize_kernel(const uint8_t* x, Storage xs, int64_t x_row, uint8_t* y, Storage ys, int64_t y_row,
                                  int64_t channels, int64_t total, const uint16_t* factor, int shift, int64_t lo,
                                  int64_t hi) {
  grid_dependency_sync();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t p = i / channels, c = i - p * channels;
  const int64_t q = requantize_dev(load_element(x + p * x_row, c, xs), factor[c], shift, lo, hi);
  uint8_t* row = y + p * y_row;
  if (ys == Storage::s32) {
    reinterpret_cast<int32_t*>(row)[c] = static_cast<int32_t>(q);
  } else {
    row[c] = static_cast<uint8_t>(q);
  }
}

}  // namespace

void launch_requantize(const uint8_t* x, Storage xs, int64_t x_row, uint8_t* y, Storage ys, int64_t y_row,
                       int64_t channels, int64_t pixels, const uint16_t* factor, int shift, int64_t lo, int64_t hi,
                       cudaStream_t stream) {
  const int64_t total = pixels * channels;
  const int threads = 256;
  launch_kernel(requantize_kernel, dim3(static_cast<unsigned>((total + threads - 1) / threads)), dim3(threads), 0, stream,
                x, xs, x_row, y, ys, y_row, channels, total, factor, shift, lo, hi);
}

}  // namespace nibble::cuda
