// nibble:IntConv and nibble:IntConvFused on the CPU: checks, activation layout and task grid shared by
// every instruction set; the ISA's run_task does the arithmetic.
#include "backends/cpu/int_conv.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backends/cpu/parallel.h"
#include "backends/ref/conv_common.h"
#include "backends/ref/int_ops.h"
#include "quant/requant.h"

namespace nibble::cpu {

namespace {

// The requantization attributes, when the node's epilogue is one the fast path implements
// exactly as ref::requantize_tensor does; nullopt sends the node to the reference kernel (which
// also reports any error).
struct Requant {
  int shift;
  int bits;
  bool is_signed;
};
std::optional<Requant> requant_attrs(const Node& node, const Tensor& factor, int64_t channels,
                                     const std::string& prefix = "") {
  if (factor.dtype() != DType::u16) return std::nullopt;
  const bool flat = factor.rank() == 1 && factor.dim(0) == channels;
  const bool nchw = factor.rank() == 4 && factor.dim(0) == 1 && factor.dim(1) == channels &&
                    factor.dim(2) == 1 && factor.dim(3) == 1;
  if (!flat && !nchw) return std::nullopt;
  const int64_t shift = node.attr_int(prefix + "shift", -1);
  const int64_t bits = node.attr_int(prefix + "bits", -1);
  if (shift < 0 || shift > 31 || bits < 1 || bits > 31) return std::nullopt;
  return Requant{static_cast<int>(shift), static_cast<int>(bits), node.attr_int(prefix + "signed", 0) != 0};
}

uint8_t max_u8(const uint8_t* x, int64_t n) {
  uint8_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// Elements readable past the end of a padded copy, for the vector reads of kSpans and kStride2.
constexpr int64_t kPaddedSlack = 64;

// The BlockKind of the nr pixels at `po` (see conv_job.h); `readable(offset)` says whether 32
// elements from pixel offset `offset` can be read for every tap and group.
template <typename Readable>
BlockKind classify_block(const int64_t* po, int64_t nr, ConvMode mode, Readable readable, uint8_t* span,
                         int64_t* anchor) {
  bool contiguous = true, stride2 = true, increasing = true;
  for (int64_t i = 1; i < nr; ++i) {
    contiguous = contiguous && po[i] == po[0] + i;
    stride2 = stride2 && po[i] == po[0] + 2 * i;
    increasing = increasing && po[i] > po[i - 1];
  }
  if (contiguous) return kContiguous;
  if (mode == ConvMode::s16s16) return stride2 && readable(po[0]) ? kStride2 : kGather;
  if (!increasing) return kGather;
  int64_t second = 0;
  for (int64_t i = 0; i < nr; ++i) {
    if (po[i] - po[0] < 32) {
      span[i] = static_cast<uint8_t>(po[i] - po[0]);
      continue;
    }
    if (second == 0) second = po[i] - po[0];
    if (po[i] - po[0] - second >= 32) return kGather;
    span[i] = static_cast<uint8_t>(32 + po[i] - po[0] - second);
  }
  if (!readable(po[0]) || !readable(po[0] + second)) return kGather;
  *anchor = second;
  return kSpans;
}

// x copied into zero-padded planes of T, N x C x (H + pads) x (W + pads).
// Only the padding is zeroed: every other element is written once (bytes copied whole).
// The copy is a flat tensor of T (u8 or s16), kPaddedSlack elements longer than the planes, from
// the tensor pool: the same sizes come back on every run.
template <typename T, typename X>
Tensor padded_copy(const X* x, int64_t planes, int64_t h, int64_t w, int64_t pad_top, int64_t pad_left,
                   int64_t padded_h, int64_t padded_w) {
  Tensor buffer = Tensor::uninitialized(sizeof(T) == 1 ? DType::u8 : DType::s16,
                                        {planes * padded_h * padded_w + kPaddedSlack});
  T* out = reinterpret_cast<T*>(buffer.bytes());
  std::fill(out + buffer.numel() - kPaddedSlack, out + buffer.numel(), T{0});
  const int64_t pad_right = padded_w - w - pad_left;
  // Planes in tasks of about 64 KiB: the pool's wake-up costs more than a small plane's copy.
  const int64_t per_task = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, padded_h * padded_w));
  parallel_for((planes + per_task - 1) / per_task, [&](int64_t t) {
    for (int64_t c = t * per_task; c < std::min(planes, (t + 1) * per_task); ++c) {
      T* plane = out + c * padded_h * padded_w;
      std::fill(plane, plane + pad_top * padded_w, T{0});
      std::fill(plane + (pad_top + h) * padded_w, plane + padded_h * padded_w, T{0});
      for (int64_t i = 0; i < h; ++i) {
        const X* src = x + (c * h + i) * w;
        T* row = plane + (i + pad_top) * padded_w;
        std::fill(row, row + pad_left, T{0});
        if constexpr (sizeof(T) == sizeof(X)) {
          std::memcpy(row + pad_left, src, sizeof(T) * static_cast<size_t>(w));
        } else {
          for (int64_t j = 0; j < w; ++j) row[pad_left + j] = static_cast<T>(src[j]);
        }
        std::fill(row + pad_left + w, row + pad_left + w + pad_right, T{0});
      }
    }
  });
  return buffer;
}

}  // namespace

