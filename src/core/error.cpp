// Quoting user text inside one-line error messages.
#include "nibble/error.h"

namespace nibble {

std::string excerpt(std::string_view s) {
  constexpr size_t kMaxShown = 80;
  std::string out = "'";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == kMaxShown) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(s[i]);
    if (u == '\r') {
      out += "\\r";
    } else if (u == '\n') {
      out += "\\n";
    } else if (u == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += s[i];
    }
  }
  return out + "'";
}

}  // namespace nibble
