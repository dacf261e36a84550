// EXL2 matmul for decode sizes (1..16 tokens a launch) from the tiled layout (exl2_tiled.cuh,
// quant/exl2_tiled.h), up to three layers on one input in one launch. Built to keep the memory busy:
// a kernel over a 4096 x 14336 layer lasts ~10 us at full bandwidth, so every round trip a block
// waits through before its bytes flow (tables, an act-order gather, a barrier per stage) costs
// several percent. The tensor-core kernel (exl2_tc.cu), whose stages are a block's, kept ~28% of
// the bandwidth busy at one token; this one ~34% on a 4096 x 14336 layer and ~64% on the LM head
// (bench/RESULTS.md). ncu at one token: ~0.14 warp-instructions a weight issued on 43% of cycles,
// warps mostly waiting: latency and the short life of blocks, not the math, are what is left.
//  * Every warp works alone: a strip of 32 columns over the block's groups. It puts cp.async copies
//    of its next `slots` groups in flight (units, the 4 scale-code words, the group's max) into its
//    own ring in shared memory and keeps the ring full: no block barrier in the loop.
//  * Programmatic dependent launch (pdl.cuh): the weights are no kernel's output, so the first
//    groups' copies go out before pdl_wait, streaming while the kernels before finish; the kernel
//    triggers its own dependents at once, so the next ones start as its blocks leave.
//  * The activations were gathered into act-order once for the call (exl2_gather_activations: bf16,
//    0 on padding rows, plus the remainders x - hi in exact mode; a fused glu applied there); a
//    block copies its rows after its first groups. (Each block gathering its own rows from x, with
//    no gather kernel, was slower on the 8B decode: 258 against 279 tok/s, bench/RESULTS.md.)
//  * The weights are the mma's A operand (16 output columns x 16 rows: a lane's tiled B fragments of
//    two n-tiles are one A fragment) and the tokens its n of 8, so one token wastes 7/8 of an mma,
//    not 15/16. A group's sums are scaled once per column in fp32 ((code + 1)^2 * max / 256).
//  * Grid: (column blocks of 4 strips, every layer's in turn; k-splits of whole groups). k-splits
//    write partial rows; the last block of a column block adds them in split order.
#include <cuda_bf16.h>

#include <algorithm>

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

constexpr int kWarps = 4;  // strips per block
constexpr int kThreads = kWarps * 32;
constexpr int kMaxSlots = 8;                 // groups a warp keeps in flight, at most
constexpr int kSlotHeader = 8;               // words before a slot's units: 4 scale-code words, the max's word, padding
// Measured on the H100 at one token (bench/RESULTS.md): 8 blocks an SM with 6 KB rings beat 6 with
// 8 KB and 4 with 12 KB (gate 26.3 / 26.9 / 28.2 us; 8B decode 255 / 251 / 241 tok/s): more warps
// hide more latency than deeper rings.
constexpr int kBlocksPerSm = 8;              // k-splits fill the GPU with about this many blocks per SM,
constexpr int kMinSplitGroups = 2;           // but give each block at least this many groups
constexpr int kRingBytes = 6 * 1024;         // a warp's ring (fewer slots for wide groups)
constexpr int kMaxXBytes = 16 * 1024;        // a block's activations

__device__ __forceinline__ void cp_async_wait_upto(int n) {
  switch (n) {
    case 0: tiled::cp_async_wait<0>(); break;
    case 1: tiled::cp_async_wait<1>(); break;
    case 2: tiled::cp_async_wait<2>(); break;
    case 3: tiled::cp_async_wait<3>(); break;
    case 4: tiled::cp_async_wait<4>(); break;
    case 5: tiled::cp_async_wait<5>(); break;
    case 6: tiled::cp_async_wait<6>(); break;
    case 7: tiled::cp_async_wait<7>(); break;
    default: tiled::cp_async_wait<8>(); break;
  }
}

