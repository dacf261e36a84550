// EXL2 matmul for decode sizes (1..16 tokens a launch, fast mode) from the tiled layout
// (exl2_tiled.cuh, quant/exl2_tiled.h), up to three layers on one input in one launch: the weights
// go from memory straight into registers, with no shared-memory ring.
//
// Why: the ring kernel (exl2_stream.cu) issued ~0.16 warp-instructions a weight at one token on a
// 4096 x 14336 layer, of which the dequantize-and-mma loop is ~0.06; the rest (cp.async address
// work, commits and waits, shared loads of each lane's words back out of the ring, a predicated
// activation load per k step, a fence in every thread of every k-split) kept the SMs issuing on
// half their cycles, and at 0.16 instructions a weight they cannot keep up with the memory
// (bench/RESULTS.md). Here, per 32 x 32 unit and lane: one or two vector loads of its words
// (a warp reads 32 * bits contiguous words), one 16-byte shared load of its activations, the
// dequantization and 2 mma per token tile and k step.
//  * Every warp streams one 32-column strip over the block's k-split, one group at a time: the
//    group's units go from memory into registers as a batch (4 units; 2 at 8 bits) before any of
//    them is used, so their latencies overlap, and lane 0 keeps the strip's next `ahead` groups on
//    their way into L2 with bulk prefetches (Hopper). The first groups' prefetches, and everything
//    else constant (group table, scale codes, the split's permutation), go out before pdl_wait.
//  * Each block gathers its k-split's activation rows itself (no gather kernel: one launch and one
//    dependency fewer per matmul): the split's act-order permutation is staged before pdl_wait
//    (constant data), so after it only the loads of x (and up, for a fused glu) are left. They are
//    stored as bf16 in fragment order: within each 32-row unit, the four row pairs lane q needs
//    (rows 2q, 8 + 2q, 16 + 2q, 24 + 2q and the row after each) are adjacent, so one 16-byte load
//    gives a lane both k steps' b0/b1. A lane whose token is past n_valid reads the last valid
//    token's row: those products land only in outputs that are never written, so no predicate.
//  * The block also stages the k-split's group table (with each group's max / 256 as a float) and
//    the scale codes of its four strips in shared memory once.
//  * k-splits write partial rows; the last block of a column block adds them in split order
//    (tiled::last_split / merge_splits), so results do not depend on timing.
#include <cuda_bf16.h>

#include <algorithm>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/exl2_tiled.cuh"
#include "ops/cuda/pdl.cuh"

namespace lathe::ops::cuda {
namespace {

using tiled::Group;
using tiled::kStripCols;
using tiled::kUnitRows;
using tiled::mma_bf16;
using tiled::fragment_row;
using tiled::unit_products;

constexpr int kWarps = 4;  // strips per block
constexpr int kThreads = kWarps * 32;
constexpr int kDefaultBlocksPerSm = 0;  // k-splits fill the GPU with about this many blocks per SM (0: kMinBlocks),
constexpr int kDefaultMinSplitGroups = 4;  // but give each block at least this many groups (4: gate at one token 22.2 us against 25.2 with 2)
constexpr int kDefaultAhead = 2;  // groups of its strip a warp has on the way into L2
constexpr int kMaxXBytes = 24 * 1024;  // a block's activations
// Resident blocks an SM the registers must allow (64 registers a thread at one token tile, 80 at two;
// nvcc spills nothing at one tile there).
template <int NT>
inline constexpr int kMinBlocks = NT == 1 ? 8 : 6;

__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

// One group's products for the lane's strip: its units' words from memory (`src`: the group's first
// unit), loaded a batch at a time before any is used, so their latencies overlap; x: the shared
// address of the lane's activations at the group's first row (tile 1 x1 bytes further).
template <int BITS, int NT>
__device__ __forceinline__ void group_products(const uint32_t* __restrict__ src, int units, uint32_t x, uint32_t x1, int lane,
                                               float (&c)[NT][2][4]) {
  constexpr int kUnitWords = kUnitRows * BITS;
  constexpr int kBatch = BITS <= 6 ? 4 : 2;  // <= 24 registers of words
  const auto products = [&](const uint32_t (&r)[BITS], int u) {
    uint4 xv[NT];
    xv[0] = lds128(x + u * kUnitRows * 2);
    if constexpr (NT > 1) xv[1] = lds128(x + x1 + u * kUnitRows * 2);
    unit_products<BITS, NT>(r, xv, c);
  };
  if (units == 4) {
#pragma unroll
    for (int u0 = 0; u0 < 4; u0 += kBatch) {
      uint32_t r[kBatch][BITS];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) tiled::load_unit<BITS, true>(src + (u0 + u) * kUnitWords, lane, r[u]);
#pragma unroll
      for (int u = 0; u < kBatch; ++u) products(r[u], u0 + u);
    }
  } else {
    for (int u = 0; u < units; ++u) {
      uint32_t r[BITS];
      tiled::load_unit<BITS, true>(src + u * kUnitWords, lane, r);
      products(r, u);
    }
  }
}

// What the warp's loop reads.
struct Strip {
  const int32_t* tab;    // group table rows in shared memory, indexed by absolute group (field 7: max / 256)
  const uint32_t* codes;  // [groups of the split][kWarps][4] scale-code words, indexed from g0
  const uint32_t* tiled;  // the layer's tiled words
  int g0, g1, Np, strip;
};

// Group gi of the strip into L2 (lane 0; one bulk prefetch of its contiguous words). Before Hopper
// there is no bulk prefetch: the loads find the words in memory.
__device__ __forceinline__ void prefetch_group(const Strip& s, int gi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if ((threadIdx.x & 31) != 0 || gi >= s.g1) return;
  const Group gr = tiled::group_at(s.tab, gi);
  const uint32_t* at = s.tiled + int64_t(gr.tq) * s.Np + int64_t(s.strip) * gr.padded * gr.bits;
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(at), "r"(gr.padded * gr.bits * 4) : "memory");
#endif
}

