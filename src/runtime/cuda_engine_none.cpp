// CudaEngine in a build without the CUDA backend: every entry point explains why it cannot run.
#ifndef NIBBLE_HAVE_CUDA
#include "nibble/cuda_engine.h"
#include "nibble/error.h"

namespace nibble {

struct CudaEngine::Impl {};

CudaEngine::CudaEngine(const Graph& graph, const CudaEngineOptions&) {
  fail(graph.source, "this nibble was built without the CUDA backend (configure with NIBBLE_CUDA=ON where nvcc is installed)");
}
CudaEngine::~CudaEngine() = default;
std::string CudaEngine::device_name() const { return {}; }
const Graph& CudaEngine::graph() const { fail("", "no CUDA backend"); }
int64_t CudaEngine::weight_bytes() const { return 0; }
int64_t CudaEngine::activation_bytes(int64_t) const { return 0; }
std::string CudaEngine::storage_summary() const { return {}; }
std::string CudaEngine::conv_kernel_summary() const { return {}; }
std::vector<Tensor> CudaEngine::run(const std::vector<Tensor>&) { fail("", "no CUDA backend"); }
CudaBenchResult CudaEngine::bench(const CudaBenchOptions&) { fail("", "no CUDA backend"); }
void CudaEngine::prepare_inputs(int64_t, const Tensor*) { fail("", "no CUDA backend"); }
void CudaEngine::infer(int64_t) { fail("", "no CUDA backend"); }
std::vector<CudaLayerProfile> CudaEngine::profile(int64_t, int) { fail("", "no CUDA backend"); }

}  // namespace nibble
#endif
