// Device side of the tiled EXL2 layout (quant/exl2_tiled.h has the layout): a lane's 16 B-fragment
// pairs of one unit (32 rows x 32 columns) as exact bf16 integers q - zero, and the group table.
//
// Pair i of a plane of p bits sits in the lane's word i / (16 / p) at bit p * (i % (16 / p)) (its
// second row at +16). One shift and one mask put both values into the low mantissa bits of a bf16
// pair whose exponent makes them 128 + q (ulp 1 there, so exact up to 7 bits), and one bf16
// subtraction of 128 + zero leaves q - zero. A second plane (3, 5, 6 bits) is shifted onto the bits
// above the first with one more shift and mask. 8 bits do not fit a bf16 mantissa: they go through
// float16 (magic 1024) and float.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/ops.h"

namespace lathe::ops::cuda::tiled {

inline constexpr int kUnitRows = kExl2TiledUnitRows;
inline constexpr int kStripCols = kExl2TiledStripCols;

// Group table row (quant::Exl2Tiled::groups), from global or shared memory.
struct Group {
  int bits, rows, tq, vrow, arow, padded, stored;  // stored: the format's group (its q_scale_max entry)
};
__device__ __forceinline__ Group group_at(const int32_t* t, int g) {
  const int4 a = *reinterpret_cast<const int4*>(t + g * 8);
  const int4 b = *reinterpret_cast<const int4*>(t + g * 8 + 4);
  return {a.x, a.y, a.z, a.w, b.x, b.y, b.z};
}

// (a & b) | c in one LOP3 (the compiler splits it in two when b and c are both constants).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Value bits of pair k (of the 8 a warp half takes from a unit; see unit_half) in a plane of P
// bits whose words w start at the half's first pair, placed at bit SHIFT of each half-word.
template <int P, int SHIFT, int N>
__device__ __forceinline__ uint32_t plane_bits(const uint32_t (&w)[N], int k) {
  constexpr int kPer = 16 / P;
  const uint32_t v = w[k / kPer];
  const int at = P * (k % kPer);  // a constant once the caller's loop unrolls
  return at >= SHIFT ? v >> (at - SHIFT) : v << (SHIFT - at);
}
template <int P, int SHIFT>
inline constexpr uint32_t kPlaneMask = ((1u << P) - 1u) * 0x10001u << SHIFT;

__device__ __forceinline__ uint32_t bf16_sub(uint32_t v, uint32_t z) {
  __nv_bfloat162 r = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&v), *reinterpret_cast<const __nv_bfloat162*>(&z));
  return *reinterpret_cast<uint32_t*>(&r);
}

// One lane's pairs of one k step (a unit half) from its words of that half: `m` the first plane's
// (1 word for a 2-bit plane, 2 for 4 bits, 4 for 8), `sec` the second plane's (3, 5, 6 bits: the
// half's 1-bit pairs at bits 0..7 of each half-word, or its 2-bit word), as bf16 pairs q - zero
// (pair k = 2 j + h: rows 8 h + 2 q (+1) of the k step, column 8 j + g).
template <int BITS>
__device__ __forceinline__ void pairs_of(const uint32_t* m, uint32_t sec, uint32_t (&b)[8]) {
  constexpr uint32_t kMagic = 0x43004300u;  // bf16 128.0 in both halves
  constexpr uint32_t kZ = (0x4300u + (1u << (BITS - 1))) * 0x10001u;
  const uint32_t s[1] = {sec};
  if constexpr (BITS == 2 || BITS == 3) {
    const uint32_t w[1] = {m[0]};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const uint32_t rest = BITS == 2 ? kMagic : and_or(plane_bits<1, 2>(s, k), kPlaneMask<1, 2>, kMagic);
      b[k] = bf16_sub(and_or(plane_bits<2, 0>(w, k), kPlaneMask<2, 0>, rest), kZ);
    }
  } else if constexpr (BITS == 4 || BITS == 5 || BITS == 6) {
    const uint32_t w[2] = {m[0], m[1]};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      uint32_t rest = kMagic;
      if constexpr (BITS == 5) rest = and_or(plane_bits<1, 4>(s, k), kPlaneMask<1, 4>, kMagic);
      if constexpr (BITS == 6) rest = and_or(plane_bits<2, 4>(s, k), kPlaneMask<2, 4>, kMagic);
      b[k] = bf16_sub(and_or(plane_bits<4, 0>(w, k), kPlaneMask<4, 0>, rest), kZ);
    }
  } else {
    static_assert(BITS == 8, "EXL2 widths are 2, 3, 4, 5, 6 and 8");
    const uint32_t w[4] = {m[0], m[1], m[2], m[3]};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      // float16 1024 + q (ulp 1 up to 2048), minus 1024 + 128: exact, then to bf16 through float.
      const uint32_t h = and_or(plane_bits<8, 0>(w, k), kPlaneMask<8, 0>, 0x64006400u);
      const __half2 d = __hsub2(*reinterpret_cast<const __half2*>(&h), __half2(__ushort_as_half(0x6480), __ushort_as_half(0x6480)));
      const float2 f = __half22float2(d);
      __nv_bfloat162 r = __floats2bfloat162_rn(f.x, f.y);
      b[k] = *reinterpret_cast<uint32_t*>(&r);
    }
  }
}

