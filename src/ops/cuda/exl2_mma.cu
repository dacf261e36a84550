// EXL2 matmul on the tensor cores for 1..64 tokens (fast mode): the packed weights are streamed once
// per launch, as stored, through shared memory, and each warp dequantizes its B fragments straight
// from the packed words into registers for mma.sync m16n8k16 (bf16 in, fp32 accumulate).
//  * Grid (column block of 128, k-split of whole groups); 4 warps, each 4 n-tiles of 8 columns.
//  * Stages: one group's packed rows for the block's 128 columns (and its 16 scale-code words) per
//    stage, copied with cp.async, kStages deep: the copies of the next groups are in flight while
//    this one is multiplied (one or two blocks per SM keep HBM busy, whatever the layer's width).
//  * k order: the mma's k slots (2p, 2p + 1) of a 16-row step hold the pair p of rows that one
//    shift and one LOP3 extract from a column's bits (rows (i, i + H) of a packing unit; see
//    exl2_format.cuh); the A fragments read the same two rows of the activations, which are
//    gathered into shared memory in act-order (x[perm[p]], rounded to bf16) with every load of a
//    thread's batch in flight at once (a gather loop of dependent loads cost microseconds a block).
//  * B values are exact bf16 integers q - zero (bits into the mantissa of 128.0, one subtraction;
//    8-bit through float); accumulation is fp32 in the tensor cores, and the group's scale
//    ((code + 1)^2 * max / 256) multiplies each column's group sum once in fp32. The activations
//    are bf16: with SPLIT (decode sizes, and exact mode) as hi + lo, x - hi rounded again, two
//    mma per fragment (relative error ~2^-17: fp32-accurate); without (larger batches in fast
//    mode) hi only, the rounding of the dense fast path's GEMMs.
//  * Tokens are m-tiles of 16 (MT of them); rows of A beyond the real tokens are never read back
//    (a C row depends only on its A row), so they are not even written.
//  * k-splits write partial rows; the last block of a column block adds them in split order.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/exl2_format.cuh"

namespace lathe::ops::cuda {
namespace {

using exl2::Width;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTiles = 4;                    // n-tiles (8 columns) per warp
constexpr int kBlockCols = kWarps * kTiles * 8;  // 128
constexpr int kStages = 4;

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Pair P of a group's rows in one column (rows (i, i + H) of unit P / H, i = P % H) as two exact
// bf16 integers q - zero (low half: row i). st: the stage, [packed row][kBlockCols] words.
template <int BITS>
__device__ __forceinline__ uint32_t dq_pair_bf16(const uint32_t* st, int c, unsigned P) {
  using F = Width<BITS>;
  static_assert((F::H & (F::H - 1)) == 0, "pairs per unit are a power of two");
  // Unsigned, so the compiler knows i < H: for 2, 4 and 8 bits both windows are then one word.
  const unsigned u = P / F::H, i = P % F::H;
  const uint32_t* w = st + u * F::W * kBlockCols + c;
  const auto window = [&](unsigned bit) {
    const unsigned word = bit >> 5;
    const uint32_t lo = w[word * kBlockCols];
    const uint32_t hi = w[min(word + 1, unsigned(F::W - 1)) * kBlockCols];  // (used only when the row straddles)
    return __funnelshift_r(lo, hi, bit & 31);
  };
  const uint32_t a = window(i * BITS), b = window((i + F::H) * BITS - 16);
  if constexpr (BITS == 8) {
    __nv_bfloat162 r = __floats2bfloat162_rn(float(int(a & 0xffu) - 128), float(int((b >> 16) & 0xffu) - 128));
    return *reinterpret_cast<uint32_t*>(&r);
  } else {
    // 128 + q as bf16 (ulp 1 there for q < 128), minus 128 + zero: exact.
    const uint32_t v = (a & F::kMask) | (b & (F::kMask << 16)) | 0x43004300u;
    constexpr uint32_t kZ = (0x4300u + uint32_t(F::kZero)) * 0x10001u;
    __nv_bfloat162 r = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&v), *reinterpret_cast<const __nv_bfloat162*>(&kZ));
    return *reinterpret_cast<uint32_t*>(&r);
  }
}

// Activations of pair P (rows (i, i + H) of unit P / H) of one token, as a bf16 pair (low: row i).
template <int BITS>
__device__ __forceinline__ uint32_t x_pair(const unsigned short* xr, unsigned P) {
  using F = Width<BITS>;
  const unsigned r = (P / F::H) * F::R + P % F::H;
  return uint32_t(xr[r]) | uint32_t(xr[r + F::H]) << 16;
}

