// The CPU backend's dispatch table, chosen once for the processor it runs on.
#include <string>
#include <string_view>
#include <vector>

#include "backends/cpu/int_conv.h"
#include "backends/cpu/isa_kernels.h"
#include "backends/cpu/kernels.h"

namespace nibble::cpu {

namespace {

struct Entry {
  std::string_view op_type;
  ref::KernelFn fn;
};

struct Table {
  const char* isa;
  std::vector<Entry> kernels;
};

Table avx2_table() {
  return {"avx2",
          {
              {"MaxPool", max_pool_u8_avx2},
              {"nibble:Fp8Conv", fp8_conv_avx2},
              {"nibble:QuantizeFloat", quantize_float_avx2},
              {"nibble:IntConv", int_conv_avx2},
              {"nibble:IntConvFused", int_conv_fused_avx2},
              {"nibble:IntLinear", int_linear_avx2},
              {"nibble:Requantize", requantize_avx2},
          }};
}

Table avx512vnni_table() {
  return {"avx512vnni",
          {
              {"MaxPool", max_pool_u8_avx2},
              {"nibble:Fp8Conv", fp8_conv_avx2},
              {"nibble:QuantizeFloat", quantize_float_avx2},
              {"nibble:IntConv", int_conv_avx512vnni},
              {"nibble:IntConvFused", int_conv_fused_avx512vnni},
              {"nibble:IntLinear", int_linear_avx2},
              {"nibble:Requantize", requantize_avx2},
          }};
}

Table amx_table() {
  Table t = avx512vnni_table();
  t.isa = "amx";
  for (auto& e : t.kernels) {
    if (e.op_type == "nibble:IntConv") e.fn = int_conv_amx;
    if (e.op_type == "nibble:IntConvFused") e.fn = int_conv_fused_amx;
  }
  return t;
}

// Every table this processor can run, best first; "scalar" (no kernels) always last.
const std::vector<Table>& tables() {
  static const std::vector<Table> t = [] {
    std::vector<Table> all;
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")) {
      if (amx_usable()) all.push_back(amx_table());
      all.push_back(avx512vnni_table());
    }
    if (avx2) all.push_back(avx2_table());
    all.push_back(Table{"scalar", {}});
    return all;
  }();
  return t;
}

const Table* find_table(std::string_view isa) {
  for (const auto& t : tables()) {
    if (isa == t.isa) return &t;
  }
  return nullptr;
}

ref::KernelFn lookup(const Table& t, std::string_view op_type) {
  for (const auto& e : t.kernels) {
    if (e.op_type == op_type) return e.fn;
  }
  return nullptr;
}

}  // namespace

const char* isa_name() { return tables().front().isa; }

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const auto& t : tables()) names.emplace_back(t.isa);
  return names;
}

ref::KernelFn find_kernel(std::string_view op_type) { return lookup(tables().front(), op_type); }

ref::KernelFn find_kernel(std::string_view isa, std::string_view op_type) {
  const Table* t = find_table(isa);
  return t ? lookup(*t, op_type) : nullptr;
}

}  // namespace nibble::cpu
