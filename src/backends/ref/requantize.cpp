// nibble:Requantize: the seed's Quantize layer (per-channel factor, shift, clamp to output bits).
#include "backends/ref/int_ops.h"

namespace nibble::ref {

void requantize(const Node& node, const Inputs& in, Outputs& out) {
  out.at(0) = requantize_tensor(node, required_input(node, in, 0), required_input(node, in, 1));
}

}  // namespace nibble::ref
