// Errors that reach the user as one line: "nibble: error: <file>: <problem>".
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace nibble {

// An error caused by the user's input (a file, a flag, a shape). `where` names the file
// (and line) it concerns; it may be empty when no file is involved.
class Error : public std::runtime_error {
 public:
  Error(std::string where, const std::string& problem)
      : std::runtime_error(where.empty() ? problem : where + ": " + problem),
        where_(std::move(where)),
        problem_(problem) {}
  const std::string& where() const { return where_; }
  const std::string& problem() const { return problem_; }

 private:
  std::string where_;
  std::string problem_;
};

// Text echoed in a message: quoted, cut after 80 characters, control characters escaped, so
// that every message stays on one line whatever the input holds.
std::string excerpt(std::string_view s);

template <typename... Args>
[[noreturn]] void fail(std::string where, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(std::move(where), fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace nibble
