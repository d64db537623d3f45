// Division by a per-layer constant, rounded as IEEE division rounds (to nearest even), with the
// constant's reciprocal computed once: for host and device code.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define NIBBLE_HOST_DEVICE __host__ __device__
#else
#define NIBBLE_HOST_DEVICE
#endif

namespace nibble::cuda {

// x / s rounded to nearest even, given inv = RN(1 / s): q = RN(x inv) is within an ulp or two of
// the quotient; the remainder x - q s is exact as one FMA, and RN(q + remainder x inv) is the
// correctly rounded quotient (Markstein's correction with a correctly rounded reciprocal) where
// the quotient is a normal number and nothing overflows; its sign is q's (the correction of a
// zero quotient would turn -0 into +0). Four operations instead of a division (a reciprocal
// estimate, two refinements, two corrections and a range check on the GPU).
// Outside that range (|x / s| below 2^-126 or near 2^128) the result may differ in the last
// place; an e4m3 code of it does not (both are 0 or both saturate).
NIBBLE_HOST_DEVICE inline float divide_by(float x, float s, float inv) {
#if defined(__CUDA_ARCH__)
  const float q = __fmul_rn(x, inv);
  return copysignf(__fmaf_rn(__fmaf_rn(-q, s, x), inv, q), q);
#else
  const float q = x * inv;
  return std::copysign(std::fma(std::fma(-q, s, x), inv, q), q);
#endif
}

}  // namespace nibble::cuda
