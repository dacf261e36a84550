// EXL2 matmul for decode sizes (up to 8 tokens per launch) on the CUDA backend, in fp32: the exact
// mode's path (and the fallback for layers whose groups are not whole 16-row steps; fast mode runs
// exl2_mma.cu on the tensor cores). The packed weights are read once, as stored (ops.h Exl2View,
// quant/exl2.h), and dequantized in registers.
//  * Grid (column block, k-split). A thread owns four consecutive output columns and reads their
//    words of a packed row as one 16-byte load; a group is walked in blocks of >= 16 rows, several
//    blocks' words loaded together (about eight 16-byte loads in flight per thread). A k-split is a
//    run of whole groups; the split count fills the GPU with resident blocks (occupancy x SMs).
//  * The split's activations are gathered into shared memory in act-order (x[perm[p]]) so the inner
//    loop reads them as broadcasts.
//  * Every weight is widened to fp32 (two exact float operations) and multiply-added in fp32; the
//    group's integer sums are scaled once per column.
//  * Splits: each writes its partial row; the last block of a column block to finish adds them in
//    split order (exl2_format.cuh finish), so results do not depend on timing.
#include <algorithm>
#include <climits>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/exl2_format.cuh"

namespace lathe::ops::cuda {
namespace {

using exl2::kCpt;
using exl2::Width;

constexpr int kThreads = 128;              // threads per block (kCpt columns each)
constexpr size_t kSmemBudget = 40 * 1024;  // activations of one split, under the 48 KB static limit

// One block of rows, exact mode: fp32 products into the group's integer-weight sums.
template <int BITS, int NT>
__device__ __forceinline__ void block_dot_f32(const uint4* wd, const float* xs, int xs_stride, float (&gacc)[NT][kCpt]) {
  using F = Width<BITS>;
#pragma unroll
  for (int u = 0; u < F::UB; ++u) {
    uint32_t cw[kCpt][F::W];
#pragma unroll
    for (int c = 0; c < kCpt; ++c)
#pragma unroll
      for (int j = 0; j < F::W; ++j) cw[c][j] = exl2::lane_of(wd[u * F::W + j], c);
#pragma unroll
    for (int i = 0; i < F::R; ++i) {
      float q[kCpt];
#pragma unroll
      for (int c = 0; c < kCpt; ++c) q[c] = exl2::dq_row<BITS>(cw[c], i);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float xv = xs[t * xs_stride + u * F::R + i];
#pragma unroll
        for (int c = 0; c < kCpt; ++c) gacc[t][c] = fmaf(q[c], xv, gacc[t][c]);
      }
    }
  }
}

// A whole group: blocks of rows in batches whose words are loaded before any is used.
template <int BITS, int NT>
__device__ __forceinline__ void group_dot(const uint32_t* qw, int64_t stride, int rows, const float* xf, int xs_stride,
                                          const float (&scale)[kCpt], float (&acc)[NT][kCpt]) {
  using F = Width<BITS>;
  float gacc[NT][kCpt];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int c = 0; c < kCpt; ++c) gacc[t][c] = 0.f;
  const int blocks = rows / F::BR;
  int b = 0;
  for (; b + F::BATCH <= blocks; b += F::BATCH) {
    uint4 wd[F::BATCH * F::BW];
    exl2::load_words(qw + int64_t(b) * F::BW * stride, stride, wd);
#pragma unroll
    for (int k = 0; k < F::BATCH; ++k) block_dot_f32<BITS, NT>(wd + k * F::BW, xf + (b + k) * F::BR, xs_stride, gacc);
  }
  for (; b < blocks; ++b) {
    uint4 wd[F::BW];
    exl2::load_words(qw + int64_t(b) * F::BW * stride, stride, wd);
    block_dot_f32<BITS, NT>(wd, xf + b * F::BR, xs_stride, gacc);
  }
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int c = 0; c < kCpt; ++c) acc[t][c] = fmaf(gacc[t][c], scale[c], acc[t][c]);
}