// One group: its 16-row k steps, every n-tile of the warp, every m-tile. xs: token 0's activation
// at the group's first row, xstride per token; only tokens < n_valid are stored, so rows of the
// other tokens read token 0 again (their results are discarded).
template <int BITS, int MT, bool SPLIT>
__device__ __forceinline__ void group_mma(const uint32_t* st, int rows, const unsigned short* xs, int xstride,
                                          int n_valid, float (&c)[MT][kTiles][4]) {
  const int lo_plane = n_valid * xstride;  // SPLIT: the lo activations follow the hi ones
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const unsigned short* xrow[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = m * 16 + g + 8 * h;
      xrow[m][h] = xs + (t < n_valid ? t : 0) * xstride;
    }
  for (int s = 0; s < rows / 16; ++s) {
    const unsigned P = unsigned(s * 8 + q);
    uint32_t a[MT][4], al[SPLIT ? MT : 1][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      a[m][0] = x_pair<BITS>(xrow[m][0], P);
      a[m][1] = x_pair<BITS>(xrow[m][1], P);
      a[m][2] = x_pair<BITS>(xrow[m][0], P + 4);
      a[m][3] = x_pair<BITS>(xrow[m][1], P + 4);
      if constexpr (SPLIT) {
        al[m][0] = x_pair<BITS>(xrow[m][0] + lo_plane, P);
        al[m][1] = x_pair<BITS>(xrow[m][1] + lo_plane, P);
        al[m][2] = x_pair<BITS>(xrow[m][0] + lo_plane, P + 4);
        al[m][3] = x_pair<BITS>(xrow[m][1] + lo_plane, P + 4);
      }
    }
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      const int col = warp * (kTiles * 8) + j * 8 + g;
      const uint32_t b0 = dq_pair_bf16<BITS>(st, col, P), b1 = dq_pair_bf16<BITS>(st, col, P + 4);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma_bf16(c[m][j], a[m], b0, b1);
        if constexpr (SPLIT) mma_bf16(c[m][j], al[m], b0, b1);
      }
    }
  }
}

template <int MT>
__device__ __forceinline__ void zero(float (&a)[MT][kTiles][4]) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < kTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) a[m][j][e] = 0.f;
}

