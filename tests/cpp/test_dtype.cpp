// The dtype traits table and scalar conversions.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "nibble/cuda_device.h"
#include "nibble/dtype.h"
#include "nibble/tensor.h"
#include "nibble/error.h"
#include "test_util.h"

namespace nibble {
namespace {

TEST(DType, TableIsIndexedByEnum) {
  for (int i = 0; i < kDTypeCount; ++i) {
    const auto t = static_cast<DType>(i);
    EXPECT_EQ(traits(t).dtype, t);
    EXPECT_EQ(dtype_from_name(traits(t).name), t);
  }
  EXPECT_EQ(dtype_from_name("nope"), std::nullopt);
}

TEST(DType, RangesAndBits) {
  EXPECT_EQ(traits(DType::s4).bits, 4);
  EXPECT_EQ(traits(DType::s4).min, -8);
  EXPECT_EQ(traits(DType::s4).max, 7);
  EXPECT_EQ(traits(DType::u4).max, 15);
  EXPECT_FALSE(traits(DType::u8).is_signed);
  EXPECT_TRUE(traits(DType::e4m3).is_float);
  EXPECT_EQ(traits(DType::e4m3).max, 448);
  EXPECT_EQ(dtype_storage_bytes(DType::u4, 5), 3u);
  EXPECT_EQ(dtype_storage_bytes(DType::f16, 5), 10u);
  EXPECT_EQ(dtype_from_onnx(1), DType::f32);
  EXPECT_EQ(dtype_from_onnx(3), DType::s8);
}

TEST(DType, FourBitPackingLowNibbleFirst) {
  Tensor t(DType::s4, {3});
  t.set(0, -3);
  t.set(1, 5);
  t.set(2, 7);
  // Element 0 in the low nibble of byte 0, element 1 in its high nibble.
  EXPECT_EQ(t.bytes()[0], 0x5D);
  EXPECT_EQ(t.bytes()[1], 0x07);
  EXPECT_EQ(t.get(0), -3);
  EXPECT_EQ(t.get(1), 5);
  Tensor u(DType::u4, {2});
  u.set(0, 20);   // clamps to 15
  u.set(1, -1);   // clamps to 0
  EXPECT_EQ(u.get(0), 15);
  EXPECT_EQ(u.get(1), 0);
}

TEST(DType, IntegerConversionRoundsHalfAwayAndClamps) {
  Tensor t(DType::s8, {6});
  t.set(0, 2.5);
  t.set(1, -2.5);
  t.set(2, 300);
  t.set(3, -300);
  t.set(4, std::nan(""));
  t.set(5, 1.49);
  EXPECT_EQ(t.get(0), 3);
  EXPECT_EQ(t.get(1), -3);
  EXPECT_EQ(t.get(2), 127);
  EXPECT_EQ(t.get(3), -128);
  EXPECT_EQ(t.get(4), 0);
  EXPECT_EQ(t.get(5), 1);
}

TEST(DType, HalfRoundTripsEveryPattern) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_bits_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16_bits(f), h) << h;
  }
  EXPECT_EQ(f32_to_f16_bits(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16_bits(65520.0f), 0x7C00);  // ties to even overflow to infinity
  EXPECT_EQ(f32_to_f16_bits(1.0f + 1.0f / 2048), 0x3C00);  // tie rounds to even (down)
  EXPECT_EQ(f32_to_f16_bits(1.0f + 3.0f / 2048), 0x3C02);  // tie rounds to even (up)
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -25)), 0x0000);  // half the smallest subnormal: to even
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(3.0f, -25)), 0x0002);
}

