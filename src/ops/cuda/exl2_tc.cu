// EXL2 matmul on the tensor cores for 9..32 tokens (fast mode; exl2_stream.cu serves fewer, and
// exact mode), from the tiled layout (exl2_tiled.cuh, quant/exl2_tiled.h), for up to three layers
// on one input in one launch (q, k, v; gate, up: a small layer alone is mostly fixed cost). The
// packed weights stream once per launch through shared memory, and each lane finds its mma.sync B
// fragments ready-made: one 8-byte (4-bit) shared-memory load per 16 weights, widened with a
// shift, one LOP3 and one bf16 subtraction a pair.
//  * Grid (column blocks of 128 = 4 strips, every layer's in turn; k-split of whole groups);
//    8 warps: a strip each for the two k steps of every unit (warp halves), summed through shared
//    memory at the end. Two warps per strip give the scheduler twice the independent mma chains.
//  * Stages: one group's units for the block's strips (and their 16 scale words) per stage, kStages
//    deep, moved by TMA bulk copies that complete on the stage's mbarrier (Hopper; one thread
//    issues a stage), so the next groups' bytes are in flight while one is multiplied.
//  * Activations: gathered once for the call into act-order (exl2_gather_activations: x[perm],
//    padding rows 0, bf16, token-major); each block copies its rows beside the first stage and
//    reads them as A fragments by ldmatrix (gathering in every block cost a 32-byte sector per
//    4-byte value per block, as much L2 traffic as the weights at 16 tokens).
//  * B values are exact integers q - zero; fp32 accumulation in the tensor cores; a group's sums
//    are scaled once per column in fp32 by (code + 1)^2 * max / 256, read from a per-group table
//    of the 16 possible values made when the block starts.
//  * Tokens are m-tiles of 16 (MT of them); rows beyond the real tokens read token 0 and are
//    never stored.
//  * k-splits write partial rows; the last block of a column block adds them in split order.
// Measured on the H100 (bench/RESULTS.md): at 1..8 tokens exl2_stream is faster (its warps keep
// more bytes in flight without block barriers); at 16 this kernel still is.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/exl2_tiled.cuh"
#include "ops/cuda/pdl.cuh"

namespace lathe::ops::cuda {
namespace {

using tiled::Group;
using tiled::mma_bf16;
using tiled::smem_addr;
using tiled::cp_async16;
using tiled::cp_async_commit;
using tiled::cp_async_wait;
using tiled::kStripCols;
using tiled::kUnitRows;

constexpr int kStrips = 4;                        // per block
constexpr int kWarps = kStrips * 2;              // two k halves per strip
constexpr int kThreads = kWarps * 32;
constexpr int kBlockCols = kStrips * kStripCols;  // 128
constexpr int kStages = 4;  // (6 cost a block per SM at 4 bits, 128-row groups: measured slower at 1 token)
constexpr int kBlocksPerSm = 3;     // k-splits fill the GPU with about this many blocks per SM,
constexpr int kMinSplitGroups = 4;  // but give each block at least this many groups to stream

// Stages move by TMA bulk copies on Hopper and later; Ampere (sm_80 builds) falls back to every
// thread's 16-byte cp.async.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define LATHE_EXL2_TMA 0
#else
#define LATHE_EXL2_TMA 1
#endif

#if !LATHE_EXL2_TMA
// Every thread's share of a copy of `bytes` (a multiple of 16).
__device__ __forceinline__ void shared_copy(void* dst, const void* src, unsigned bytes) {
  for (unsigned i = threadIdx.x * 16; i < bytes; i += blockDim.x * 16)
    cp_async16(static_cast<char*>(dst) + i, static_cast<const char*>(src) + i);
}
#else

// Hopper bulk copies (TMA, 1-D) completing on an mbarrier: one thread moves a whole stage, the
// copy engine keeps the bytes in flight (per-thread 16-byte cp.async kept only ~40% of the
// bandwidth in flight even with no math at all).
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, unsigned phase) {
  uint32_t ok;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(smem_addr(bar)), "r"(phase)
      : "memory");
  return ok != 0;
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

#endif

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&a)[4], const void* smem) {
  const unsigned s = smem_addr(smem);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(s));
}

