// Pieces every CUDA kernel of the backend shares: error checks and the seed's integer arithmetic.
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "backends/cuda/plan.h"

namespace nibble::cuda {

// Throws nibble::Error with the call, file and line when a CUDA call fails.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);

#define NIBBLE_CUDA_CHECK(call)                                                              \
  do {                                                                                       \
    const cudaError_t nibble_cuda_err_ = (call);                                             \
    if (nibble_cuda_err_ != cudaSuccess) {                                                   \
      ::nibble::cuda::throw_cuda_error(nibble_cuda_err_, #call, __FILE__, __LINE__);         \
    }                                                                                        \
  } while (0)

// After a kernel launch: reports launch errors (bad configuration, too much shared memory).
#define NIBBLE_CUDA_LAUNCHED() NIBBLE_CUDA_CHECK(cudaGetLastError())

// The reference QuantizeFloat of one f32 value x with scale s: to integers, x / s rounded half to
// even, NaN to 0, clamped to [lo, hi]; to FP8, the e4m3 code of x / s (nearest even, saturating at
// +-448, NaN to 0x7F, as f32_to_e4m3_bits). And an e4m3 code's value (DequantizeLinear's operand).
__device__ __forceinline__ int32_t quantize_float_int(float x, float s, int64_t lo, int64_t hi) {
  const float r = rintf(__fdiv_rn(x, s));
  float v = r != r ? 0.0f : r;
  v = v < static_cast<float>(lo) ? static_cast<float>(lo) : (v > static_cast<float>(hi) ? static_cast<float>(hi) : v);
  return static_cast<int32_t>(v);
}
__device__ __forceinline__ uint8_t e4m3_code(float v) {
  if (v != v) return 0x7F;
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}
__device__ __forceinline__ uint8_t quantize_float_e4m3(float x, float s) { return e4m3_code(__fdiv_rn(x, s)); }
__device__ __forceinline__ float e4m3_value(uint8_t code) {
  const __nv_fp8_e4m3 v = *reinterpret_cast<const __nv_fp8_e4m3*>(&code);
  return static_cast<float>(v);
}
// Two values at once: e4m3_code of v0 (low byte) and v1 (high byte), one conversion for the pair
// (NaN, which the pair conversion need not map to 0x7F, takes e4m3_code); the values of two codes
// (the low byte first), exactly, through f16.
__device__ __forceinline__ uint32_t e4m3_codes(float v0, float v1) {
  if (v0 != v0 || v1 != v1) return e4m3_code(v0) | (static_cast<uint32_t>(e4m3_code(v1)) << 8);
  return __nv_cvt_float2_to_fp8x2(make_float2(v0, v1), __NV_SATFINITE, __NV_E4M3);
}
__device__ __forceinline__ float2 e4m3_values(uint16_t codes) {
  const __half2 h = __nv_cvt_fp8x2_to_halfraw2(codes, __NV_E4M3);
  return __half22float2(h);
}

// Programmatic dependent launch (sm_90 and newer): every kernel is launched allowed to start
// while the kernel ahead of it in the stream finishes, so that its launch and prologue overlap
// that kernel's last blocks. Each kernel calls grid_dependency_sync() before it touches global
// memory: it waits until the kernel ahead has completed and its writes are visible, then lets
// the next kernel launch. Every kernel waits, so kernels still complete in stream order.
__device__ __forceinline__ void grid_dependency_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Whether launches use it: on sm_90 and newer devices, unless NIBBLE_CUDA_PDL=0 or a
// PdlSuspend is alive on this thread (a profile times each step alone).
bool pdl_enabled();
struct PdlSuspend {
  PdlSuspend();
  ~PdlSuspend();
  PdlSuspend(const PdlSuspend&) = delete;
  PdlSuspend& operator=(const PdlSuspend&) = delete;
};

// Launches `kernel` on `stream` (with programmatic dependent launch where pdl_enabled()) and
// checks the launch.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  NIBBLE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// quant::requantize on the device: sign(x) * ((|x| * factor + 2^(shift-1)) >> shift), or
// x * factor for shift 0, in 64 bits, clamped to [lo, hi].
__device__ __forceinline__ int64_t requantize_dev(int64_t x, uint32_t factor, int shift, int64_t lo, int64_t hi) {
  int64_t q;
  if (shift == 0) {
    q = x * static_cast<int64_t>(factor);
  } else {
    const int64_t a = x < 0 ? -x : x;
    const int64_t mag = (a * static_cast<int64_t>(factor) + (int64_t{1} << (shift - 1))) >> shift;
    q = x < 0 ? -mag : mag;
  }
  return q < lo ? lo : (q > hi ? hi : q);
}

// The same for an s32 input and a range inside s32 (outputs of at most 31 bits), with the
// product formed by one 32 x 32 -> 64-bit multiply and the clamp applied to the magnitude.
__device__ __forceinline__ int32_t requantize32(int32_t x, uint32_t factor, int shift, int32_t lo, int32_t hi) {
  const bool neg = x < 0;
  const uint32_t a = neg ? 0u - static_cast<uint32_t>(x) : static_cast<uint32_t>(x);
  uint64_t mag = static_cast<uint64_t>(a) * factor;
  if (shift > 0) mag = (mag + (uint64_t{1} << (shift - 1))) >> shift;
  // Negative inputs can only reach lo (<= 0), others only hi (>= 0).
  const uint32_t lim = neg ? 0u - static_cast<uint32_t>(lo) : static_cast<uint32_t>(hi);
  const uint32_t m = mag > lim ? lim : static_cast<uint32_t>(mag);
  return neg ? static_cast<int32_t>(0u - m) : static_cast<int32_t>(m);
}

// requantize32 for |x| <= 255 (a narrow residual) and factor < 2^16: the product fits 32 bits.
__device__ __forceinline__ int32_t requantize_narrow(int32_t x, uint32_t factor, int shift, int32_t lo, int32_t hi) {
  const bool neg = x < 0;
  const uint32_t a = static_cast<uint32_t>(neg ? -x : x);
  uint32_t mag = a * factor;
  if (shift > 0) mag = (mag + (1u << (shift - 1))) >> shift;
  const uint32_t lim = neg ? 0u - static_cast<uint32_t>(lo) : static_cast<uint32_t>(hi);
  const uint32_t m = mag > lim ? lim : mag;
  return neg ? static_cast<int32_t>(0u - m) : static_cast<int32_t>(m);
}

// requantize32 with 32-bit arithmetic only: `sat` is the smallest |x| whose result saturates on
// either side (ConvStep::sat), so |x| is first clamped to it; the host only passes thresholds
// with sat x factor + 2^(shift-1) < 2^32, which keeps the product exact.
__device__ __forceinline__ int32_t requantize_saturating(int32_t x, uint32_t factor, uint32_t sat, int shift, int32_t lo,
                                                         int32_t hi) {
  const bool neg = x < 0;
  uint32_t a = neg ? 0u - static_cast<uint32_t>(x) : static_cast<uint32_t>(x);
  a = a < sat ? a : sat;
  uint32_t mag = a * factor;
  if (shift > 0) mag = (mag + (1u << (shift - 1))) >> shift;
  const uint32_t lim = neg ? 0u - static_cast<uint32_t>(lo) : static_cast<uint32_t>(hi);
  const uint32_t m = mag > lim ? lim : mag;
  return neg ? static_cast<int32_t>(0u - m) : static_cast<int32_t>(m);
}

// Output pixel `pixel` (n x oh x ow + y x ow + x) as its image and coordinates.
struct PixelPos {
  int64_t n;
  int y, x;
};
__device__ __forceinline__ PixelPos pixel_pos(int64_t pixel, int oh, int ow) {
  const int64_t n = pixel / (int64_t{oh} * ow);
  const int rem = static_cast<int>(pixel - n * oh * ow);
  return {n, rem / ow, rem % ow};
}

// Element `c` (a channel) of an NHWC row stored as `s`: 8-bit bytes, 4-bit pairs (channel 2j in
// the low nibble of byte j, 2j + 1 in the high one) or s32 words.
__device__ __forceinline__ int32_t load_element(const void* row, int64_t c, Storage s) {
  switch (s) {
    case Storage::u8:
      return static_cast<const uint8_t*>(row)[c];
    case Storage::s8:
      return static_cast<const int8_t*>(row)[c];
    case Storage::u4:
      return (static_cast<const uint8_t*>(row)[c >> 1] >> ((c & 1) * 4)) & 0xF;
    case Storage::s4: {
      const int v = (static_cast<const uint8_t*>(row)[c >> 1] >> ((c & 1) * 4)) & 0xF;
      return v >= 8 ? v - 16 : v;
    }
    case Storage::s32:
      return static_cast<const int32_t*>(row)[c];
    default:
      return 0;
  }
}

}  // namespace nibble::cuda
