// The seed's integer average pool over NHWC u8 rows: (sum + n / 2) / n per channel.
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

namespace {

__global__ void avg_pool_kernel(const uint8_t* x, uint8_t* y, int64_t row, int64_t channels, int64_t outputs, int h,
                                int w, int oh, int ow, PoolStep p) {
  grid_dependency_sync();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= outputs) return;
  const int64_t pixel = i / channels;
  const int64_t c = i - pixel * channels;
  const PixelPos pos = pixel_pos(pixel, oh, ow);
  const int64_t n = pos.n;
  const int oy = pos.y, ox = pos.x;
  int64_t sum = 0;
  for (int a = 0; a < p.kh; ++a) {
    for (int b = 0; b < p.kw; ++b) sum += x[((n * h + oy * p.sh + a) * w + ox * p.sw + b) * row + c];
  }
  const int64_t count = int64_t{p.kh} * p.kw;
  y[pixel * row + c] = static_cast<uint8_t>((sum + count / 2) / count);
}

}  // namespace

void launch_avg_pool(const uint8_t* x, uint8_t* y, int64_t row, int64_t channels, int64_t batch, int h, int w,
                     int oh, int ow, const PoolStep& p, cudaStream_t stream) {
  const int64_t outputs = batch * oh * ow * channels;
  const int threads = 256;
  launch_kernel(avg_pool_kernel, dim3(static_cast<unsigned>((outputs + threads - 1) / threads)), dim3(threads), 0, stream,
                x, y, row, channels, outputs, h, w, oh, ow, p);
}

}  // namespace nibble::cuda
