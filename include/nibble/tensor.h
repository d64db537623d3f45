// A dense tensor: dtype, shape and a shared byte buffer (row-major, 4-bit types packed).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nibble/dtype.h"

namespace nibble {

using Shape = std::vector<int64_t>;

// The most elements a tensor may have: 2^56, so that every byte count of one (at up to 64 bits
// an element) fits in 63 bits. Shapes read from files are checked against it before anything is
// allocated.
inline constexpr int64_t kMaxElements = int64_t{1} << 56;

// The element count of `s`: -1 when a dimension is negative (unknown); throws nibble::Error
// when the count exceeds kMaxElements.
int64_t shape_numel(const Shape& s);
// The same for a shape that must be concrete: throws nibble::Error naming `where` for a
// negative dimension or a count past kMaxElements.
int64_t checked_numel(const Shape& s, const std::string& where);
// a x b for non-negative sizes, throwing nibble::Error naming `where` past kMaxElements.
int64_t checked_size_mul(int64_t a, int64_t b, const std::string& where);
std::string shape_str(const Shape& s);  // "[1, 3, 224, 224]"

class Tensor {
 public:
  Tensor() = default;
  // A zero-filled tensor.
  Tensor(DType dtype, Shape shape);
  // A tensor whose bytes are left as the allocator found them, for kernels that write every
  // element before anyone reads one.
  static Tensor uninitialized(DType dtype, Shape shape);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(static_cast<size_t>(i < 0 ? i + rank() : i)); }
  int64_t numel() const { return numel_; }  // fixed with the shape (kernels call it in loops)
  size_t nbytes() const { return dtype_storage_bytes(dtype_, numel()); }
  bool defined() const { return buffer_ != nullptr; }

  // Mutable access counts as a write (write_count); const access does not.
  uint8_t* bytes() {
    if (!buffer_) return nullptr;
    // A plain load and store (no locked add): racing writers may lose increments, but the count
    // still moves, which is all a cache needs.
    buffer_->writes.store(buffer_->writes.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return buffer_->data;
  }
  const uint8_t* bytes() const { return buffer_ ? buffer_->data : nullptr; }

  // For caches of data derived from a tensor's bytes (packed weights): the storage this tensor
  // shares with its copies and reshapes, kept alive by the returned owner, and the number of
  // mutable accesses to it so far. A cache that holds the owner and finds the same count has
  // seen every change made through bytes(), data() or set() since it was filled (a pointer kept
  // from an earlier mutable access and written later is not seen).
  std::shared_ptr<const void> storage_owner() const { return buffer_; }
  uint64_t write_count() const { return buffer_ ? buffer_->writes.load(std::memory_order_relaxed) : 0; }

  // Typed access; throws if T does not match the dtype.
  template <typename T>
  T* data() {
    check_type(dtype_of<T>::value);
    return reinterpret_cast<T*>(bytes());
  }
  template <typename T>
  const T* data() const {
    check_type(dtype_of<T>::value);
    return reinterpret_cast<const T*>(bytes());
  }

  // Element i as a double / set from a double with the dtype's rounding (any dtype).
  double get(int64_t i) const { return traits(dtype_).to_double(bytes(), i); }
  void set(int64_t i, double v) { traits(dtype_).from_double(bytes(), i, v); }

  // Same storage, new shape with the same element count.
  Tensor reshaped(Shape shape) const;
  // A deep copy converted to another dtype (values pass through double).
  Tensor cast(DType to) const;
  Tensor clone() const;

 private:
  struct Uninitialized {};
  Tensor(DType dtype, Shape shape, Uninitialized);
  void check_type(DType expected) const;

  DType dtype_ = DType::f32;
  Shape shape_;
  int64_t numel_ = 1;  // shape_numel(shape_)
  // Data buffers of 64 KiB and more come from a process-wide pool that keeps freed ones (up to a
  // bound) for the next tensor of the same size: an engine allocates the same sizes on every
  // run, and fresh pages would cost a fault each.
  struct Buffer {
    uint8_t* data = nullptr;
    size_t size = 0;
    std::atomic<uint64_t> writes{0};
  };
  std::shared_ptr<Buffer> buffer_;
};

}  // namespace nibble