template <int MT, bool SPLIT>
__global__ void __launch_bounds__(kThreads) exl2_mma_kernel(const float* __restrict__ x, int n_valid, const Exl2View w,
                                                             float* __restrict__ y, float* __restrict__ partial,
                                                             int* __restrict__ counters, int splits, int stage_words,
                                                             int xstride) {
  extern __shared__ __align__(16) uint32_t smem[];
  uint32_t* stages = smem;                      // [kStages][stage_words]: packed rows, then 16 scale words
  // [n_valid][xstride] bf16, act-order; SPLIT: then the same for lo = x - hi.
  auto* xs = reinterpret_cast<unsigned short*>(smem + kStages * stage_words);
  __shared__ int last;
  const int K = int(w.in_features), N = int(w.out_features), Np = (N + 31) / 32 * 32, G = int(w.num_groups);
  const int s = blockIdx.y;
  const int g0 = int(int64_t(s) * G / splits), g1 = int(int64_t(s + 1) * G / splits);
  const int row_begin = w.groups[g0 * 4 + 3];
  const int rows = (g1 < G ? w.groups[g1 * 4 + 3] : K) - row_begin;
  const int col0 = blockIdx.x * kBlockCols;

  // Stage of group gi (one cp.async group per stage, empty past the split, so waits count stages).
  const auto issue = [&](int gi) {
    if (gi < g1) {
      const int bits = w.groups[gi * 4], qrows = w.groups[gi * 4 + 1] * bits / 32, qrow0 = w.groups[gi * 4 + 2];
      uint32_t* st = stages + ((gi - g0) % kStages) * stage_words;
      constexpr int kChunks = kBlockCols / 4;  // 16-byte chunks per packed row
      for (int i = threadIdx.x; i < qrows * kChunks; i += kThreads) {
        const int r = i / kChunks, cc = (i % kChunks) * 4;
        if (col0 + cc < Np) cp_async16(st + r * kBlockCols + cc, w.q_weight + int64_t(qrow0 + r) * Np + col0 + cc);
      }
      if (threadIdx.x < kBlockCols / 32 && col0 + threadIdx.x * 32 < Np)  // 4 words = 32 columns' codes each
        cp_async16(st + stage_words - 16 + threadIdx.x * 4, w.q_scale + int64_t(gi) * (Np / 8) + (col0 + threadIdx.x * 32) / 8);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int p = 0; p < kStages - 1; ++p) issue(g0 + p);

  // Activations in act-order, bf16: batches of 8 per thread, every load of a batch in flight.
  for (int base = 0; base < rows * n_valid; base += 8 * kThreads) {
    float v[8];
    int at[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int i = base + k * kThreads + int(threadIdx.x);
      at[k] = -1;
      if (i < rows * n_valid) {
        const int t = i / rows, r = i % rows;
        v[k] = x[int64_t(t) * K + w.perm[row_begin + r]];
        at[k] = t * xstride + r;
      }
    }
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (at[k] >= 0) {
        const __nv_bfloat16 hi = __float2bfloat16_rn(v[k]);
        xs[at[k]] = __bfloat16_as_ushort(hi);
        if constexpr (SPLIT) xs[n_valid * xstride + at[k]] = __bfloat16_as_ushort(__float2bfloat16_rn(v[k] - __bfloat162float(hi)));
      }
  }

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  float acc[MT][kTiles][4];
  zero(acc);

  for (int gi = g0; gi < g1; ++gi) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage gi landed for every thread; stage gi - 1's buffer is free; xs is written
    issue(gi + kStages - 1);
    const uint32_t* st = stages + ((gi - g0) % kStages) * stage_words;
    const int bits = w.groups[gi * 4], grows = w.groups[gi * 4 + 1];
    const unsigned short* xg = xs + (w.groups[gi * 4 + 3] - row_begin);
    float c[MT][kTiles][4];
    zero(c);
    switch (bits) {
      case 2: group_mma<2, MT, SPLIT>(st, grows, xg, xstride, n_valid, c); break;
      case 3: group_mma<3, MT, SPLIT>(st, grows, xg, xstride, n_valid, c); break;
      case 4: group_mma<4, MT, SPLIT>(st, grows, xg, xstride, n_valid, c); break;
      case 5: group_mma<5, MT, SPLIT>(st, grows, xg, xstride, n_valid, c); break;
      case 6: group_mma<6, MT, SPLIT>(st, grows, xg, xstride, n_valid, c); break;
      default: group_mma<8, MT, SPLIT>(st, grows, xg, xstride, n_valid, c); break;
    }
    // This thread's C columns: warp * 32 + j * 8 + 2q + {0, 1}.
    const float smax = __half2float(__ushort_as_half(w.q_scale_max[gi])) / 256.f;
    const uint32_t* sc = st + stage_words - 16;
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      const uint32_t word = sc[warp * kTiles + j];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const uint32_t code = ((word >> (4 * (2 * q + e))) & 15u) + 1;
        const float scale = float(code * code) * smax;
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          acc[m][j][e] = fmaf(c[m][j][e], scale, acc[m][j][e]);
          acc[m][j][2 + e] = fmaf(c[m][j][2 + e], scale, acc[m][j][2 + e]);
        }
      }
    }
  }

  // Element e of tile (m, j): token m * 16 + g + 8 * (e / 2), column col0 + warp * 32 + j * 8 + 2q + e % 2.
  const auto token_of = [&](int m, int e) { return m * 16 + g + 8 * (e >> 1); };
  const auto col_of = [&](int j, int e) { return col0 + warp * (kTiles * 8) + j * 8 + 2 * q + (e & 1); };
  const auto bias_of = [&](int col) { return w.bias ? __half2float(__ushort_as_half(w.bias[col])) : 0.f; };
  if (splits == 1) {
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int t = token_of(m, e), col = col_of(j, e);
          if (t < n_valid && col < N) y[int64_t(t) * N + col] = acc[m][j][e] + bias_of(col);
        }
    return;
  }
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < kTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        const int t = token_of(m, e), col = col_of(j, e);
        if (t < n_valid && col < Np)
          *reinterpret_cast<float2*>(partial + (int64_t(s) * n_valid + t) * Np + col) = make_float2(acc[m][j][e], acc[m][j][e + 1]);
      }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int done = atomicAdd(counters + blockIdx.x, 1);
    last = done == splits - 1;
    if (last) counters[blockIdx.x] = 0;  // ready for the next launch (or graph replay)
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < kTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        const int t = token_of(m, e), col = col_of(j, e);
        if (t >= n_valid || col >= N) continue;
        float s0 = 0.f, s1 = 0.f;  // eight splits' loads in flight at a time, added in split order
        for (int z0 = 0; z0 < splits; z0 += 8) {
          float2 v[8];
#pragma unroll
          for (int k = 0; k < 8; ++k)
            if (z0 + k < splits) v[k] = __ldcg(reinterpret_cast<const float2*>(partial + (int64_t(z0 + k) * n_valid + t) * Np + col));
#pragma unroll
          for (int k = 0; k < 8; ++k)
            if (z0 + k < splits) s0 += v[k].x, s1 += v[k].y;
        }
        y[int64_t(t) * N + col] = s0 + bias_of(col);
        if (col + 1 < N) y[int64_t(t) * N + col + 1] = s1 + bias_of(col + 1);
      }
}

