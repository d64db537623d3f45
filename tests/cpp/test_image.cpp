// Image decoding, bilinear resizing, the seed model's preprocessing and the class-name list.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/image.h"
#include "nibble/input_data.h"
#include "test_util.h"
#include "nibble/npy.h"

// Only the tests write images; stb_image_write is compiled here, static, for that alone.
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace nibble {
namespace {

namespace fs = std::filesystem;

// Debian's python3-skimage sample photographs (data/README.md); tests that need them skip without.
const std::string kSkimageData = testing_util::source_dir() + "/data/images/";
const std::string kGolden =
    testing_util::source_dir() + "/models/mlperf-v0.5-int4-resnet50/golden/";


using testing_util::error_of;
using ImageRead = testing_util::TempDirTest;
using ImageClassNames = testing_util::TempDirTest;


void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// u8 h x w x 3 with every pixel from fn(y, x, c).
template <typename F>
Tensor make_image(int64_t h, int64_t w, F&& fn) {
  Tensor t(DType::u8, {h, w, 3});
  uint8_t* p = t.data<uint8_t>();
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      for (int c = 0; c < 3; ++c) p[(y * w + x) * 3 + c] = static_cast<uint8_t>(fn(y, x, c));
    }
  }
  return t;
}

Tensor random_image(int64_t h, int64_t w, uint32_t seed) {
  std::mt19937 rng(seed);
  return make_image(h, w, [&](int64_t, int64_t, int) { return rng() % 256; });
}

float at(const Tensor& t, int64_t y, int64_t x, int c) {
  return static_cast<float>(t.get((y * t.dim(1) + x) * 3 + c));
}

// ---- decoding ----

TEST_F(ImageRead, PngRoundTripsExactly) {
  const Tensor img = make_image(5, 7, [](int64_t y, int64_t x, int c) { return y * 50 + x * 30 + c * 7; });
  ASSERT_TRUE(stbi_write_png(path("a.png").c_str(), 7, 5, 3, img.bytes(), 7 * 3));
  const Tensor back = read_image_rgb(path("a.png"));
  ASSERT_EQ(back.dtype(), DType::u8);
  ASSERT_EQ(back.shape(), (Shape{5, 7, 3}));
  for (int64_t i = 0; i < img.numel(); ++i) ASSERT_EQ(back.get(i), img.get(i)) << i;
}

TEST_F(ImageRead, GreyBecomesThreeEqualChannelsAndAlphaIsDropped) {
  const uint8_t grey[6] = {0, 10, 20, 200, 250, 255};
  ASSERT_TRUE(stbi_write_png(path("g.png").c_str(), 3, 2, 1, grey, 3));
  const Tensor g = read_image_rgb(path("g.png"));
  ASSERT_EQ(g.shape(), (Shape{2, 3, 3}));
  for (int64_t i = 0; i < 6; ++i) {
    for (int c = 0; c < 3; ++c) EXPECT_EQ(g.get(i * 3 + c), grey[i]);
  }
  const uint8_t rgba[8] = {1, 2, 3, 0, 4, 5, 6, 128};
  ASSERT_TRUE(stbi_write_png(path("a.png").c_str(), 2, 1, 4, rgba, 8));
  const Tensor a = read_image_rgb(path("a.png"));
  ASSERT_EQ(a.shape(), (Shape{1, 2, 3}));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a.get(i), rgba[i]);
    EXPECT_EQ(a.get(3 + i), rgba[4 + i]);
  }
}

TEST_F(ImageRead, BmpRoundTripsExactly) {
  const Tensor img = random_image(3, 5, 7);
  ASSERT_TRUE(stbi_write_bmp(path("a.bmp").c_str(), 5, 3, 3, img.bytes()));
  const Tensor back = read_image_rgb(path("a.bmp"));
  ASSERT_EQ(back.shape(), img.shape());
  for (int64_t i = 0; i < img.numel(); ++i) ASSERT_EQ(back.get(i), img.get(i)) << i;
}

