// Helpers shared by the C++ tests: the one-line error of a call, a per-test temporary directory.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "nibble/error.h"

namespace nibble::testing_util {

// The source tree: $NIBBLE_SOURCE_DIR when set (a binary copied to another machine), else the
// tree the tests were built from.
inline std::string source_dir() {
  const char* env = std::getenv("NIBBLE_SOURCE_DIR");
  return env && *env ? env : NIBBLE_SOURCE_DIR;
}

// The message of the nibble::Error that `f` throws; every message must be a single line.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\r'), std::string::npos) << msg;
    return msg;
  }
  ADD_FAILURE() << "no nibble::Error was thrown";
  return {};
}

// A fresh directory per test, named after the test and removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("nibble_test_" + std::string(info->test_suite_name()) + "_" + info->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

}  // namespace nibble::testing_util
