// .npy and IDX readers and writers, including their error cases.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "nibble/dataset.h"
#include "nibble/error.h"
#include "nibble/file_util.h"
#include "nibble/npy.h"
#include "test_util.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;


using testing_util::error_of;
using Npy = testing_util::TempDirTest;
using Idx = testing_util::TempDirTest;


TEST_F(Npy, RoundTripsEverySupportedDtype) {
  for (DType t : {DType::f32, DType::f64, DType::s64, DType::s32, DType::s16, DType::s8, DType::u8}) {
    for (const Shape& shape : {Shape{}, Shape{5}, Shape{2, 3, 4}}) {
      Tensor x(t, shape);
      for (int64_t i = 0; i < x.numel(); ++i) x.set(i, static_cast<double>(i * 7 % 11) - 5);
      write_npy(path("a.npy"), x);
      const Tensor y = read_npy(path("a.npy"));
      ASSERT_EQ(y.dtype(), t);
      ASSERT_EQ(y.shape(), shape);
      for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(y.get(i), x.get(i));
    }
  }
}

TEST_F(Npy, HeaderIsAlignedAndReadableByNumpyConvention) {
  write_npy(path("a.npy"), Tensor(DType::f32, {3}));
  const std::string bytes = read_file(path("a.npy"));
  EXPECT_EQ((bytes.size() - 12) % 64, 0u);  // header padded to a multiple of 64 bytes
  EXPECT_NE(bytes.find("'shape': (3,)"), std::string::npos);
  EXPECT_EQ(bytes[bytes.size() - 13], '\n');
}

TEST_F(Npy, Errors) {
  write_file_atomic(path("short.npy"), "\x93NUMPY");
  EXPECT_NE(error_of([&] { read_npy(path("short.npy")); }).find("bad magic"), std::string::npos);
  EXPECT_NE(error_of([&] { read_npy(path("absent.npy")); }).find("cannot open"), std::string::npos);

  write_npy(path("ok.npy"), Tensor(DType::s32, {10}));
  std::string bytes = read_file(path("ok.npy"));
  write_file_atomic(path("trunc.npy"), bytes.substr(0, bytes.size() - 3));
  const std::string msg = error_of([&] { read_npy(path("trunc.npy")); });
  EXPECT_NE(msg.find("trunc.npy: "), std::string::npos);
  EXPECT_NE(msg.find("truncated"), std::string::npos);

  std::string fortran = bytes;
  fortran.replace(fortran.find("False"), 5, "True ");
  write_file_atomic(path("fortran.npy"), fortran);
  EXPECT_NE(error_of([&] { read_npy(path("fortran.npy")); }).find("Fortran"), std::string::npos);

  std::string complex = bytes;
  complex.replace(complex.find("<i4"), 3, "<c8");
  write_file_atomic(path("complex.npy"), complex);
  EXPECT_NE(error_of([&] { read_npy(path("complex.npy")); }).find("unsupported .npy dtype"), std::string::npos);
}

TEST_F(Npy, WriteIntoMissingDirectoryFailsCleanly) {
  const std::string target = path("missing/dir/out.npy");
  EXPECT_NE(error_of([&] { write_npy(target, Tensor(DType::f32, {1})); }).find("cannot write"), std::string::npos);
  EXPECT_FALSE(fs::exists(target));
}

std::string idx_bytes(uint8_t type, const std::vector<uint32_t>& dims, const std::string& data) {
  std::string s = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) s.push_back(static_cast<char>((d >> shift) & 0xFF));
  }
  return s + data;
}

void write_gzip(const std::string& path, const std::string& content) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  gzwrite(f, content.data(), static_cast<unsigned>(content.size()));
  gzclose(f);
}

TEST_F(Idx, ReadsPlainAndGzip) {
  const std::string content = idx_bytes(0x08, {2, 2, 3}, "abcdefghijkl");
  write_file_atomic(path("plain"), content);
  write_gzip(path("packed.gz"), content);
  for (const auto& p : {path("plain"), path("packed.gz")}) {
    const Tensor t = read_idx(p);
    EXPECT_EQ(t.dtype(), DType::u8);
    EXPECT_EQ(t.shape(), (Shape{2, 2, 3}));
    EXPECT_EQ(t.data<uint8_t>()[11], 'l');
  }
}