TEST_F(ImageRead, JpegRoundTripsApproximately) {
  // Smooth content: JPEG at quality 95 keeps it within a few levels.
  const Tensor img =
      make_image(16, 24, [](int64_t y, int64_t x, int c) { return 20 + y * 5 + x * 3 + c * 30; });
  ASSERT_TRUE(stbi_write_jpg(path("a.jpg").c_str(), 24, 16, 3, img.bytes(), 95));
  const Tensor back = read_image_rgb(path("a.jpg"));
  ASSERT_EQ(back.shape(), img.shape());
  double max_err = 0, sum_err = 0;
  for (int64_t i = 0; i < img.numel(); ++i) {
    const double e = std::fabs(back.get(i) - img.get(i));
    max_err = std::max(max_err, e);
    sum_err += e;
  }
  EXPECT_LE(max_err, 8.0);
  EXPECT_LE(sum_err / static_cast<double>(img.numel()), 2.0);
}

TEST_F(ImageRead, PnmGreyAndColourDecodeAsStored) {
  write_bytes(path("g.pgm"), std::string("P5\n# a comment\n3 2\n255\n") + std::string("\x01\x02\x03\x04\x05\xff", 6));
  const Tensor g = read_image_rgb(path("g.pgm"));
  ASSERT_EQ(g.shape(), (Shape{2, 3, 3}));
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(g.bytes()[c], 1);
    EXPECT_EQ(g.bytes()[5 * 3 + c], 255);
  }
  // 16-bit samples keep their high byte.
  write_bytes(path("c.ppm"), std::string("P6 1 1 65535\n") + std::string("\x12\x34\x56\x78\x9a\xbc", 6));
  const Tensor c = read_image_rgb(path("c.ppm"));
  ASSERT_EQ(c.shape(), (Shape{1, 1, 3}));
  EXPECT_EQ(c.bytes()[0], 0x12);
  EXPECT_EQ(c.bytes()[1], 0x56);
  EXPECT_EQ(c.bytes()[2], 0x9a);
  write_bytes(path("long.ppm"), "P6 6666666666 10 255\n");
  EXPECT_NE(error_of([&] { read_image_rgb(path("long.ppm")); }).find("malformed PNM header"), std::string::npos);
  write_bytes(path("short.ppm"), "P6 4 4 255\nabc");
  EXPECT_NE(error_of([&] { read_image_rgb(path("short.ppm")); }).find("truncated PNM"), std::string::npos);
}

TEST_F(ImageRead, ErrorsNameTheFile) {
  EXPECT_NE(
      error_of([&] { read_image_rgb(path("missing.png")); }).find(path("missing.png") + ": cannot open"),
      std::string::npos);

  write_bytes(path("garbage.png"), "this is not an image, only some text bytes\n");
  const std::string garbage = error_of([&] { read_image_rgb(path("garbage.png")); });
  EXPECT_NE(garbage.find(path("garbage.png") + ": not a readable image"), std::string::npos) << garbage;

  write_bytes(path("empty.jpg"), "");
  EXPECT_NE(error_of([&] { read_image_rgb(path("empty.jpg")); }).find(path("empty.jpg")), std::string::npos);

  // A whole header but half the pixel data.
  const Tensor img = random_image(64, 64, 3);
  ASSERT_TRUE(stbi_write_png(path("full.png").c_str(), 64, 64, 3, img.bytes(), 64 * 3));
  const std::string png = read_file(path("full.png"));
  write_bytes(path("truncated.png"), png.substr(0, png.size() / 2));
  const std::string truncated = error_of([&] { read_image_rgb(path("truncated.png")); });
  EXPECT_NE(truncated.find(path("truncated.png") + ": cannot decode PNG: "), std::string::npos)
      << truncated;
  EXPECT_EQ(truncated.find('\n'), std::string::npos);

  EXPECT_NE(error_of([&] { read_image_rgb(dir_.string()); }).find(dir_.string()), std::string::npos);
}

TEST_F(ImageRead, RefusesAbsurdSizesBeforeDecoding) {
  // A PNG signature and an IHDR chunk claiming 16500 x 16500 (2.7e8 pixels > 2^26), then nothing.
  const unsigned char header[] = {
      0x89, 'P', 'N',  'G',  '\r', '\n', 0x1a, '\n',  // signature
      0,    0,   0,    13,   'I',  'H',  'D',  'R',   // chunk length and type
      0,    0,   0x40, 0x74, 0,    0,    0x40, 0x74,  // width, height: 0x4074 = 16500
      8,    2,   0,    0,    0,                       // 8-bit RGB, deflate, no interlace
      0x49, 0xbb, 0xed, 0xe6};                        // CRC
  write_bytes(path("huge.png"), std::string(reinterpret_cast<const char*>(header), sizeof(header)));
  const std::string e = error_of([&] { read_image_rgb(path("huge.png")); });
  EXPECT_NE(e.find(path("huge.png") + ": image of 16500 x 16500 pixels exceeds the limit"), std::string::npos)
      << e;
}