template <int NT>
__global__ void __launch_bounds__(kThreads) exl2_gemv_kernel(const float* __restrict__ x, int n_valid, const Exl2View w,
                                                              float* __restrict__ y, float* __restrict__ partial,
                                                              int* __restrict__ counters, int splits) {
  extern __shared__ float xs[];  // [NT][rows of this split], act-order
  __shared__ int last;
  const int K = int(w.in_features), Np = int((w.out_features + 31) / 32 * 32), G = int(w.num_groups);
  const int s = blockIdx.y;
  const int g0 = int(int64_t(s) * G / splits), g1 = int(int64_t(s + 1) * G / splits);
  const int row_begin = w.groups[g0 * 4 + 3];
  const int row_end = g1 < G ? w.groups[g1 * 4 + 3] : K;
  const int rows = row_end - row_begin;
  // Batches of 8 per thread, every load of a batch in flight (a loop of dependent loads cost
  // microseconds a block).
  for (int base = 0; base < rows * NT; base += 8 * kThreads) {
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int i = base + k * kThreads + int(threadIdx.x), t = i / rows, r = i % rows;
      v[k] = i < rows * NT && t < n_valid ? x[int64_t(t) * K + w.perm[row_begin + r]] : 0.f;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (base + k * kThreads + int(threadIdx.x) < rows * NT) xs[base + k * kThreads + threadIdx.x] = v[k];
  }
  __syncthreads();

  const int c0 = (blockIdx.x * kThreads + threadIdx.x) * kCpt;  // the thread's first column
  float acc[NT][kCpt];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int c = 0; c < kCpt; ++c) acc[t][c] = 0.f;
  if (c0 < Np) {
    for (int gi = g0; gi < g1; ++gi) {
      const int bits = w.groups[gi * 4], grows = w.groups[gi * 4 + 1];
      const int64_t qrow0 = w.groups[gi * 4 + 2];
      const int a = w.groups[gi * 4 + 3] - row_begin;
      float scale[kCpt];
      exl2::group_scales(w, gi, c0, scale);
      const uint32_t* qw = w.q_weight + qrow0 * Np + c0;
      const float* xg = xs + a;
      switch (bits) {
        case 2: group_dot<2, NT>(qw, Np, grows, xg, rows, scale, acc); break;
        case 3: group_dot<3, NT>(qw, Np, grows, xg, rows, scale, acc); break;
        case 4: group_dot<4, NT>(qw, Np, grows, xg, rows, scale, acc); break;
        case 5: group_dot<5, NT>(qw, Np, grows, xg, rows, scale, acc); break;
        case 6: group_dot<6, NT>(qw, Np, grows, xg, rows, scale, acc); break;
        default: group_dot<8, NT>(qw, Np, grows, xg, rows, scale, acc); break;
      }
    }
  }
  exl2::finish<NT>(acc, n_valid, c0, w, y, partial, counters, splits, &last);
}

// Resident blocks per SM of one instance with `smem` bytes of dynamic shared memory (registers and
// shared memory permitting), asked once per 4 KB step of smem.
template <int NT>
int blocks_per_sm(size_t smem) {
  static int cached[13] = {};
  const size_t step = std::min<size_t>((smem + 4095) / 4096, 12);
  int& slot = cached[step];
  if (slot == 0) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, exl2_gemv_kernel<NT>, kThreads, step * 4096) != cudaSuccess ||
        n < 1)
      n = 2;
    slot = n;
  }
  return slot;
}

template <int NT>
void launch(Context& ctx, const float* x, int n_valid, const Exl2View& w, float* y) {
  const int64_t Np = w.padded_out(), G = w.num_groups;
  const int64_t col_blocks = (Np + kThreads * kCpt - 1) / (kThreads * kCpt);
  const size_t elem = sizeof(float);
  // Splits: enough blocks to fill every SM at the kernel's occupancy (one wave), and few enough
  // rows per split for the shared memory.
  const int64_t per_split_max = std::max<int64_t>(1, int64_t(kSmemBudget) / (w.max_group_rows * NT * int64_t(elem)));
  const auto smem_for = [&](int64_t sp) { return size_t((G + sp - 1) / sp) * size_t(w.max_group_rows) * NT * elem; };
  int64_t splits = std::clamp<int64_t>((G + per_split_max - 1) / per_split_max, 1, G);
  // Resident blocks depend on the shared memory, which shrinks as splits grow: two rounds settle it.
  // (Capping splits at four groups a block measured slower on the H100: 25 vs 16 us for 4096 x 4096.)
  for (int round = 0; round < 2; ++round) {
    const int64_t resident = int64_t(blocks_per_sm<NT>(smem_for(splits))) * ctx.sm_count;
    splits = std::clamp<int64_t>(std::max<int64_t>(splits, (resident + col_blocks - 1) / col_blocks), 1, G);
  }
  const size_t smem = smem_for(splits);
  if (smem > 48 * 1024) raise(ErrorKind::kUnsupported, "cuda matmul_exl2: groups of ", w.max_group_rows, " rows are too large");
  float* partial = nullptr;
  int* counters = nullptr;
  if (splits > 1) {
    partial = static_cast<float*>(ctx.scratch(Scratch::kExl2, sizeof(float) * size_t(splits * NT * Np)));
    counters = static_cast<int*>(ctx.zeroed_scratch(Scratch::kCounters, sizeof(int) * size_t(std::max<int64_t>(col_blocks, 1024))));
  }
  const dim3 grid{unsigned(col_blocks), unsigned(splits)};
  exl2_gemv_kernel<NT><<<grid, kThreads, smem, ctx.stream>>>(x, n_valid, w, y, partial, counters, int(splits));
  LATHE_CUDA_CHECK_LAUNCH("exl2_gemv_kernel");
}

}  // namespace

void exl2_gemv(Context& ctx, const float* x, int64_t nt, const Exl2View& w, float* y) {
  const int n = int(nt);
  switch (nt) {
    case 1: return launch<1>(ctx, x, n, w, y);
    case 2: return launch<2>(ctx, x, n, w, y);
    case 3: return launch<3>(ctx, x, n, w, y);
    case 4: return launch<4>(ctx, x, n, w, y);
    case 5:
    case 6: return launch<6>(ctx, x, n, w, y);
    default: return launch<8>(ctx, x, n, w, y);
  }
}

}  // namespace lathe::ops::cuda
