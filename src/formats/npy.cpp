// Reading and writing NumPy .npy arrays.
#include "nibble/npy.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <cstring>
#include <regex>

#include "nibble/error.h"
#include "nibble/file_util.h"

namespace nibble {

namespace {

constexpr char kMagic[] = "\x93NUMPY";

struct NpyType {
  DType dtype;
  const char* descr;
};
constexpr NpyType kNpyTypes[] = {
    {DType::f32, "<f4"}, {DType::f64, "<f8"}, {DType::s64, "<i8"}, {DType::s32, "<i4"},
    {DType::s16, "<i2"}, {DType::u16, "<u2"},{DType::s8, "|i1"},  {DType::u8, "|u1"},  {DType::boolean, "|b1"},
};

// The value of `key` in the header dict, as raw text up to the next top-level comma.
std::string dict_value(const std::string& header, const std::string& key, const std::string& path) {
  const std::string quoted = "'" + key + "'";
  auto pos = header.find(quoted);
  if (pos == std::string::npos) fail(path, "malformed .npy header: no '{}' entry", key);
  pos = header.find(':', pos + quoted.size());
  if (pos == std::string::npos) fail(path, "malformed .npy header near '{}'", key);
  ++pos;
  while (pos < header.size() && header[pos] == ' ') ++pos;
  if (pos < header.size() && header[pos] == '(') {
    const auto close = header.find(')', pos);
    if (close == std::string::npos) fail(path, "malformed .npy header: unclosed shape tuple");
    return header.substr(pos, close - pos + 1);
  }
  const auto end = header.find_first_of(",}", pos);
  if (end == std::string::npos) fail(path, "malformed .npy header near '{}'", key);
  return header.substr(pos, end - pos);
}

}  // namespace

Tensor read_npy(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, 6) != 0) fail(path, "not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0;
  size_t header_start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) fail(path, "truncated .npy header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    header_start = 12;
  } else {
    fail(path, "unsupported .npy format version {}", major);
  }
  if (bytes.size() < header_start + header_len) fail(path, "truncated .npy header");
  const std::string header = bytes.substr(header_start, header_len);

  std::string descr = dict_value(header, "descr", path);
  if (descr.size() >= 2 && (descr.front() == '\'' || descr.front() == '"')) descr = descr.substr(1, descr.size() - 2);
  if (descr == "<u1" || descr == "|u1") descr = "|u1";
  if (descr == "<i1") descr = "|i1";
  const NpyType* type = nullptr;
  for (const auto& t : kNpyTypes) {
    if (descr == t.descr) type = &t;
  }
  if (!type) fail(path, "unsupported .npy dtype '{}' (supported: f32, f64, s64, s32, s16, u16, s8, u8, bool)", descr);
  if (dict_value(header, "fortran_order", path) != "False") fail(path, "Fortran-order .npy arrays are not supported");

  const std::string shape_text = dict_value(header, "shape", path);
  if (shape_text.empty() || shape_text.front() != '(') fail(path, "malformed .npy header: bad shape");
  Shape shape;
  static const std::regex kDim(R"(\s*(\d+)\s*,?)");
  std::string inner = shape_text.substr(1, shape_text.size() - 2);
  auto it = std::sregex_iterator(inner.begin(), inner.end(), kDim);
  size_t consumed = 0;
  for (; it != std::sregex_iterator(); ++it) {
    if (static_cast<size_t>(it->position()) != consumed) fail(path, "malformed .npy header: bad shape {}", shape_text);
    const std::string digits = (*it)[1].str();
    int64_t d = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), d);
    if (ec != std::errc() || end != digits.data() + digits.size()) {
      fail(path, "malformed .npy header: dimension {} is too large", digits);
    }
    shape.push_back(d);
    consumed += static_cast<size_t>(it->length());
  }
  if (inner.find_first_not_of(' ', consumed) != std::string::npos) {
    fail(path, "malformed .npy header: bad shape {}", shape_text);
  }

  // The shape must describe the bytes the file holds before anything is allocated for it.
  const size_t need = dtype_storage_bytes(type->dtype, checked_numel(shape, path));
  const size_t data_start = header_start + header_len;
  const size_t have = bytes.size() - data_start;
  if (have != need) {
    fail(path, "{} array of shape {} needs {} data bytes, the file has {}{}", dtype_name(type->dtype), shape_str(shape),
         need, have, have < need ? " (truncated)" : "");
  }
  Tensor t(type->dtype, shape);
  if (have > 0) std::memcpy(t.bytes(), bytes.data() + data_start, have);
  return t;
}

void write_npy(const std::string& path, const Tensor& t) {
  const NpyType* type = nullptr;
  for (const auto& nt : kNpyTypes) {
    if (nt.dtype == t.dtype()) type = &nt;
  }
  if (!type) fail(path, "cannot write dtype {} to .npy", dtype_name(t.dtype()));
  // A Python tuple literal: "()", "(5,)", "(2, 3)".
  const std::string shape = t.rank() == 1 ? fmt::format("{},", t.dim(0)) : fmt::format("{}", fmt::join(t.shape(), ", "));
  std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", type->descr, shape);
  // Pad with spaces so that the data starts on a 64-byte boundary, ending in a newline.
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict.push_back('\n');
  std::string out(kMagic, 6);
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(dict.size() & 0xFF));
  out.push_back(static_cast<char>((dict.size() >> 8) & 0xFF));
  out += dict;
  out.append(reinterpret_cast<const char*>(t.bytes()), t.nbytes());
  write_file_atomic(path, out);
}

}  // namespace nibble
