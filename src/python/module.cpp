// The `nibble` Python package's native part (`nibble._nibble`): models that run numpy arrays on
// the CPU or GPU engine, calibration, GPTQ Hessians and quantization. The GIL is released while
// the engines work. python/nibble/__init__.py builds the public API on top.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "nibble/cuda_engine.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/model_dir.h"
#include "nibble/model_loader.h"
#include "quant/calibration.h"
#include "quant/gptq.h"
#include "quant/observer.h"
#include "quant/qdq_import.h"
#include "quant/quantize.h"

namespace py = pybind11;

namespace nibble::python {

namespace {

// ---- numpy <-> Tensor ----

DType dtype_of(const py::array& a, const std::string& what) {
  const py::dtype d = a.dtype();
  const char kind = d.kind();
  const auto size = d.itemsize();
  if (kind == 'f' && size == 4) return DType::f32;
  if (kind == 'f' && size == 8) return DType::f64;
  if (kind == 'f' && size == 2) return DType::f16;
  if (kind == 'i' && size == 1) return DType::s8;
  if (kind == 'i' && size == 2) return DType::s16;
  if (kind == 'i' && size == 4) return DType::s32;
  if (kind == 'i' && size == 8) return DType::s64;
  if (kind == 'u' && size == 1) return DType::u8;
  if (kind == 'u' && size == 2) return DType::u16;
  if (kind == 'b') return DType::boolean;
  fail(what, "numpy arrays of {} are not supported (float16/32/64, int8/16/32/64, uint8/16, bool)",
       d.attr("name").cast<std::string>());
}

Tensor to_tensor(const py::handle& obj, const std::string& what) {
  if (!py::isinstance<py::array>(obj)) fail(what, "expected a numpy array, got {}", std::string(py::str(obj.get_type())));
  const py::array a = py::array::ensure(obj, py::array::c_style);
  const DType dt = dtype_of(a, what);
  Shape shape(a.shape(), a.shape() + a.ndim());
  Tensor t(dt, shape);
  std::memcpy(t.bytes(), a.data(), t.nbytes());
  return t;
}

// Packed 4-bit values come out as int8 / uint8, FP8 and bfloat16 as float32.
py::array to_numpy(const Tensor& t) {
  const std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  auto copy = [&](auto tag) {
    using T = decltype(tag);
    py::array_t<T> a(shape);
    std::memcpy(a.mutable_data(), t.bytes(), t.nbytes());
    return py::array(a);
  };
  auto convert = [&](auto tag) {
    using T = decltype(tag);
    py::array_t<T> a(shape);
    T* p = a.mutable_data();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<T>(t.get(i));
    return py::array(a);
  };
  switch (t.dtype()) {
    case DType::f32: return copy(float{});
    case DType::f64: return copy(double{});
    case DType::s64: return copy(int64_t{});
    case DType::s32: return copy(int32_t{});
    case DType::s16: return copy(int16_t{});
    case DType::u16: return copy(uint16_t{});
    case DType::s8: return copy(int8_t{});
    case DType::u8: return copy(uint8_t{});
    case DType::boolean: return copy(bool{});
    case DType::s4: return convert(int8_t{});
    case DType::u4: return convert(uint8_t{});
    default: return convert(float{});
  }
}

py::object shape_of(const ValueInfo& vi) {
  if (!vi.shape) return py::none();
  py::list dims;
  for (int64_t d : *vi.shape) {
    if (d > 0) {
      dims.append(d);
    } else {
      dims.append(py::none());
    }
  }
  return dims;
}

py::list value_infos(const std::vector<ValueInfo>& vs) {
  py::list out;
  for (const ValueInfo& v : vs) {
    out.append(py::make_tuple(v.name, v.dtype ? dtype_name(*v.dtype) : "unknown", shape_of(v)));
  }
  return out;
}

// ---- models ----

class Model {
 public:
  Model(const std::string& path, const std::string& device, const std::string& backend, bool int8_storage,
        int64_t max_batch, const std::string& kernels)
      : path_(path), device_(device) {
    if (device != "cpu" && device != "cuda") fail(path, "device must be 'cpu' or 'cuda', got '{}'", device);
    if (backend != "cpu" && backend != "ref") fail(path, "backend must be 'cpu' or 'ref', got '{}'", backend);
    Graph g = load_model(path);
    if (device == "cuda") {
      CudaEngineOptions o;
      o.int8_storage = int8_storage;
      o.max_batch = max_batch;
      o.conv_kernels = kernels;
      cuda_ = std::make_unique<CudaEngine>(g, o);
      graph_ = &cuda_->graph();
    } else {
      cpu_ = std::make_unique<Engine>(std::move(g), backend == "ref" ? Backend::ref : Backend::cpu);
      graph_ = &cpu_->graph();
    }
  }