void int_conv_cpu(const Node& node, const ref::Inputs& in, ref::Outputs& out, const ConvIsa& u8s8_isa,
                  bool fused) {
  const ref::KernelFn reference = fused ? ref::int_conv_fused : ref::int_conv;
  const Tensor* xp = ref::optional_input(in, 0);
  const Tensor* wp = ref::optional_input(in, 1);
  const Tensor* bp = ref::optional_input(in, 2);
  if (!xp || !wp || !bp || (xp->dtype() != DType::u8 && xp->dtype() != DType::s8) ||
      (wp->dtype() != DType::s8 && wp->dtype() != DType::s4) || xp->rank() != 4 || wp->rank() != 4) {
    return reference(node, in, out);
  }
  const Tensor& x = *xp;
  const Tensor& w = *wp;
  const ref::ConvProblem p = ref::make_conv_problem(node, x, w);
  ref::check_channel_vector(node, *bp, p.out_channels, "bias");
  const Shape y_shape = p.output_shape();
  const int64_t out_h = y_shape[2], out_w = y_shape[3], plane = out_h * out_w;
  if (p.batch == 0 || p.out_channels == 0 || plane == 0 || w.numel() == 0) return reference(node, in, out);

  ConvEpilogue ep;
  std::optional<Requant> rq;
  std::vector<uint32_t> sat, res_sat;
  if (fused) {
    const Tensor* res = ref::optional_input(in, 3);
    const Tensor* res_src = ref::optional_input(in, 5);
    if (res && res_src) return reference(node, in, out);
    if (res) {
      if (res->dtype() != DType::s32 || res->shape() != y_shape) return reference(node, in, out);
      ep.residual = res->data<int32_t>();
    }
    if (res_src) {
      const Tensor* rf = ref::optional_input(in, 6);
      if (!rf || (res_src->dtype() != DType::u8 && res_src->dtype() != DType::s8) || res_src->shape() != y_shape) {
        return reference(node, in, out);
      }
      const std::optional<Requant> rr = requant_attrs(node, *rf, p.out_channels, "res_");
      // The unfolded graph adds an s32 residual: anything narrower is the reference's error.
      if (!rr || quant::storage_dtype(rr->bits, rr->is_signed) != DType::s32) return reference(node, in, out);
      ep.res_src = res_src->bytes();
      ep.res_src_signed = res_src->dtype() == DType::s8;
      ep.res_factor = rf->data<uint16_t>();
      ep.res_shift = rr->shift;
      ep.res_hi = quant::output_range(rr->bits, rr->is_signed).hi;
      ep.res_is_signed = rr->is_signed;
      res_sat = quant::saturation_thresholds(std::vector<uint16_t>(ep.res_factor, ep.res_factor + p.out_channels),
                                             rr->shift, rr->is_signed ? -ep.res_hi : 0, ep.res_hi);
      if (!res_sat.empty()) ep.res_sat = res_sat.data();
    }
    ep.relu = node.attr_int("relu", 0) != 0;
    if (const Tensor* f = ref::optional_input(in, 4)) {
      rq = requant_attrs(node, *f, p.out_channels);
      if (!rq) return reference(node, in, out);
      ep.factor = f->data<uint16_t>();
      ep.shift = rq->shift;
      ep.hi = quant::output_range(rq->bits, rq->is_signed).hi;
      ep.is_signed = rq->is_signed;
      ep.out_dtype = quant::storage_dtype(rq->bits, rq->is_signed);
      const uint16_t* fp = f->data<uint16_t>();
      sat = quant::saturation_thresholds(std::vector<uint16_t>(fp, fp + p.out_channels), rq->shift,
                                         ep.is_signed ? -ep.hi : 0, ep.hi);
      if (!sat.empty()) ep.sat = sat.data();
    }
  }
  std::vector<int32_t> bias(static_cast<size_t>(p.out_channels));
  for (int64_t m = 0; m < p.out_channels; ++m)
    bias[static_cast<size_t>(m)] = static_cast<int32_t>(bp->get(m));
  ep.bias = bias.data();

  // u8 activations take the u8 x s8 kernels unless s16 pair sums could saturate.
  std::shared_ptr<const PackedConvWeights> packed;
  ConvJob job;
  if (x.dtype() == DType::u8 || (x.dtype() == DType::s8 && u8s8_isa.s8_bytes)) {
    packed = packed_conv_weights(w, p.group, u8s8_isa.mr, ConvMode::u8s8, u8s8_isa.tile_layout);
    if (x.dtype() == DType::s8 || u8s8_isa.u8s8_always_exact ||
        maddubs_is_exact(max_u8(x.data<uint8_t>(), x.numel()), packed->max_abs)) {
      job.mode = ConvMode::u8s8;
      job.x_signed = x.dtype() == DType::s8;
    } else {
      packed.reset();
    }
  }
  const ConvIsa& isa = packed || !u8s8_isa.s16s16_isa ? u8s8_isa : *u8s8_isa.s16s16_isa;
  if (!packed) {
    job.mode = ConvMode::s16s16;
    packed = packed_conv_weights(w, p.group, isa.mr, ConvMode::s16s16);
  }

  const ref::Window& win = p.window;
  const int64_t in_h = win.input[0], in_w = win.input[1];
  const int64_t k_h = win.kernel[0], k_w = win.kernel[1];
  const bool padded = win.pad_begin[0] || win.pad_begin[1] || win.pad_end[0] || win.pad_end[1];
  const int64_t src_h = in_h + win.pad_begin[0] + win.pad_end[0];
  const int64_t src_w = in_w + win.pad_begin[1] + win.pad_end[1];
  const int64_t planes = p.batch * p.in_channels;
  Tensor src_u8, src_s16;  // padded copies
  if (job.mode == ConvMode::u8s8) {
    if (padded) {
      // Bytes as they are (u8, or s8 with x_signed): zero padding is 0 either way.
      src_u8 = padded_copy<uint8_t>(x.bytes(), planes, in_h, in_w, win.pad_begin[0], win.pad_begin[1],
                                    src_h, src_w);
      job.src = src_u8.bytes();
    } else {
      job.src = x.bytes();
    }
  } else if (x.dtype() == DType::u8) {
    src_s16 = padded_copy<int16_t>(x.data<uint8_t>(), planes, in_h, in_w, win.pad_begin[0], win.pad_begin[1],
                                   src_h, src_w);
    job.src = src_s16.bytes();
  } else {
    src_s16 = padded_copy<int16_t>(x.data<int8_t>(), planes, in_h, in_w, win.pad_begin[0], win.pad_begin[1],
                                   src_h, src_w);
    job.src = src_s16.bytes();
  }
  const int64_t channel_stride = src_h * src_w;
  const int64_t channels_per_group = p.in_channels / p.group;
  const int64_t image_stride = p.in_channels * channel_stride;
  job.group_stride = channels_per_group * channel_stride;

  const int lanes = job.mode == ConvMode::u8s8 ? 4 : 2;
  std::vector<int64_t> k_offset(static_cast<size_t>(packed->k_steps * lanes), 0);
  for (int64_t c = 0, k = 0; c < channels_per_group; ++c) {
    for (int64_t kh = 0; kh < k_h; ++kh) {
      for (int64_t kw = 0; kw < k_w; ++kw, ++k) {
        k_offset[static_cast<size_t>(k)] =
            c * channel_stride + kh * win.dilations[0] * src_w + kw * win.dilations[1];
      }
    }
  }
  const int64_t nr = isa.nr;
  job.plane = plane;
  job.pixels = p.batch * plane;
  job.pixel_blocks = (job.pixels + nr - 1) / nr;
  std::vector<int64_t> pixel_offset(static_cast<size_t>(job.pixel_blocks * nr), 0);
  for (int64_t n = 0, q = 0; n < p.batch; ++n) {
    for (int64_t oh = 0; oh < out_h; ++oh) {
      for (int64_t ow = 0; ow < out_w; ++ow, ++q) {
        pixel_offset[static_cast<size_t>(q)] =
            n * image_stride + oh * win.strides[0] * src_w + ow * win.strides[1];
      }
    }
  }
  // Only whole blocks take the vector reads.
  const int64_t src_elems = job.mode == ConvMode::u8s8
                                ? (padded ? src_u8.numel() : x.numel())
                                : src_s16.numel();
  const int64_t max_k_offset = *std::max_element(k_offset.begin(), k_offset.end());
  const int64_t last_group = (p.group - 1) * job.group_stride;
  auto readable = [&](int64_t offset) { return last_group + max_k_offset + offset + 32 <= src_elems; };
  std::vector<uint8_t> block_kind(static_cast<size_t>(job.pixel_blocks), kGather);
  std::vector<uint8_t> block_span(static_cast<size_t>(job.pixel_blocks * nr), 0);
  std::vector<int64_t> block_anchor(static_cast<size_t>(job.pixel_blocks), 0);
  for (int64_t b = 0; b < job.pixel_blocks && (b + 1) * nr <= job.pixels; ++b) {
    block_kind[static_cast<size_t>(b)] =
        classify_block(pixel_offset.data() + b * nr, nr, job.mode, readable, block_span.data() + b * nr,
                       &block_anchor[static_cast<size_t>(b)]);
  }
  job.k_offset = k_offset.data();
  job.pixel_offset = pixel_offset.data();
  job.block_kind = block_kind.data();
  job.block_span = block_span.data();
  job.block_anchor = block_anchor.data();

  job.group = p.group;
  job.out_channels = p.out_channels;
  job.weights = packed.get();

  // Tasks of up to 64 pixels; when groups x pixel chunks give the threads too little to share (the
  // 7 x 7 layers of a single image), the maps are split too.
  job.blocks_per_chunk = std::min<int64_t>(job.pixel_blocks, std::max<int64_t>(1, 64 / nr));
  job.pixel_chunks = (job.pixel_blocks + job.blocks_per_chunk - 1) / job.blocks_per_chunk;
  const int64_t want_tasks = 4 * static_cast<int64_t>(thread_count());
  const int64_t m_blocks = packed->m_blocks;
  const int64_t chunks = job.chunks();
  const int64_t split = chunks >= want_tasks ? 1 : std::min(m_blocks, (want_tasks + chunks - 1) / chunks);
  job.m_blocks_per_chunk = (m_blocks + split - 1) / split;
  job.m_chunks = (m_blocks + job.m_blocks_per_chunk - 1) / job.m_blocks_per_chunk;

  Tensor y = Tensor::uninitialized(ep.out_dtype, y_shape);  // the epilogue writes every element
  ep.out = y.bytes();
  job.epilogue = ep;
  // Split maps share one panel: pack it once up front rather than once per task (the panels of
  // so few pixel chunks are small).
  std::vector<uint8_t> panels;
  if (job.m_chunks > 1) {
    panels.resize(static_cast<size_t>(chunks * job.blocks_per_chunk * packed->k_steps * nr * 4));
    job.panels = panels.data();
    parallel_for(chunks, [&](int64_t chunk) { isa.pack_chunk(job, chunk); });
  }
  parallel_for(job.tasks(), [&](int64_t t) { isa.run_task(job, t); });
  out.at(0) = std::move(y);
}

}  // namespace nibble::cpu
