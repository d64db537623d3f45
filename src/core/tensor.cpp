// Tensor storage, shapes and conversions.
#include "nibble/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>

#include "nibble/error.h"

namespace nibble {

int64_t checked_size_mul(int64_t a, int64_t b, const std::string& where) {
  if (a < 0 || b < 0) fail(where, "negative size in a size computation ({} x {})", a, b);
  if (a != 0 && b > kMaxElements / a) {
    fail(where, "size {} x {} exceeds the limit of 2^56 elements", a, b);
  }
  return a * b;
}

namespace {

// The count of a shape without negative dimensions; a zero dimension makes it 0 whatever the others.
int64_t count(const Shape& s, const std::string& where) {
  for (int64_t d : s) {
    if (d == 0) return 0;
  }
  int64_t n = 1;
  for (int64_t d : s) {
    if (d > kMaxElements / n) fail(where, "shape {} has more than 2^56 elements", shape_str(s));
    n *= d;
  }
  return n;
}

}  // namespace

int64_t shape_numel(const Shape& s) {
  for (int64_t d : s) {
    if (d < 0) return -1;
  }
  return count(s, "");
}

int64_t checked_numel(const Shape& s, const std::string& where) {
  for (int64_t d : s) {
    if (d < 0) fail(where, "shape {} has a negative dimension", shape_str(s));
  }
  return count(s, where);
}

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

namespace {

// Freed tensor buffers by size, reused by the next allocation of exactly that size.
// Under AddressSanitizer every buffer is freed for real, so that a use after free is reported.
#if defined(__SANITIZE_ADDRESS__)
#define NIBBLE_TENSOR_POOL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NIBBLE_TENSOR_POOL 0
#endif
#endif
#ifndef NIBBLE_TENSOR_POOL
#define NIBBLE_TENSOR_POOL 1
#endif

class BufferPool {
 public:
  static constexpr size_t kMinBytes = NIBBLE_TENSOR_POOL ? size_t{64} << 10 : SIZE_MAX;
  static constexpr size_t kMaxHeldBytes = size_t{1} << 30;

  uint8_t* allocate(size_t n) {
    if (n >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (auto it = free_.find(n); it != free_.end()) {
        uint8_t* p = it->second;
        free_.erase(it);
        held_ -= n;
        return p;
      }
    }
    return static_cast<uint8_t*>(::operator new(n == 0 ? 1 : n, std::align_val_t{64}));
  }

  void release(uint8_t* p, size_t n) {
    if (n >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (held_ + n <= kMaxHeldBytes) {
        free_.emplace(n, p);
        held_ += n;
        return;
      }
    }
    ::operator delete(p, std::align_val_t{64});
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, uint8_t*> free_;
  size_t held_ = 0;
};

BufferPool& pool() {
  static BufferPool* p = new BufferPool;  // never destroyed: tensors may outlive static destruction
  return *p;
}

}  // namespace

Tensor::Tensor(DType dtype, Shape shape, Uninitialized) : dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_) {
    if (d < 0) throw std::invalid_argument("negative tensor dimension in " + shape_str(shape_));
  }
  numel_ = checked_numel(shape_, "");
  auto* b = new Buffer;
  b->size = nbytes();
  try {
    b->data = pool().allocate(b->size);
  } catch (...) {
    delete b;
    throw;
  }
  buffer_ = std::shared_ptr<Buffer>(b, [](Buffer* q) {
    pool().release(q->data, q->size);
    delete q;
  });
}

Tensor::Tensor(DType dtype, Shape shape) : Tensor(dtype, std::move(shape), Uninitialized{}) {
  std::memset(buffer_->data, 0, nbytes());
}

Tensor Tensor::uninitialized(DType dtype, Shape shape) { return Tensor(dtype, std::move(shape), Uninitialized{}); }

Tensor Tensor::reshaped(Shape shape) const {
  if (shape_numel(shape) != numel()) {
    throw std::invalid_argument(fmt::format("cannot reshape {} to {}", shape_str(shape_), shape_str(shape)));
  }
  Tensor t = *this;
  t.shape_ = std::move(shape);
  t.numel_ = shape_numel(t.shape_);
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
