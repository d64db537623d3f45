// Runs every ONNX backend node test whose ops nibble supports; fails if any of them fails.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "backends/ref/kernels.h"
#include "nibble/engine.h"
#include "nibble/error.h"
#include "nibble/onnx_import.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

// The tolerances of ONNX's own backend test runner (numpy.testing.assert_allclose).
constexpr double kRtol = 1e-3;
constexpr double kAtol = 1e-7;

std::vector<fs::path> numbered_files(const fs::path& dir, const std::string& prefix) {
  std::vector<fs::path> files;
  for (int i = 0;; ++i) {
    const fs::path p = dir / fmt::format("{}_{}.pb", prefix, i);
    if (!fs::exists(p)) break;
    files.push_back(p);
  }
  return files;
}

// Empty when equal within tolerance, else a description of the first mismatch.
std::string compare(const Tensor& got, const Tensor& want) {
  if (got.dtype() != want.dtype()) return fmt::format("dtype {} != {}", dtype_name(got.dtype()), dtype_name(want.dtype()));
  if (got.shape() != want.shape()) return fmt::format("shape {} != {}", shape_str(got.shape()), shape_str(want.shape()));
  const bool is_float = traits(got.dtype()).is_float;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.get(i), w = want.get(i);
    if (std::isnan(g) && std::isnan(w)) continue;
    const bool ok = g == w || (is_float && std::fabs(g - w) <= kAtol + kRtol * std::fabs(w));
    if (!ok) return fmt::format("element {}: got {}, expected {}", i, g, w);
  }
  return {};
}

// ONNX's test data stores bfloat16 tensors as uint16 (numpy has no bfloat16): where the model
// declares bf16, such data is the same bits.
Tensor as_declared(const Tensor& t, const std::optional<DType>& declared) {
  if (!declared || *declared != DType::bf16 || t.dtype() != DType::u16) return t;
  Tensor r(DType::bf16, t.shape());
  std::memcpy(r.bytes(), t.bytes(), t.nbytes());
  return r;
}

// Tests whose data disagree with their own model or with the ONNX specification (ONNX 1.12's
// test data, as Debian ships it).
const std::map<std::string, std::string>& data_faults() {
  static const std::map<std::string, std::string> faults = {
      {"test_cast_FLOAT_to_BFLOAT16",
       "expected data truncated; Cast rounds to nearest even, as ONNX specifies since 1.14"},
      {"test_castlike_FLOAT_to_BFLOAT16_expanded", "input 'like' stored with shape [1]; the model declares [3, 4]"},
      {"test_castlike_BFLOAT16_to_FLOAT_expanded", "input 'like' stored with shape [1]; the model declares [3, 4]"},
  };
  return faults;
}

// The reason to skip a test, or "" to run it.
std::string skip_reason(const onnx::ModelProto& model, std::set<std::string>& unsupported_ops) {
  std::vector<std::string> missing;
  for (const auto& n : model.graph().node()) {
    const bool default_domain = n.domain().empty() || n.domain() == "ai.onnx";
    if (!default_domain || ref::min_opset(n.op_type()) < 0) {
      missing.push_back(default_domain ? n.op_type() : n.domain() + ":" + n.op_type());
    }
  }
  if (!missing.empty()) {
    unsupported_ops.insert(missing.begin(), missing.end());
    return "op";
  }
  for (const auto* list : {&model.graph().input(), &model.graph().output()}) {
    for (const auto& v : *list) {
      if (!v.type().has_tensor_type()) return "non-tensor value types (sequence/optional)";
      if (!dtype_from_onnx(v.type().tensor_type().elem_type())) return "element types nibble has no dtype for (string, ...)";
    }
  }
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = argc > 1 ? argv[1] : "/usr/share/libonnx-testdata/data/node";
  if (!fs::is_directory(root)) {
    fmt::print(stderr, "{}: ONNX node test data not found (install Debian's libonnx-testdata)\n", root.string());
    return 1;
  }
  std::vector<fs::path> tests;
  for (const auto& e : fs::directory_iterator(root)) {
    if (fs::exists(e.path() / "model.onnx")) tests.push_back(e.path());
  }
  std::sort(tests.begin(), tests.end());

  size_t run = 0;
  std::vector<std::string> failures;
  std::set<std::string> unsupported_ops;
  std::map<std::string, std::vector<std::string>> skipped_other;
  for (const auto& dir : tests) {
    const std::string name = dir.filename().string();
    onnx::ModelProto proto;
    {
      std::ifstream f(dir / "model.onnx", std::ios::binary);
      if (!proto.ParseFromIstream(&f)) {
        failures.push_back(name + ": model.onnx does not parse");
        continue;
      }
    }
    const auto fault = data_faults().find(name);
    const std::string reason = fault != data_faults().end() ? fault->second : skip_reason(proto, unsupported_ops);
    if (reason == "op") continue;
    if (!reason.empty()) {
      skipped_other[reason].push_back(name);
      continue;
    }
    ++run;
    try {
      const Engine engine(import_onnx((dir / "model.onnx").string()));
      int sets = 0;
      for (const auto& set : fs::directory_iterator(dir)) {
        if (!set.is_directory() || set.path().filename().string().rfind("test_data_set_", 0) != 0) continue;
        ++sets;
        std::vector<Tensor> inputs;
        for (const auto& f : numbered_files(set.path(), "input")) inputs.push_back(read_onnx_tensor(f.string()));
        std::vector<Tensor> expected;
        for (const auto& f : numbered_files(set.path(), "output")) expected.push_back(read_onnx_tensor(f.string()));
        const Graph& g = engine.graph();
        for (size_t i = 0; i < inputs.size() && i < g.inputs.size(); ++i) inputs[i] = as_declared(inputs[i], g.inputs[i].dtype);
        for (size_t i = 0; i < expected.size() && i < g.outputs.size(); ++i) {
          expected[i] = as_declared(expected[i], g.outputs[i].dtype);
        }
        const std::vector<Tensor> got = engine.run(inputs);
        if (got.size() != expected.size()) {
          throw std::runtime_error(fmt::format("{} outputs, expected {}", got.size(), expected.size()));
        }
        for (size_t i = 0; i < got.size(); ++i) {
          if (std::string diff = compare(got[i], expected[i]); !diff.empty()) {
            throw std::runtime_error(fmt::format("{}: output {}: {}", set.path().filename().string(), i, diff));
          }
        }
      }
      if (sets == 0) throw std::runtime_error("no test_data_set_* directory");
    } catch (const std::exception& e) {
      failures.push_back(fmt::format("{}: {}", name, e.what()));
    }
  }

  for (const auto& f : failures) fmt::print("FAILED {}\n", f);
  if (failures.empty()) {
    fmt::print("{} of {} node tests run, all passed\n", run, tests.size());
  } else {
    fmt::print("{} of {} node tests run, {} failed\n", run, tests.size(), failures.size());
  }
  size_t skipped_for_other = 0;
  for (const auto& [r, v] : skipped_other) skipped_for_other += v.size();
  fmt::print("skipped: {} tests using unsupported op types: {}\n", tests.size() - run - skipped_for_other,
             fmt::join(unsupported_ops, ", "));
  for (const auto& [r, v] : skipped_other) fmt::print("skipped for {}: {}\n", r, fmt::join(v, ", "));
  return failures.empty() ? 0 : 1;
}
