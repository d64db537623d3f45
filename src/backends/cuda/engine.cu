// CudaEngine: the plan on the device. Constants are uploaded once; each context owns a stream,
// an activation arena, pinned host buffers and one CUDA graph per batch size.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "backends/cuda/common.cuh"
#include "backends/cuda/kernels.cuh"
#include "nibble/cuda_engine.h"
#include "nibble/error.h"

namespace nibble {

namespace cuda {

void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  throw Error("", fmt::format("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(err), cudaGetErrorString(err),
                              call, base ? base + 1 : file, line));
}

namespace {

// Device constants of one conv step.
struct DevConv {
  const int8_t* weights = nullptr;
  const int8_t* wide_weights = nullptr;  // the wgmma kernels' weights (nullptr: not uploaded)
  const int8_t* perm_weights = nullptr;  // the same in the direct epilogue's map order (nullptr: not uploaded)
  int64_t wide_k = 0;
  int kernel = -1;                       // index into the conv kernel table
  const int32_t* bias = nullptr;
  const uint16_t* factor = nullptr;
  const uint16_t* res_factor = nullptr;
  const uint32_t* sat = nullptr;
  const uint32_t* sat_top = nullptr;
  const float* fscale = nullptr;  // FP8 convolutions
  const float* fbias = nullptr;
};

// The split-K workspace of a context's stream (ConvArgs::split_partials): partial sums for up to
// kSplitTiles output tiles, their arrival counters zeroed once (each launch leaves them zero).
constexpr int64_t kSplitBytes = int64_t{16} << 20;
constexpr int64_t kSplitTiles = 1024;

struct Context {
  cudaStream_t stream = nullptr;
  uint8_t* arena = nullptr;
  int32_t* split_partials = nullptr;
  uint32_t* split_arrivals = nullptr;
  uint8_t* d_input = nullptr;
  uint8_t* h_input = nullptr;               // pinned
  std::vector<uint8_t*> h_outputs;          // pinned, one per graph output
  cudaEvent_t ev[4] = {nullptr, nullptr, nullptr, nullptr};  // before H2D, before compute, after compute, after D2H
  std::map<int64_t, cudaGraphExec_t> graphs;
  int64_t pending_batch = 0;  // a submitted query not yet collected
  std::chrono::steady_clock::time_point submitted;
};

double elapsed_ms(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  NIBBLE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

}  // namespace

}  // namespace cuda

using cuda::Context;
using cuda::DevConv;
using cuda::Plan;
using cuda::Step;
using cuda::StepKind;
using cuda::Value;

struct CudaEngine::Impl {
  Graph graph;
  CudaEngineOptions options;
  Plan plan;
  std::string device;
  int sm = 0;  // compute capability, major x 10 + minor
  uint8_t* constants = nullptr;
  std::vector<DevConv> convs;       // per step (unused entries for other steps)
  std::vector<float*> step_floats;  // per step: input scales, Scale's divisors or mean_quantize's scale
  std::vector<const uint8_t*> step_luts;  // per step: StepKind::lut's table
  std::vector<Context> contexts;
  int64_t input_bytes_per_image = 0;

  Impl(Graph g, const CudaEngineOptions& o) : graph(std::move(g)), options(o) {
    if (options.max_batch < 1) fail(graph.source, "max batch must be at least 1");
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      cudaGetLastError();
      fail(graph.source, "no CUDA device is available");
    }
    cudaDeviceProp prop{};
    NIBBLE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    if (prop.major < 8) fail(graph.source, "{} (sm_{}{}) is too old: the CUDA backend needs sm_80 or newer", prop.name, prop.major, prop.minor);
    device = fmt::format("{} (sm_{}{})", prop.name, prop.major, prop.minor);
    sm = prop.major * 10 + prop.minor;
    if (options.conv_kernels != "auto" && options.conv_kernels != "wgmma" && options.conv_kernels != "mma") {
      fail(graph.source, "unknown convolution kernel family '{}' (auto, wgmma or mma)", options.conv_kernels);
    }
    NIBBLE_CUDA_CHECK(cudaSetDevice(0));
    cuda::PlanOptions plan_options;
    // NIBBLE_CUDA_UNFOLD_STEM=0 keeps the stem on its plain input (for measurements).
    if (const char* e = std::getenv("NIBBLE_CUDA_UNFOLD_STEM"); e && std::string(e) == "0") plan_options.unfold_stem = false;
    plan = cuda::make_plan(graph, options.int8_storage ? cuda::StorageMode::int8 : cuda::StorageMode::native, plan_options);
    upload_constants();
    choose_kernels();
    input_bytes_per_image = plan.input_c * plan.input_h * plan.input_w * static_cast<int64_t>(dtype_storage_bytes(plan.input_dtype, 1));
    contexts.resize(static_cast<size_t>(std::max(1, options.contexts)));
    for (Context& c : contexts) make_context(c);
  }