template <int MT, bool SPLIT>
void launch(Context& ctx, const float* x, int n, const Exl2View& w, float* y) {
  const int64_t Np = w.padded_out(), G = w.num_groups;
  const int64_t col_blocks = (Np + kBlockCols - 1) / kBlockCols;
  const int64_t qrows_max = w.max_group_qrows > 0 ? w.max_group_qrows : (w.max_group_rows + 3) / 4;
  const int stage_words = int(qrows_max * kBlockCols + 16);
  // About four blocks per SM (their stages keep enough bytes in flight and hide each other's
  // start-up; capping splits at four groups a block measured slower), and fewer rows per split
  // when the activations would not fit.
  int64_t splits = std::clamp<int64_t>((4 * int64_t(ctx.sm_count) + col_blocks - 1) / col_blocks, 1, G);
  const auto smem_for = [&](int64_t sp, int* xstride) {
    const int64_t rows = (G + sp - 1) / sp * w.max_group_rows;
    *xstride = int(rows + ((8 - rows % 64) + 64) % 64);  // = 8 mod 64 halves: tokens 4 banks apart
    return size_t(kStages) * size_t(stage_words) * 4 + size_t(n) * size_t(*xstride) * 2 * (SPLIT ? 2 : 1);
  };
  int xstride = 0;
  // (The opt-in limit counts the kernel's static shared memory too: keep 1 KB for it.)
  const size_t limit = ctx.smem_optin > 1024 ? ctx.smem_optin - 1024 : 0;
  const size_t budget = std::min<size_t>(limit, 100 * 1024);
  while (smem_for(splits, &xstride) > budget && splits < G) ++splits;
  const size_t smem = smem_for(splits, &xstride);
  if (smem > limit) raise(ErrorKind::kUnsupported, "cuda matmul_exl2: layer too large for the tensor-core path");
  static size_t allowed = 48 * 1024;  // per instance: the dynamic shared memory allowed so far
  if (smem > allowed) {
    LATHE_CUDA_CHECK(cudaFuncSetAttribute(exl2_mma_kernel<MT, SPLIT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
    allowed = limit;
  }
  float* partial = nullptr;
  int* counters = nullptr;
  if (splits > 1) {
    partial = static_cast<float*>(ctx.scratch(Scratch::kExl2, sizeof(float) * size_t(splits * n * Np)));
    counters = static_cast<int*>(ctx.zeroed_scratch(Scratch::kCounters, sizeof(int) * size_t(std::max<int64_t>(col_blocks, 1024))));
  }
  const dim3 grid{unsigned(col_blocks), unsigned(splits)};
  exl2_mma_kernel<MT, SPLIT><<<grid, kThreads, smem, ctx.stream>>>(x, n, w, y, partial, counters, int(splits), stage_words, xstride);
  LATHE_CUDA_CHECK_LAUNCH("exl2_mma_kernel");
}

}  // namespace

void exl2_mma(Context& ctx, const float* x, int64_t n, const Exl2View& w, float* y) {
  if (n <= 16) return launch<1, true>(ctx, x, int(n), w, y);
  if (ctx.exact_matmul) raise(ErrorKind::kInternal, "cuda exl2_mma: exact mode takes at most 16 tokens");
  if (n <= 32) return launch<2, false>(ctx, x, int(n), w, y);
  return launch<4, false>(ctx, x, int(n), w, y);
}

}  // namespace lathe::ops::cuda
