// Host launchers of the CUDA backend's kernels, one .cu file per op.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backends/cuda/plan.h"

namespace nibble::cuda {

// One fused convolution: y = requant(relu(conv(x, w) + bias + residual)), NHWC.
struct ConvArgs {
  const uint8_t* x = nullptr;
  Storage x_storage = Storage::u8;
  int64_t x_row = 0;
  int h = 0, w = 0;
  int oh = 0, ow = 0;
  int64_t pixels = 0;  // batch x oh x ow
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int ph_end = 0, pw_end = 0;  // padding after the last row and column
  const int8_t* weights = nullptr;  // m_pad x k_pad
  int64_t k_bytes = 0, k_pad = 0;
  int m = 0;
  int64_t m_pad = 0;
  // The wgmma kernels' s8 weights (m_pad x wide_k): the same as `weights` for 8-bit inputs,
  // widened and permuted for 4-bit ones (wgmma_weights in plan.h); nullptr where not uploaded.
  const int8_t* wide_weights = nullptr;
  int64_t wide_k = 0;
  // wide_weights with the rows of each 64-map block in the direct epilogue's order
  // (permute_map_rows in plan.h), or nullptr: the direct epilogue then takes the plain order.
  const int8_t* perm_weights = nullptr;
  ConvLoad load = ConvLoad::vec;
  const int32_t* bias = nullptr;
  // FP8 convolutions (x_storage e4m3, e4m3 weight codes, f32 output): per map f32 scale and bias,
  // y = f32(sum) x fscale + fbias (ConvStep::fp8); `bias` and the requantization are unused.
  const float* fscale = nullptr;
  const float* fbias = nullptr;
  // ConvStep::fres_scale (an e4m3 residual's scale) and ::fout_scale (an e4m3 output's), and
  // RN(1 / fout_scale) for divide_by.
  float fres_scale = 0.0f, fout_scale = 0.0f, fout_inv = 0.0f;
  bool relu = false;
  const uint16_t* factor = nullptr;  // nullptr: s32 output
  const uint32_t* sat = nullptr;     // per map saturation thresholds (ConvStep::sat), or nullptr
  const uint32_t* sat_top = nullptr; // ConvStep::sat_top, or nullptr
  int shift = 0;
  int64_t lo = 0, hi = 0;
  uint8_t* y = nullptr;
  Storage y_storage = Storage::u8;
  int64_t y_row = 0;
  const uint8_t* res = nullptr;  // nullptr: no residual
  Storage res_storage = Storage::s32;
  int64_t res_row = 0;
  const uint16_t* res_factor = nullptr;  // nullptr: added as stored (s32)
  int res_shift = 0;
  int64_t res_lo = 0, res_hi = 0;
  bool res_in_range = false;  // ConvStep::res_in_range: no clamp after the residual's requantization
  // Split-K workspace of the stream (nullptr: none): partial sums of `split_bytes` bytes and one
  // arrival counter per output tile for up to `split_tiles` tiles, zero between launches.
  int32_t* split_partials = nullptr;
  int64_t split_bytes = 0;
  uint32_t* split_arrivals = nullptr;
  int64_t split_tiles = 0;
};

// ---- the convolution kernel table ----
// One entry per kernel family, in order of preference. An entry is keyed by what it reads (the
// input storages it takes, the load mode) and the compute capabilities it runs on; `fits`
// checks the shape limits beyond the key. Every family computes the same function exactly:
// bias, residual, ReLU and requantization fused, any output storage. Adding a variant is one
// entry here and its .cu file.
struct ConvKernel {
  const char* family;  // "wgmma" (sm_90a: TMA + warpgroup MMA), "mma" (mma.sync, sm_80 and newer)
  ConvLoad load;
  uint32_t x_storages;  // bit (1 << Storage) per input storage taken
  int min_sm, max_sm;   // compute capability as major x 10 + minor
  bool needs_wide_weights;
  bool (*fits)(const ConvArgs&);
  bool (*preferred)(const ConvArgs&);  // "auto" takes the entry only where this holds (nullptr: always)
  const char* (*launch)(const ConvArgs&, cudaStream_t);  // returns the variant's name
};
const ConvKernel* conv_kernels(int* count);
// The first kernel of the table that takes `a` on a device of compute capability `sm`;
// `family` "auto" takes any where it is also preferred, otherwise only that family wherever it
// fits (with "mma" as the fallback). Returns the table index.
int choose_conv_kernel(const ConvArgs& a, int sm, const char* family);

// The families' launchers (conv_igemm.cu, conv_wgmma.cu).
const char* launch_conv_mma(const ConvArgs& a, cudaStream_t stream);
bool wgmma_conv_fits(const ConvArgs& a);
bool wgmma_conv_preferred(const ConvArgs& a);
const char* launch_conv_wgmma(const ConvArgs& a, cudaStream_t stream);

// NCHW host dtype (u8, s8 or f32 quantized by `scale`) to NHWC `storage` rows (u8 or s8; e4m3
// from f32: quantize_float's FP8 rounding), or to the unfolded stem input where `unfold.on` (plan.h).
void launch_input(const void* src, DType src_dtype, int64_t batch, int64_t c, int64_t h, int64_t w,
                  const float* scale, int64_t scale_count, int64_t lo, int64_t hi, uint8_t* dst, Storage storage,
                  int64_t row, const InputUnfold& unfold, cudaStream_t stream);

// Max pool over NHWC rows of u8, s8, u4 or s4 (padding never wins).
void launch_max_pool(const uint8_t* x, uint8_t* y, Storage storage, int64_t row, int64_t batch, int h, int w, int oh,
                     int ow, const PoolStep& p, cudaStream_t stream);

// The seed's rounded average pool over NHWC u8 rows.
void launch_avg_pool(const uint8_t* x, uint8_t* y, int64_t row, int64_t channels, int64_t batch, int h, int w,
                     int oh, int ow, const PoolStep& p, cudaStream_t stream);

// A standalone nibble:Requantize, element by element (any storage in, u8/s8/s32 out).
void launch_requantize(const uint8_t* x, Storage xs, int64_t x_row, uint8_t* y, Storage ys, int64_t y_row,
                       int64_t channels, int64_t pixels, const uint16_t* factor, int shift, int64_t lo, int64_t hi,
                       cudaStream_t stream);

// y[n][k] = float(x[n][k]) / scale[k].
void launch_scale(const int32_t* x, float* y, const float* scale, int64_t batch, int64_t k, cudaStream_t stream);
// StepKind::lut: each 8-bit value (rows of x_row bytes) to lut[value], e4m3 rows of y_row bytes
// whose channels past c are zero.
void launch_lut_e4m3(const uint8_t* x, int64_t x_row, uint8_t* y, int64_t y_row, int64_t c, int64_t pixels,
                     const uint8_t* lut, cudaStream_t stream);
// StepKind::mean_quantize: f32 N x plane x C (rows of x_row bytes) to the 8-bit quantized mean of
// each channel, N rows of y_row bytes.
void launch_mean_quantize(const float* x, int64_t x_row, int64_t c, int64_t images, int64_t plane, const float* scale,
                          int64_t lo, int64_t hi, uint8_t* y, int64_t y_row, cudaStream_t stream);

}  // namespace nibble::cuda