// One group's products for the lane: c[t][m][e] for n-tile t (tokens 8 t + 2 q + e % 2), m-tile m
// (columns 16 m + g + 8 * (e / 2) of the strip). strip: the group's units in shared memory; xs: the
// group's first row of token 0 (plane 0); xstride: elements between tokens; lo_off: elements to the
// remainders' plane.
template <int BITS, int NT, bool SPLIT>
__device__ __forceinline__ void group_products(const uint32_t* strip, int units, const __nv_bfloat16* xs, int xstride,
                                               int lo_off, int n_valid, float (&c)[NT][2][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  tiled::zero(c);
#pragma unroll 2
  for (int u = 0; u < units; ++u) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t b[8];
      tiled::unit_half<BITS>(strip + u * kUnitRows * BITS, lane, h, b);
      const uint32_t a0[4] = {b[0], b[2], b[1], b[3]}, a1[4] = {b[4], b[6], b[5], b[7]};
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const int tok = 8 * t + g;
        const __nv_bfloat16* xr = xs + tok * xstride + u * kUnitRows + 16 * h + 2 * q;
        uint32_t x0 = 0, x1 = 0;
        if (tok < n_valid) {
          x0 = *reinterpret_cast<const uint32_t*>(xr);
          x1 = *reinterpret_cast<const uint32_t*>(xr + 8);
        }
        mma_bf16(c[t][0], a0, x0, x1);
        mma_bf16(c[t][1], a1, x0, x1);
        if constexpr (SPLIT) {
          uint32_t l0 = 0, l1 = 0;
          if (tok < n_valid) {
            l0 = *reinterpret_cast<const uint32_t*>(xr + lo_off);
            l1 = *reinterpret_cast<const uint32_t*>(xr + lo_off + 8);
          }
          mma_bf16(c[t][0], a0, l0, l1);
          mma_bf16(c[t][1], a1, l0, l1);
        }
      }
    }
  }
}

// A group from its ring slot: products, then each column's scale into the accumulators.
template <int NT, bool SPLIT>
__device__ __forceinline__ void group_step(const uint32_t* slot, const Group& gr, const __nv_bfloat16* xs, int xstride,
                                           int lo_off, int n_valid, float (&acc)[NT][2][4]) {
  float c[NT][2][4];
  const int units = gr.padded / kUnitRows;
  const uint32_t* strip = slot + kSlotHeader;
  switch (gr.bits) {
    case 2: group_products<2, NT, SPLIT>(strip, units, xs, xstride, lo_off, n_valid, c); break;
    case 3: group_products<3, NT, SPLIT>(strip, units, xs, xstride, lo_off, n_valid, c); break;
    case 4: group_products<4, NT, SPLIT>(strip, units, xs, xstride, lo_off, n_valid, c); break;
    case 5: group_products<5, NT, SPLIT>(strip, units, xs, xstride, lo_off, n_valid, c); break;
    case 6: group_products<6, NT, SPLIT>(strip, units, xs, xstride, lo_off, n_valid, c); break;
    default: group_products<8, NT, SPLIT>(strip, units, xs, xstride, lo_off, n_valid, c); break;
  }
  // The group's max (float16, the half of its 4-byte word), / 256.
  const uint32_t mw = slot[4];
  const float smax = __half2float(__ushort_as_half(uint16_t(gr.stored & 1 ? mw >> 16 : mw & 0xffffu))) * (1.f / 256.f);
  // Column 8 j + g of the strip (j = 2 m + e / 2): its code is nibble 2 j + g % 2 of word g / 2.
  const int g = (threadIdx.x & 31) >> 2;
  const uint32_t codes = slot[g >> 1];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float code = float(((codes >> (4 * (2 * j + (g & 1)))) & 15u) + 1u);
    const float scale = code * code * smax;
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& a = acc[t][j >> 1][2 * (j & 1) + e];
        a = fmaf(c[t][j >> 1][2 * (j & 1) + e], scale, a);
      }
  }
}