// One group of the warp's strip, its k-step `half` of every unit: 4 n-tiles, MT m-tiles. xa[m]:
// this lane's ldmatrix row address for m-tile m at the group's first row and the half's k step;
template <int BITS, int MT>
__device__ __forceinline__ void group_tc(const uint32_t* strip, int units, int half, const __nv_bfloat16* const (&xa)[MT],
                                         float (&c)[MT][4][4]) {
  const int lane = threadIdx.x & 31;
#pragma unroll 2
  for (int u = 0; u < units; ++u) {
    uint32_t b[8];
    tiled::unit_half<BITS>(strip + u * kUnitRows * BITS, lane, half, b);
    uint32_t a[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const __nv_bfloat16* at = xa[m] + u * kUnitRows;
      ldmatrix_x4(a[m], at);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma_bf16(c[m][j], a[m], b[j * 2], b[j * 2 + 1]);
      }
  }
}


// xg[plane][t][v] = x[t, perm[v]] (0 on padding rows) as bf16, for layer blockIdx.y of the batch;
// SPLIT: plane 1 holds x - hi rounded again.
template <bool SPLIT, bool FRAG>
__global__ void exl2_gather_bf16_kernel(const float* __restrict__ x, int64_t n, int64_t K, const __grid_constant__ Exl2Batch P) {
  pdl_enter();  // the matmul may start streaming its weights now; x is the previous kernel's output
  const Exl2View& w = P.w[blockIdx.y];
  const int64_t V = w.tiled_rows, i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * V) return;
  auto* xg = static_cast<__nv_bfloat16*>(const_cast<void*>(P.xg[blockIdx.y]));
  const int64_t t = i / V, v = i % V;
  const int32_t ch = w.tiled_perm[v];
  float val = 0.f;
  if (ch >= 0) {
    val = x[t * K + ch];
    if (P.up) val = activate(P.glu_act, val) * P.up[t * K + ch];  // a fused glu, as the glu op computes it
  }
  const __nv_bfloat16 hi = __float2bfloat16_rn(val);
  if constexpr (FRAG) {
    xg[t * V + (v & ~int64_t(31)) + tiled::fragment_row(int(v & 31))] = hi;
    return;
  }
  xg[i] = hi;
  if constexpr (SPLIT) xg[n * V + i] = __float2bfloat16_rn(val - __bfloat162float(hi));
}