TEST(ImageDemoPhotos, DecodeWithTheirKnownSizes) {
  struct Photo {
    const char* name;
    int64_t h, w;
  };
  int found = 0;
  for (const Photo& p :
       {Photo{"chelsea.png", 300, 451}, Photo{"coffee.png", 400, 600}, Photo{"rocket.jpg", 427, 640}}) {
    if (!fs::exists(kSkimageData + p.name)) continue;
    ++found;
    const Tensor img = read_image_rgb(kSkimageData + p.name);
    EXPECT_EQ(img.shape(), (Shape{p.h, p.w, 3})) << p.name;
  }
  ASSERT_EQ(found, 3) << "the demo photos in data/images/ are missing";
}

// The JPEG demo photo decodes to exactly PIL's pixels (libjpeg-turbo, accurate IDCT, smooth
// upsampling): the FNV-1a digest of Image.open("rocket.jpg").convert("RGB").tobytes() in
// Pillow 9.4 with Debian's libjpeg-turbo 2.1.5.
TEST(ImageDemoPhotos, JpegDecodesExactlyAsPil) {
  const Tensor img = read_image_rgb(kSkimageData + "rocket.jpg");
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < img.nbytes(); ++i) h = (h ^ img.bytes()[i]) * 1099511628211ull;
  EXPECT_EQ(h, 0xa01e0cba8a35162full);
}

// ---- resizing ----

TEST(ImageResize, ConstantStaysConstant) {
  const Tensor img = make_image(13, 17, [](int64_t, int64_t, int c) { return 37 + c * 90; });
  for (auto [oh, ow] : {std::pair<int64_t, int64_t>{13, 17}, {40, 51}, {6, 8}, {1, 1}, {5, 29}, {3, 2}}) {
    const Tensor f = resize_bilinear_u8(img, oh, ow);
    const Tensor u = resize_bilinear_pil_u8(img, oh, ow);
    ASSERT_EQ(f.dtype(), DType::f32);
    ASSERT_EQ(f.shape(), (Shape{oh, ow, 3}));
    ASSERT_EQ(u.dtype(), DType::u8);
    ASSERT_EQ(u.shape(), (Shape{oh, ow, 3}));
    for (int64_t i = 0; i < f.numel(); ++i) {
      ASSERT_NEAR(f.get(i), 37 + (i % 3) * 90, 1e-4) << oh << "x" << ow;
      ASSERT_EQ(u.get(i), 37 + (i % 3) * 90) << oh << "x" << ow;
    }
  }
}

// Channel 0 ramps along x, channel 1 along y, channel 2 is constant: each axis is checked alone.
Tensor ramps(int64_t h, int64_t w, int step) {
  return make_image(h, w, [&](int64_t y, int64_t x, int c) {
    return c == 0 ? x * step : c == 1 ? y * step : 7;
  });
}

TEST(ImageResize, UpscaleMatchesHandComputedBilinear) {
  // 2 -> 4: scale 0.5, centres c = 0.25, 0.75, 1.25, 1.75. The outer two clamp to the edge pixels;
  // c = 0.75 weighs pixel 0 by 1 - 0.25 and pixel 1 by 0.25: 0.75 * 0 + 0.25 * 100 = 25.
  const float expected[4] = {0, 25, 75, 100};
  const Tensor f = resize_bilinear_u8(ramps(2, 2, 100), 4, 4);
  const Tensor u = resize_bilinear_pil_u8(ramps(2, 2, 100), 4, 4);
  for (int64_t y = 0; y < 4; ++y) {
    for (int64_t x = 0; x < 4; ++x) {
      EXPECT_FLOAT_EQ(at(f, y, x, 0), expected[x]);
      EXPECT_FLOAT_EQ(at(f, y, x, 1), expected[y]);
      EXPECT_FLOAT_EQ(at(f, y, x, 2), 7);
      EXPECT_EQ(at(u, y, x, 0), expected[x]);
      EXPECT_EQ(at(u, y, x, 1), expected[y]);
    }
  }
}