TEST_F(Idx, Errors) {
  write_file_atomic(path("short"), idx_bytes(0x08, {2, 2, 3}, "abc"));
  EXPECT_NE(error_of([&] { read_idx(path("short")); }).find("truncated"), std::string::npos);
  write_file_atomic(path("float"), idx_bytes(0x0D, {1}, "abcd"));
  EXPECT_NE(error_of([&] { read_idx(path("float")); }).find("not supported"), std::string::npos);
  write_file_atomic(path("magic"), "\x01\x02\x08\x01\0\0\0\0");
  EXPECT_NE(error_of([&] { read_idx(path("magic")); }).find("magic"), std::string::npos);
  write_gzip(path("cut.gz"), idx_bytes(0x08, {4096}, std::string(4096, 'x')));
  std::string gz = read_file(path("cut.gz"));
  write_file_atomic(path("cut.gz"), gz.substr(0, gz.size() - 8));
  EXPECT_NE(error_of([&] { read_idx(path("cut.gz")); }).find("cut.gz"), std::string::npos);
}

TEST_F(Idx, DatasetChecksCountsAndScalesImages) {
  write_file_atomic(path("t10k-images-idx3-ubyte"), idx_bytes(0x08, {2, 1, 2}, std::string("\x00\xff\x33\x66", 4)));
  write_file_atomic(path("t10k-labels-idx1-ubyte"), idx_bytes(0x08, {2}, "\x01\x02"));
  const Dataset d = load_dataset("fashion-mnist:test", dir_.string());
  EXPECT_EQ(d.size(), 2);
  const Tensor b = image_batch_f32(d, 1, 2, 0.5f, 0.25f);
  EXPECT_EQ(b.shape(), (Shape{1, 1, 1, 2}));
  EXPECT_FLOAT_EQ(b.data<float>()[0], (0x33 / 255.0f - 0.5f) / 0.25f);

  write_file_atomic(path("t10k-labels-idx1-ubyte"), idx_bytes(0x08, {3}, "\x01\x02\x03"));
  EXPECT_NE(error_of([&] { load_dataset("fashion-mnist", dir_.string()); }).find("has 3 labels"), std::string::npos);
  EXPECT_NE(error_of([&] { load_dataset("fashion-mnist:val", dir_.string()); }).find("unknown split"),
            std::string::npos);
}

TEST(FashionMnist, RealTestSetLoads) {
  if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const Dataset d = load_dataset("fashion-mnist:test", "", 100);
  EXPECT_EQ(d.size(), 100);
  EXPECT_EQ(d.images.shape(), (Shape{100, 28, 28}));
  // The first test label of Fashion-MNIST is 9 (ankle boot).
  EXPECT_EQ(d.labels.data<uint8_t>()[0], 9);
}


// A temporary output alive when SIGTERM or SIGINT arrives is removed before the process ends
// (files and directory trees); one released after its rename stays.
TEST(TempOutput, InterruptsRemoveTemporaries) {
  const fs::path root = fs::temp_directory_path() / ("nibble_temp_output_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  for (int sig : {SIGTERM, SIGINT}) {
    const fs::path dir = root / ("out.nbl.tmp." + std::to_string(sig));
    const fs::path file = root / ("t.calib.tmp." + std::to_string(sig));
    const fs::path kept = root / ("kept." + std::to_string(sig));
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      TempOutput d(dir.string()), f(file.string()), k((kept.string() + ".tmp"));
      fs::create_directories(dir / "npdata" / "deeper");
      for (const fs::path& p : {dir / "model", dir / "npdata" / "w.bin", dir / "npdata" / "deeper" / "x", file}) {
        std::ofstream(p) << "partial";
      }
      std::ofstream(kept.string() + ".tmp") << "done";
      fs::rename(kept.string() + ".tmp", kept);
      k.release();
      ::raise(sig);
      ::_exit(0);  // not reached
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << "status " << status;
    EXPECT_FALSE(fs::exists(dir)) << dir;
    EXPECT_FALSE(fs::exists(file)) << file;
    EXPECT_TRUE(fs::exists(kept)) << kept;
  }
  fs::remove_all(root);
}

TEST(CheckWritable, NamesTheMissingOrReadOnlyDirectory) {
  const fs::path root = fs::temp_directory_path() / ("nibble_check_writable_" + std::to_string(::getpid()));
  fs::create_directories(root);
  EXPECT_NO_THROW(check_writable((root / "out.npy").string()));
  const std::string missing = (root / "no" / "out.npy").string();
  const std::string e = testing_util::error_of([&] { check_writable(missing); });
  EXPECT_EQ(e.rfind(missing + ": ", 0), 0u) << e;
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  fs::remove_all(root);
}

}  // namespace
}  // namespace nibble
