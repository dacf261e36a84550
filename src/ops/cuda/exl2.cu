// EXL2 matmul for decode sizes (n <= 8 tokens) on the CUDA backend: the packed weights are read once,
// as stored (ops.h Exl2View, quant/exl2.h), and dequantized in registers.
//  * Grid (column block, k-split). A thread owns four consecutive output columns: the format packs
//    every column's weights as its own bitstream down the rows, so a thread reads its columns' words
//    of a packed row as one 16-byte load (a warp: 512 coalesced bytes) and decodes them itself; each
//    activation it reads feeds four columns. A k-split is a run of whole groups; enough splits make
//    about two blocks per SM for any layer shape.
//  * The block's activations are gathered into shared memory in act-order first (x[perm[p]]), so
//    the inner loop reads them as broadcasts; the group's scale (code^2 * max / 256) multiplies the
//    group's integer dot product once per column.
//  * Width is a template parameter per group (groups are block-uniform: no divergence), so the
//    unit's word offsets and shifts are constants; units are unrolled so several packed words per
//    thread are in flight.
//  * Splits: each writes its partial row; the last block of a column block to finish (atomic
//    counter, reset by it) adds them in split order, so results do not depend on timing.
#include <algorithm>
#include <climits>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"

namespace lathe::ops::cuda {
namespace {

constexpr int kCols = 256;                 // threads per block (kCpt columns each)
constexpr size_t kSmemBudget = 40 * 1024;  // activations of one split, static launch limit 48 KB

// Rows of one packing unit (the fewest rows whose bits fill whole words), per width.
template <int BITS>
inline constexpr int kUnitRows = BITS == 2 ? 16 : BITS == 3 ? 32 : BITS == 4 ? 8 : BITS == 5 ? 32 : BITS == 6 ? 16 : 4;

// Columns per thread: four consecutive columns' words are one 16-byte load, and every activation
// read from shared memory feeds four FMAs instead of one.
constexpr int kCpt = 4;

// gacc[t][j] += sum over the group's rows of (q_j - 2^(BITS-1)) * xs[t][row], for the thread's
// kCpt columns j.
template <int BITS, int NT>
__device__ __forceinline__ void group_dot(const uint32_t* __restrict__ qw, int64_t stride, int rows,
                                          const float* xs, int xs_stride, float (&gacc)[NT][kCpt]) {
  constexpr int R = kUnitRows<BITS>, W = R * BITS / 32;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  constexpr int kZero = 1 << (BITS - 1);
  const int units = rows / R;
#pragma unroll 2
  for (int u = 0; u < units; ++u) {
    uint4 wd[W];
#pragma unroll
    for (int j = 0; j < W; ++j) wd[j] = __ldcs(reinterpret_cast<const uint4*>(qw + int64_t(u * W + j) * stride));
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int bit = i * BITS, word = bit / 32, sh = bit % 32;
      float q[kCpt];
#pragma unroll
      for (int c = 0; c < kCpt; ++c) {
        const uint32_t lo = c == 0 ? wd[word].x : c == 1 ? wd[word].y : c == 2 ? wd[word].z : wd[word].w;
        uint32_t v = lo >> sh;
        if (sh + BITS > 32) {
          const int w2 = word + 1 < W ? word + 1 : word;  // (never taken past the unit: sh + BITS > 32 implies it)
          const uint32_t hi = c == 0 ? wd[w2].x : c == 1 ? wd[w2].y : c == 2 ? wd[w2].z : wd[w2].w;
          v |= hi << (32 - sh);
        }
        q[c] = float(int(v & kMask) - kZero);
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float xv = xs[t * xs_stride + u * R + i];
#pragma unroll
        for (int c = 0; c < kCpt; ++c) gacc[t][c] = fmaf(q[c], xv, gacc[t][c]);
      }
    }
  }
}

template <int NT>
__global__ void __launch_bounds__(kCols) exl2_gemv_kernel(const float* __restrict__ x, const Exl2View w,
                                                           float* __restrict__ y, float* __restrict__ partial,
                                                           int* __restrict__ counters, int splits) {
  extern __shared__ float xs[];  // [NT][rows of this split], act-order
  __shared__ int last;
  const int K = int(w.in_features), N = int(w.out_features), Np = (N + 31) / 32 * 32, G = int(w.num_groups);
  const int s = blockIdx.y;
  const int g0 = int(int64_t(s) * G / splits), g1 = int(int64_t(s + 1) * G / splits);
  const int row_begin = w.groups[g0 * 4 + 3];
  const int row_end = g1 < G ? w.groups[g1 * 4 + 3] : K;
  const int rows = row_end - row_begin;
  for (int i = threadIdx.x; i < rows * NT; i += kCols) {
    const int t = i / rows, r = i % rows;
    xs[i] = x[int64_t(t) * K + w.perm[row_begin + r]];
  }
  __syncthreads();

  const int c0 = (blockIdx.x * kCols + threadIdx.x) * kCpt;  // the thread's first column
  float acc[NT][kCpt];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int c = 0; c < kCpt; ++c) acc[t][c] = 0.f;
  if (c0 < Np) {
    for (int gi = g0; gi < g1; ++gi) {
      const int bits = w.groups[gi * 4], grows = w.groups[gi * 4 + 1];
      const int64_t qrow0 = w.groups[gi * 4 + 2];
      const int xoff = w.groups[gi * 4 + 3] - row_begin;
      const uint32_t codes = w.q_scale[int64_t(gi) * (Np / 8) + c0 / 8] >> (4 * (c0 % 8));
      const float smax = __half2float(__ushort_as_half(w.q_scale_max[gi])) / 256.f;
      const uint32_t* qw = w.q_weight + qrow0 * Np + c0;
      float gacc[NT][kCpt];
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int c = 0; c < kCpt; ++c) gacc[t][c] = 0.f;
      switch (bits) {
        case 2: group_dot<2, NT>(qw, Np, grows, xs + xoff, rows, gacc); break;
        case 3: group_dot<3, NT>(qw, Np, grows, xs + xoff, rows, gacc); break;
        case 4: group_dot<4, NT>(qw, Np, grows, xs + xoff, rows, gacc); break;
        case 5: group_dot<5, NT>(qw, Np, grows, xs + xoff, rows, gacc); break;
        case 6: group_dot<6, NT>(qw, Np, grows, xs + xoff, rows, gacc); break;
        default: group_dot<8, NT>(qw, Np, grows, xs + xoff, rows, gacc); break;
      }
#pragma unroll
      for (int c = 0; c < kCpt; ++c) {
        const uint32_t code = ((codes >> (4 * c)) & 15u) + 1;
        const float scale = float(code * code) * smax;
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[t][c] = fmaf(gacc[t][c], scale, acc[t][c]);
      }
    }
  }
  float b[kCpt];