TEST(ImageResize, TwoTimesDownscaleAveragesWithAWidenedTriangle) {
  // 4 -> 2: scale 2, the triangle spans 2 pixels each side. Output 0 is centred at 1 and reads
  // pixels 0..2 with weights tri(-0.25), tri(0.25), tri(0.75) = 0.75, 0.75, 0.25, normalised by
  // 1.75: (0 * 3 + 40 * 3 + 80 * 1) / 7 = 200 / 7. Output 1 (centre 3) reads pixels 1..3 with
  // 0.25, 0.75, 0.75: (40 + 80 * 3 + 120 * 3) / 7 = 640 / 7. PIL rounds to 29 and 91.
  const float expected[2] = {200.0f / 7, 640.0f / 7};
  const float expected_pil[2] = {29, 91};
  const Tensor f = resize_bilinear_u8(ramps(4, 4, 40), 2, 2);
  const Tensor u = resize_bilinear_pil_u8(ramps(4, 4, 40), 2, 2);
  for (int64_t y = 0; y < 2; ++y) {
    for (int64_t x = 0; x < 2; ++x) {
      EXPECT_NEAR(at(f, y, x, 0), expected[x], 1e-4);
      EXPECT_NEAR(at(f, y, x, 1), expected[y], 1e-4);
      EXPECT_NEAR(at(f, y, x, 2), 7, 1e-4);
      EXPECT_EQ(at(u, y, x, 0), expected_pil[x]);
      EXPECT_EQ(at(u, y, x, 1), expected_pil[y]);
    }
  }
}

TEST(ImageResize, ThreeToTwoDownscale) {
  // Scale 1.5: output 0 (centre 0.75) reads pixels 0, 1 with tri(-1/6), tri(1/2) = 5/6, 1/2, that is
  // 5/8, 3/8; output 1 (centre 2.25) reads pixels 1, 2 with 3/8, 5/8. On 0, 80, 160: 30 and 130.
  const Tensor f = resize_bilinear_u8(ramps(3, 3, 80), 2, 2);
  for (int64_t i = 0; i < 2; ++i) {
    EXPECT_NEAR(at(f, 0, i, 0), i == 0 ? 30 : 130, 1e-4);
    EXPECT_NEAR(at(f, i, 0, 1), i == 0 ? 30 : 130, 1e-4);
  }
}

Tensor pil_test_image() {
  return make_image(
      4, 6, [](int64_t y, int64_t x, int c) { return (y * 67 + x * 29 + c * 101 + x * y * 13) % 256; });
}

TEST(ImageResize, PilVariantMatchesPillowBitExactly) {
  // Expected values from Pillow 9.4:
  //   Image.fromarray(pil_test_image()).resize((w, h), Image.BILINEAR)
  struct Case {
    int64_t h, w;
    std::vector<int> values;
  };
  const Case cases[] = {
      {1, 2, {112, 144, 121, 132, 157, 129}},
      {3, 5, {27,  128, 152, 64,  165, 126, 103, 165, 49,  140, 164, 86,  117, 202, 124,
              111, 185, 57,  167, 140, 113, 158, 131, 168, 149, 122, 141, 104, 178, 151,
              157, 100, 141, 89,  113, 150, 124, 186, 108, 159, 144, 132, 91,  153, 177}},
      {7, 9, {0,   101, 202, 15,  116, 217, 34,  135, 193, 53,  154, 42,  73,  174, 19,  92,  193, 38,  111,
              212, 57,  131, 232, 77,  145, 246, 91,  24,  125, 134, 41,  142, 152, 63,  164, 146, 86,  187,
              59,  108, 164, 54,  131, 140, 77,  153, 162, 99,  130, 185, 122, 101, 202, 138, 62,  163, 26,
              83,  184, 47,  110, 211, 71,  138, 239, 87,  165, 147, 111, 192, 56,  138, 220, 83,  166, 128,
              110, 193, 30,  131, 214, 101, 202, 47,  125, 162, 71,  157, 130, 103, 190, 163, 136, 158, 131,
              168, 126, 99,  179, 159, 132, 126, 127, 164, 137, 87,  188, 161, 139, 222, 85,  158, 131, 113,
              186, 49,  147, 223, 86,  172, 142, 124, 207, 60,  158, 204, 97,  183, 83,  126, 218, 81,  144,
              245, 108, 177, 114, 123, 127, 100, 155, 86,  96,  170, 129, 138, 102, 125, 181, 117, 121, 195,
              144, 164, 128, 126, 124, 143, 152, 73,  174, 184, 201, 46,  147, 107, 80,  181, 24,  125, 184,
              70,  171, 58,  115, 216, 61,  160, 219, 106, 206, 93,  152, 123, 96,  197, 29,  130, 231}},
  };
  for (const Case& c : cases) {
    const Tensor u = resize_bilinear_pil_u8(pil_test_image(), c.h, c.w);
    ASSERT_EQ(u.numel(), static_cast<int64_t>(c.values.size()));
    for (int64_t i = 0; i < u.numel(); ++i)
      ASSERT_EQ(u.get(i), c.values[static_cast<size_t>(i)]) << c.h << "x" << c.w << " @" << i;
  }
}

