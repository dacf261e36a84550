// The GEMV building blocks of the CUDA backend (decode-size matmuls): raw weight vectors held until
// use, activation loads, and the per-warp streaming loop over RW weight rows. Shared by matmul.cu
// (dense GEMVs) and moe.cu (expert GEMVs picked on the device). Header-only, .cu files only.
#pragma once

#include <cstdint>

#include "ops/cuda/common.cuh"

namespace lathe::ops::cuda {

constexpr int kGemvWarps = 8;  // 256 threads per block

// VEC weight elements of type T held as raw bits until they are used, so the loads of several
// vectors can all be issued before the first conversion (memory-level parallelism).
template <typename T, int VEC>
struct RawVec;

template <>
struct RawVec<Bf16, 8> {
  uint4 v;
  __device__ __forceinline__ void load(const Bf16* p) { v = __ldcs(reinterpret_cast<const uint4*>(p)); }
  __device__ __forceinline__ void widen(float (&f)[8]) const {
    f[0] = bf16_lo(v.x), f[1] = bf16_hi(v.x), f[2] = bf16_lo(v.y), f[3] = bf16_hi(v.y);
    f[4] = bf16_lo(v.z), f[5] = bf16_hi(v.z), f[6] = bf16_lo(v.w), f[7] = bf16_hi(v.w);
  }
};

template <>
struct RawVec<F16, 8> {
  uint4 v;
  __device__ __forceinline__ void load(const F16* p) { v = __ldcs(reinterpret_cast<const uint4*>(p)); }
  __device__ __forceinline__ void widen(float (&f)[8]) const {
    f[0] = f16_lo(v.x), f[1] = f16_hi(v.x), f[2] = f16_lo(v.y), f[3] = f16_hi(v.y);
    f[4] = f16_lo(v.z), f[5] = f16_hi(v.z), f[6] = f16_lo(v.w), f[7] = f16_hi(v.w);
  }
};

template <>
struct RawVec<float, 4> {
  float4 v;
  __device__ __forceinline__ void load(const float* p) { v = __ldcs(reinterpret_cast<const float4*>(p)); }
  __device__ __forceinline__ void widen(float (&f)[4]) const { f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w; }
};

template <typename T>
struct RawVec<T, 1> {
  T v;
  __device__ __forceinline__ void load(const T* p) { v = *p; }
  __device__ __forceinline__ void widen(float (&f)[1]) const { f[0] = cuda::widen(v); }
};

template <int VEC>
__device__ __forceinline__ void load_x(const float* p, float (&f)[VEC]) {
  if constexpr (VEC == 8) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  } else if constexpr (VEC == 4) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
  } else {
    f[0] = __ldg(p);
  }
}

// acc[r][t] += dot(w_r[c .. c+VEC), x_t[c .. c+VEC)) for the RW rows and NT tokens of this warp.
template <typename T, int NT, int VEC, int RW>
__device__ __forceinline__ void gemv_step(float (&acc)[RW][NT], const RawVec<T, VEC> (&raw)[RW], const float* x,
                                          int64_t c, int64_t k) {
  float wf[RW][VEC];
#pragma unroll
  for (int r = 0; r < RW; ++r) raw[r].widen(wf[r]);
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    float xv[VEC];
    load_x<VEC>(x + t * k + c, xv);
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[r][t] = fmaf(wf[r][i], xv[i], acc[r][t]);
  }
}

// The streaming loop of a warp over its RW weight rows (lane l covers columns l*VEC + j*32*VEC, U
// vectors per row in flight), ending with the warp-reduced dot products in every lane.
template <typename T, int NT, int VEC, int RW, int U>
__device__ __forceinline__ void gemv_rows(float (&acc)[RW][NT], const T* const (&wr)[RW], const float* x, int lane,
                                          int64_t k) {
#pragma unroll
  for (int r = 0; r < RW; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = 0.f;
  const int64_t step = int64_t(kWarp) * VEC;
  int64_t c = int64_t(lane) * VEC;
  for (; c + (U - 1) * step < k; c += U * step) {
    RawVec<T, VEC> raw[U][RW];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < RW; ++r) raw[u][r].load(wr[r] + c + u * step);
#pragma unroll
    for (int u = 0; u < U; ++u) gemv_step<T, NT, VEC, RW>(acc, raw[u], x, c + u * step, k);
  }
  for (; c < k; c += step) {
    RawVec<T, VEC> raw[RW];
#pragma unroll
    for (int r = 0; r < RW; ++r) raw[r].load(wr[r] + c);
    gemv_step<T, NT, VEC, RW>(acc, raw, x, c, k);
  }
#pragma unroll
  for (int r = 0; r < RW; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = warp_sum(acc[r][t]);
}

}  // namespace lathe::ops::cuda