  ~Impl() {
    for (Context& c : contexts) {
      for (auto& [b, g] : c.graphs) cudaGraphExecDestroy(g);
      for (cudaEvent_t e : c.ev) if (e) cudaEventDestroy(e);
      cudaFree(c.arena);
      cudaFree(c.split_partials);
      cudaFree(c.split_arrivals);
      cudaFree(c.d_input);
      cudaFreeHost(c.h_input);
      for (uint8_t* h : c.h_outputs) cudaFreeHost(h);
      if (c.stream) cudaStreamDestroy(c.stream);
    }
    cudaFree(constants);
  }

  void upload_constants() {
    // One allocation for every constant, each piece 256-byte aligned.
    std::vector<uint8_t> host;
    auto put = [&](const void* data, size_t bytes) {
      const size_t off = (host.size() + 255) / 256 * 256;
      host.resize(off + bytes);
      if (bytes) std::memcpy(host.data() + off, data, bytes);
      return off;
    };
    struct Offsets {
      size_t w = 0, b = 0, perm = SIZE_MAX, f = SIZE_MAX, rf = SIZE_MAX, fl = SIZE_MAX, sat = SIZE_MAX, top = SIZE_MAX, wide = SIZE_MAX;
      size_t fs = SIZE_MAX, fb = SIZE_MAX;  // FP8 convolutions: f32 scale and bias
      size_t lut = SIZE_MAX;                // StepKind::lut: 256 e4m3 codes
    };
    // The wgmma kernels run on sm_90 only: elsewhere their weights are not uploaded.
    const bool wgmma = sm == 90 && options.conv_kernels != "mma";
    // NIBBLE_WGMMA_PERMUTE=1: the direct epilogue in the permuted map order (conv_wgmma.cu,
    // direct_epilogue_perm), which uploads a second copy of the wgmma weights. Opt-in until it has
    // been measured against the plain order on a GPU (docs/performance.md).
    const char* pe = std::getenv("NIBBLE_WGMMA_PERMUTE");
    const bool permute_maps = pe && std::string(pe) == "1";
    std::vector<Offsets> offs(plan.steps.size());
    for (size_t s = 0; s < plan.steps.size(); ++s) {
      const Step& st = plan.steps[s];
      Offsets& o = offs[s];
      if (st.kind == StepKind::conv) {
        const auto& c = st.conv;
        o.w = put(c.weights.data(), c.weights.size());
        if (wgmma) {
          const Value& x = plan.values[static_cast<size_t>(st.x)];
          const std::vector<int8_t> wide = cuda::wgmma_weights(c, x);
          if (!wide.empty()) o.wide = put(wide.data(), wide.size());
          // The direct epilogue's copy (map order of permute_map_rows) of what the wgmma kernels read.
          if (permute_maps && !c.fp8 && c.load == cuda::ConvLoad::vec && (!wide.empty() || !cuda::is_packed(x.storage))) {
            const std::vector<int8_t> perm =
                wide.empty() ? cuda::permute_map_rows(c.weights.data(), c.m_pad, c.k_pad)
                             : cuda::permute_map_rows(wide.data(), c.m_pad, static_cast<int64_t>(wide.size()) / c.m_pad);
            o.perm = put(perm.data(), perm.size());
          }
        }
        o.b = put(c.bias.data(), c.bias.size() * 4);
        if (!c.factor.empty()) o.f = put(c.factor.data(), c.factor.size() * 2);
        if (!c.res_factor.empty()) o.rf = put(c.res_factor.data(), c.res_factor.size() * 2);
        if (!c.sat.empty()) o.sat = put(c.sat.data(), c.sat.size() * 4);
        if (!c.sat_top.empty()) o.top = put(c.sat_top.data(), c.sat_top.size() * 4);
        if (c.fp8) {
          o.fs = put(c.fscale.data(), c.fscale.size() * 4);
          o.fb = put(c.fbias.data(), c.fbias.size() * 4);
        }
      } else if (st.kind == StepKind::requantize) {
        o.f = put(st.conv.factor.data(), st.conv.factor.size() * 2);
      } else if (st.kind == StepKind::lut) {
        o.lut = put(st.lut.data(), st.lut.size());
      } else if (st.kind == StepKind::mean_quantize) {
        o.fl = put(st.quant.scale.data(), st.quant.scale.size() * 4);
      } else if (st.kind == StepKind::input && st.input.quantize) {
        o.fl = put(st.input.scale.data(), st.input.scale.size() * 4);
      } else if (st.kind == StepKind::scale) {
        o.fl = put(st.scale.data(), st.scale.size() * 4);
      }
    }
    NIBBLE_CUDA_CHECK(cudaMalloc(&constants, std::max<size_t>(host.size(), 256)));
    NIBBLE_CUDA_CHECK(cudaMemcpy(constants, host.data(), host.size(), cudaMemcpyHostToDevice));
    convs.resize(plan.steps.size());
    step_floats.assign(plan.steps.size(), nullptr);
    step_luts.assign(plan.steps.size(), nullptr);
    for (size_t s = 0; s < plan.steps.size(); ++s) {
      const Offsets& o = offs[s];
      if (o.f != SIZE_MAX) convs[s].factor = reinterpret_cast<const uint16_t*>(constants + o.f);
      if (plan.steps[s].kind == StepKind::conv) {
        convs[s].weights = reinterpret_cast<const int8_t*>(constants + o.w);
        const Value& x = plan.values[static_cast<size_t>(plan.steps[s].x)];
        if (o.wide != SIZE_MAX) {
          convs[s].wide_weights = reinterpret_cast<const int8_t*>(constants + o.wide);
          convs[s].wide_k = plan.steps[s].conv.kh * plan.steps[s].conv.kw * x.row * 2;
        } else if (wgmma && !cuda::is_packed(x.storage)) {
          convs[s].wide_weights = convs[s].weights;  // 8-bit inputs: the same layout
          convs[s].wide_k = plan.steps[s].conv.k_pad;
        }
        if (o.perm != SIZE_MAX) convs[s].perm_weights = reinterpret_cast<const int8_t*>(constants + o.perm);
        convs[s].bias = reinterpret_cast<const int32_t*>(constants + o.b);
        if (o.sat != SIZE_MAX) convs[s].sat = reinterpret_cast<const uint32_t*>(constants + o.sat);
        if (o.top != SIZE_MAX) convs[s].sat_top = reinterpret_cast<const uint32_t*>(constants + o.top);
        if (o.rf != SIZE_MAX) convs[s].res_factor = reinterpret_cast<const uint16_t*>(constants + o.rf);
        if (o.fs != SIZE_MAX) convs[s].fscale = reinterpret_cast<const float*>(constants + o.fs);
        if (o.fb != SIZE_MAX) convs[s].fbias = reinterpret_cast<const float*>(constants + o.fb);
      }
      if (o.fl != SIZE_MAX) step_floats[s] = reinterpret_cast<float*>(constants + o.fl);
      if (o.lut != SIZE_MAX) step_luts[s] = constants + o.lut;
    }
  }