template <int MT>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 4 : 1)
    exl2_tc_kernel(int n_valid, const __grid_constant__ Exl2Batch P, int* __restrict__ counters,
                   int stage_words, int lut_groups, int xstride) {
  pdl_trigger();  // the next kernel may take the SM room this one leaves (pdl.cuh)
  // This block's layer (a uniform walk over at most three entries) and its column block there.
  int mi = 0;
  while (mi + 1 < P.count && int(blockIdx.x) >= P.col_end[mi]) ++mi;
  const int splits = P.splits[mi];
  if (int(blockIdx.y) >= splits) return;  // this layer needs fewer k-splits than the grid has
  const int bx = int(blockIdx.x) - (mi ? P.col_end[mi - 1] : 0);
  const Exl2View& w = P.w[mi];
  float* __restrict__ y = P.y[mi];
  float* __restrict__ partial = P.partial[mi];
  const auto* __restrict__ xg = static_cast<const __nv_bfloat16*>(P.xg[mi]);
  extern __shared__ __align__(16) uint32_t smem[];
  uint32_t* stages = smem;  // [kStages][stage_words]: the group's units for the block's strips, then 16 scale words
  float* lut = reinterpret_cast<float*>(smem + kStages * stage_words);  // [groups of the split][16]
  int32_t* gtab = reinterpret_cast<int32_t*>(lut + lut_groups * 16);    // [groups of the split][8]: the group table
  float* red = reinterpret_cast<float*>(gtab + lut_groups * 8);         // [kStrips][32][MT * 16]: the second halves' sums
  // [n_valid][xstride] bf16 activations, act-order padded rows.
  auto* xs = reinterpret_cast<__nv_bfloat16*>(red + kStrips * 32 * MT * 16);
  const int N = int(w.out_features), Np = (N + 31) / 32 * 32, G = int(w.tiled_num_groups);
  const int S = Np / kStripCols, V = int(w.tiled_rows);
  const int s = blockIdx.y;
  const int g0 = int(int64_t(s) * G / splits), g1 = int(int64_t(s + 1) * G / splits);
  const int vbegin = w.tiled_groups[g0 * 8 + 3];
  const int vrows = (g1 < G ? w.tiled_groups[g1 * 8 + 3] : V) - vbegin;
  const int strip0 = bx * kStrips, strips = min(kStrips, S - strip0);

  // Stage of group gi, issued by thread 0 as bulk copies completing on the stage's barrier (with
  // the pre-gathered activations, the split's rows of every token and plane, on the first one);
  // its table row from `table` (global memory in the prologue, the shared copy in the loop: a
  // global load there put its latency in front of every stage's copies).
  // Called by every thread; with TMA only thread 0 acts.
#if LATHE_EXL2_TMA
  __shared__ __align__(8) uint64_t full[kStages];
#endif
  const auto issue = [&](int gi, const int32_t* table) {
    if (gi < g1 && (!LATHE_EXL2_TMA || threadIdx.x == 0)) {
      const Group gr = tiled::group_at(table, gi);
      const int k = (gi - g0) % kStages, strip_words = gr.padded * gr.bits;  // units * 32 * bits
      uint32_t* st = stages + k * stage_words;
      const unsigned wbytes = unsigned(strips * strip_words) * 4, sbytes = unsigned(strips) * 16;
      // The activations (another kernel's output) come with the first stage; with TMA they are
      // issued after pdl_wait below, the stage's byte count already expecting them.
      const unsigned xrow = unsigned(vrows) * 2, xrows = gi == g0 ? unsigned(n_valid) : 0u;
      const uint32_t* wsrc = w.tiled + int64_t(gr.tq) * Np + int64_t(strip0) * strip_words;
      const uint32_t* ssrc = w.tiled_scale + (int64_t(gi) * S + strip0) * 4;
#if LATHE_EXL2_TMA
      mbar_expect_tx(&full[k], wbytes + sbytes + xrows * xrow);
      bulk_copy(st, wsrc, wbytes, &full[k]);
      bulk_copy(st + stage_words - 16, ssrc, sbytes, &full[k]);
#else
      shared_copy(st, wsrc, wbytes);
      shared_copy(st + stage_words - 16, ssrc, sbytes);
      for (unsigned r = 0; r < xrows; ++r) shared_copy(xs + r * xstride, xg + int64_t(r) * V + vbegin, xrow);
#endif
    }
#if !LATHE_EXL2_TMA
    cp_async_commit();  // one group per stage, empty past the split, so waits count stages
#endif
  };
#if LATHE_EXL2_TMA
  if (threadIdx.x == 0) {
    for (int k = 0; k < kStages; ++k) mbar_init(&full[k], 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // visible to the copy engine
  }
#endif
#if !LATHE_EXL2_TMA
  pdl_wait();  // (no-op: programmatic dependent launch is Hopper's, as is TMA)
#endif
  for (int p = 0; p < kStages; ++p) issue(g0 + p, w.tiled_groups);
  pdl_wait();  // the weights are in flight; now the activations, the previous kernel's output
#if LATHE_EXL2_TMA
  if (threadIdx.x == 0)
    for (int r = 0; r < n_valid; ++r) bulk_copy(xs + r * xstride, xg + int64_t(r) * V + vbegin, unsigned(vrows) * 2, &full[0]);
#endif
  for (int i = threadIdx.x; i < (g1 - g0) * 8; i += kThreads) gtab[i] = w.tiled_groups[g0 * 8 + i];

  // Scale tables: (code + 1)^2 * max / 256 for each group of the split.
  for (int i = threadIdx.x; i < (g1 - g0) * 16; i += kThreads) {
    const float code = float(i % 16 + 1);
    const int stored = w.tiled_groups[(g0 + i / 16) * 8 + 6];
    lut[i] = code * code * (__half2float(__ushort_as_half(w.q_scale_max[stored])) / 256.f);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, q = lane & 3;
  const int strip = warp % kStrips, half = warp / kStrips;
  // ldmatrix rows: lanes 8i..8i+7 give matrix i's rows: tokens +8 for odd i, k +8 for i >= 2.
  const __nv_bfloat16* xa[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int t = m * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
    xa[m] = xs + (t < n_valid ? t : 0) * xstride + 8 * (lane >> 4) + 16 * half;
  }
  float acc[MT][4][4];
  tiled::zero(acc);

  __syncthreads();  // gtab, lut (and xs when gathered here) are written; the barriers are initialised
  for (int gi = g0; gi < g1; ++gi) {
    const int k = (gi - g0) % kStages;
#if LATHE_EXL2_TMA
    while (!mbar_try_wait(&full[k], unsigned((gi - g0) / kStages) & 1u)) {
    }
#else
    cp_async_wait<kStages - 1>();
    __syncthreads();
#endif
    const uint32_t* st = stages + k * stage_words;
    if (strip < strips) {
      const Group gr = tiled::group_at(gtab - g0 * 8, gi);
      const uint32_t* sp = st + strip * gr.padded * gr.bits;
      const __nv_bfloat16* xg_[MT];
#pragma unroll
      for (int m = 0; m < MT; ++m) xg_[m] = xa[m] + (gr.vrow - vbegin);
      const int units = gr.padded / kUnitRows;
      float c[MT][4][4];
      tiled::zero(c);
      switch (gr.bits) {
        case 2: group_tc<2, MT>(sp, units, half, xg_, c); break;
        case 3: group_tc<3, MT>(sp, units, half, xg_, c); break;
        case 4: group_tc<4, MT>(sp, units, half, xg_, c); break;
        case 5: group_tc<5, MT>(sp, units, half, xg_, c); break;
        case 6: group_tc<6, MT>(sp, units, half, xg_, c); break;
        default: group_tc<8, MT>(sp, units, half, xg_, c); break;
      }
      // This lane's C columns: 8 j + 2 q + e of the strip; their codes are nibbles 2 j + e of word q.
      const uint32_t codes = st[stage_words - 16 + strip * 4 + q];
      const float* lg = lut + (gi - g0) * 16;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float scale = lg[(codes >> (4 * (2 * j + e))) & 15u];
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            acc[m][j][e] = fmaf(c[m][j][e], scale, acc[m][j][e]);
            if (MT > 1 || n_valid > 8) acc[m][j][2 + e] = fmaf(c[m][j][2 + e], scale, acc[m][j][2 + e]);  // tokens 8..15
          }
        }
    }
    __syncthreads();  // every warp is done with stage k: group gi + kStages may land there
    issue(gi + kStages, gtab - g0 * 8);
  }

  // The second half's sums join the first's (in that order: results do not depend on timing).
  float* r = red + (strip * 32 + lane) * MT * 16;
  if (half == 1)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        *reinterpret_cast<float4*>(r + (m * 4 + j) * 4) = make_float4(acc[m][j][0], acc[m][j][1], acc[m][j][2], acc[m][j][3]);
  __syncthreads();
  const bool mine = half == 0 && strip < strips;
  if (mine)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float4 o = *reinterpret_cast<const float4*>(r + (m * 4 + j) * 4);
        acc[m][j][0] += o.x, acc[m][j][1] += o.y, acc[m][j][2] += o.z, acc[m][j][3] += o.w;
      }

  // Element e of tile (m, j): token m * 16 + g + 8 * (e / 2), column 8 j + 2 q + e % 2 of the warp's strip.
  const int g = lane >> 2;
  const int col0 = (strip0 + strip) * kStripCols;
  const auto token_of = [&](int m, int e) { return m * 16 + g + 8 * (e >> 1); };
  const auto col_of = [&](int j, int e) { return col0 + j * 8 + 2 * q + (e & 1); };
  const auto bias_of = [&](int col) { return w.bias ? __half2float(__ushort_as_half(w.bias[col])) : 0.f; };
  if (splits == 1) {
    if (!mine) return;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int t = token_of(m, e), col = col_of(j, e);
          if (t < n_valid && col < N) y[int64_t(t) * N + col] = acc[m][j][e] + bias_of(col);
        }
    return;
  }
  if (mine)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int t = token_of(m, e), col = col_of(j, e);
          if (t < n_valid)
            *reinterpret_cast<float2*>(partial + (int64_t(s) * n_valid + t) * Np + col) = make_float2(acc[m][j][e], acc[m][j][e + 1]);
        }
  if (!tiled::last_split(counters, splits)) return;
  tiled::merge_splits(partial, splits, n_valid, Np, strip0 * kStripCols, min(kBlockCols, N - strip0 * kStripCols), N, w.bias, y);
}