TEST(ImageResize, ExactAndPilVariantsDifferByLessThanOneLevel) {
  // PIL rounds twice (after each pass), each at most half a level.
  const Tensor img = random_image(61, 83, 11);
  for (auto [oh, ow] : {std::pair<int64_t, int64_t>{50, 70}, {128, 200}, {17, 19}}) {
    const Tensor f = resize_bilinear_u8(img, oh, ow);
    const Tensor u = resize_bilinear_pil_u8(img, oh, ow);
    for (int64_t i = 0; i < f.numel(); ++i) ASSERT_LT(std::fabs(f.get(i) - u.get(i)), 1.0 + 1e-6) << i;
  }
}

TEST(ImageResize, RejectsBadArguments) {
  EXPECT_THROW(resize_bilinear_u8(Tensor(DType::f32, {2, 2, 3}), 4, 4), std::invalid_argument);
  EXPECT_THROW(resize_bilinear_u8(Tensor(DType::u8, {2, 2, 4}), 4, 4), std::invalid_argument);
  EXPECT_THROW(resize_bilinear_u8(Tensor(DType::u8, {2, 2, 3}), 0, 4), std::invalid_argument);
  EXPECT_THROW(resize_bilinear_pil_u8(Tensor(DType::u8, {2, 2, 3}), int64_t{1} << 20, int64_t{1} << 20),
               std::invalid_argument);
}

// ---- ImageNet preprocessing ----

TEST(ImagePreprocess, ResizeRuleTruncatesLikeTorchvision) {
  using Dims = std::pair<int64_t, int64_t>;
  EXPECT_EQ(resize_shorter_side_dims(300, 400, 256), (Dims{256, 341}));  // 341.33
  EXPECT_EQ(resize_shorter_side_dims(400, 300, 256), (Dims{341, 256}));
  EXPECT_EQ(resize_shorter_side_dims(300, 451, 256), (Dims{256, 384}));  // 384.85: truncated, not 385
  EXPECT_EQ(resize_shorter_side_dims(427, 640, 256), (Dims{256, 383}));  // 383.70
  EXPECT_EQ(resize_shorter_side_dims(100, 175, 256), (Dims{256, 448}));
  EXPECT_EQ(resize_shorter_side_dims(256, 256, 256), (Dims{256, 256}));
  EXPECT_EQ(resize_shorter_side_dims(3, 1000, 256), (Dims{256, 85333}));
}

TEST(ImagePreprocess, CropOffsetRoundsHalvesToEven) {
  EXPECT_EQ(center_crop_offset(224, 224), 0);
  EXPECT_EQ(center_crop_offset(225, 224), 0);  // round(0.5) = 0
  EXPECT_EQ(center_crop_offset(227, 224), 2);  // round(1.5) = 2
  EXPECT_EQ(center_crop_offset(256, 224), 16);
  EXPECT_EQ(center_crop_offset(257, 224), 16);  // round(16.5) = 16
  EXPECT_EQ(center_crop_offset(259, 224), 18);  // round(17.5) = 18
  EXPECT_EQ(center_crop_offset(341, 224), 58);  // round(58.5) = 58
  EXPECT_EQ(center_crop_offset(342, 224), 59);
  EXPECT_EQ(center_crop_offset(343, 224), 60);  // round(59.5) = 60
  EXPECT_THROW(center_crop_offset(200, 224), std::invalid_argument);
}

