// Conversion of onnx.TensorProto into nibble tensors.
#pragma once

#include <string>

#include <onnx/onnx_pb.h>

#include "nibble/tensor.h"

namespace nibble {

// `where` names the file and tensor for error messages.
Tensor tensor_from_onnx(const onnx::TensorProto& proto, const std::string& where);

}  // namespace nibble