  // Inputs: one array (a model of one input), a sequence in the model's order, or a dict by name.
  py::list run(const py::object& feed) {
    const Graph& g = *graph_;
    std::vector<Tensor> inputs(g.inputs.size());
    std::vector<bool> given(g.inputs.size(), false);
    auto put = [&](size_t i, const py::handle& a) {
      inputs[i] = to_tensor(a, fmt::format("{}: input '{}'", path_, g.inputs[i].name));
      given[i] = true;
    };
    if (py::isinstance<py::dict>(feed)) {
      for (const auto& [k, v] : feed.cast<py::dict>()) {
        const std::string name = py::str(k);
        size_t i = 0;
        while (i < g.inputs.size() && g.inputs[i].name != name) ++i;
        if (i == g.inputs.size()) fail(path_, "the model has no input named '{}'", name);
        put(i, v);
      }
    } else if (py::isinstance<py::array>(feed)) {
      if (g.inputs.size() != 1) fail(path_, "the model takes {} inputs: pass a list or a dict", g.inputs.size());
      put(0, feed);
    } else if (py::isinstance<py::list>(feed) || py::isinstance<py::tuple>(feed)) {
      const py::sequence seq = feed.cast<py::sequence>();
      if (seq.size() != g.inputs.size()) fail(path_, "the model takes {} inputs, {} given", g.inputs.size(), seq.size());
      for (size_t i = 0; i < seq.size(); ++i) put(i, seq[i]);
    } else {
      fail(path_, "inputs must be a numpy array, a list of them or a dict by input name");
    }
    for (size_t i = 0; i < given.size(); ++i) {
      if (!given[i]) fail(path_, "input '{}' is missing", g.inputs[i].name);
    }
    std::vector<Tensor> outputs;
    {
      py::gil_scoped_release unlocked;
      if (cpu_) {
        if (const auto bad = cpu_->check_inputs(inputs)) fail(path_, "{}", bad->problem);
        outputs = cpu_->run(inputs);
      } else {
        outputs = cuda_->run(inputs);
      }
    }
    py::list out;
    for (const Tensor& t : outputs) out.append(to_numpy(t));
    return out;
  }

  py::list inputs() const { return value_infos(graph_->inputs); }
  py::list outputs() const { return value_infos(graph_->outputs); }
  std::string device() const { return cuda_ ? cuda_->device_name() : "cpu"; }
  const std::string& path() const { return path_; }

