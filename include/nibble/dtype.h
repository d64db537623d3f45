// The element types nibble knows, described by one traits table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace nibble {

enum class DType : uint8_t {
  f32,
  f64,
  f16,
  bf16,
  e4m3,  // FP8 E4M3 "FN" flavour: no infinities, max 448, NaN = S.1111.111
  s64,
  s32,
  s16,
  u16,
  s8,
  u8,
  s4,  // packed two per byte: element 2i in the low nibble, 2i+1 in the high nibble
  u4,
  boolean,
};
inline constexpr int kDTypeCount = 14;

// Converters work on element i of a buffer so that the 4-bit types can address nibbles.
using ToDoubleFn = double (*)(const void* base, int64_t i);
using FromDoubleFn = void (*)(void* base, int64_t i, double v);

struct DTypeTraits {
  DType dtype;
  const char* name;  // "f32", "s4", ...
  int bits;          // storage bits per element (4 for the packed types)
  bool is_signed;
  bool is_float;
  double min;  // smallest finite value
  double max;  // largest finite value
  int onnx_type;  // onnx::TensorProto_DataType value, 0 where ONNX has none
  ToDoubleFn to_double;
  // Converts with the type's own rounding: round-to-nearest-even for floats (saturating
  // for e4m3), and for integers round half away from zero then clamp to [min, max].
  FromDoubleFn from_double;
};

const DTypeTraits& traits(DType t);
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
std::optional<DType> dtype_from_onnx(int onnx_type);

// Bytes needed for n elements (4-bit types round up to whole bytes).
size_t dtype_storage_bytes(DType t, int64_t n);

// Scalar conversions used by the traits table, exposed for tests and kernels.
uint16_t f32_to_f16_bits(float v);
float f16_bits_to_f32(uint16_t h);
uint16_t f32_to_bf16_bits(float v);
float bf16_bits_to_f32(uint16_t h);
uint8_t f32_to_e4m3_bits(float v);
float e4m3_bits_to_f32(uint8_t b);

// 4-bit packing: element i lives in byte i/2; even i in bits 0-3, odd i in bits 4-7.
inline int unpack_s4(const uint8_t* base, int64_t i) {
  int nib = (base[i >> 1] >> ((i & 1) * 4)) & 0xF;
  return nib >= 8 ? nib - 16 : nib;
}
inline int unpack_u4(const uint8_t* base, int64_t i) { return (base[i >> 1] >> ((i & 1) * 4)) & 0xF; }
inline void pack_4bit(uint8_t* base, int64_t i, int v) {
  const int shift = (i & 1) * 4;
  base[i >> 1] = static_cast<uint8_t>((base[i >> 1] & ~(0xF << shift)) | ((v & 0xF) << shift));
}

// C++ type <-> DType for the byte-addressable types.
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::s64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::s32; };
template <> struct dtype_of<int16_t> { static constexpr DType value = DType::s16; };
template <> struct dtype_of<uint16_t> { static constexpr DType value = DType::u16; };
template <> struct dtype_of<int8_t> { static constexpr DType value = DType::s8; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::boolean; };

}  // namespace nibble
