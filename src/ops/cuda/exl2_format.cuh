// Device side of the EXL2 format (quant/exl2.h, ops.h Exl2View) shared by the EXL2 kernels:
// per-width packing constants, bit windows over a column's packed words, and the k-split merge.
//
// Packing: every output column is its own bitstream down the act-order rows; a "unit" is the fewest
// rows whose bits fill whole 32-bit words (4-bit: 8 rows in 1 word; 3-bit: 32 rows in 3 words), and
// row i of a unit sits at bit i * BITS of the unit's words (a row may straddle two words).
// The kernels walk a group in "blocks" of at least 16 rows (whole units), and load several blocks'
// words at once so that about eight 16-byte loads per thread are in flight.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/ops.h"

namespace lathe::ops::cuda::exl2 {

// Columns per thread: four consecutive columns' words of one packed row are one 16-byte load (a
// warp: 512 coalesced bytes), and each activation read feeds four columns.
inline constexpr int kCpt = 4;

template <int BITS>
struct Width {
  static constexpr int R = BITS == 2 ? 16 : BITS == 3 ? 32 : BITS == 4 ? 8 : BITS == 5 ? 32 : BITS == 6 ? 16 : 4;
  static constexpr int W = R * BITS / 32;             // words per unit
  static constexpr int H = R / 2;                     // row pairs per unit: (i, i + H)
  static constexpr int BR = R >= 16 ? R : 16;         // rows per block
  static constexpr int UB = BR / R;                   // units per block
  static constexpr int BW = UB * W;                   // words per block
  static constexpr int BATCH = BW >= 8 ? 1 : 8 / BW;  // blocks whose words are loaded together
  static constexpr uint32_t kMask = (1u << BITS) - 1;
  static constexpr int kZero = 1 << (BITS - 1);
};

// Unit rows per width at run time (the shared-memory layout of the activations depends on it).
__device__ __forceinline__ int unit_rows(int bits) {
  return bits == 2 ? 16 : bits == 3 ? 32 : bits == 4 ? 8 : bits == 5 ? 32 : bits == 6 ? 16 : 4;
}

// 32 bits of a unit's words starting at bit `bit` (a compile-time constant once loops unroll); bits
// past the unit read as zero.
template <int W>
__device__ __forceinline__ uint32_t window(const uint32_t* w, int bit) {
  const int word = bit >> 5, sh = bit & 31;
  if (sh == 0) return w[word];
  const uint32_t hi = word + 1 < W ? w[word + 1] : 0u;
  return __funnelshift_r(w[word], hi, sh);
}

// Row i of a unit as an exact float (q - zero).
template <int BITS>
__device__ __forceinline__ float dq_row(const uint32_t* w, int i) {
  using F = Width<BITS>;
  // 2^23 + q as a float, minus 2^23 + zero: two exact operations instead of an int conversion.
  const uint32_t v = (window<F::W>(w, i * BITS) & F::kMask) | 0x4b000000u;
  return __uint_as_float(v) - float(8388608 + F::kZero);
}

// The group's scale for column c: (code + 1)^2 * max / 256, code the column's 4-bit nibble.
__device__ __forceinline__ void group_scales(const Exl2View& w, int gi, int c0, float (&scale)[kCpt]) {
  const int Np = int((w.out_features + 31) / 32 * 32);
  const uint32_t codes = w.q_scale[int64_t(gi) * (Np / 8) + c0 / 8] >> (4 * (c0 % 8));
  const float smax = __half2float(__ushort_as_half(w.q_scale_max[gi])) / 256.f;
#pragma unroll
  for (int c = 0; c < kCpt; ++c) {
    const uint32_t code = ((codes >> (4 * c)) & 15u) + 1;
    scale[c] = float(code * code) * smax;
  }
}

// The four columns' words of `n` consecutive packed rows (stride: padded columns), as 16-byte loads
// that bypass L1 (each weight is read once).
template <int N>
__device__ __forceinline__ void load_words(const uint32_t* qw, int64_t stride, uint4 (&wd)[N]) {
#pragma unroll
  for (int j = 0; j < N; ++j) wd[j] = __ldcs(reinterpret_cast<const uint4*>(qw + int64_t(j) * stride));
}

__device__ __forceinline__ uint32_t lane_of(const uint4& v, int c) { return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w; }

// Writes a block's results: with one split, y (+ bias) directly; else the split's partial row, and
// the last block of the column block to finish (atomic counter, reset by it) adds the partials in
// split order, so results do not depend on timing.
template <int NT>
__device__ __forceinline__ void finish(const float (&acc)[NT][kCpt], int n_valid, int c0, const Exl2View& w, float* y,
                                       float* partial, int* counters, int splits, int* last) {
  const int N = int(w.out_features), Np = (N + 31) / 32 * 32, s = blockIdx.y;
  float b[kCpt];
#pragma unroll
  for (int c = 0; c < kCpt; ++c) b[c] = w.bias && c0 + c < N ? __half2float(__ushort_as_half(w.bias[c0 + c])) : 0.f;
  if (splits == 1) {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int c = 0; c < kCpt; ++c)
        if (t < n_valid && c0 + c < N) y[int64_t(t) * N + c0 + c] = acc[t][c] + b[c];
    return;
  }
  if (c0 < Np)
#pragma unroll
    for (int t = 0; t < NT; ++t)
      *reinterpret_cast<float4*>(partial + (int64_t(s) * NT + t) * Np + c0) =
          make_float4(acc[t][0], acc[t][1], acc[t][2], acc[t][3]);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int done = atomicAdd(counters + blockIdx.x, 1);
    *last = done == splits - 1;
    if (*last) counters[blockIdx.x] = 0;  // ready for the next launch (or graph replay)
  }
  __syncthreads();
  if (!*last || c0 >= N) return;
  __threadfence();
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    if (t >= n_valid) break;
    // Eight splits' loads in flight at a time (one at a time cost a cache latency per split),
    // added in split order.
    float sum[kCpt] = {0.f, 0.f, 0.f, 0.f};
    for (int z0 = 0; z0 < splits; z0 += 8) {
      float4 v[8];
#pragma unroll
      for (int k = 0; k < 8; ++k)
        if (z0 + k < splits) v[k] = __ldcg(reinterpret_cast<const float4*>(partial + (int64_t(z0 + k) * NT + t) * Np + c0));
#pragma unroll
      for (int k = 0; k < 8; ++k)
        if (z0 + k < splits) sum[0] += v[k].x, sum[1] += v[k].y, sum[2] += v[k].z, sum[3] += v[k].w;
    }
#pragma unroll
    for (int c = 0; c < kCpt; ++c)
      if (c0 + c < N) y[int64_t(t) * N + c0 + c] = sum[c] + b[c];
  }
}

}  // namespace lathe::ops::cuda::exl2