TEST(ImagePreprocess, ConstantColoursGiveHandComputedValues) {
  // x = (p / 255 - mean) / std, q = round(x * 127 / 2.64):
  //   R 200: (0.784314 - 0.485) / 0.229 =  1.307048 ->  62.88 ->  63
  //   G 100: (0.392157 - 0.456) / 0.224 = -0.285014 -> -13.71 -> -14
  //   B  50: (0.196078 - 0.406) / 0.225 = -0.932985 -> -44.88 -> -45
  //   black: -0.485 / 0.229 = -2.117904 -> -101.88 -> -102; -0.456 / 0.224 -> -97.93 -> -98;
  //          -0.406 / 0.225 -> -86.80 -> -87
  //   white: 0.515 / 0.229 -> 108.19 -> 108; 0.544 / 0.224 -> 116.83 -> 117; 0.594 / 0.225 = 2.64 -> 127
  struct Case {
    int r, g, b;
    int expected[3];
  };
  for (const Case& c : {Case{200, 100, 50, {63, -14, -45}}, Case{0, 0, 0, {-102, -98, -87}},
                        Case{255, 255, 255, {108, 117, 127}}}) {
    const Tensor img = make_image(300, 400, [&](int64_t, int64_t, int ch) {
      return ch == 0 ? c.r : ch == 1 ? c.g : c.b;
    });
    const Tensor x = preprocess_imagenet_s8(img);
    ASSERT_EQ(x.dtype(), DType::s8);
    ASSERT_EQ(x.shape(), (Shape{3, 224, 224}));
    for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(x.get(i), c.expected[i / (224 * 224)]) << i;
  }
}

// The quantiser as the doc states it, for comparisons.
int8_t quantise(int p, int c) {
  const double mean[3] = {0.485, 0.456, 0.406}, std_dev[3] = {0.229, 0.224, 0.225};
  const double q = std::nearbyint((p / 255.0 - mean[c]) / std_dev[c] * 127.0 / 2.64);
  return static_cast<int8_t>(std::clamp(q, -127.0, 127.0));
}

TEST(ImagePreprocess, IsTheCentreCropOfTheFullResize) {
  // 300 x 400 -> 256 x 341, crop offsets 16 and round(58.5) = 58.
  const Tensor img = random_image(300, 400, 5);
  const Tensor full = resize_bilinear_pil_u8(img, 256, 341);
  const Tensor x = preprocess_imagenet_s8(img);
  ASSERT_EQ(x.shape(), (Shape{3, 224, 224}));
  for (int c = 0; c < 3; ++c) {
    for (int64_t y = 0; y < 224; ++y) {
      for (int64_t i = 0; i < 224; ++i) {
        const int p = static_cast<int>(at(full, y + 16, i + 58, c));
        ASSERT_EQ(x.get((c * 224 + y) * 224 + i), quantise(p, c)) << c << " " << y << " " << i;
      }
    }
  }
  // Portrait: 400 x 300 -> 341 x 256, offsets 58 and 16.
  const Tensor tall = random_image(400, 300, 6);
  const Tensor full_tall = resize_bilinear_pil_u8(tall, 341, 256);
  const Tensor xt = preprocess_imagenet_s8(tall);
  for (int64_t y = 0; y < 224; y += 37) {
    for (int64_t i = 0; i < 224; i += 13) {
      EXPECT_EQ(xt.get(y * 224 + i), quantise(static_cast<int>(at(full_tall, y + 58, i + 16, 0)), 0));
    }
  }
}

// Image directories keep the aspect ratio: shorter side to --resize, centre crop, per-channel
// mean and std.
TEST(ImageFolderInputs, ResizeShorterSideCropAndPerChannelNormalization) {
  const fs::path dir = fs::path(testing::TempDir()) / "nibble_image_folder_resize";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const Tensor img = random_image(8, 12, 7);  // h 8, w 12
  {
    std::ofstream f(dir / "a.ppm", std::ios::binary);
    f << "P6\n12 8\n255\n";
    f.write(reinterpret_cast<const char*>(img.data<uint8_t>()), static_cast<std::streamsize>(img.numel()));
  }
  Preprocess pre;
  pre.mean = {0.5f, 0.25f, 0.125f};
  pre.std = {0.5f, 2.0f, 4.0f};
  pre.resize = 6;  // 8 x 12 -> 6 x 9, centre 4 x 4 at rows 1, columns round(2.5) = 2
  const InputData d = load_input_data(dir.string(), Shape{3, 4, 4}, pre);
  ASSERT_EQ(d.inputs.shape(), (Shape{1, 3, 4, 4}));
  const Tensor full = resize_bilinear_u8(img, 6, 9);
  for (int c = 0; c < 3; ++c) {
    for (int64_t y = 0; y < 4; ++y) {
      for (int64_t x = 0; x < 4; ++x) {
        const float want = (at(full, y + 1, x + 2, c) / 255.0f - pre.mean[c]) / pre.std[c];
        EXPECT_FLOAT_EQ(d.inputs.data<float>()[(c * 4 + y) * 4 + x], want) << c << " " << y << " " << x;
      }
    }
  }
  // 0: the shorter side becomes the input's size (8 x 12 -> 4 x 6, crop columns 1..4).
  pre.resize = 0;
  const InputData fit = load_input_data(dir.string(), Shape{3, 4, 4}, pre);
  const Tensor small = resize_bilinear_u8(img, 4, 6);
  EXPECT_FLOAT_EQ(fit.inputs.data<float>()[0], (at(small, 0, 1, 0) / 255.0f - 0.5f) / 0.5f);
  // A crop larger than the resized image, and per-channel lists of the wrong length, are errors.
  pre.resize = 3;
  EXPECT_THROW(load_input_data(dir.string(), Shape{3, 4, 4}, pre), Error);
  pre.resize = 0;
  pre.mean = {0.5f, 0.5f};
  EXPECT_THROW(load_input_data(dir.string(), Shape{3, 4, 4}, pre), Error);
  fs::remove_all(dir);
}

