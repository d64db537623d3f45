// IDX files (the MNIST family's format), plain or gzip-compressed, via zlib.
#include <zlib.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "nibble/dataset.h"
#include "nibble/error.h"

namespace nibble {

namespace {

// The most data nibble reads from one IDX file (the largest of the MNIST family, EMNIST's
// 698k training images, takes 547 MB): a small gzip file cannot make it inflate more.
constexpr int64_t kMaxIdxBytes = int64_t{1} << 30;

struct IdxHeader {
  DType dtype = DType::u8;
  Shape shape;
  size_t header_bytes = 0;
  size_t data_bytes = 0;
};

// Parses the header at the start of `bytes`; returns false while more bytes are needed.
bool parse_header(const std::string& bytes, const std::string& path, IdxHeader& h) {
  if (bytes.size() < 4) return false;
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (p[0] != 0 || p[1] != 0) fail(path, "not an IDX file (bad magic number)");
  switch (p[2]) {
    case 0x08: h.dtype = DType::u8; break;
    case 0x09: h.dtype = DType::s8; break;
    default: fail(path, "IDX element type 0x{:02x} is not supported (only u8 and s8)", p[2]);
  }
  const int ndims = p[3];
  if (ndims < 1) fail(path, "IDX file declares no dimensions");
  h.header_bytes = 4 + 4 * static_cast<size_t>(ndims);
  if (bytes.size() < h.header_bytes) return false;
  h.shape.clear();
  for (int d = 0; d < ndims; ++d) {
    const unsigned char* q = p + 4 + 4 * d;
    h.shape.push_back((int64_t{q[0]} << 24) | (int64_t{q[1]} << 16) | (int64_t{q[2]} << 8) | int64_t{q[3]});
  }
  const int64_t n = checked_numel(h.shape, path);
  if (n > kMaxIdxBytes) {
    fail(path, "IDX shape {} declares {} bytes, more than the {} bytes nibble reads from one file", shape_str(h.shape), n,
         kMaxIdxBytes);
  }
  h.data_bytes = static_cast<size_t>(n);
  return true;
}

// Reads the (decompressed) content, never more than the header declares plus one byte (to tell
// that there is more); gzread passes uncompressed files through.
std::string read_idx_bytes(const std::string& path, IdxHeader& h) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail(path, "cannot open file: {}", std::strerror(errno));
  std::string out;
  bool have_header = false;
  char buf[1 << 16];
  for (;;) {
    size_t want = sizeof(buf);
    if (have_header) {
      const size_t limit = h.header_bytes + h.data_bytes + 1;
      if (out.size() >= limit) break;
      want = std::min(want, limit - out.size());
    }
    const int n = gzread(f, buf, static_cast<unsigned>(want));
    if (n < 0) {
      int errnum = 0;
      std::string msg = gzerror(f, &errnum);
      gzclose(f);
      fail(path, "corrupt gzip data: {}", msg);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (!have_header) {
      try {
        have_header = parse_header(out, path, h);
      } catch (...) {
        gzclose(f);
        throw;
      }
    }
  }
  const bool stopped_early = have_header && out.size() > h.header_bytes + h.data_bytes;
  // A gzip stream cut short reads as a clean end of file; zlib reports it on close.
  const int rc = gzclose(f);
  if (!stopped_early) {
    if (rc == Z_BUF_ERROR) fail(path, "truncated gzip data");
    if (rc != Z_OK) fail(path, "corrupt gzip data");
  }
  return out;
}

}  // namespace

Tensor read_idx(const std::string& path) {
  IdxHeader h;
  const std::string bytes = read_idx_bytes(path, h);
  if (bytes.size() < 4) fail(path, "not an IDX file: only {} bytes", bytes.size());
  if (!parse_header(bytes, path, h)) fail(path, "truncated IDX header");
  const size_t have = bytes.size() - h.header_bytes;
  if (have != h.data_bytes) {
    fail(path, "IDX shape {} needs {} data bytes, the file has {}", shape_str(h.shape), h.data_bytes,
         have < h.data_bytes ? fmt::format("{} (truncated)", have) : std::string("more"));
  }
  Tensor t(h.dtype, h.shape);
  if (have > 0) std::memcpy(t.bytes(), bytes.data() + h.header_bytes, have);
  return t;
}

}  // namespace nibble
