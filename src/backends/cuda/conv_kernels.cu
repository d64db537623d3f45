// The convolution kernel table (kernels.cuh) and the choice among its entries.
#include <cstring>

#include "backends/cuda/kernels.cuh"

namespace nibble::cuda {

namespace {

constexpr uint32_t bit(Storage s) { return 1u << static_cast<unsigned>(s); }
constexpr uint32_t kAnyInteger = bit(Storage::u8) | bit(Storage::s8) | bit(Storage::u4) | bit(Storage::s4);
constexpr uint32_t kBytes = bit(Storage::u8) | bit(Storage::s8);

const ConvKernel kTable[] = {
    {"wgmma", ConvLoad::vec, kAnyInteger | bit(Storage::e4m3), 90, 90, true, wgmma_conv_fits, wgmma_conv_preferred,
     launch_conv_wgmma},
    {"mma", ConvLoad::vec, kAnyInteger, 80, 1000, false, nullptr, nullptr, launch_conv_mma},
    {"mma", ConvLoad::taps, kBytes, 80, 1000, false, nullptr, nullptr, launch_conv_mma},
    {"mma", ConvLoad::gather, kBytes, 80, 1000, false, nullptr, nullptr, launch_conv_mma},
};

}  // namespace

const ConvKernel* conv_kernels(int* count) {
  *count = static_cast<int>(sizeof(kTable) / sizeof(kTable[0]));
  return kTable;
}

int choose_conv_kernel(const ConvArgs& a, int sm, const char* family) {
  const bool any = std::strcmp(family, "auto") == 0;
  for (int pass = 0; pass < 2; ++pass) {
    // Pass 0: the requested family; pass 1: the mma fallback.
    const char* want = pass == 0 ? family : "mma";
    for (int i = 0; i < static_cast<int>(sizeof(kTable) / sizeof(kTable[0])); ++i) {
      const ConvKernel& k = kTable[i];
      if (!any || pass == 1) {
        if (std::strcmp(k.family, want) != 0) continue;
      }
      if (k.load != a.load || !(k.x_storages & bit(a.x_storage)) || sm < k.min_sm || sm > k.max_sm) continue;
      if (k.needs_wide_weights && !a.wide_weights) continue;
      if (k.fits && !k.fits(a)) continue;
      if (any && pass == 0 && k.preferred && !k.preferred(a)) continue;
      return i;
    }
  }
  return -1;
}

}  // namespace nibble::cuda