template <int NT, bool SPLIT>
__global__ void __launch_bounds__(kThreads)
    exl2_stream_kernel(int n_valid, const __grid_constant__ Exl2Batch P, int* __restrict__ counters, int table_groups,
                       int slots, int slot_words, int xstride) {
  pdl_trigger();  // the next kernel may take the SM room this one leaves (pdl.cuh)
  int mi = 0;
  while (mi + 1 < P.count && int(blockIdx.x) >= P.col_end[mi]) ++mi;
  const int splits = P.splits[mi];
  if (int(blockIdx.y) >= splits) return;
  const int bx = int(blockIdx.x) - (mi ? P.col_end[mi - 1] : 0);
  const Exl2View& w = P.w[mi];
  const auto* __restrict__ xg = static_cast<const __nv_bfloat16*>(P.xg[mi]);
  extern __shared__ __align__(16) uint32_t smem[];
  int32_t* gtab = reinterpret_cast<int32_t*>(smem);                                   // [table_groups][8]
  uint32_t* ring = smem + table_groups * 8;                                           // [kWarps][slots][slot_words]
  auto* xs = reinterpret_cast<__nv_bfloat16*>(ring + kWarps * slots * slot_words);  // [planes * n_valid][xstride]
  const int N = int(w.out_features), Np = (N + 31) / 32 * 32, G = int(w.tiled_num_groups);
  const int S = Np / kStripCols, V = int(w.tiled_rows), s = blockIdx.y;
  const int g0 = int(int64_t(s) * G / splits), g1 = int(int64_t(s + 1) * G / splits);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int strip = bx * kWarps + warp;
  const bool mine = strip < S;
  constexpr int kPlanes = SPLIT ? 2 : 1;

  // The split's table rows; then the first groups' copies (the weights are no kernel's output, so
  // they go out before waiting for the previous kernels: with programmatic dependent launch they
  // stream while those finish); then the activations' copy.
  for (int i = threadIdx.x; i < (g1 - g0) * 8; i += kThreads) gtab[i] = __ldg(w.tiled_groups + g0 * 8 + i);
  __syncthreads();
  const int32_t* tab = gtab - g0 * 8;
  const int vbegin = tab[g0 * 8 + 3];
  const int vrows = (g1 < G ? __ldg(w.tiled_groups + g1 * 8 + 3) : V) - vbegin;
  // Group gi into slot k of the warp's ring: every lane's 16-byte share of the units, lane 0 the
  // scale-code words, lane 1 the max's word. Always a commit, so waits count groups.
  uint32_t* my_ring = ring + warp * slots * slot_words;
  const auto issue = [&](int gi, int k) {
    if (mine && gi < g1) {
      const Group gr = tiled::group_at(tab, gi);
      uint32_t* slot = my_ring + k * slot_words;
      const int words = gr.padded * gr.bits;
      const uint32_t* src = w.tiled + int64_t(gr.tq) * Np + int64_t(strip) * words;
      for (int i = lane * 4; i < words; i += 128) tiled::cp_async16(slot + kSlotHeader + i, src + i);
      if (lane == 0) tiled::cp_async16(slot, w.tiled_scale + (int64_t(gi) * S + strip) * 4);
      if (lane == 1) tiled::cp_async4(slot + 4, w.q_scale_max + (gr.stored & ~1));
    }
    tiled::cp_async_commit();
  };
  for (int k = 0; k < slots; ++k) issue(g0 + k, k);
  pdl_wait();
  {
    const int per_row = vrows / 8;  // rows are multiples of 32: 16-byte copies
    for (int i = threadIdx.x; i < kPlanes * n_valid * per_row; i += kThreads) {
      const int r = i / per_row, c = i % per_row;
      tiled::cp_async16(xs + r * xstride + c * 8, xg + int64_t(r) * V + vbegin + c * 8);
    }
    tiled::cp_async_commit();
  }
  float acc[NT][2][4];
  tiled::zero(acc);
  tiled::cp_async_wait<0>();  // the activations (and the first groups, long in flight) are in
  __syncthreads();             // and every thread's share of them visible

  const int lo_off = n_valid * xstride;
  for (int gi = g0, k = 0; gi < g1; ++gi, k = k + 1 == slots ? 0 : k + 1) {
    cp_async_wait_upto(slots - 1);
    __syncwarp();
    if (mine) {
      const Group gr = tiled::group_at(tab, gi);
      group_step<NT, SPLIT>(my_ring + k * slot_words, gr, xs + (gr.vrow - vbegin), xstride, lo_off, n_valid, acc);
    }
    __syncwarp();  // every lane is done with slot k
    issue(gi + slots, k);
  }

  const int cols0 = bx * kWarps * kStripCols;
  tiled::finish_strips<NT>(acc, mine, strip * kStripCols, n_valid, N, Np, splits, s, cols0, min(kWarps * kStripCols, N - cols0),
                           w.bias, P.y[mi], P.partial[mi], counters);
}