// The first plane's width and the second's (0, 1 or 2) of a value width.
__host__ __device__ constexpr int first_plane(int bits) { return bits >= 8 ? 8 : bits >= 4 ? 4 : 2; }

// Half `half` of a unit for one lane, read from `unit` (the unit's first word; shared or global
// memory): planes follow each other, 32 * p words each, a lane's p words at p * lane.
template <int BITS>
__device__ __forceinline__ void unit_half(const uint32_t* unit, int lane, int half, uint32_t (&b)[8]) {
  constexpr int P0 = first_plane(BITS), P1 = BITS - P0;
  uint32_t m[P0 / 2];
  if constexpr (P0 == 2) {
    m[0] = unit[2 * lane + half];
  } else if constexpr (P0 == 4) {
    const uint2 v = *reinterpret_cast<const uint2*>(unit + 4 * lane + 2 * half);
    m[0] = v.x, m[1] = v.y;
  } else {
    const uint4 v = *reinterpret_cast<const uint4*>(unit + 8 * lane + 4 * half);
    m[0] = v.x, m[1] = v.y, m[2] = v.z, m[3] = v.w;
  }
  uint32_t sec = 0;
  if constexpr (P1 == 1) sec = unit[32 * P0 + lane] >> (8 * half);
  if constexpr (P1 == 2) sec = unit[32 * P0 + 2 * lane + half];
  pairs_of<BITS>(m, sec, b);
}

__device__ __forceinline__ unsigned smem_addr(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

// Asynchronous copies global -> shared (sm_80+): 16 bytes (L2 only) or 4 bytes; commit closes a
// group, wait leaves at most N of the thread's groups pending.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <int A, int B, int C>
__device__ __forceinline__ void zero(float (&a)[A][B][C]) {
#pragma unroll
  for (int i = 0; i < A; ++i)
#pragma unroll
    for (int j = 0; j < B; ++j)
#pragma unroll
      for (int k = 0; k < C; ++k) a[i][j][k] = 0.f;
}

// k-splits of the EXL2 kernels: every block of a column block (blockIdx.x) writes its partial rows,
// then calls this (all threads); true in the block that arrives last, which resets the counter for
// the next launch (or graph replay) and then adds the partials (merge_splits).
// The block's writes reach the others through one thread: the barrier orders every thread's partial
// rows before thread 0's fence and atomic (the pattern of a cooperative grid sync); a fence in every
// thread stalled each warp of every k-split (ncu: 0.35 cycles of membar a issued instruction).
__device__ __forceinline__ bool last_split(int* counters, int splits) {
  __shared__ int last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const int done = atomicAdd(counters + blockIdx.x, 1);
    last = done == splits - 1;
    if (last) {
      counters[blockIdx.x] = 0;
      __threadfence();  // acquire: the other splits' rows, before this block reads them
    }
  }
  __syncthreads();
  return last != 0;
}

// y[t, col] = the splits' partial rows ([splits][n_valid][Np]) added in split order (results do not
// depend on timing) + bias, for columns [col0, col0 + cols) and tokens [0, n_valid): a thread per
// element, eight splits' loads in flight at a time.
__device__ __forceinline__ void merge_splits(const float* partial, int splits, int n_valid, int Np, int col0, int cols,
                                             int N, const uint16_t* bias, float* y) {
  for (int i = threadIdx.x; i < n_valid * cols; i += blockDim.x) {
    const int tok = i / cols, col = col0 + i % cols;
    float sum = 0.f;
    for (int z0 = 0; z0 < splits; z0 += 8) {
      float v[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = z0 + k < splits ? __ldcg(partial + (int64_t(z0 + k) * n_valid + tok) * Np + col) : 0.f;
#pragma unroll
      for (int k = 0; k < 8; ++k) sum += v[k];
    }
    y[int64_t(tok) * N + col] = sum + (bias ? __half2float(__ushort_as_half(bias[col])) : 0.f);
  }
}

// The end of the decode kernels whose weights are the mma A operand (exl2_stream, exl2_direct):
// acc[t][m][e] is token 8 t + 2 q + e % 2, column col0 + 16 m + g + 8 (e / 2) of a warp's strip
// (mine: the strip exists). One split: y (+ bias) directly; else the split's partial rows
// ([splits][n_valid][Np]), and the last split of the column block [cols0, cols0 + cols) adds them.
// Every thread of the block calls it (the k-split path has barriers).
template <int NT>
__device__ __forceinline__ void finish_strips(const float (&acc)[NT][2][4], bool mine, int col0, int n_valid, int N, int Np,
                                              int splits, int split, int cols0, int cols, const uint16_t* bias, float* y,
                                              float* partial, int* counters) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const auto token_of = [&](int t, int e) { return 8 * t + 2 * q + (e & 1); };
  const auto col_of = [&](int m, int e) { return col0 + 16 * m + g + 8 * (e >> 1); };
  if (splits == 1) {
    if (!mine) return;
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tok = token_of(t, e), col = col_of(m, e);
          if (tok < n_valid && col < N)
            y[int64_t(tok) * N + col] = acc[t][m][e] + (bias ? __half2float(__ushort_as_half(bias[col])) : 0.f);
        }
    return;
  }
  if (mine)
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tok = token_of(t, e);
          if (tok < n_valid) partial[(int64_t(split) * n_valid + tok) * Np + col_of(m, e)] = acc[t][m][e];
        }
  if (!last_split(counters, splits)) return;
  merge_splits(partial, splits, n_valid, Np, cols0, cols, N, bias, y);
}

