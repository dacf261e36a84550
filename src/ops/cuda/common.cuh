// Device helpers shared by the kernel files: weight element widening, 16-byte vector loads and
// warp reductions. Header-only, included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace lathe::ops::cuda {

inline constexpr int kWarp = 32;

// Storage types of the weight dtypes (raw bits for the 16-bit formats; widening is done by hand so
// the result is bit-identical to core/dtype.h's f16_to_f32 / bf16_to_f32).
struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(Bf16 v) { return __uint_as_float(uint32_t(v.bits) << 16); }
__device__ __forceinline__ float widen(F16 v) { return __half2float(__ushort_as_half(v.bits)); }

// The low / high 16-bit halves of a packed pair, widened.
__device__ __forceinline__ float bf16_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ float f16_lo(uint32_t u) { return __half2float(__ushort_as_half(uint16_t(u & 0xffffu))); }
__device__ __forceinline__ float f16_hi(uint32_t u) { return __half2float(__ushort_as_half(uint16_t(u >> 16))); }

// cuda_bf16/cuda_fp16 values: rounding from fp32 (nearest even) and widening.
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T round_to(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return __float2half_rn(v);
}

// fp32 -> a storage type (round to nearest even for the 16-bit ones).
template <typename T>
__device__ __forceinline__ T store_as(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, Bf16>) return Bf16{__bfloat16_as_ushort(__float2bfloat16_rn(v))};
  else return F16{__half_as_ushort(__float2half_rn(v))};
}

// One output element to an fp32 destination and/or its 16-bit copy (bf16 or f16); either may be
// null (the lowp activations of ops.h).
__device__ __forceinline__ void store_out(float* out, uint16_t* lowp, bool lowp_bf16, int64_t i, float v) {
  if (out) out[i] = v;
  if (lowp) lowp[i] = lowp_bf16 ? store_as<Bf16>(v).bits : store_as<F16>(v).bits;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Blocks of a 1-D elementwise launch: enough to fill the GPU, the kernels grid-stride the rest.
inline unsigned elementwise_blocks(int64_t n, int threads) {
  const int64_t want = (n + threads - 1) / threads;
  return unsigned(want < 65536 ? (want < 1 ? 1 : want) : 65536);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace lathe::ops::cuda
