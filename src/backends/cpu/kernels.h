// The vectorized CPU backend: kernels that must give results identical to the reference backend.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "backends/ref/kernels.h"

namespace nibble::cpu {

// The instruction set the dispatch table chose for this machine ("avx2", "scalar", ...).
const char* isa_name();

// The CPU kernel for `op_type`, or nullptr where the reference kernel serves. The table is
// filled once, for the best instruction set the processor supports.
ref::KernelFn find_kernel(std::string_view op_type);

// Every instruction set this processor can run, best first, ending with "scalar" (no kernels):
// tests compare each against the reference, not only the one the engine picks.
std::vector<std::string> available_isas();

// The kernel of `op_type` in the table of `isa`; nullptr where that table has none.
ref::KernelFn find_kernel(std::string_view isa, std::string_view op_type);

}  // namespace nibble::cpu