#pragma unroll
  for (int c = 0; c < kCpt; ++c) b[c] = w.bias && c0 + c < N ? __half2float(__ushort_as_half(w.bias[c0 + c])) : 0.f;
  if (splits == 1) {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int c = 0; c < kCpt; ++c)
        if (c0 + c < N) y[int64_t(t) * N + c0 + c] = acc[t][c] + b[c];
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
    last = done == splits - 1;
    if (last) counters[blockIdx.x] = 0;  // ready for the next launch (or graph replay)
  }
  __syncthreads();
  if (!last || c0 >= N) return;
  __threadfence();
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    float sum[kCpt] = {0.f, 0.f, 0.f, 0.f};
    for (int z = 0; z < splits; ++z) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(partial + (int64_t(z) * NT + t) * Np + c0));
      sum[0] += v.x, sum[1] += v.y, sum[2] += v.z, sum[3] += v.w;
    }
#pragma unroll
    for (int c = 0; c < kCpt; ++c)
      if (c0 + c < N) y[int64_t(t) * N + c0 + c] = sum[c] + b[c];
  }
}

template <int NT>
void launch(Context& ctx, const float* x, const Exl2View& w, float* y) {
  const int64_t Np = w.padded_out(), G = w.num_groups;
  const int64_t col_blocks = (Np + kCols * kCpt - 1) / (kCols * kCpt);
  // Splits: about two blocks per SM, and few enough rows per split for shared memory.
  const int64_t per_split_max = std::max<int64_t>(1, int64_t(kSmemBudget) / (w.max_group_rows * NT * 4));
  int64_t splits = std::max<int64_t>((2 * int64_t(ctx.sm_count) + col_blocks - 1) / col_blocks,
                                     (G + per_split_max - 1) / per_split_max);
  splits = std::clamp<int64_t>(splits, 1, G);
  // The largest split: ceil(G / splits) groups.
  const size_t smem = size_t((G + splits - 1) / splits) * size_t(w.max_group_rows) * NT * sizeof(float);
  if (smem > 48 * 1024) raise(ErrorKind::kUnsupported, "cuda matmul_exl2: groups of ", w.max_group_rows, " rows are too large");
  float* partial = nullptr;
  int* counters = nullptr;
  if (splits > 1) {
    partial = static_cast<float*>(ctx.scratch(Scratch::kExl2, sizeof(float) * size_t(splits * NT * Np)));
    counters = static_cast<int*>(ctx.zeroed_scratch(Scratch::kCounters, sizeof(int) * size_t(std::max<int64_t>(col_blocks, 1024))));
  }
  const dim3 grid{unsigned(col_blocks), unsigned(splits)};
  exl2_gemv_kernel<NT><<<grid, kCols, smem, ctx.stream>>>(x, w, y, partial, counters, int(splits));
  LATHE_CUDA_CHECK_LAUNCH("exl2_gemv_kernel");
}

}  // namespace

void matmul_exl2(Context& ctx, const Exl2MatmulParams& p) {
  const Exl2View& w = p.w;
  if (p.n <= 0 || w.out_features <= 0) return;
  if (w.in_features <= 0 || w.num_groups <= 0 || w.max_group_rows <= 0 || !w.q_weight || !w.q_scale ||
      !w.q_scale_max || !w.perm || !w.groups)
    raise(ErrorKind::kInvalidArgument, "cuda matmul_exl2: incomplete layer");
  if (w.in_features > INT_MAX / 8 || w.padded_out() > INT_MAX / 8 || w.num_groups > 65535)
    raise(ErrorKind::kUnsupported, "cuda matmul_exl2: layer too large for one launch");
  // Decode sizes in one launch; more tokens in launches of 8 (a tensor-core path comes later).
  for (int64_t t0 = 0; t0 < p.n; t0 += kGemvMaxTokens) {
    const int64_t nt = std::min<int64_t>(kGemvMaxTokens, p.n - t0);
    const float* x = p.x + t0 * w.in_features;
    float* y = p.y + t0 * w.out_features;
    switch (nt) {
      case 1: launch<1>(ctx, x, w, y); break;
      case 2: launch<2>(ctx, x, w, y); break;
      case 3: launch<3>(ctx, x, w, y); break;
      case 4: launch<4>(ctx, x, w, y); break;
      case 5: launch<5>(ctx, x, w, y); break;
      case 6: launch<6>(ctx, x, w, y); break;
      case 7: launch<7>(ctx, x, w, y); break;
      default: launch<8>(ctx, x, w, y); break;
    }
  }
}

}  // namespace lathe::ops::cuda
