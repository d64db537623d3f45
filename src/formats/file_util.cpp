// Whole-file reads, temp-then-rename writes, and removal of temporaries on interrupts.
#include "nibble/file_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "nibble/error.h"

namespace nibble {

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(path, "is a directory, expected a file");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot open file: {}", std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(path, "read error");
  return ss.str();
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  TempOutput guard(tmp);
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail(path, "cannot write file: {}", std::strerror(errno));
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      fail(path, "write failed: {}", std::strerror(errno));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    fail(path, "cannot move the finished file into place: {}", ec.message());
  }
  guard.release();
}

void check_writable(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) fail(path, "empty output path");
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(path, "cannot write here: the directory {} does not exist", dir.string());
  if (::access(dir.c_str(), W_OK) != 0) fail(path, "cannot write in {}: {}", dir.string(), std::strerror(errno));
}

void check_new_output(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::symlink_status(path, ec))) {
    fail(path, "already exists; refusing to overwrite it (choose another output path)");
  }
  check_writable(path);
}

// ---- temporaries removed on interrupts ----
// The handler may only use async-signal-safe calls: the paths live in fixed arrays, and
// directories are removed with openat, getdents64, unlinkat and close.
namespace {

constexpr int kSlots = 8;
constexpr size_t kPathMax = 4096;
char temp_paths[kSlots][kPathMax];
std::atomic<bool> temp_used[kSlots];
std::mutex temp_mutex;  // guards slot allocation (not taken by the handler)

struct Dirent64 {
  uint64_t ino;
  int64_t off;
  unsigned short reclen;
  unsigned char type;
  char name[1];
};

void remove_at(int parent, const char* name, int depth) {
  if (::unlinkat(parent, name, 0) == 0 || errno == ENOENT || depth > 16) return;
  for (int pass = 0; pass < 4; ++pass) {
    const int fd = ::openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return;
    alignas(8) char buf[2048];
    for (;;) {
      const long n = ::syscall(SYS_getdents64, fd, buf, sizeof buf);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        const auto* d = reinterpret_cast<const Dirent64*>(buf + off);
        off += d->reclen;
        if (std::strcmp(d->name, ".") != 0 && std::strcmp(d->name, "..") != 0) remove_at(fd, d->name, depth + 1);
      }
    }
    ::close(fd);
    if (::unlinkat(parent, name, AT_REMOVEDIR) == 0 || errno != ENOTEMPTY) return;
  }
}

void on_interrupt(int sig) {
  const int saved = errno;
  for (int i = 0; i < kSlots; ++i) {
    if (temp_used[i].load()) remove_at(AT_FDCWD, temp_paths[i], 0);
  }
  errno = saved;
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void install_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL) continue;  // someone else's
      struct sigaction sa {};
      sa.sa_handler = on_interrupt;
      ::sigemptyset(&sa.sa_mask);
      ::sigaction(sig, &sa, nullptr);
    }
  });
}

}  // namespace

TempOutput::TempOutput(const std::string& path) {
  if (path.size() >= kPathMax) return;  // not registered: too long to keep
  install_handlers();
  const std::lock_guard<std::mutex> lock(temp_mutex);
  for (int i = 0; i < kSlots; ++i) {
    if (!temp_used[i].load()) {
      std::memcpy(temp_paths[i], path.c_str(), path.size() + 1);
      temp_used[i].store(true);
      slot_ = i;
      return;
    }
  }
}

void TempOutput::release() {
  if (slot_ < 0) return;
  const std::lock_guard<std::mutex> lock(temp_mutex);
  temp_used[slot_].store(false);
  slot_ = -1;
}

TempOutput::~TempOutput() { release(); }

}  // namespace nibble