template <int MT>
void launch(Context& ctx, int n, const Exl2MultiParams& p, int64_t t0) {
  Exl2Batch b{};
  const int64_t col_blocks = exl2_batch_layers(p, t0, kStrips, b);
  int64_t stage_words = 0;
  for (int i = 0; i < p.count; ++i)
    stage_words = std::max<int64_t>(stage_words, p.w[i].max_tiled_qrows * kBlockCols + 16);
  // Per layer, k-splits so that all the layers' blocks come to about kBlocksPerSm per SM (their
  // stages keep enough bytes in flight and hide each other's start-up), at least kMinSplitGroups
  // groups a split, and fewer rows per split when the activations would not fit.
  const size_t limit = ctx.smem_optin > 1024 ? ctx.smem_optin - 1024 : 0;  // (the opt-in limit counts static smem too)
  const size_t budget = std::min<size_t>(limit, 100 * 1024);
  const auto smem_for = [&](const Exl2View& w, int64_t sp, int64_t* rows_out, int64_t* groups_out) {
    const int64_t groups = (w.tiled_num_groups + sp - 1) / sp;
    const int64_t rows = groups * w.max_tiled_rows;
    const int64_t xstride = rows + ((8 - rows % 64) + 64) % 64;  // = 8 mod 64 halves: ldmatrix rows 16 bytes apart in the banks
    *rows_out = xstride;
    *groups_out = groups;
    return size_t(kStages) * size_t(stage_words) * 4 + size_t(groups) * (64 + 32) + size_t(kStrips) * 32 * MT * 16 * 4 +
           size_t(n) * size_t(xstride) * 2;
  };
  int64_t xstride = 0, lut_groups = 0, grid_y = 1;
  for (int i = 0; i < p.count; ++i) {
    const Exl2View& w = p.w[i];
    const int64_t G = w.tiled_num_groups;
    int64_t splits = std::clamp<int64_t>((kBlocksPerSm * int64_t(ctx.sm_count) + col_blocks - 1) / col_blocks, 1,
                                         std::max<int64_t>(1, G / kMinSplitGroups));
    int64_t xs = 0, lg = 0;
    while (smem_for(w, splits, &xs, &lg) > budget && splits < G) ++splits;
    b.splits[i] = int(splits);
    xstride = std::max(xstride, xs);
    lut_groups = std::max(lut_groups, lg);
    grid_y = std::max(grid_y, splits);
  }
  const size_t smem = size_t(kStages) * size_t(stage_words) * 4 + size_t(lut_groups) * (64 + 32) +
                      size_t(kStrips) * 32 * MT * 16 * 4 + size_t(n) * size_t(xstride) * 2;
  if (smem > limit) raise(ErrorKind::kUnsupported, "cuda matmul_exl2: layer too large for the tensor-core path");
  static size_t allowed = 48 * 1024;  // per instance: the dynamic shared memory allowed so far
  if (smem > allowed) {
    LATHE_CUDA_CHECK(cudaFuncSetAttribute(exl2_tc_kernel<MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
    allowed = limit;
  }
  // Scratch: pre-gathered activations (more than one token; see the top of the file), then the
  // partial rows of every layer with k-splits.
  exl2_gather_activations(ctx, p, t0, n, b, false);
  exl2_assign_partials(ctx, p, n, b);
  int* counters = static_cast<int*>(ctx.zeroed_scratch(Scratch::kCounters, sizeof(int) * size_t(std::max<int64_t>(col_blocks, 1024))));
  const dim3 grid{unsigned(col_blocks), unsigned(grid_y)};
  launch_pdl(ctx, exl2_tc_kernel<MT>, grid, dim3(kThreads), smem, n, b, counters, int(stage_words), int(lut_groups),
             int(xstride));
  LATHE_CUDA_CHECK_LAUNCH("exl2_tc_kernel");
}

}  // namespace

void exl2_gather_activations(Context& ctx, const Exl2MultiParams& p, int64_t t0, int n, Exl2Batch& b, bool split, bool frag) {
  if (split && frag) raise(ErrorKind::kInternal, "cuda exl2_gather_activations: fragment order has no remainder plane");
  const float* x = p.x + t0 * p.w[0].in_features;
  b.up = p.glu_up ? p.glu_up + t0 * p.w[0].in_features : nullptr;
  b.glu_act = p.glu_act;
  const int planes = split ? 2 : 1;
  size_t bytes = 0;
  for (int i = 0; i < b.count; ++i) bytes += sizeof(__nv_bfloat16) * size_t(planes * n * b.w[i].tiled_rows + 8);
  auto* at = static_cast<__nv_bfloat16*>(ctx.scratch(Scratch::kMatmulX, bytes));
  int64_t most = 0;
  for (int i = 0; i < b.count; ++i) {
    b.xg[i] = at;
    at += planes * n * b.w[i].tiled_rows + 8;  // (rows are multiples of 32: every start stays 16-byte aligned)
    most = std::max<int64_t>(most, n * b.w[i].tiled_rows);
  }
  const dim3 grid{unsigned((most + 255) / 256), unsigned(b.count)};
  const int64_t K = b.w[0].in_features, nn = n;
  if (split)
    launch_pdl(ctx, exl2_gather_bf16_kernel<true, false>, grid, dim3(256), 0, x, nn, K, b);
  else if (frag)
    launch_pdl(ctx, exl2_gather_bf16_kernel<false, true>, grid, dim3(256), 0, x, nn, K, b);
  else
    launch_pdl(ctx, exl2_gather_bf16_kernel<false, false>, grid, dim3(256), 0, x, nn, K, b);
}


int64_t exl2_batch_layers(const Exl2MultiParams& p, int64_t t0, int strips, Exl2Batch& b) {
  b.count = p.count;
  int64_t col_blocks = 0;
  for (int i = 0; i < p.count; ++i) {
    const Exl2View& w = p.w[i];
    b.w[i] = w;
    b.y[i] = p.y[i] + t0 * w.out_features;
    col_blocks += (w.padded_out() / tiled::kStripCols + strips - 1) / strips;
    b.col_end[i] = int(col_blocks);
  }
  return col_blocks;
}

void exl2_assign_partials(Context& ctx, const Exl2MultiParams& p, int64_t n, Exl2Batch& b) {
  size_t partial_bytes = 0;
  for (int i = 0; i < p.count; ++i)
    if (b.splits[i] > 1) partial_bytes += sizeof(float) * size_t(int64_t(b.splits[i]) * n * p.w[i].padded_out());
  if (!partial_bytes) return;
  auto* at = static_cast<float*>(ctx.scratch(Scratch::kExl2, partial_bytes));
  for (int i = 0; i < p.count; ++i)
    if (b.splits[i] > 1) {
      b.partial[i] = at;
      at += int64_t(b.splits[i]) * n * p.w[i].padded_out();
    }
}

void exl2_tc(Context& ctx, const Exl2MultiParams& p, int64_t t0, int64_t n) {
  if (ctx.exact_matmul) raise(ErrorKind::kInternal, "cuda exl2_tc: fast mode only (exact mode runs exl2_stream)");
  if (n <= 16) return launch<1>(ctx, int(n), p, t0);
  if (n <= kExl2TcTokens) return launch<2>(ctx, int(n), p, t0);
  raise(ErrorKind::kInternal, "cuda exl2_tc: at most 32 tokens a launch");
}

}  // namespace lathe::ops::cuda