// d += a * b on the tensor cores: m16n8k16, bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The lane's BITS words of one unit (plane 0: p0 words a lane at p0 * lane; plane 1 after it, p1
// words a lane), from global memory read once a step (STREAM: evict first, keeping L2 for the
// activations and the K/V cache) or from shared memory.
template <int BITS, bool STREAM>
__device__ __forceinline__ void load_unit(const uint32_t* __restrict__ unit, int lane, uint32_t (&r)[BITS]) {
  constexpr int P0 = first_plane(BITS), P1 = BITS - P0;
  const auto ld = [](const auto* p) {
    if constexpr (STREAM) return __ldcs(p);
    else return *p;
  };
  if constexpr (P0 == 2) {
    const uint2 v = ld(reinterpret_cast<const uint2*>(unit + 2 * lane));
    r[0] = v.x, r[1] = v.y;
  } else if constexpr (P0 == 4) {
    const uint4 v = ld(reinterpret_cast<const uint4*>(unit + 4 * lane));
    r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
  } else {
    const uint4 v = ld(reinterpret_cast<const uint4*>(unit + 8 * lane));
    const uint4 u = ld(reinterpret_cast<const uint4*>(unit + 8 * lane + 4));
    r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w, r[4] = u.x, r[5] = u.y, r[6] = u.z, r[7] = u.w;
  }
  if constexpr (P1 == 1) r[P0] = ld(unit + 32 * P0 + lane);
  if constexpr (P1 == 2) {
    const uint2 v = ld(reinterpret_cast<const uint2*>(unit + 32 * P0 + 2 * lane));
    r[P0] = v.x, r[P0 + 1] = v.y;
  }
}

// Where row r (0..31) of a unit goes in fragment order: the row pairs lane q reads for both k steps
// of m16n8k16 (rows 2q, 8 + 2q, 16 + 2q, 24 + 2q and the row after each) become adjacent.
__host__ __device__ constexpr int fragment_row(int r) {
  const int pair = r >> 1;  // = q + 4 s
  return 2 * ((pair & 3) * 4 + (pair >> 2)) + (r & 1);
}
static_assert(fragment_row(2) == 8 && fragment_row(9) == 3 && fragment_row(17) == 5 && fragment_row(31) == 31);

// One unit's products: c[t][m] += (16 columns m of the strip) x (token tile t), both k steps.
// xv[t]: the lane's activations of the unit in fragment order (k step h: b0 = word 2h, b1 = 2h + 1).
template <int BITS, int NT>
__device__ __forceinline__ void unit_products(const uint32_t (&r)[BITS], const uint4 (&xv)[NT], float (&c)[NT][2][4]) {
  constexpr int P0 = tiled::first_plane(BITS), P1 = BITS - P0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    uint32_t m[P0 / 2];
#pragma unroll
    for (int i = 0; i < P0 / 2; ++i) m[i] = r[(P0 / 2) * h + i];
    uint32_t sec = 0;
    if constexpr (P1 == 1) sec = r[P0] >> (8 * h);
    if constexpr (P1 == 2) sec = r[P0 + h];
    uint32_t b[8];
    tiled::pairs_of<BITS>(m, sec, b);
    const uint32_t a0[4] = {b[0], b[2], b[1], b[3]}, a1[4] = {b[4], b[6], b[5], b[7]};
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const uint32_t x0 = h ? xv[t].z : xv[t].x, x1 = h ? xv[t].w : xv[t].y;
      mma_bf16(c[t][0], a0, x0, x1);
      mma_bf16(c[t][1], a1, x0, x1);
    }
  }
}

}  // namespace lathe::ops::cuda::tiled
