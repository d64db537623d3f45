// Max pool over NHWC rows, 16 bytes (16 values, or 32 packed 4-bit ones) per thread where rows
// are whole 16 bytes, otherwise one 32-bit word.
#include <type_traits>

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

// One thread per kV words of a pixel (kV = 4: 16 bytes, where rows are whole 16 bytes); index
// arithmetic in Idx (32 bits where every word index fits).
template <Storage kS, int kV, typename Idx>
__global__ void max_pool_kernel(const uint32_t* x, uint32_t* y, Idx vecs, Idx vpp, int h, int w, int oh, int ow,
                                PoolStep p) {
  using Vec = std::conditional_t<kV == 4, uint4, uint32_t>;
  grid_dependency_sync();
  const Idx i = static_cast<Idx>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= vecs) return;
  const Idx pixel = i / vpp;
  const Idx v = i - pixel * vpp;
  const Idx plane = static_cast<Idx>(oh) * ow;
  const Idx n = pixel / plane;
  const int rem = static_cast<int>(pixel - n * plane);
  const int oy = rem / ow, ox = rem - (rem / ow) * ow;
  const Vec* xv = reinterpret_cast<const Vec*>(x);
  uint32_t m[kV];
#pragma unroll
  for (int k = 0; k < kV; ++k) m[k] = word_min<kS>();
  for (int a = 0; a < p.kh; ++a) {
    const int iy = oy * p.sh - p.ph + a;
    if (iy < 0 || iy >= h) continue;
    for (int b = 0; b < p.kw; ++b) {
      const int ix = ox * p.sw - p.pw + b;
      if (ix < 0 || ix >= w) continue;
      const Vec q = __ldg(xv + ((n * h + iy) * w + ix) * vpp + v);
      const uint32_t* qw = reinterpret_cast<const uint32_t*>(&q);
#pragma unroll
      for (int k = 0; k < kV; ++k) m[k] = word_max<kS>(m[k], qw[k]);
    }
  }
  *reinterpret_cast<Vec*>(reinterpret_cast<Vec*>(y) + i) = *reinterpret_cast<const Vec*>(m);
}

template <Storage kS>
void launch_storage(const uint32_t* x, uint32_t* y, int64_t row, int64_t batch, int h, int w, int oh, int ow,
                    const PoolStep& p, cudaStream_t stream) {
  const int threads = 256;
  const int kv = row % 16 == 0 ? 4 : 1;
  const int64_t vpp = row / (4 * kv);
  const int64_t vecs = batch * oh * ow * vpp;
  // Every index the kernel forms stays below the input's word count (plus one row).
  const bool small = (batch * h * w + 1) * vpp < (int64_t{1} << 31) && vecs < (int64_t{1} << 31);
  const unsigned blocks = static_cast<unsigned>((vecs + threads - 1) / threads);
  if (kv == 4 && small) {
    launch_kernel(max_pool_kernel<kS, 4, int32_t>, dim3(blocks), dim3(threads), 0, stream, x, y,
                  static_cast<int32_t>(vecs), static_cast<int32_t>(vpp), h, w, oh, ow, p);
  } else if (kv == 4) {
    launch_kernel(max_pool_kernel<kS, 4, int64_t>, dim3(blocks), dim3(threads), 0, stream, x, y, vecs, vpp, h, w, oh, ow, p);
  } else {
    launch_kernel(max_pool_kernel<kS, 1, int64_t>, dim3(blocks), dim3(threads), 0, stream, x, y, vecs, vpp, h, w, oh, ow, p);
  }
}

}  // namespace

void launch_max_pool(const uint8_t* x, uint8_t* y, Storage storage, int64_t row, int64_t batch, int h, int w, int oh,
                     int ow, const PoolStep& p, cudaStream_t stream) {
  const auto* xs = reinterpret_cast<const uint32_t*>(x);
  auto* ys = reinterpret_cast<uint32_t*>(y);
  switch (storage) {
    case Storage::u8: launch_storage<Storage::u8>(xs, ys, row, batch, h, w, oh, ow, p, stream); break;
    case Storage::s8: launch_storage<Storage::s8>(xs, ys, row, batch, h, w, oh, ow, p, stream); break;
    case Storage::u4: launch_storage<Storage::u4>(xs, ys, row, batch, h, w, oh, ow, p, stream); break;
    case Storage::s4: launch_storage<Storage::s4>(xs, ys, row, batch, h, w, oh, ow, p, stream); break;
    default: throw_cuda_error(cudaErrorInvalidValue, "launch_max_pool: unsupported storage", __FILE__, __LINE__);
  }
}

}  // namespace nibble::cuda
