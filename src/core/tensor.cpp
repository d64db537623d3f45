// Tensor storage, shapes and conversions.
#include "nibble/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>
#include <stdexcept>

#include "nibble/error.h"

namespace nibble {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_) {
    if (d < 0) throw std::invalid_argument("negative tensor dimension in " + shape_str(shape_));
  }
  storage_ = std::make_shared<std::vector<uint8_t>>(nbytes(), 0);
}

Tensor Tensor::reshaped(Shape shape) const {
  if (shape_numel(shape) != numel()) {
    throw std::invalid_argument(fmt::format("cannot reshape {} to {}", shape_str(shape_), shape_str(shape)));
  }
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::cast(DType to) const {
  Tensor out(to, shape_);
  const int64_t n = numel();
  for (int64_t i = 0; i < n; ++i) out.set(i, get(i));
  return out;
}

Tensor Tensor::clone() const {
  Tensor out(dtype_, shape_);
  if (nbytes() > 0) std::memcpy(out.bytes(), bytes(), nbytes());
  return out;
}

void Tensor::check_type(DType expected) const {
  if (expected != dtype_) {
    throw std::logic_error(fmt::format("tensor holds {} but was accessed as {}", dtype_name(dtype_),
                                       dtype_name(expected)));
  }
}

}  // namespace nibble
