// The fuzz targets on their seed corpus and on every crashing input the fuzzers ever found
// (tests/fuzz/corpus/<target>, tests/fuzz/regressions/<target>): each input must be accepted or
// refused with a nibble::Error, never crash or throw anything else. Under `make test-sanitize`
// this replays them with AddressSanitizer and UndefinedBehaviorSanitizer.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "targets.h"
#include "test_util.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> inputs(const std::string& kind, const std::string& target) {
  std::vector<fs::path> files;
  const fs::path dir = fs::path(testing_util::source_dir()) / "tests/fuzz" / kind / target;
  if (!fs::is_directory(dir)) return files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(FuzzCorpus, EveryTargetHasSeedsAndEveryInputIsHandled) {
  for (const fuzz::Entry& t : fuzz::targets()) {
    const auto seeds = inputs("corpus", t.name);
    EXPECT_FALSE(seeds.empty()) << "no seed corpus for " << t.name;
    auto all = seeds;
    const auto kept = inputs("regressions", t.name);
    all.insert(all.end(), kept.begin(), kept.end());
    for (const fs::path& f : all) {
      std::ifstream in(f, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      EXPECT_NO_THROW(t.fn(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())) << t.name << ": " << f;
    }
  }
}

}  // namespace
}  // namespace nibble