TEST(DType, BFloat16) {
  EXPECT_EQ(f32_to_bf16_bits(1.0f), 0x3F80);
  EXPECT_EQ(bf16_bits_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(f32_to_bf16_bits(1.0f + 1.0f / 256), 0x3F80);  // tie to even
  EXPECT_EQ(f32_to_bf16_bits(1.0f + 3.0f / 256), 0x3F82);
}

// The e4m3 rounding by definition: the nearest multiple of the value's e4m3 step (2^(e-3) for
// 2^e <= |v| < 2^(e+1), 2^-9 below 2^-6), ties to even, beyond 448 saturated.
uint8_t e4m3_by_definition(float v) {
  if (std::isnan(v)) return 0x7F;
  const uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
  const double a = std::fabs(static_cast<double>(v));
  if (a == 0.0) return sign;
  int e2 = 0;
  std::frexp(a, &e2);
  const double step = std::ldexp(1.0, std::max(e2 - 1, -6) - 3);
  const double q = std::min(std::nearbyint(a / step) * step, 448.0);
  if (q < 0.015625) return static_cast<uint8_t>(sign | static_cast<uint8_t>(q * 512.0));  // subnormal codes
  std::frexp(q, &e2);
  const int mant = static_cast<int>((q / std::ldexp(1.0, e2 - 1) - 1.0) * 8.0);
  return static_cast<uint8_t>(sign | ((e2 - 1 + 7) << 3) | mant);
}

TEST(DType, E4M3RoundingMatchesTheDefinitionAcrossFloat) {
  // Every 1021st bit pattern of f32 (4.2 million values: every exponent, NaNs and infinities
  // included) and the neighbours of every e4m3 value and midpoint.
  int64_t checked = 0;
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 1021) {
    const float v = std::bit_cast<float>(static_cast<uint32_t>(b));
    ASSERT_EQ(f32_to_e4m3_bits(v), e4m3_by_definition(v)) << v << " (bits " << b << ")";
    ++checked;
  }
  for (int b = 0; b < 0x7F; ++b) {
    const float f = e4m3_bits_to_f32(static_cast<uint8_t>(b));
    const float next = b + 1 < 0x7F ? e4m3_bits_to_f32(static_cast<uint8_t>(b + 1)) : 480.0f;
    for (float v : {f, (f + next) / 2, next}) {
      for (float w : {std::nextafter(v, 0.0f), v, std::nextafter(v, 1e9f)}) {
        ASSERT_EQ(f32_to_e4m3_bits(w), e4m3_by_definition(w)) << w;
        ASSERT_EQ(f32_to_e4m3_bits(-w), e4m3_by_definition(-w)) << -w;
      }
    }
  }
  EXPECT_GT(checked, 4000000);
}

TEST(DType, E4M3RoundTripsAndSaturates) {
  for (uint32_t b = 0; b < 256; ++b) {
    const float f = e4m3_bits_to_f32(static_cast<uint8_t>(b));
    if (std::isnan(f)) continue;
    if (b == 0x80) continue;  // -0 encodes as 0x80 too, checked below
    EXPECT_EQ(f32_to_e4m3_bits(f), b) << b;
  }
  EXPECT_EQ(e4m3_bits_to_f32(0x7E), 448.0f);
  EXPECT_EQ(e4m3_bits_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(e4m3_bits_to_f32(0x7F)));
  EXPECT_EQ(f32_to_e4m3_bits(1000.0f), 0x7E);
  EXPECT_EQ(f32_to_e4m3_bits(-1000.0f), 0xFE);
  EXPECT_EQ(f32_to_e4m3_bits(-0.0f), 0x80);
  EXPECT_EQ(f32_to_e4m3_bits(1.0625f), 0x38);  // tie between 1.0 and 1.125 goes to even (1.0)
  EXPECT_EQ(f32_to_e4m3_bits(1.1875f), 0x3A);  // tie between 1.125 and 1.25 goes to even (1.25)
  EXPECT_EQ(f32_to_e4m3_bits(std::nanf("")), 0x7F);
}