template <int NT, bool SPLIT>
void launch(Context& ctx, int n, const Exl2MultiParams& p, int64_t t0) {
  constexpr int kPlanes = SPLIT ? 2 : 1;
  Exl2Batch b{};
  const int64_t col_blocks = exl2_batch_layers(p, t0, kWarps, b);
  int64_t slot_words = 0;
  for (int i = 0; i < p.count; ++i)
    slot_words = std::max<int64_t>(slot_words, p.w[i].max_tiled_qrows * kStripCols + kSlotHeader);
  // Per layer, k-splits so that all the layers' blocks come to about kBlocksPerSm per SM, at least
  // kMinSplitGroups groups a split, and more splits when the activations would not fit.
  int64_t xstride = 0, table_groups = 0, grid_y = 1;
  for (int i = 0; i < p.count; ++i) {
    const Exl2View& w = p.w[i];
    const int64_t G = w.tiled_num_groups;
    int64_t splits = std::clamp<int64_t>((kBlocksPerSm * int64_t(ctx.sm_count) + col_blocks - 1) / col_blocks, 1,
                                         std::max<int64_t>(1, G / kMinSplitGroups));
    const auto rows = [&] { return (G + splits - 1) / splits * w.max_tiled_rows; };
    while (splits < G && kPlanes * n * rows() * 2 > kMaxXBytes) ++splits;
    b.splits[i] = int(splits);
    // = 8 mod 64 halves: the 8 tokens' rows fall in different banks (lane 4 g + q, bank 4 g + q).
    xstride = std::max(xstride, rows() + ((8 - rows() % 64) + 64) % 64);
    table_groups = std::max(table_groups, (G + splits - 1) / splits);
    grid_y = std::max(grid_y, splits);
  }
  const int slots = int(std::clamp<int64_t>(std::min<int64_t>(table_groups, kRingBytes / (slot_words * 4)), 1, kMaxSlots));
  table_groups = (table_groups + 1) / 2 * 2;  // the ring starts 16-byte aligned
  const size_t smem = size_t(table_groups) * 32 + size_t(kWarps) * size_t(slots) * size_t(slot_words) * 4 +
                      size_t(kPlanes) * size_t(n) * size_t(xstride) * 2;
  const size_t limit = ctx.smem_optin > 1024 ? ctx.smem_optin - 1024 : 0;
  if (smem > limit) raise(ErrorKind::kUnsupported, "cuda matmul_exl2: layer too large for the streaming path");
  static size_t allowed = 48 * 1024;  // per instance: the dynamic shared memory allowed so far
  if (smem > allowed) {
    LATHE_CUDA_CHECK(cudaFuncSetAttribute(exl2_stream_kernel<NT, SPLIT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
    allowed = limit;
  }
  exl2_gather_activations(ctx, p, t0, n, b, SPLIT);
  exl2_assign_partials(ctx, p, n, b);
  int* counters = static_cast<int*>(ctx.zeroed_scratch(Scratch::kCounters, sizeof(int) * size_t(std::max<int64_t>(col_blocks, 1024))));
  launch_pdl(ctx, exl2_stream_kernel<NT, SPLIT>, dim3(unsigned(col_blocks), unsigned(grid_y)), dim3(kThreads), smem, n,
             b, counters, int(table_groups), slots, int(slot_words), int(xstride));
}

}  // namespace

void exl2_stream(Context& ctx, const Exl2MultiParams& p, int64_t t0, int64_t n) {
  if (n > kExl2StreamTokens) raise(ErrorKind::kInternal, "cuda exl2_stream: at most 16 tokens a launch");
  if (ctx.exact_matmul) return n <= 8 ? launch<1, true>(ctx, int(n), p, t0) : launch<2, true>(ctx, int(n), p, t0);
  return n <= 8 ? launch<1, false>(ctx, int(n), p, t0) : launch<2, false>(ctx, int(n), p, t0);
}

}  // namespace lathe::ops::cuda
