// IDX files (the MNIST family's format), plain or gzip-compressed, via zlib.
#include <zlib.h>

#include <cstring>
#include <string>

#include "nibble/dataset.h"
#include "nibble/error.h"

namespace nibble {

namespace {

// Reads the whole (decompressed) content; gzread passes uncompressed files through.
std::string read_maybe_gzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) fail(path, "cannot open file: {}", std::strerror(errno));
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const int n = gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int errnum = 0;
      std::string msg = gzerror(f, &errnum);
      gzclose(f);
      fail(path, "corrupt gzip data: {}", msg);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  // A gzip stream cut short reads as a clean end of file; zlib reports it on close.
  const int rc = gzclose(f);
  if (rc == Z_BUF_ERROR) fail(path, "truncated gzip data");
  if (rc != Z_OK) fail(path, "corrupt gzip data");
  return out;
}

}  // namespace

Tensor read_idx(const std::string& path) {
  const std::string bytes = read_maybe_gzip(path);
  if (bytes.size() < 4) fail(path, "not an IDX file: only {} bytes", bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (p[0] != 0 || p[1] != 0) fail(path, "not an IDX file (bad magic number)");
  DType dtype;
  switch (p[2]) {
    case 0x08: dtype = DType::u8; break;
    case 0x09: dtype = DType::s8; break;
    default: fail(path, "IDX element type 0x{:02x} is not supported (only u8 and s8)", p[2]);
  }
  const int ndims = p[3];
  if (ndims < 1) fail(path, "IDX file declares no dimensions");
  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  if (bytes.size() < header) fail(path, "truncated IDX header");
  Shape shape;
  for (int d = 0; d < ndims; ++d) {
    const unsigned char* q = p + 4 + 4 * d;
    shape.push_back((int64_t{q[0]} << 24) | (int64_t{q[1]} << 16) | (int64_t{q[2]} << 8) | int64_t{q[3]});
  }
  Tensor t(dtype, shape);
  const size_t have = bytes.size() - header;
  if (have != t.nbytes()) {
    fail(path, "IDX shape {} needs {} data bytes, the file has {}{}", shape_str(shape), t.nbytes(), have,
         have < t.nbytes() ? " (truncated)" : "");
  }
  if (have > 0) std::memcpy(t.bytes(), bytes.data() + header, have);
  return t;
}

}  // namespace nibble
