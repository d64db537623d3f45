// The CUDA device query, answered by the CUDA backend when the build has one.
#include "nibble/cuda_device.h"

#ifdef NIBBLE_HAVE_CUDA
namespace nibble::cuda {
std::optional<std::string> device_description();
}
#endif

namespace nibble {

std::optional<std::string> cuda_device_description() {
#ifdef NIBBLE_HAVE_CUDA
  return cuda::device_description();
#else
  return std::nullopt;
#endif
}

}  // namespace nibble
