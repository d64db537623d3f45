// The CUDA backend's execution plan: what every activation looks like on the device, which
// kernel runs each step, the weights in the kernels' layout and the activation arena. Plain C++
// (no CUDA types), so the planning is built and tested on machines without a GPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nibble/dtype.h"
#include "nibble/graph.h"

namespace nibble::cuda {

// How an activation is stored on the device. Every activation is NHWC with its channels padded
// to whole 32-bit words: u8/s8 one byte per value, u4/s4 two values per byte (channel 2j in the
// low nibble of byte j, 2j + 1 in the high one), s32/f32 one word per value; e4m3 (FP8) one byte
// per value, rows padded to whole 64-byte K tiles (only the wgmma kernels read it).
enum class Storage : uint8_t { u8, s8, u4, s4, s32, f32, e4m3 };

const char* storage_name(Storage s);
inline bool is_packed(Storage s) { return s == Storage::u4 || s == Storage::s4; }
inline bool is_signed_storage(Storage s) {
  return s == Storage::s8 || s == Storage::s4 || s == Storage::s32 || s == Storage::f32 || s == Storage::e4m3;
}
// Bytes of one NHWC pixel row of `channels` values, padded to whole 32-bit words.
int64_t row_bytes(Storage s, int64_t channels);

// `native` keeps 4-bit activations and weights in 4 bits (two per byte) wherever every reader of
// the tensor can take them; `int8` stores every integer tensor in bytes: the same values, so the
// same outputs, at twice the traffic (the INT8 baseline of a 4-bit model).
enum class StorageMode { native, int8 };

// The channels of one K tile of the convolution kernel: 64 channels, 64 bytes at 8 bits or 32
// bytes at 4 bits. Weights are padded to whole tiles and output channels to whole 128-map blocks.
constexpr int64_t kTileChannels = 64;
constexpr int64_t kMapAlign = 128;
constexpr int64_t kArenaAlign = 256;

struct Value {
  std::string name;
  DType dtype = DType::u8;  // the graph's dtype (what the host sees)
  Storage storage = Storage::u8;
  int bits = 8;             // value bits (4 for the seed's u4 activations)
  int64_t c = 0, h = 1, w = 1;
  bool spatial = true;      // N x C x H x W in the graph (else N x C)
  int64_t row = 0;          // bytes per pixel
  int64_t arena_offset = 0; // bytes per image: the value of image batch lives at offset x batch
  int def = -1, last = -1;  // first writer and last reader, as step indices
  int64_t image_bytes() const { return h * w * row; }
};

// requantize: a nibble:Requantize no conv could fold (its factor, shift and range in `conv`).
// lut: an 8-bit value to e4m3 through a table of 256 codes (Step::lut); mean_quantize: the f32
// mean of each channel's whole plane quantized to 8 bits (Step::quant).
enum class StepKind { input, conv, max_pool, avg_pool, scale, requantize, lut, mean_quantize };

// How the convolution kernel gathers its activation tiles:
//   vec: the input row is a whole number of K tiles, so a tile lies inside one tap (16-byte copies);
//   taps: an input of one word per pixel (up to 4 channels at 8 bits, the stem): K runs over kernel
//     rows of kTapRow taps, each 4 bytes (taps past kw have zero weights);
//   gather: anything else, 4 bytes at a time with the tap found per copy.
enum class ConvLoad : uint8_t { vec, taps, gather };
constexpr int kTapRow = 8;

struct ConvStep {
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int ph_end = 0, pw_end = 0;  // padding after the last row and column (ONNX pads[2], pads[3])
  // The stem convolution reading an unfolded input (InputStep::unfold): its original kernel size,
  // 0 otherwise. kh, kw, strides and pads above then describe the convolution over the unfolded rows.
  int unfold_kh = 0, unfold_kw = 0;
  int64_t m = 0;               // output channels
  int64_t k_bytes = 0;         // kh x kw x input row bytes
  int64_t k_pad = 0;           // k_bytes rounded up to a whole K tile
  int64_t m_pad = 0;
  ConvLoad load = ConvLoad::vec;
  std::vector<int8_t> weights; // m_pad x k_pad; tap-major (kh, kw), then the input's row layout
  std::vector<int32_t> bias;   // m_pad
  bool relu = false;
  std::vector<uint16_t> factor;  // m_pad, empty for an s32 output
  // Per map: the smallest |acc| whose requantized value saturates on either side of the output
  // range. Filled only when sat x factor + 2^(shift-1) < 2^32 for every map, so that the kernel's
  // 32-bit requantization (clamp |acc| to sat first) is exact; empty otherwise
  // (quant::saturation_thresholds).
  std::vector<uint32_t> sat;
  // ReLU into an unsigned range: per map the largest acc whose requantized value is at most hi,
  // filled only where that value is hi itself for every map (a factor of at most 2^shift steps
  // through every value), so that clamping acc to it leaves no clamp after the requantization.
  std::vector<uint32_t> sat_top;
  int shift = 0;
  int64_t lo = 0, hi = 0;
  int res = -1;                 // residual value, -1 for none
  bool res_requant = false;     // the residual passes through a folded nibble:Requantize
  std::vector<uint16_t> res_factor;  // m_pad
  int res_shift = 0;
  int64_t res_lo = 0, res_hi = 0;
  // The folded residual requantization of every value the residual can hold lands inside
  // [res_lo, res_hi]: its clamp can be left out.
  bool res_in_range = false;
  // nibble:Fp8Conv: e4m3 input, `weights` hold e4m3 codes (the integer levels, or each level
  // times its group scale, rounded to e4m3 as the reference does), f32 output
  // y = f32(sum) x fscale[m] + fbias[m], then ReLU where `relu`.
  // With a residual (`res`, e4m3) the sum first adds f32(e4m3 value x fres_scale); an e4m3
  // output (the value's storage) holds e4m3(y / fout_scale), its channel padding zero.
  bool fp8 = false;
  std::vector<float> fscale, fbias;  // m_pad
  float fres_scale = 0.0f, fout_scale = 0.0f;
};

struct PoolStep {
  int kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
};

// The unfolded stem input. A convolution of stride 2 (rows) over an input of at most 4 channels
// (one word per pixel), kernel width up to kTapRow, reads its input through TMA-fed wgmma only in
// rows of 64 bytes: the input step then writes, for every pair of input rows and every output
// column, the kTapRow taps of both rows that the output column reads (2 x 8 taps x 4 bytes).
// Pixel (n, y2, ox) of 64 bytes holds at byte 32 half + 4 b + ch the value x[n][ch][y][x] with
//   y = 2 y2 - (pad_h % 2) + half,  x = ox x stride_w - pad_w + b   (zero outside the image),
// and the stem becomes a convolution of ceil(kh / 2) x 1 taps, stride 1, over H2 x OW pixels.
// Its weights are the `taps` layout of the original kernel (kernel row a at byte 32 a).
struct InputUnfold {
  bool on = false;
  int row_offset = 0;    // -(pad_h % 2)
  int stride_w = 1, pad_w = 0;
  int64_t h2 = 0, ow = 0;  // unfolded rows and columns
};

struct InputStep {
  DType host_dtype = DType::s8;  // what the caller passes (NCHW)
  bool quantize = false;         // nibble:QuantizeFloat folded in: f32 -> integer (or e4m3)
  bool e4m3 = false;             // the folded QuantizeFloat writes FP8
  std::vector<float> scale;      // 1 or C values
  int64_t lo = 0, hi = 0;
  InputUnfold unfold;
};

struct Step {
  StepKind kind = StepKind::input;
  std::string name;  // the graph node (or "input")
  std::string op;
  int x = -1, y = -1;
  ConvStep conv;
  PoolStep pool;
  InputStep input;
  std::vector<float> scale;  // StepKind::scale: out = x / scale[k]
  std::vector<uint8_t> lut;  // StepKind::lut: 256 e4m3 codes, by the input byte
  InputStep quant;           // StepKind::mean_quantize: scale (one), lo and hi of the output
  int64_t macs_per_image = 0;
  int64_t bytes_per_image = 0;  // the fewest bytes the step must move: inputs read once, output written once
};

struct Plan {
  std::string source;
  StorageMode mode = StorageMode::native;
  std::vector<Value> values;
  std::vector<Step> steps;
  int input_value = -1;
  std::string input_name;
  DType input_dtype = DType::s8;
  int64_t input_c = 0, input_h = 0, input_w = 0;
  std::vector<int> outputs;          // values, in the graph's output order
  std::vector<std::string> output_names;
  std::vector<bool> output_flat;     // a Flatten of an N x C x 1 x 1 value: returned as N x C
  int64_t arena_bytes_per_image = 0;
  int64_t weight_bytes = 0;
  int64_t macs_per_image = 0;
};

// Planning choices (for measurements; the defaults are the fastest measured).
struct PlanOptions {
  bool unfold_stem = true;  // InputUnfold where it applies
};

// Plans `graph` (a fused integer graph: nibble:IntConvFused, nibble:Requantize feeding residuals,
// MaxPool, nibble:IntAvgPool, Flatten, nibble:IntLinear, nibble:Scale, an input nibble:QuantizeFloat;
// nibble:Fp8Conv on an e4m3 input, with the Add of a DequantizeLinear'd e4m3 residual, the Relu
// and the QuantizeFloat to e4m3 after it fused; DequantizeLinear + QuantizeFloat from 8 bits to
// e4m3; a global AveragePool of f32 values + QuantizeFloat to 8 bits).
// Throws nibble::Error naming the model and node for anything the CUDA backend cannot run.
Plan make_plan(const Graph& graph, StorageMode mode, const PlanOptions& options = {});

// The unfolded stem input of `x` (N x C x H x W, u8 or s8, C <= 4) as the input step writes it
// (InputUnfold), for tests and host-side checks: N x h2 x ow pixels of 64 bytes.
std::vector<uint8_t> unfold_input(const Tensor& x, const InputUnfold& u);

// ConvStep::sat_top of requantizing with `factor` and `shift` into [0, hi] given the `sat`
// thresholds of that range; empty where some map's requantization skips hi.
std::vector<uint32_t> top_thresholds(const std::vector<uint16_t>& factor, int shift, int64_t hi,
                                     const std::vector<uint32_t>& sat);
// Whether requantizing every value of [vlo, vhi] with each of `factor` and `shift` lands inside
// [lo, hi] (ConvStep::res_in_range).
bool requantization_in_range(const std::vector<uint16_t>& factor, int shift, int64_t vlo, int64_t vhi, int64_t lo,
                             int64_t hi);

// The wgmma kernels' weights of a vec-mode conv with a 4-bit input (ConvArgs::wide_weights):
// s8, m_pad x (kh x kw x 2 x row) bytes, per tap 64-channel chunks whose 64 k slots follow the
// order in which the kernel widens packed activations (wgmma_channel). Empty for 8-bit inputs,
// whose weights the kernels read as they are.
std::vector<int8_t> wgmma_weights(const ConvStep& conv, const Value& x);
// The input channel (within its 64-channel chunk) of k slot `slot` (0..63) of that layout: slot
// 32 x half + 16 x nibble + 4 x t + j holds channel 32 x half + 8 x t + 2 x j + nibble.
inline int wgmma_channel(int slot) {
  const int half = slot / 32, q = slot % 32, nibble = q / 16, t = (q % 16) / 4, j = q % 4;
  return 32 * half + 8 * t + 2 * j + nibble;
}

// The direct epilogue's map order (ConvArgs::perm_weights): within each 64-map block, column
// c = 8j + 2t + e of the wgmma accumulator fragments (j < 8, t < 4, e < 2) computes map
// 16t + 2j + e, so that each thread of a quad holds 16 consecutive maps of each of its rows.
inline int wgmma_map_of_column(int c) { return 16 * ((c % 8) / 2) + 2 * (c / 8) + c % 2; }
// `w`, `rows` rows of `row_bytes` (rows a multiple of 64), with each 64-row block reordered in
// that order: row 64b + c of the result is row 64b + wgmma_map_of_column(c) of `w`.
std::vector<int8_t> permute_map_rows(const int8_t* w, int64_t rows, int64_t row_bytes);

// Host-side layout conversions (the device kernels follow the same layouts):
// `t` (N x C [x H x W] of integer dtype) to NHWC rows of `storage`.
std::vector<uint8_t> to_device_layout(const Tensor& t, Storage storage);
// NHWC rows back to the value's graph dtype and NCHW shape (N x C when `flat` or not spatial).
Tensor from_device_layout(const uint8_t* data, int64_t batch, const Value& v, bool flat = false);

}  // namespace nibble::cuda