 private:
  std::string path_, device_;
  std::unique_ptr<Engine> cpu_;
  std::unique_ptr<CudaEngine> cuda_;
  const Graph* graph_ = nullptr;
};

// ---- calibration and quantization ----

class Calibrator {
 public:
  explicit Calibrator(const std::string& path) : path_(path), graph_(load_fp32_onnx(path)), observer_(graph_) {
    if (graph_.inputs.size() != 1) fail(path, "calibration takes models of one input, this one has {}", graph_.inputs.size());
  }
  void observe_ranges(const py::array& x) {
    const Tensor t = to_tensor(x, path_ + ": calibration batch");
    py::gil_scoped_release unlocked;
    observer_.observe_ranges(t);
  }
  void start_histograms() { observer_.start_histograms(); }
  void observe_histograms(const py::array& x) {
    const Tensor t = to_tensor(x, path_ + ": calibration batch");
    py::gil_scoped_release unlocked;
    observer_.observe_histograms(t);
  }
  quant::CalibTable table(const std::string& method, const std::string& precision,
                          const std::vector<std::string>& comments) const {
    const quant::CalibSpec spec = quant::CalibSpec::parse(method);
    const int bits = quant::activation_bits(quant::parse_precision(precision, "precision"));
    if (bits == 0) fail("precision", "choose int8, int4, w4a8 or w4a8-fp8");
    std::vector<std::string> c = comments;
    c.push_back(fmt::format("model: {}", path_));
    c.push_back(fmt::format("method: {}, activation bits: {}", spec.text(), bits));
    c.push_back("<tensor> <method> <lo> <hi>");
    return observer_.table(spec, bits, c);
  }

 private:
  std::string path_;
  Graph graph_;
  quant::RangeObserver observer_;
};

class Hessians {
 public:
  // With a calibration table (a CalibTable or a .calib path), also DPQ's FP8 statistics.
  Hessians(const std::string& path, const py::object& calib) : graph_(load_fp32_onnx(path)), collector_(graph_) {
    if (calib.is_none()) return;
    collector_.set_fp8_scales(py::isinstance<py::str>(calib) ? quant::read_calib(calib.cast<std::string>())
                                                             : calib.cast<quant::CalibTable>());
  }
  void observe(const py::array& x) {
    const Tensor t = to_tensor(x, "GPTQ batch");
    py::gil_scoped_release unlocked;
    collector_.observe(t, seen_);
    seen_ += t.rank() > 0 ? t.dim(0) : 1;
  }
  std::map<std::string, std::vector<double>> take() { return collector_.hessians(); }
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> take_fp8() { return collector_.fp8_statistics(); }

 private:
  Graph graph_;
  quant::HessianCollector collector_;
  int64_t seen_ = 0;
};

py::list quantize(const std::string& model, const py::object& calib, const std::string& output,
                  const std::string& precision, const std::map<std::string, std::string>& layer_precision,
                  const std::vector<std::string>& exclude, bool all_layers, Hessians* hessians, int threads, bool dpq,
                  int64_t group_size, bool gar) {
  check_new_output(output);
  const Graph fp32 = load_fp32_onnx(model);
  quant::QuantizeOptions opt;
  opt.precision = quant::parse_precision(precision, "precision");
  for (const auto& [name, p] : layer_precision) opt.layer_precision[name] = quant::parse_precision(p, "layer_precision");
  opt.exclude = std::set<std::string>(exclude.begin(), exclude.end());
  opt.first_last_8bit = !all_layers;
  opt.threads = threads;
  opt.dpq = dpq;
  opt.group_size = group_size;
  opt.reorder = gar;
  if (group_size < 1) fail(model, "group_size must be positive, got {}", group_size);
  quant::QuantizeResult result;
  {
    quant::CalibTable table;
    const bool qdq = quant::is_qdq(fp32);
    if (!qdq) {
      if (calib.is_none()) fail(model, "give the calibration table (from nibble.calibrate or a .calib file)");
      table = py::isinstance<py::str>(calib) ? quant::read_calib(calib.cast<std::string>()) : calib.cast<quant::CalibTable>();
    } else if (!calib.is_none()) {
      fail(model, "is a QDQ model: it carries its own scales (pass calib=None)");
    }
    if (hessians) {
      opt.hessians = hessians->take();
      opt.fp8_statistics = hessians->take_fp8();
    }
    py::gil_scoped_release unlocked;
    if (qdq) {
      const quant::QdqModel q = quant::import_qdq(fp32);
      result = quant::quantize_model(q.fp32, q.calib, q.options);
    } else {
      result = quant::quantize_model(fp32, table, opt);
    }
    result.model.path = output;
    quantized_graph(result.model);  // a model the engine cannot run is never written
    write_model_dir(result.model, output);
  }
  py::list report;
  for (const auto& l : result.layers) {
    py::dict row;
    row["layer"] = l.layer;
    row["onnx_node"] = l.onnx_node;
    row["op"] = l.op;
    row["precision"] = quant::precision_name(l.precision);
    row["note"] = l.note;
    report.append(row);
  }
  return report;
}

}  // namespace

}  // namespace nibble::python