  void make_context(Context& c) {
    NIBBLE_CUDA_CHECK(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
    const int64_t b = options.max_batch;
    NIBBLE_CUDA_CHECK(cudaMalloc(&c.arena, static_cast<size_t>(plan.arena_bytes_per_image * b)));
    // Zeroed once: channel padding then reads as zeros (their weights are zero anyway).
    NIBBLE_CUDA_CHECK(cudaMemset(c.arena, 0, static_cast<size_t>(plan.arena_bytes_per_image * b)));
    NIBBLE_CUDA_CHECK(cudaMalloc(&c.split_partials, static_cast<size_t>(cuda::kSplitBytes)));
    NIBBLE_CUDA_CHECK(cudaMalloc(&c.split_arrivals, static_cast<size_t>(cuda::kSplitTiles) * 4));
    NIBBLE_CUDA_CHECK(cudaMemset(c.split_arrivals, 0, static_cast<size_t>(cuda::kSplitTiles) * 4));
    NIBBLE_CUDA_CHECK(cudaMalloc(&c.d_input, static_cast<size_t>(input_bytes_per_image * b)));
    NIBBLE_CUDA_CHECK(cudaMallocHost(&c.h_input, static_cast<size_t>(input_bytes_per_image * b)));
    for (int o : plan.outputs) {
      uint8_t* h = nullptr;
      NIBBLE_CUDA_CHECK(cudaMallocHost(&h, static_cast<size_t>(plan.values[static_cast<size_t>(o)].image_bytes() * b)));
      c.h_outputs.push_back(h);
    }
    for (cudaEvent_t& e : c.ev) NIBBLE_CUDA_CHECK(cudaEventCreate(&e));
  }

  uint8_t* value_ptr(const Context& c, int v, int64_t batch) const { return value_ptr(c.arena, v, batch); }
  uint8_t* value_ptr(uint8_t* arena, int v, int64_t batch) const {
    return arena + plan.values[static_cast<size_t>(v)].arena_offset * batch;
  }

  // The kernel arguments of conv step `s` for `batch` images in `arena` (and the split-K
  // workspace of context `c`, where given).
  cuda::ConvArgs conv_args(uint8_t* arena, size_t s, int64_t batch, const Context* c = nullptr) const {
    const Step& st = plan.steps[s];
    const Value& x = plan.values[static_cast<size_t>(st.x)];
    const Value& y = plan.values[static_cast<size_t>(st.y)];
    const auto& k = st.conv;
    cuda::ConvArgs a;
    a.x = value_ptr(arena, st.x, batch);
    a.x_storage = x.storage;
    a.x_row = x.row;
    a.h = static_cast<int>(x.h);
    a.w = static_cast<int>(x.w);
    a.oh = static_cast<int>(y.h);
    a.ow = static_cast<int>(y.w);
    a.pixels = batch * y.h * y.w;
    a.kh = k.kh; a.kw = k.kw; a.sh = k.sh; a.sw = k.sw; a.ph = k.ph; a.pw = k.pw; a.dh = k.dh; a.dw = k.dw;
    a.ph_end = k.ph_end;
    a.pw_end = k.pw_end;
    a.weights = convs[s].weights;
    a.k_bytes = k.k_bytes;
    a.k_pad = k.k_pad;
    a.m = static_cast<int>(k.m);
    a.m_pad = k.m_pad;
    a.wide_weights = convs[s].wide_weights;
    a.wide_k = convs[s].wide_k;
    a.perm_weights = convs[s].perm_weights;
    a.load = k.load;
    a.bias = convs[s].bias;
    a.fscale = convs[s].fscale;
    a.fbias = convs[s].fbias;
    a.fres_scale = k.fres_scale;
    a.fout_scale = k.fout_scale;
    a.fout_inv = k.fout_scale > 0.0f ? 1.0f / k.fout_scale : 0.0f;
    a.relu = k.relu;
    a.factor = convs[s].factor;
    a.sat = convs[s].sat;
    a.sat_top = convs[s].sat_top;
    a.shift = k.shift;
    a.lo = k.lo;
    a.hi = k.hi;
    a.y = value_ptr(arena, st.y, batch);
    a.y_storage = y.storage;
    a.y_row = y.row;
    if (c) {
      a.split_partials = c->split_partials;
      a.split_bytes = cuda::kSplitBytes;
      a.split_arrivals = c->split_arrivals;
      a.split_tiles = cuda::kSplitTiles;
    }
    if (k.res >= 0) {
      const Value& r = plan.values[static_cast<size_t>(k.res)];
      a.res = value_ptr(arena, k.res, batch);
      a.res_storage = r.storage;
      a.res_row = r.row;
      a.res_factor = convs[s].res_factor;
      a.res_shift = k.res_shift;
      a.res_lo = k.res_lo;
      a.res_hi = k.res_hi;
      a.res_in_range = k.res_in_range;
    }
    return a;
  }

  // One kernel per conv step from the table, for the largest batch (the choice depends on the
  // layer, the device and the requested family, not on the batch).
  void choose_kernels() {
    for (size_t s = 0; s < plan.steps.size(); ++s) {
      if (plan.steps[s].kind != StepKind::conv) continue;
      const cuda::ConvArgs a = conv_args(nullptr, s, options.max_batch);
      convs[s].kernel = cuda::choose_conv_kernel(a, sm, options.conv_kernels.c_str());
      if (convs[s].kernel < 0) fail(graph.source, "no convolution kernel takes {} on {}", plan.steps[s].name, device);
    }
  }

  // Launches step `s` for `batch` images on the context's stream; returns the kernel's name.
  const char* launch_step(const Context& c, size_t s, int64_t batch) const {
    const Step& st = plan.steps[s];
    const Value& y = plan.values[static_cast<size_t>(st.y)];
    switch (st.kind) {
      case StepKind::input:
        cuda::launch_input(c.d_input, st.input.host_dtype, batch, plan.input_c, plan.input_h, plan.input_w,
                           step_floats[s], static_cast<int64_t>(st.input.scale.size()), st.input.lo, st.input.hi,
                           value_ptr(c, st.y, batch), y.storage, y.row, st.input.unfold, c.stream);
        return st.input.unfold.on ? "input_unfold_stem" : "input_nchw_to_nhwc";
      case StepKind::conv: {
        int count = 0;
        const cuda::ConvKernel* table = cuda::conv_kernels(&count);
        return table[convs[s].kernel].launch(conv_args(c.arena, s, batch, &c), c.stream);
      }
      case StepKind::max_pool: {
        const Value& x = plan.values[static_cast<size_t>(st.x)];
        cuda::launch_max_pool(value_ptr(c, st.x, batch), value_ptr(c, st.y, batch), x.storage, x.row, batch,
                              static_cast<int>(x.h), static_cast<int>(x.w), static_cast<int>(y.h),
                              static_cast<int>(y.w), st.pool, c.stream);
        return "max_pool";
      }
      case StepKind::avg_pool: {
        const Value& x = plan.values[static_cast<size_t>(st.x)];
        cuda::launch_avg_pool(value_ptr(c, st.x, batch), value_ptr(c, st.y, batch), x.row, x.c, batch,
                              static_cast<int>(x.h), static_cast<int>(x.w), static_cast<int>(y.h),
                              static_cast<int>(y.w), st.pool, c.stream);
        return "avg_pool";
      }
      case StepKind::requantize: {
        const Value& x = plan.values[static_cast<size_t>(st.x)];
        cuda::launch_requantize(value_ptr(c, st.x, batch), x.storage, x.row, value_ptr(c, st.y, batch), y.storage, y.row,
                                y.c, batch * y.h * y.w, convs[s].factor, st.conv.shift, st.conv.lo, st.conv.hi, c.stream);
        return "requantize";
      }
      case StepKind::lut: {
        const Value& x = plan.values[static_cast<size_t>(st.x)];
        cuda::launch_lut_e4m3(value_ptr(c, st.x, batch), x.row, value_ptr(c, st.y, batch), y.row, y.c,
                              batch * y.h * y.w, step_luts[s], c.stream);
        return "lut_e4m3";
      }
      case StepKind::mean_quantize: {
        const Value& x = plan.values[static_cast<size_t>(st.x)];
        cuda::launch_mean_quantize(reinterpret_cast<const float*>(value_ptr(c, st.x, batch)), x.row, x.c, batch,
                                   x.h * x.w, step_floats[s], st.quant.lo, st.quant.hi, value_ptr(c, st.y, batch), y.row,
                                   c.stream);
        return "mean_quantize";
      }
      case StepKind::scale:
        cuda::launch_scale(reinterpret_cast<const int32_t*>(value_ptr(c, st.x, batch)),
                           reinterpret_cast<float*>(value_ptr(c, st.y, batch)), step_floats[s], batch, y.c, c.stream);
        return "scale";
    }
    return "?";
  }

  cudaGraphExec_t graph_for(Context& c, int64_t batch) {
    auto it = c.graphs.find(batch);
    if (it != c.graphs.end()) return it->second;
    // Kernels configure their shared memory on first use, which cannot happen inside a capture:
    // run the steps once directly first.
    for (size_t s = 0; s < plan.steps.size(); ++s) launch_step(c, s, batch);
    NIBBLE_CUDA_CHECK(cudaStreamSynchronize(c.stream));
    cudaGraph_t g = nullptr;
    NIBBLE_CUDA_CHECK(cudaStreamBeginCapture(c.stream, cudaStreamCaptureModeThreadLocal));
    try {
      for (size_t s = 0; s < plan.steps.size(); ++s) launch_step(c, s, batch);
    } catch (...) {
      cudaStreamEndCapture(c.stream, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    NIBBLE_CUDA_CHECK(cudaStreamEndCapture(c.stream, &g));
    cudaGraphExec_t exec = nullptr;
    NIBBLE_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    cudaGraphDestroy(g);
    c.graphs[batch] = exec;
    return exec;
  }

  // Copies the context's pinned input in, replays the graph, copies the outputs back.
  void submit(Context& c, int64_t batch) {
    cudaGraphExec_t exec = graph_for(c, batch);
    c.submitted = std::chrono::steady_clock::now();
    NIBBLE_CUDA_CHECK(cudaEventRecord(c.ev[0], c.stream));
    NIBBLE_CUDA_CHECK(cudaMemcpyAsync(c.d_input, c.h_input, static_cast<size_t>(input_bytes_per_image * batch),
                                      cudaMemcpyHostToDevice, c.stream));
    NIBBLE_CUDA_CHECK(cudaEventRecord(c.ev[1], c.stream));
    NIBBLE_CUDA_CHECK(cudaGraphLaunch(exec, c.stream));
    NIBBLE_CUDA_CHECK(cudaEventRecord(c.ev[2], c.stream));
    for (size_t i = 0; i < plan.outputs.size(); ++i) {
      const int v = plan.outputs[i];
      NIBBLE_CUDA_CHECK(cudaMemcpyAsync(c.h_outputs[i], value_ptr(c, v, batch),
                                        static_cast<size_t>(plan.values[static_cast<size_t>(v)].image_bytes() * batch),
                                        cudaMemcpyDeviceToHost, c.stream));
    }
    NIBBLE_CUDA_CHECK(cudaEventRecord(c.ev[3], c.stream));
    c.pending_batch = batch;
  }

  std::vector<Tensor> run(const std::vector<Tensor>& inputs) {
    if (inputs.size() != 1) fail(graph.source, "the model takes 1 input, {} given", inputs.size());
    const Tensor& x = inputs[0];
    if (x.dtype() != plan.input_dtype) {
      fail(graph.source, "input '{}' must be {}, got {}", plan.input_name, dtype_name(plan.input_dtype), dtype_name(x.dtype()));
    }
    if (x.rank() != 4 || x.dim(1) != plan.input_c || x.dim(2) != plan.input_h || x.dim(3) != plan.input_w || x.dim(0) < 1) {
      fail(graph.source, "input '{}' must have shape [N, {}, {}, {}], got {}", plan.input_name, plan.input_c,
           plan.input_h, plan.input_w, shape_str(x.shape()));
    }
    const int64_t total = x.dim(0);
    std::vector<Tensor> outs;
    for (size_t i = 0; i < plan.outputs.size(); ++i) {
      const Value& v = plan.values[static_cast<size_t>(plan.outputs[i])];
      outs.emplace_back(v.dtype, v.spatial && !plan.output_flat[i] ? Shape{total, v.c, v.h, v.w} : Shape{total, v.c});
    }
    Context& c = contexts[0];
    for (int64_t start = 0; start < total; start += options.max_batch) {
      const int64_t batch = std::min(options.max_batch, total - start);
      std::memcpy(c.h_input, x.bytes() + start * input_bytes_per_image, static_cast<size_t>(batch * input_bytes_per_image));
      submit(c, batch);
      NIBBLE_CUDA_CHECK(cudaStreamSynchronize(c.stream));
      c.pending_batch = 0;
      for (size_t i = 0; i < plan.outputs.size(); ++i) {
        const Value& v = plan.values[static_cast<size_t>(plan.outputs[i])];
        const Tensor part = cuda::from_device_layout(c.h_outputs[i], batch, v, plan.output_flat[i]);
        std::memcpy(outs[i].bytes() + static_cast<int64_t>(part.nbytes()) / batch * start, part.bytes(), part.nbytes());
      }
    }
    return outs;
  }

  void fill_random_inputs(int64_t batch) {
    std::mt19937 rng(1234);
    for (Context& c : contexts) {
      const int64_t n = batch * input_bytes_per_image / static_cast<int64_t>(dtype_storage_bytes(plan.input_dtype, 1));
      for (int64_t i = 0; i < n; ++i) {
        switch (plan.input_dtype) {
          case DType::f32: reinterpret_cast<float*>(c.h_input)[i] = std::uniform_real_distribution<float>(0, 1)(rng); break;
          case DType::s8: reinterpret_cast<int8_t*>(c.h_input)[i] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127); break;
          default: c.h_input[i] = static_cast<uint8_t>(rng()); break;
        }
      }
    }
  }

  void prepare_inputs(int64_t batch, const Tensor* input) {
    if (batch < 1 || batch > options.max_batch) fail(graph.source, "batch {} is outside 1..{}", batch, options.max_batch);
    if (!input) return fill_random_inputs(batch);
    if (input->dtype() != plan.input_dtype || input->rank() != 4 || input->dim(0) != batch ||
        input->dim(1) != plan.input_c || input->dim(2) != plan.input_h || input->dim(3) != plan.input_w) {
      fail(graph.source, "input '{}' must be {} [{}, {}, {}, {}], got {} {}", plan.input_name, dtype_name(plan.input_dtype),
           batch, plan.input_c, plan.input_h, plan.input_w, dtype_name(input->dtype()), shape_str(input->shape()));
    }
    for (Context& c : contexts) std::memcpy(c.h_input, input->bytes(), static_cast<size_t>(batch * input_bytes_per_image));
  }

  void infer(int64_t batch) {
    if (batch < 1 || batch > options.max_batch) fail(graph.source, "batch {} is outside 1..{}", batch, options.max_batch);
    Context& c = contexts[0];
    submit(c, batch);
    NIBBLE_CUDA_CHECK(cudaStreamSynchronize(c.stream));
    c.pending_batch = 0;
  }

  CudaBenchResult bench(const CudaBenchOptions& o) {
    if (o.batch < 1 || o.batch > options.max_batch) fail(graph.source, "bench batch {} is outside 1..{}", o.batch, options.max_batch);
    prepare_inputs(o.batch, o.input);
    const size_t k = o.single_stream ? 1 : contexts.size();
    for (size_t i = 0; i < k; ++i) graph_for(contexts[i], o.batch);
    CudaBenchResult r;
    using clock = std::chrono::steady_clock;
    auto collect = [&](Context& c, bool record) {
      if (!c.pending_batch) return;
      NIBBLE_CUDA_CHECK(cudaEventSynchronize(c.ev[3]));
      const auto done = clock::now();
      if (record) {
        r.queries += 1;
        r.images += c.pending_batch;
        r.latency_ms.push_back(o.single_stream ? std::chrono::duration<double, std::milli>(done - c.submitted).count()
                                               : cuda::elapsed_ms(c.ev[0], c.ev[3]));
        r.compute_ms.push_back(cuda::elapsed_ms(c.ev[1], c.ev[2]));
        r.h2d_ms.push_back(cuda::elapsed_ms(c.ev[0], c.ev[1]));
        r.d2h_ms.push_back(cuda::elapsed_ms(c.ev[2], c.ev[3]));
      }
      c.pending_batch = 0;
    };
    for (int phase = 0; phase < 2; ++phase) {
      const bool measure = phase == 1;
      const double limit = measure ? o.seconds : o.warmup_seconds;
      const auto start = clock::now();
      for (int64_t q = 0;; ++q) {
        Context& c = contexts[static_cast<size_t>(q) % k];
        collect(c, measure);
        const double elapsed = std::chrono::duration<double>(clock::now() - start).count();
        if (elapsed >= limit && (!measure || r.queries + static_cast<int64_t>(k) > o.min_queries)) break;
        submit(c, o.batch);
      }
      for (size_t i = 0; i < k; ++i) collect(contexts[i], measure);
      if (measure) r.wall_seconds = std::chrono::duration<double>(clock::now() - start).count();
    }
    return r;
  }

  std::vector<CudaLayerProfile> profile(int64_t batch, int reps) {
    if (batch < 1 || batch > options.max_batch) fail(graph.source, "profile batch {} is outside 1..{}", batch, options.max_batch);
    fill_random_inputs(batch);
    const cuda::PdlSuspend one_step_at_a_time;  // each step timed alone, not overlapping the one ahead
    Context& c = contexts[0];
    NIBBLE_CUDA_CHECK(cudaMemcpy(c.d_input, c.h_input, static_cast<size_t>(input_bytes_per_image * batch), cudaMemcpyHostToDevice));
    const size_t n = plan.steps.size();
    std::vector<cudaEvent_t> ev(n + 1);
    for (cudaEvent_t& e : ev) NIBBLE_CUDA_CHECK(cudaEventCreate(&e));
    std::vector<std::vector<double>> times(n);
    std::vector<const char*> names(n, "");
    for (int rep = 0; rep < reps + 1; ++rep) {
      NIBBLE_CUDA_CHECK(cudaEventRecord(ev[0], c.stream));
      for (size_t s = 0; s < n; ++s) {
        names[s] = launch_step(c, s, batch);
        NIBBLE_CUDA_CHECK(cudaEventRecord(ev[s + 1], c.stream));
      }
      NIBBLE_CUDA_CHECK(cudaStreamSynchronize(c.stream));
      if (rep == 0) continue;  // warm-up
      for (size_t s = 0; s < n; ++s) times[s].push_back(cuda::elapsed_ms(ev[s], ev[s + 1]));
    }
    for (cudaEvent_t e : ev) cudaEventDestroy(e);
    std::vector<CudaLayerProfile> out;
    for (size_t s = 0; s < n; ++s) {
      const Step& st = plan.steps[s];
      std::vector<double> t = times[s];
      std::sort(t.begin(), t.end());
      CudaLayerProfile p;
      p.name = st.name;
      p.op = st.op;
      p.kernel = names[s];
      p.ms = t[t.size() / 2];
      p.macs = st.macs_per_image * batch;
      p.bytes = st.bytes_per_image * batch + (st.kind == StepKind::conv ? st.conv.m * st.conv.k_bytes : 0);
      out.push_back(p);
    }
    return out;
  }
};

CudaEngine::CudaEngine(const Graph& graph, const CudaEngineOptions& options)
    : impl_(std::make_unique<Impl>(graph, options)) {}
CudaEngine::~CudaEngine() = default;
std::string CudaEngine::device_name() const { return impl_->device; }
const Graph& CudaEngine::graph() const { return impl_->graph; }
int64_t CudaEngine::weight_bytes() const { return impl_->plan.weight_bytes; }
int64_t CudaEngine::activation_bytes(int64_t batch) const { return impl_->plan.arena_bytes_per_image * batch; }
std::string CudaEngine::storage_summary() const {
  std::map<std::string, int> counts;
  for (const Value& v : impl_->plan.values) {
    if (v.def >= 0) counts[cuda::storage_name(v.storage)] += 1;
  }
  std::string s;
  for (const auto& [k, n] : counts) s += fmt::format("{}{} x{}", s.empty() ? "" : ", ", k, n);
  return s;
}
std::string CudaEngine::conv_kernel_summary() const {
  int count = 0;
  const cuda::ConvKernel* table = cuda::conv_kernels(&count);
  std::map<std::string, int> counts;
  for (const DevConv& c : impl_->convs) {
    if (c.kernel >= 0) counts[table[c.kernel].family] += 1;
  }
  std::string s;
  for (const auto& [k, n] : counts) s += fmt::format("{}{} x{}", s.empty() ? "" : ", ", k, n);
  return s;
}
std::vector<Tensor> CudaEngine::run(const std::vector<Tensor>& inputs) { return impl_->run(inputs); }
CudaBenchResult CudaEngine::bench(const CudaBenchOptions& options) { return impl_->bench(options); }
void CudaEngine::prepare_inputs(int64_t batch, const Tensor* input) { impl_->prepare_inputs(batch, input); }
void CudaEngine::infer(int64_t batch) { impl_->infer(batch); }
std::vector<CudaLayerProfile> CudaEngine::profile(int64_t batch, int repetitions) {
  return impl_->profile(batch, repetitions);
}

}  // namespace nibble
