// Whether this build can use a CUDA device, and which one.
#pragma once

#include <optional>
#include <string>

namespace nibble {

// "NVIDIA H100 80GB HBM3 (sm_90)" for device 0, or nullopt when the build has no CUDA
// backend or the machine has no usable CUDA device.
std::optional<std::string> cuda_device_description();

}  // namespace nibble