TEST(ImagePreprocess, ExtremeAspectRatioComputesOnlyTheCrop) {
  // 2 x 5000 resizes to 256 x 640000; only the 224 x 224 window is ever materialised.
  const Tensor img =
      make_image(2, 5000, [](int64_t y, int64_t x, int c) { return (x / 10 + y * 50 + c) % 256; });
  const Tensor x = preprocess_imagenet_s8(img);
  EXPECT_EQ(x.shape(), (Shape{3, 224, 224}));
}

TEST(ImagePreprocess, MatchesTheSeedModelGoldenInputs) {
  // The golden inputs were made with torchvision on these two photographs (data/README.md).
  int checked = 0;
  for (auto [photo, golden] : {std::pair<std::string, std::string>{"chelsea.png", "image_a_input_s8.npy"},
                               {"coffee.png", "image_b_input_s8.npy"}}) {
    if (!fs::exists(kSkimageData + photo) || !fs::exists(kGolden + golden)) continue;
    const Tensor x = preprocess_imagenet_s8(read_image_rgb(kSkimageData + photo));
    const Tensor expected = read_npy(kGolden + golden);
    ASSERT_EQ(expected.dtype(), DType::s8);
    ASSERT_EQ(x.shape(), expected.shape());
    int64_t mismatches = 0;
    for (int64_t i = 0; i < x.numel(); ++i) mismatches += x.get(i) != expected.get(i);
    EXPECT_EQ(mismatches, 0) << photo;
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "python3-skimage photos or the golden vectors are missing";
}

// ---- class names ----

TEST_F(ImageClassNames, ReadsTheImagenetList) {
  const std::vector<std::string> names =
      read_class_names(testing_util::source_dir() + "/data/imagenet_classes.txt");
  ASSERT_EQ(names.size(), 1000u);
  EXPECT_EQ(names[0], "tench");
  EXPECT_EQ(names[285], "Egyptian cat");
  EXPECT_EQ(names[967], "espresso");
  EXPECT_EQ(names[999], "toilet tissue");
}

TEST_F(ImageClassNames, AcceptsCrLfAndRejectsEmptyOrMissing) {
  write_bytes(path("crlf.txt"), "a cat\r\nb dog\r\n");
  EXPECT_EQ(read_class_names(path("crlf.txt")), (std::vector<std::string>{"a cat", "b dog"}));
  write_bytes(path("no_newline.txt"), "one\ntwo");
  EXPECT_EQ(read_class_names(path("no_newline.txt")).size(), 2u);

  write_bytes(path("empty.txt"), "");
  EXPECT_NE(
      error_of([&] { read_class_names(path("empty.txt")); }).find(path("empty.txt") + ": no class names"),
      std::string::npos);
  write_bytes(path("gap.txt"), "a\n\nb\n");
  EXPECT_NE(
      error_of([&] { read_class_names(path("gap.txt")); }).find(path("gap.txt") + ":2: empty class name"),
      std::string::npos);
  EXPECT_NE(error_of([&] { read_class_names(path("missing.txt")); }).find(path("missing.txt")),
            std::string::npos);
}

}  // namespace
}  // namespace nibble
