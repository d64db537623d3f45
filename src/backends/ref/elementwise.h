// Shared machinery of the elementwise reference kernels: dtype dispatch and broadcasting.
#pragma once

#include <cstdint>

#include "backends/ref/broadcast.h"
#include "backends/ref/kernels.h"

namespace nibble::ref {

// Calls f(T{}) with T the C++ type of `t`, for the arithmetic dtypes elementwise ops accept.
template <typename F>
void dispatch_arithmetic(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32: return f(float{});
    case DType::f64: return f(double{});
    case DType::s64: return f(int64_t{});
    case DType::s32: return f(int32_t{});
    case DType::s16: return f(int16_t{});
    case DType::s8: return f(int8_t{});
    case DType::u8: return f(uint8_t{});
    default: kernel_fail("{} does not support dtype {}", op, dtype_name(t));
  }
}

// out = op(a, b) elementwise with broadcasting; a and b must share a dtype.
template <typename Op>
void binary_elementwise(const char* name, const Inputs& in, Outputs& out, Op op) {
  if (in.size() < 2 || !in[0] || !in[1]) kernel_fail("{} needs two inputs", name);
  const Tensor& a = *in[0];
  const Tensor& b = *in[1];
  if (a.dtype() != b.dtype()) {
    kernel_fail("{} inputs have different dtypes {} and {}", name, dtype_name(a.dtype()), dtype_name(b.dtype()));
  }
  dispatch_arithmetic(a.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    const Shape shape = broadcast_shape(a.shape(), b.shape());
    Tensor y(a.dtype(), shape);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* py = y.data<T>();
    const int64_t n = y.numel();
    if (a.shape() == shape && b.shape() == shape) {
      for (int64_t i = 0; i < n; ++i) py[i] = static_cast<T>(op(pa[i], pb[i]));
    } else {
      const auto ia = broadcast_index(a.shape(), shape);
      const auto ib = broadcast_index(b.shape(), shape);
      for (int64_t i = 0; i < n; ++i) py[i] = static_cast<T>(op(pa[ia[i]], pb[ib[i]]));
    }
    out[0] = std::move(y);
  });
}

// out = op(x) elementwise, same dtype and shape.
template <typename Op>
void unary_elementwise(const Node& node, const char* name, const Inputs& in, Outputs& out, Op op) {
  const Tensor& x = required_input(node, in, 0);
  dispatch_arithmetic(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    Tensor y(x.dtype(), x.shape());
    const T* px = x.data<T>();
    T* py = y.data<T>();
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) py[i] = static_cast<T>(op(px[i]));
    out[0] = std::move(y);
  });
}

// out = op(x) elementwise on f32 or f64, the computation in double.
template <typename Op>
void unary_float(const Node& node, const char* name, const Inputs& in, Outputs& out, Op op) {
  const Tensor& x = required_input(node, in, 0);
  Tensor y(x.dtype(), x.shape());
  const int64_t n = x.numel();
  if (x.dtype() == DType::f32) {
    const float* px = x.data<float>();
    float* py = y.data<float>();
    for (int64_t i = 0; i < n; ++i) py[i] = static_cast<float>(op(static_cast<double>(px[i])));
  } else if (x.dtype() == DType::f64) {
    const double* px = x.data<double>();
    double* py = y.data<double>();
    for (int64_t i = 0; i < n; ++i) py[i] = op(px[i]);
  } else {
    kernel_fail("{} expects a float input, got {}", name, dtype_name(x.dtype()));
  }
  out[0] = std::move(y);
}

}  // namespace nibble::ref