// A group's sums into the accumulators, each column scaled by (code + 1)^2 * max / 256.
template <int NT>
__device__ __forceinline__ void scale_into(const Strip& s, int gi, const float (&c)[NT][2][4], float (&acc)[NT][2][4]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2;
  const uint32_t codes = s.codes[(gi - s.g0) * (kWarps * 4) + warp * 4 + (g >> 1)];
  const float smax = __int_as_float(s.tab[gi * 8 + 7]);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int code = int((codes >> (4 * (2 * j + (g & 1)))) & 15u) + 1;
    const float scale = float(code * code) * smax;
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& a = acc[t][j >> 1][2 * (j & 1) + e];
        a = fmaf(c[t][j >> 1][2 * (j & 1) + e], scale, a);
      }
  }
}

template <int NT>
__global__ void __launch_bounds__(kThreads, kMinBlocks<NT>)
    exl2_direct_kernel(int n_valid, const float* __restrict__ x, const __grid_constant__ Exl2Batch P,
                       int* __restrict__ counters, int table_groups, int vcap, int xstride, int ahead) {
  pdl_trigger();  // the next kernel may take the SM room this one leaves (pdl.cuh)
  int mi = 0;
  while (mi + 1 < P.count && int(blockIdx.x) >= P.col_end[mi]) ++mi;
  const int splits = P.splits[mi];
  if (int(blockIdx.y) >= splits) return;
  const int bx = int(blockIdx.x) - (mi ? P.col_end[mi - 1] : 0);
  const Exl2View& w = P.w[mi];
  extern __shared__ __align__(16) uint32_t smem[];
  int32_t* gtab = reinterpret_cast<int32_t*>(smem);  // [table_groups][8]
  uint32_t* codes = smem + table_groups * 8;          // [table_groups][kWarps][4]
  int32_t* perm = reinterpret_cast<int32_t*>(codes + table_groups * kWarps * 4);  // [vcap]: the split's rows' channels
  auto* xs = reinterpret_cast<__nv_bfloat16*>(perm + vcap);  // [n_valid][xstride], fragment order
  const int N = int(w.out_features), Np = (N + 31) / 32 * 32, G = int(w.tiled_num_groups);
  const int S = Np / kStripCols, V = int(w.tiled_rows), sp = blockIdx.y;
  const int g0 = int(int64_t(sp) * G / splits), g1 = int(int64_t(sp + 1) * G / splits);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int strip = bx * kWarps + warp;
  const bool mine = strip < S;

  for (int i = threadIdx.x; i < (g1 - g0) * 8; i += kThreads) gtab[i] = __ldg(w.tiled_groups + g0 * 8 + i);
  __syncthreads();
  const int32_t* tab = gtab - g0 * 8;
  const int vbegin = tab[g0 * 8 + 3];
  const int vrows = (g1 < G ? __ldg(w.tiled_groups + g1 * 8 + 3) : V) - vbegin;

  Strip st;
  st.tab = tab;
  st.codes = codes;
  st.tiled = w.tiled;
  st.g0 = g0;
  st.g1 = g1;
  st.Np = Np;
  st.strip = strip;
  // Everything but the activations is constant data (weights), staged while the previous kernel
  // finishes: the first groups into L2; the split's rows' input channels, the strips' scale codes and
  // each group's max into shared memory. After pdl_wait only the activation gather is left before the
  // weight loads.
  if (mine)
    for (int gi = g0; gi < g0 + ahead; ++gi) prefetch_group(st, gi);
  for (int i = threadIdx.x; i < vrows / 4; i += kThreads) tiled::cp_async16(perm + 4 * i, w.tiled_perm + vbegin + 4 * i);
  for (int i = threadIdx.x; i < (g1 - g0) * kWarps; i += kThreads) {
    const int gi = g0 + i / kWarps, si = bx * kWarps + i % kWarps;
    if (si < S) tiled::cp_async16(codes + i * 4, w.tiled_scale + (int64_t(gi) * S + si) * 4);
  }
  tiled::cp_async_commit();
  for (int i = threadIdx.x; i < g1 - g0; i += kThreads) {
    const int stored = gtab[i * 8 + 6];
    const float mx = __half2float(__ushort_as_half(__ldg(w.q_scale_max + stored)));
    gtab[i * 8 + 7] = __float_as_int(mx * (1.f / 256.f));
  }
  tiled::cp_async_wait<0>();
  __syncthreads();
  pdl_wait();
  {
    // xs[t][fragment order of v] = bf16(x[t, perm[v]]) (act(x) * up with a fused glu; 0 on padding
    // rows); kBatch loads in flight a thread.
    constexpr int kBatch = 8;
    const int64_t K = w.in_features;
    const int total = n_valid * vrows;
    for (int base = threadIdx.x; base < total; base += kThreads * kBatch) {
      float v[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int i = base + k * kThreads;
        v[k] = 0.f;
        if (i < total) {
          const int t = i / vrows, ch = perm[i - t * vrows];
          if (ch >= 0) {
            v[k] = __ldg(x + t * K + ch);
            if (P.up) v[k] = activate(P.glu_act, v[k]) * __ldg(P.up + t * K + ch);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int i = base + k * kThreads;
        if (i < total) {
          const int t = i / vrows, r = i - t * vrows;
          xs[t * xstride + (r & ~31) + fragment_row(r & 31)] = __float2bfloat16_rn(v[k]);
        }
      }
    }
  }
  __syncthreads();

  float acc[NT][2][4];
  tiled::zero(acc);
  if (mine) {
    const uint32_t xbase = tiled::smem_addr(xs) + 2 * (min(g, n_valid - 1) * xstride - vbegin + 8 * q);
    const uint32_t x1 = 2 * (min(8 + g, n_valid - 1) - min(g, n_valid - 1)) * xstride;
    for (int gi = g0; gi < g1; ++gi) {
      prefetch_group(st, gi + ahead);
      const Group gr = tiled::group_at(tab, gi);
      const uint32_t* src = w.tiled + int64_t(gr.tq) * Np + int64_t(strip) * gr.padded * gr.bits;
      const uint32_t x = xbase + 2 * gr.vrow;
      const int units = gr.padded / kUnitRows;
      float c[NT][2][4];
      tiled::zero(c);
      switch (gr.bits) {
        case 2: group_products<2, NT>(src, units, x, x1, lane, c); break;
        case 3: group_products<3, NT>(src, units, x, x1, lane, c); break;
        case 4: group_products<4, NT>(src, units, x, x1, lane, c); break;
        case 5: group_products<5, NT>(src, units, x, x1, lane, c); break;
        case 6: group_products<6, NT>(src, units, x, x1, lane, c); break;
        default: group_products<8, NT>(src, units, x, x1, lane, c); break;
      }
      scale_into<NT>(st, gi, c, acc);
    }
  }

  const int cols0 = bx * kWarps * kStripCols;
  tiled::finish_strips<NT>(acc, mine, strip * kStripCols, n_valid, N, Np, splits, sp, cols0, min(kWarps * kStripCols, N - cols0),
                           w.bias, P.y[mi], P.partial[mi], counters);
}

// LATHE_EXL2_TUNE="blocks=B,groups=G,ahead=A,wave=1" (a measuring aid): blocks per SM, least groups
// a split, groups a warp keeps prefetching into L2 ahead of its loads, k-splits rounded down so the
// grid is one wave. Any separator works (',' or '/'; the keys are found by name).
struct Tune {
  int blocks_per_sm = exl2_tune("blocks=", kDefaultBlocksPerSm, 0), min_groups = exl2_tune("groups=", kDefaultMinSplitGroups, 0),
      ahead = exl2_tune("ahead=", kDefaultAhead, 0), one_wave = exl2_tune("wave=", 0, 0);
};

template <int NT>
void launch(Context& ctx, int n, const Exl2MultiParams& p, int64_t t0) {
  static const Tune tune;
  Exl2Batch b{};
  const int64_t col_blocks = exl2_batch_layers(p, t0, kWarps, b);
  // Per layer, k-splits so that all the layers' blocks come to about blocks_per_sm per SM, at least
  // min_groups groups a split, and more splits when the activations would not fit.
  int64_t xstride = 0, table_groups = 0, grid_y = 1;
  for (int i = 0; i < p.count; ++i) {
    const Exl2View& w = p.w[i];
    const int64_t G = w.tiled_num_groups;
    const int64_t per_sm = tune.blocks_per_sm > 0 ? tune.blocks_per_sm : kMinBlocks<NT>;
    const int64_t slots = per_sm * int64_t(ctx.sm_count);
    int64_t splits = std::clamp<int64_t>(tune.one_wave ? slots / col_blocks : (slots + col_blocks - 1) / col_blocks, 1,
                                         std::max<int64_t>(1, G / std::max(1, tune.min_groups)));
    const auto rows = [&] { return (G + splits - 1) / splits * w.max_tiled_rows; };
    while (splits < G && n * rows() * 2 > kMaxXBytes) ++splits;
    b.splits[i] = int(splits);
    // = 32 mod 64 halves: two tokens' rows of a quarter warp's 16-byte loads fall in different banks.
    xstride = std::max(xstride, rows() + ((32 - rows() % 64) + 64) % 64);
    table_groups = std::max(table_groups, (G + splits - 1) / splits);
    grid_y = std::max(grid_y, splits);
  }
  table_groups = (table_groups + 1) / 2 * 2;  // the codes, the permutation and the activations start 16-byte aligned
  int64_t vcap = 0;  // rows of the largest split
  for (int i = 0; i < p.count; ++i)
    vcap = std::max<int64_t>(vcap, (p.w[i].tiled_num_groups + b.splits[i] - 1) / b.splits[i] * p.w[i].max_tiled_rows);
  const size_t smem = size_t(table_groups) * (32 + kWarps * 16) + size_t(vcap) * 4 + size_t(n) * size_t(xstride) * 2;
  const size_t limit = ctx.smem_optin > 1024 ? ctx.smem_optin - 1024 : 0;
  if (smem > limit) raise(ErrorKind::kUnsupported, "cuda matmul_exl2: layer too large for the direct decode path");
  static size_t allowed = 48 * 1024;  // per instance: the dynamic shared memory allowed so far
  if (smem > allowed) {
    LATHE_CUDA_CHECK(cudaFuncSetAttribute(exl2_direct_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
    allowed = limit;
  }
  const int64_t K = p.w[0].in_features;
  b.up = p.glu_up ? p.glu_up + t0 * K : nullptr;
  b.glu_act = p.glu_act;
  exl2_assign_partials(ctx, p, n, b);
  int* counters = static_cast<int*>(ctx.zeroed_scratch(Scratch::kCounters, sizeof(int) * size_t(std::max<int64_t>(col_blocks, 1024))));
  launch_pdl(ctx, exl2_direct_kernel<NT>, dim3(unsigned(col_blocks), unsigned(grid_y)), dim3(kThreads), smem, n,
             p.x + t0 * K, b, counters, int(table_groups), int(vcap), int(xstride), tune.ahead);
}

}  // namespace

void exl2_direct(Context& ctx, const Exl2MultiParams& p, int64_t t0, int64_t n) {
  if (ctx.exact_matmul) raise(ErrorKind::kInternal, "cuda exl2_direct: fast mode only (exact mode runs exl2_stream)");
  if (n <= 8) return launch<1>(ctx, int(n), p, t0);
  if (n <= kExl2DirectTokens) return launch<2>(ctx, int(n), p, t0);
  raise(ErrorKind::kInternal, "cuda exl2_direct: at most 16 tokens a launch");
}

}  // namespace lathe::ops::cuda
