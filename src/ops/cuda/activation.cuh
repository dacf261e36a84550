// The GLU activations in fp32, shared by the elementwise glu and the fused feed-forward, in the
// forms that stay accurate over the whole input range.
#pragma once

#include <cuda_runtime.h>

#include "ops/ops.h"

namespace lathe::ops::cuda {

template <Activation A>
__device__ __forceinline__ float activate(float x) {
  if constexpr (A == Activation::kSilu) {
    return x / (1.f + expf(-x));  // exp overflow for x << 0 gives x / inf = -0, not NaN
  } else if constexpr (A == Activation::kGeluTanh) {
    // 0.5 x (1 + tanh z) == x / (1 + e^(-2z)): same value without the cancellation of 1 + tanh z
    // for z << 0.
    const float z = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.f + expf(-2.f * z));
  } else if constexpr (A == Activation::kGelu) {
    // erfc form: 1 + erf(z) cancels badly for z << 0 (gelu of large negative x); erfc(-z) does not.
    return 0.5f * x * erfcf(-x * 0.7071067811865476f);
  } else {
    return x > 0.f ? x : 0.f;
  }
}

// The same with the activation known only at run time (outside hot loops).
__device__ __forceinline__ float activate(Activation a, float x) {
  switch (a) {
    case Activation::kSilu: return activate<Activation::kSilu>(x);
    case Activation::kGeluTanh: return activate<Activation::kGeluTanh>(x);
    case Activation::kGelu: return activate<Activation::kGelu>(x);
    default: return activate<Activation::kRelu>(x);
  }
}

}  // namespace lathe::ops::cuda
