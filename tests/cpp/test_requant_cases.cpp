// The requantization definition against tests/data/requant_cases.txt, the vectors nibble_qat's
// tests check too (tests/python/test_qat.py): one definition, tested from both sides.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "quant/quantize.h"
#include "quant/requant.h"
#include "test_util.h"

namespace nibble {
namespace {

std::vector<double> split_doubles(const std::string& text) {
  std::vector<double> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::stod(item));
  return out;
}

TEST(RequantCases, EngineMatchesTheSharedVectors) {
  std::ifstream in(testing_util::source_dir() + "/tests/data/requant_cases.txt");
  ASSERT_TRUE(in) << "tests/data/requant_cases.txt is missing";
  int requant = 0, choose = 0, limit = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string kind;
    ls >> kind;
    if (kind == "requant") {
      int64_t x = 0, expected = 0;
      uint32_t factor = 0;
      int shift = 0, bits = 0, is_signed = 0;
      ls >> x >> factor >> shift >> bits >> is_signed >> expected;
      ASSERT_FALSE(ls.fail()) << line;
      EXPECT_EQ(quant::requantize(x, factor, shift, quant::output_range(bits, is_signed != 0)), expected) << line;
      ++requant;
    } else if (kind == "limit") {
      int bits = 0, is_signed = 0, expected = 0;
      ls >> bits >> is_signed >> expected;
      ASSERT_FALSE(ls.fail()) << line;
      const auto range = quant::output_range(bits, is_signed != 0);
      EXPECT_EQ(quant::saturation_shift_limit(range), expected) << line;
      // The definition: thresholds exist at the limit for the largest factor, not above it.
      EXPECT_FALSE(quant::saturation_thresholds({1, 65535}, expected, range.lo, range.hi).empty()) << line;
      if (expected < 31) {
        EXPECT_TRUE(quant::saturation_thresholds({65535}, expected + 1, range.lo, range.hi).empty()) << line;
      }
      ++limit;
    } else if (kind == "choose" || kind == "choose_at_most") {
      std::string ratios, shift_text, factors;
      int at_most = 31;
      if (kind == "choose_at_most") ls >> at_most;
      ls >> ratios >> shift_text;
      const auto got = quant::choose_requant(split_doubles(ratios), at_most);
      if (shift_text == "none") {
        EXPECT_FALSE(got.has_value()) << line;
      } else {
        ls >> factors;
        ASSERT_TRUE(got.has_value()) << line;
        EXPECT_EQ(got->shift, std::stoi(shift_text)) << line;
        const std::vector<double> want = split_doubles(factors);
        ASSERT_EQ(got->factor.size(), want.size()) << line;
        for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got->factor[i], static_cast<uint16_t>(want[i])) << line;
      }
      ++choose;
    } else {
      FAIL() << "unknown line: " << line;
    }
  }
  EXPECT_GT(requant, 400);
  EXPECT_GT(choose, 90);
  EXPECT_EQ(limit, 12);
}

}  // namespace
}  // namespace nibble
