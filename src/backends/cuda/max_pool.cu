// Max pool over NHWC rows, one 32-bit word (4 bytes: 4 values, or 8 packed 4-bit values) per thread.
#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

namespace {

__device__ __forceinline__ uint32_t sext_nibbles(uint32_t b) { return __vsub4(b ^ 0x08080808u, 0x08080808u); }

template <Storage kS>
__device__ __forceinline__ uint32_t word_max(uint32_t a, uint32_t b) {
  if constexpr (kS == Storage::u8) return __vmaxu4(a, b);
  if constexpr (kS == Storage::s8) return __vmaxs4(a, b);
  if constexpr (kS == Storage::u4) {
    const uint32_t lo = __vmaxu4(a & 0x0F0F0F0Fu, b & 0x0F0F0F0Fu);
    const uint32_t hi = __vmaxu4((a >> 4) & 0x0F0F0F0Fu, (b >> 4) & 0x0F0F0F0Fu);
    return lo | (hi << 4);
  }
  // s4: compare as sign-extended bytes, then pack the nibbles back.
  const uint32_t lo = __vmaxs4(sext_nibbles(a & 0x0F0F0F0Fu), sext_nibbles(b & 0x0F0F0F0Fu));
  const uint32_t hi = __vmaxs4(sext_nibbles((a >> 4) & 0x0F0F0F0Fu), sext_nibbles((b >> 4) & 0x0F0F0F0Fu));
  return (lo & 0x0F0F0F0Fu) | ((hi & 0x0F0F0F0Fu) << 4);
}

// The smallest value of every lane: the start of the running maximum.
template <Storage kS>
__host__ __device__ constexpr uint32_t word_min() {
  return kS == Storage::s8 ? 0x80808080u : (kS == Storage::s4 ? 0x88888888u : 0u);
}

template <Storage kS>
__global__ void max_pool_kernel(const uint32_t* x, uint32_t* y, int64_t words, int64_t wpp, int h, int w, int oh,
                                int ow, PoolStep p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= words) return;
  const int64_t pixel = i / wpp;
  const int64_t wd = i - pixel * wpp;
  const PixelPos pos = pixel_pos(pixel, oh, ow);
  const int64_t n = pos.n;
  const int oy = pos.y, ox = pos.x;
  uint32_t m = word_min<kS>();
  for (int a = 0; a < p.kh; ++a) {
    const int iy = oy * p.sh - p.ph + a;
    if (iy < 0 || iy >= h) continue;
    for (int b = 0; b < p.kw; ++b) {
      const int ix = ox * p.sw - p.pw + b;
      if (ix < 0 || ix >= w) continue;
      m = word_max<kS>(m, x[((n * h + iy) * w + ix) * wpp + wd]);
    }
  }
  y[i] = m;
}

}  // namespace

void launch_max_pool(const uint8_t* x, uint8_t* y, Storage storage, int64_t row, int64_t batch, int h, int w, int oh,
                     int ow, const PoolStep& p, cudaStream_t stream) {
  const int64_t wpp = row / 4;
  const int64_t words = batch * oh * ow * wpp;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>((words + threads - 1) / threads);
  const auto* xs = reinterpret_cast<const uint32_t*>(x);
  auto* ys = reinterpret_cast<uint32_t*>(y);
  switch (storage) {
    case Storage::u8: max_pool_kernel<Storage::u8><<<blocks, threads, 0, stream>>>(xs, ys, words, wpp, h, w, oh, ow, p); break;
    case Storage::s8: max_pool_kernel<Storage::s8><<<blocks, threads, 0, stream>>>(xs, ys, words, wpp, h, w, oh, ow, p); break;
    case Storage::u4: max_pool_kernel<Storage::u4><<<blocks, threads, 0, stream>>>(xs, ys, words, wpp, h, w, oh, ow, p); break;
    case Storage::s4: max_pool_kernel<Storage::s4><<<blocks, threads, 0, stream>>>(xs, ys, words, wpp, h, w, oh, ow, p); break;
    default: throw_cuda_error(cudaErrorInvalidValue, "launch_max_pool: unsupported storage", __FILE__, __LINE__);
  }
  NIBBLE_CUDA_LAUNCHED();
}

}  // namespace nibble::cuda