PYBIND11_MODULE(_nibble, m) {
  using namespace nibble;
  using namespace nibble::python;
  m.doc() = "nibble's native engine bindings; use the `nibble` package.";
  m.attr("__version__") = NIBBLE_VERSION;
  static py::exception<Error> error(m, "Error", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      error(e.what());
    }
  });

  py::class_<Model>(m, "Model", "A loaded model (ONNX file or model directory) on the CPU or the GPU.")
      .def(py::init<const std::string&, const std::string&, const std::string&, bool, int64_t, const std::string&>(),
           py::arg("path"), py::arg("device") = "cpu", py::arg("backend") = "cpu", py::arg("int8_storage") = false,
           py::arg("max_batch") = 64, py::arg("kernels") = "auto")
      .def("run", &Model::run, py::arg("inputs"),
           "Runs the model on numpy arrays: one array, a list in input order, or a dict by input name. "
           "Returns the outputs as a list of numpy arrays, in output order.")
      .def_property_readonly("inputs", &Model::inputs, "(name, dtype, shape) of each input; None for a free dimension")
      .def_property_readonly("outputs", &Model::outputs, "(name, dtype, shape) of each output")
      .def_property_readonly("device", &Model::device)
      .def_property_readonly("path", &Model::path);

  py::class_<quant::CalibTable>(m, "CalibTable", "A calibration table: the range [lo, hi] of each tensor.")
      .def_property_readonly("entries",
                             [](const quant::CalibTable& t) {
                               py::list out;
                               for (const auto& e : t.entries) out.append(py::make_tuple(e.tensor, e.method, e.lo, e.hi));
                               return out;
                             })
      .def_readonly("comments", &quant::CalibTable::comments)
      .def("write", [](const quant::CalibTable& t, const std::string& path) { quant::write_calib(t, path); },
           py::arg("path"), "Writes the table (the text format of `nibble calibrate -o`).")
      .def("__len__", [](const quant::CalibTable& t) { return t.entries.size(); });
  m.def("read_calib", &quant::read_calib, py::arg("path"), "Reads a calibration table file.");

  py::class_<Calibrator>(m, "Calibrator")
      .def(py::init<const std::string&>(), py::arg("model"))
      .def("observe_ranges", &Calibrator::observe_ranges)
      .def("start_histograms", &Calibrator::start_histograms)
      .def("observe_histograms", &Calibrator::observe_histograms)
      .def("table", &Calibrator::table, py::arg("method"), py::arg("precision"), py::arg("comments"));

  py::class_<Hessians>(m, "Hessians")
      .def(py::init<const std::string&, const py::object&>(), py::arg("model"), py::arg("calib") = py::none())
      .def("observe", &Hessians::observe);

  m.def("quantize", &python::quantize, py::arg("model"), py::arg("calib"), py::arg("output"), py::arg("precision"),
        py::arg("layer_precision"), py::arg("exclude"), py::arg("all_layers"), py::arg("hessians"), py::arg("threads"), py::arg("dpq"), py::arg("group_size"),
        py::arg("gar"));
  m.def("set_cpu_threads", &set_cpu_threads, py::arg("threads"));
  m.def("cpu_threads", &cpu_threads);
}
