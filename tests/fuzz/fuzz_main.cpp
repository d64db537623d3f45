// The libFuzzer entry point of one target, chosen at build time (NIBBLE_FUZZ_TARGET).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return nibble::fuzz::NIBBLE_FUZZ_TARGET(data, size);
}
