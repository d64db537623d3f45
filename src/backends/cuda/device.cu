// Device discovery for the CUDA backend, and whether launches use programmatic dependent launch.
#include <cuda_runtime.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "backends/cuda/common.cuh"

namespace nibble::cuda {

std::optional<std::string> device_description() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return std::nullopt;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return std::nullopt;
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major * 10 + prop.minor) + ")";
}

namespace {
thread_local int pdl_suspended = 0;
}

bool pdl_enabled() {
  static const bool supported = [] {
    const char* e = std::getenv("NIBBLE_CUDA_PDL");
    if (e && std::string(e) == "0") return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 9;
  }();
  return supported && pdl_suspended == 0;
}

PdlSuspend::PdlSuspend() { ++pdl_suspended; }
PdlSuspend::~PdlSuspend() { --pdl_suspended; }

}  // namespace nibble::cuda
