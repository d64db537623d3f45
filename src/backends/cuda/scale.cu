// nibble:Scale: the classifier's f32 scores, logit / out_scale per class.
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

namespace {

__global__ void scale_kernel(const int32_t* x, float* y, const float* scale, int64_t total, int64_t k) {
  grid_dependency_sync();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) y[i] = __fdiv_rn(static_cast<float>(x[i]), scale[i % k]);
}

}  // namespace

void launch_scale(const int32_t* x, float* y, const float* scale, int64_t batch, int64_t k, cudaStream_t stream) {
  const int64_t total = batch * k;
  const int threads = 256;
  launch_kernel(scale_kernel, dim3(static_cast<unsigned>((total + threads - 1) / threads)), dim3(threads), 0, stream, x, y,
                scale, total, k);
}

}  // namespace nibble::cuda