TEST(Tensor, ReshapeSharesStorageAndCastConverts) {
  Tensor t(DType::f32, {2, 3});
  for (int i = 0; i < 6; ++i) t.data<float>()[i] = static_cast<float>(i) - 2.5f;
  Tensor r = t.reshaped({3, 2});
  EXPECT_EQ(r.bytes(), t.bytes());
  EXPECT_THROW(t.reshaped({4}), std::invalid_argument);
  Tensor c = t.cast(DType::s8);
  EXPECT_EQ(c.get(0), -3);  // -2.5 rounds away from zero
  EXPECT_EQ(c.get(5), 3);   // 2.5
  EXPECT_THROW(t.data<int8_t>(), std::logic_error);
}

TEST(Cuda, DeviceQuery) {
  const auto dev = cuda_device_description();
  if (!dev) GTEST_SKIP() << "skipped: no CUDA device";
  EXPECT_NE(dev->find("sm_"), std::string::npos);
}

}  // namespace
}  // namespace nibble

namespace nibble {
namespace {

// Sizes computed from file contents: overflow is an error naming the source, never a wrap.
TEST(ShapeSize, CountsAreCheckedAgainstTheLimit) {
  EXPECT_EQ(shape_numel({2, 3, 4}), 24);
  EXPECT_EQ(shape_numel({}), 1);
  EXPECT_EQ(shape_numel({-1, 3}), -1);  // unknown
  EXPECT_EQ(shape_numel({int64_t{1} << 62, 0}), 0);
  EXPECT_EQ(checked_numel({int64_t{1} << 28, int64_t{1} << 28}, "f"), int64_t{1} << 56);
  const std::string e = testing_util::error_of([] { checked_numel({(int64_t{1} << 60) + 1, 1, 28, 28}, "x.npy"); });
  EXPECT_NE(e.find("x.npy"), std::string::npos) << e;
  EXPECT_NE(e.find("2^56"), std::string::npos) << e;
  EXPECT_NE(testing_util::error_of([] { checked_numel({3, -2}, "w"); }).find("negative"), std::string::npos);
  EXPECT_NE(testing_util::error_of([] { checked_size_mul(int64_t{1} << 40, int64_t{1} << 20, "m"); }).find("2^56"),
            std::string::npos);
  EXPECT_THROW(Tensor(DType::f32, {int64_t{1} << 62, 4}), Error);
}

// Pooled buffers come back zero-filled through the normal constructor, mutable access counts as
// a write and const access does not, and copies share the storage and its count.
TEST(Tensor, PooledStorageAndWriteCount) {
  for (int round = 0; round < 3; ++round) {
    Tensor t(DType::u8, {1 << 18});  // past the pool's threshold: later rounds reuse the buffer
    for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(t.get(i), 0.0) << "round " << round << " element " << i;
    std::memset(t.bytes(), 0xAB, t.nbytes());  // what the next round must not see
  }
  Tensor w(DType::s8, {4, 4});
  const Tensor& cw = w;
  const uint64_t before = w.write_count();
  (void)cw.bytes();
  (void)cw.data<int8_t>();
  (void)cw.get(3);
  EXPECT_EQ(w.write_count(), before);
  w.set(3, -2.0);
  EXPECT_GT(w.write_count(), before);
  const uint64_t after_set = w.write_count();
  (void)w.data<int8_t>();
  EXPECT_GT(w.write_count(), after_set);
  const Tensor r = w.reshaped({16});
  EXPECT_EQ(r.storage_owner(), w.storage_owner());
  EXPECT_EQ(r.write_count(), w.write_count());
  EXPECT_NE(w.clone().storage_owner(), w.storage_owner());
  const Tensor u = Tensor::uninitialized(DType::s32, {3, 5});
  EXPECT_EQ(u.nbytes(), 60u);
  EXPECT_TRUE(u.defined());
  EXPECT_TRUE(Tensor::uninitialized(DType::u8, {0}).defined());
}

}  // namespace
}  // namespace nibble
