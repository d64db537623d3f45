// The dtype traits table and the scalar conversions behind it.
#include "nibble/dtype.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace nibble {

uint16_t f32_to_f16_bits(float v) {
  const uint32_t x = std::bit_cast<uint32_t>(v);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7FFFFFFFu;
  if (absx >= 0x7F800000u) {  // inf or NaN
    return static_cast<uint16_t>(sign | 0x7C00u | (absx > 0x7F800000u ? 0x200u : 0u));
  }
  if (absx >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds past 65504
  if (absx < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    // Scale so that the half subnormal step (2^-24) becomes 1, then round to nearest even.
    const float f = std::bit_cast<float>(absx) * 16777216.0f;  // exact: power of two
    const float r = std::nearbyint(f);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  // Normal: drop 13 mantissa bits with round-to-nearest-even.
  uint32_t mant = absx + 0xFFFu + ((absx >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((mant - 0x38000000u) >> 13));
}

float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  if (exp == 0) {
    const float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t f32_to_bf16_bits(float v) {
  const uint32_t x = std::bit_cast<uint32_t>(v);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

float bf16_bits_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

float e4m3_bits_to_f32(uint8_t b) {
  const bool neg = b & 0x80u;
  const int exp = (b >> 3) & 0xF;
  const int mant = b & 0x7;
  float f;
  if (exp == 15 && mant == 7) {
    f = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    f = std::ldexp(static_cast<float>(mant), -9);
  } else {
    f = std::ldexp(1.0f + static_cast<float>(mant) / 8.0f, exp - 7);
  }
  return neg ? -f : f;
}

uint8_t f32_to_e4m3_bits(float v) {
  // Round to the e4m3 grid (3 mantissa bits; subnormal step 2^-9), nearest even, saturating at
  // 448 (infinities too); NaN gives 0x7F.
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t x = bits & 0x7FFFFFFFu;
  if (x > 0x7F800000u) return 0x7F;
  if (x < 0x3C800000u) {  // below 2^-6: multiples of 2^-9, and 8 x 2^-9 is the code of 2^-6
    const float units = std::nearbyint(std::bit_cast<float>(x) * 512.0f);
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(units));
  }
  const uint32_t r = x + 0x7FFFFu + ((x >> 20) & 1u);  // nearest even at 3 mantissa bits
  const int e = static_cast<int>(r >> 23) - 127;
  const uint32_t mant = (r >> 20) & 7u;
  if (e > 8 || (e == 8 && mant == 7u)) return static_cast<uint8_t>(sign | 0x7Eu);
  return static_cast<uint8_t>(sign | static_cast<uint32_t>((e + 7) << 3) | mant);
}

namespace {

template <typename T>
double load(const void* base, int64_t i) {
  T v;
  std::memcpy(&v, static_cast<const char*>(base) + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
  return static_cast<double>(v);
}

template <typename T>
void store(void* base, int64_t i, T v) {
  std::memcpy(static_cast<char*>(base) + i * static_cast<int64_t>(sizeof(T)), &v, sizeof(T));
}

// Integers: round half away from zero, then clamp to the type's range. NaN becomes 0.
template <typename T>
void store_int(void* base, int64_t i, double v) {
  T out;
  if (std::isnan(v)) {
    out = 0;
  } else {
    const double r = std::round(v);
    if (r <= static_cast<double>(std::numeric_limits<T>::min())) {
      out = std::numeric_limits<T>::min();
    } else if (r >= static_cast<double>(std::numeric_limits<T>::max())) {
      out = std::numeric_limits<T>::max();
    } else {
      out = static_cast<T>(r);
    }
  }
  store<T>(base, i, out);
}

double load_f16(const void* b, int64_t i) { return f16_bits_to_f32(static_cast<uint16_t>(load<uint16_t>(b, i))); }
double load_bf16(const void* b, int64_t i) { return bf16_bits_to_f32(static_cast<uint16_t>(load<uint16_t>(b, i))); }
double load_e4m3(const void* b, int64_t i) { return e4m3_bits_to_f32(static_cast<const uint8_t*>(b)[i]); }
double load_s4(const void* b, int64_t i) { return unpack_s4(static_cast<const uint8_t*>(b), i); }
double load_u4(const void* b, int64_t i) { return unpack_u4(static_cast<const uint8_t*>(b), i); }
double load_bool(const void* b, int64_t i) { return static_cast<const uint8_t*>(b)[i] ? 1.0 : 0.0; }

void store_f32(void* b, int64_t i, double v) { store<float>(b, i, static_cast<float>(v)); }
void store_f64(void* b, int64_t i, double v) { store<double>(b, i, v); }
void store_f16(void* b, int64_t i, double v) { store<uint16_t>(b, i, f32_to_f16_bits(static_cast<float>(v))); }
void store_bf16(void* b, int64_t i, double v) { store<uint16_t>(b, i, f32_to_bf16_bits(static_cast<float>(v))); }
void store_e4m3(void* b, int64_t i, double v) { static_cast<uint8_t*>(b)[i] = f32_to_e4m3_bits(static_cast<float>(v)); }
void store_bool(void* b, int64_t i, double v) { static_cast<uint8_t*>(b)[i] = v != 0.0 ? 1 : 0; }
template <int Lo, int Hi>
void store_4bit(void* b, int64_t i, double v) {
  const double r = std::isnan(v) ? 0.0 : std::clamp(std::round(v), double(Lo), double(Hi));
  pack_4bit(static_cast<uint8_t*>(b), i, static_cast<int>(r));
}

// ONE table: every property of every dtype lives here.
const std::array<DTypeTraits, kDTypeCount> kTraits = {{
    {DType::f32, "f32", 32, true, true, -3.4028234663852886e38, 3.4028234663852886e38, 1, load<float>, store_f32},
    {DType::f64, "f64", 64, true, true, -1.7976931348623157e308, 1.7976931348623157e308, 11, load<double>, store_f64},
    {DType::f16, "f16", 16, true, true, -65504.0, 65504.0, 10, load_f16, store_f16},
    {DType::bf16, "bf16", 16, true, true, -3.3895313892515355e38, 3.3895313892515355e38, 16, load_bf16, store_bf16},
    {DType::e4m3, "e4m3", 8, true, true, -448.0, 448.0, 17, load_e4m3, store_e4m3},
    {DType::s64, "s64", 64, true, false, -9.223372036854775808e18, 9.223372036854775807e18, 7, load<int64_t>, store_int<int64_t>},
    {DType::s32, "s32", 32, true, false, -2147483648.0, 2147483647.0, 6, load<int32_t>, store_int<int32_t>},
    {DType::s16, "s16", 16, true, false, -32768.0, 32767.0, 5, load<int16_t>, store_int<int16_t>},
    {DType::u16, "u16", 16, false, false, 0.0, 65535.0, 4, load<uint16_t>, store_int<uint16_t>},
    {DType::s8, "s8", 8, true, false, -128.0, 127.0, 3, load<int8_t>, store_int<int8_t>},
    {DType::u8, "u8", 8, false, false, 0.0, 255.0, 2, load<uint8_t>, store_int<uint8_t>},
    {DType::s4, "s4", 4, true, false, -8.0, 7.0, 0, load_s4, store_4bit<-8, 7>},
    {DType::u4, "u4", 4, false, false, 0.0, 15.0, 0, load_u4, store_4bit<0, 15>},
    {DType::boolean, "bool", 8, false, false, 0.0, 1.0, 9, load_bool, store_bool},
}};

}  // namespace

const DTypeTraits& traits(DType t) { return kTraits[static_cast<size_t>(t)]; }

std::string_view dtype_name(DType t) { return traits(t).name; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& tr : kTraits) {
    if (name == tr.name) return tr.dtype;
  }
  return std::nullopt;
}

std::optional<DType> dtype_from_onnx(int onnx_type) {
  for (const auto& tr : kTraits) {
    if (tr.onnx_type != 0 && tr.onnx_type == onnx_type) return tr.dtype;
  }
  return std::nullopt;
}

size_t dtype_storage_bytes(DType t, int64_t n) {
  return static_cast<size_t>((n * traits(t).bits + 7) / 8);
}

}  // namespace nibble
