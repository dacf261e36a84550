// Device side of the quantized K/V cache (ops.h KvQuant; ops/kv_quant.h is the host reference and
// these follow its arithmetic exactly): the tag types the attention kernels are templated on, the
// warp-collective group quantizer rope_store_kv writes with, and code widening.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/ops.h"

namespace lathe::ops::cuda {

// K/V element tags beside float and Bf16: int8 codes, and 4-bit codes two a byte (element 2 i in
// the low nibble of byte i, stored as code + 8); one float16 scale per kKvQuantGroup elements.
struct KvQ8 {};
struct KvQ4 {};
template <typename KV>
inline constexpr bool kIsQuantKv = std::is_same_v<KV, KvQ8> || std::is_same_v<KV, KvQ4>;
static_assert(kKvQuantGroup == kWarp, "a warp quantizes one group");

// Byte offset of element `e` of a code array.
template <typename KV>
__device__ __forceinline__ int64_t kv_code_byte(int64_t e) {
  return std::is_same_v<KV, KvQ4> ? e / 2 : e;
}

// Warp-collective: lane i holds element i of one group (the group starting at element `g0` of the
// cache, g0 a multiple of 32) and stores its code; lane 0 stores the scale. All 32 lanes must call.
template <typename KV>
__device__ __forceinline__ void kv_store_group(void* codes, uint16_t* scales, int64_t g0, float x) {
  const int lane = int(threadIdx.x) % kWarp;
  const float a = fabsf(x);
  const float amax = warp_max(a);
  float s_raw;
  if constexpr (std::is_same_v<KV, KvQ8>) {
    s_raw = amax / 127.f;
  } else {
    // The first lane of largest magnitude (the host loop's strict > keeps the first).
    const unsigned at = __ballot_sync(0xffffffffu, a == amax);
    const float m = __shfl_sync(0xffffffffu, x, at ? __ffs(at) - 1 : 0);
    s_raw = amax > 0.f ? m / -8.f : 0.f;
  }
  uint16_t s16 = __half_as_ushort(__float2half_rn(s_raw));
  if (fabsf(__half2float(__ushort_as_half(s16))) < fabsf(s_raw)) ++s16;  // away from zero, as the host
  const float s = __half2float(__ushort_as_half(s16));
  int c = 0;
  if (s != 0.f && isfinite(s) && !isnan(x)) {  // as the host: a NaN stores code 0
    const float r = rintf(x / s);
    c = std::is_same_v<KV, KvQ8> ? int(fminf(fmaxf(r, -127.f), 127.f)) : int(fminf(fmaxf(r, -8.f), 7.f));
  }
  if constexpr (std::is_same_v<KV, KvQ8>) {
    static_cast<int8_t*>(codes)[g0 + lane] = int8_t(c);
  } else {
    const int nib = c + 8;
    const int hi = __shfl_down_sync(0xffffffffu, nib, 1);
    if (lane % 2 == 0) static_cast<uint8_t*>(codes)[(g0 + lane) / 2] = uint8_t(nib | hi << 4);
  }
  if (lane == 0) scales[g0 / kKvQuantGroup] = s16;
}

// The scale of the group holding element e, widened.
__device__ __forceinline__ float kv_scale_at(const uint16_t* scales, int64_t e) {
  return __half2float(__ushort_as_half(__ldg(scales + e / kKvQuantGroup)));
}

// Code i (0..3) of a word of four int8 codes, and code i (0..7) of a word of eight 4-bit codes.
__device__ __forceinline__ float q8_code(uint32_t w, int i) { return float(int8_t(w >> (8 * i))); }
__device__ __forceinline__ float q4_code(uint32_t w, int i) { return float(int((w >> (4 * i)) & 15u) - 8); }

}  // namespace lathe::ops::cuda
