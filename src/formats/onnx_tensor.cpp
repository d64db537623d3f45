// TensorProto -> Tensor, for initializers, Constant attributes and ONNX test data.
#include "formats/onnx_tensor.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "nibble/error.h"
#include "nibble/onnx_import.h"

namespace nibble {

Tensor tensor_from_onnx(const onnx::TensorProto& proto, const std::string& where) {
  const std::string name = proto.name();
  const auto dtype = dtype_from_onnx(proto.data_type());
  if (!dtype) {
    fail(where, "tensor '{}' has ONNX data type {}, which nibble does not support", name, proto.data_type());
  }
  if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
    fail(where, "tensor '{}' keeps its data in an external file, which nibble does not support", name);
  }
  Shape shape;
  for (int64_t d : proto.dims()) {
    if (d < 0) fail(where, "tensor '{}' has a negative dimension {}", name, d);
    shape.push_back(d);
  }
  // The data must be there before anything is allocated for the declared shape.
  const int64_t numel = checked_numel(shape, where);
  const size_t need = dtype_storage_bytes(*dtype, numel);
  if (proto.has_raw_data()) {
    const std::string& raw = proto.raw_data();
    if (raw.size() != need) {
      fail(where, "tensor '{}' of {} {} needs {} bytes but its raw data has {}", name, dtype_name(*dtype),
           shape_str(shape), need, raw.size());
    }
    Tensor t(*dtype, shape);
    if (!raw.empty()) std::memcpy(t.bytes(), raw.data(), raw.size());
    return t;
  }
  // Without raw data the values come one per element of a typed field.
  int64_t held = 0;
  const char* field = "int32_data";
  switch (*dtype) {
    case DType::f32: held = proto.float_data_size(); field = "float_data"; break;
    case DType::f64: held = proto.double_data_size(); field = "double_data"; break;
    case DType::s64: held = proto.int64_data_size(); field = "int64_data"; break;
    case DType::s32: case DType::s16: case DType::u16: case DType::s8: case DType::u8: case DType::boolean:
    case DType::f16: case DType::bf16:
      held = proto.int32_data_size();
      break;
    default: fail(where, "tensor '{}' has dtype {} without raw data", name, dtype_name(*dtype));
  }
  if (held != numel) fail(where, "tensor '{}' declares {} elements but its {} field holds {}", name, numel, field, held);
  Tensor t(*dtype, shape);
  switch (*dtype) {
    case DType::f32:
      std::copy(proto.float_data().begin(), proto.float_data().end(), t.data<float>());
      break;
    case DType::f64:
      std::copy(proto.double_data().begin(), proto.double_data().end(), t.data<double>());
      break;
    case DType::s64:
      std::copy(proto.int64_data().begin(), proto.int64_data().end(), t.data<int64_t>());
      break;
    case DType::s32:
    case DType::s16:
    case DType::u16:
    case DType::s8:
    case DType::u8:
    case DType::boolean:
      for (int64_t i = 0; i < t.numel(); ++i) t.set(i, proto.int32_data(static_cast<int>(i)));
      break;
    case DType::f16:
    case DType::bf16: {
      // Half types travel as their bit patterns in int32_data.
      auto* bits = reinterpret_cast<uint16_t*>(t.bytes());
      for (int64_t i = 0; i < t.numel(); ++i) bits[i] = static_cast<uint16_t>(proto.int32_data(static_cast<int>(i)));
      break;
    }
    default:
      break;  // refused above
  }
  return t;
}

Tensor read_onnx_tensor(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, "cannot open file");
  std::stringstream ss;
  ss << f.rdbuf();
  onnx::TensorProto proto;
  if (!proto.ParseFromString(ss.str())) fail(path, "not a valid serialized onnx.TensorProto");
  return tensor_from_onnx(proto, path);
}

}  // namespace nibble
