// EXL2 matmul for decode sizes (1..16 tokens a launch) from the tiled layout (exl2_tiled.cuh,
// quant/exl2_tiled.h), up to three layers on one input in one launch. Built to stream the packed
// weights at the memory's speed:
//  * Every warp works alone: a strip of 32 columns over the block's groups, each lane loading its
//    words of every unit straight from global memory into registers (one 16-byte load a unit at 4
//    bits: a unit is 32 lanes x bits words, so a warp's loads are whole 128-byte lines). The next
//    group's words are in flight while a group is multiplied (two register buffers), and there is
//    no shared-memory staging and no block barrier in the loop: the tensor-core kernel's stages
//    (exl2_tc.cu), synchronised a block at a time, kept only ~30% of the bandwidth busy at one token.
//  * The weights are the mma's A operand (16 output columns x 16 rows: the tiled B fragments of two
//    n-tiles make one A fragment) and the tokens its n = 8: a unit is 4 mma a k step... per 8 tokens,
//    so one token wastes 7/8 of a cheap instruction instead of 15/16.
//  * Activations: the block's rows in act-order (x[perm], 0 on padding rows), bf16, token-major in
//    shared memory, read as B fragments with one 32-bit load each. One token: each block gathers
//    them itself; more: exl2_gather_activations made them once in global memory. SPLIT (exact mode)
//    adds the remainders x - hi rounded again and a second mma (fp32-accurate).
//  * A group's sums are scaled once per column in fp32 ((code + 1)^2 * max / 256).
//  * Grid: (column blocks of 4 strips, every layer's in turn; k-splits of whole groups). k-splits
//    write partial rows; the last block of a column block adds them in split order.
#include <cuda_bf16.h>

#include <algorithm>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/exl2_tiled.cuh"

namespace lathe::ops::cuda {
namespace {

using tiled::Group;
using tiled::kStripCols;
using tiled::kUnitRows;
using tiled::mma_bf16;

constexpr int kWarps = 4;  // strips per block
constexpr int kThreads = kWarps * 32;
constexpr int kMaxUnits = kExl2TiledMaxGroupRows / kUnitRows;  // units of a tiled group (4)
constexpr int kBlocksPerSm = 8;     // k-splits fill the GPU with about this many blocks per SM
constexpr int kMinSplitGroups = 2;  // but give each block at least this many groups

// A lane's words of every unit of a group (unit_half_regs's order), straight from global memory;
// the loads bypass L1 and are marked first to leave L2 (read once a call).
__device__ __forceinline__ void load_group(const uint32_t* __restrict__ base, int bits, int units, int lane,
                                           uint32_t (&r)[kMaxUnits][8]) {
  const int p0 = tiled::first_plane(bits), p1 = bits - p0;
#pragma unroll
  for (int u = 0; u < kMaxUnits; ++u) {
    if (u >= units) break;
    const uint32_t* unit = base + u * kUnitRows * bits;
    if (p0 == 4) {
      const uint4 v = __ldcs(reinterpret_cast<const uint4*>(unit) + lane);
      r[u][0] = v.x, r[u][1] = v.y, r[u][2] = v.z, r[u][3] = v.w;
    } else if (p0 == 2) {
      const uint2 v = __ldcs(reinterpret_cast<const uint2*>(unit) + lane);
      r[u][0] = v.x, r[u][1] = v.y;
    } else {
      const uint4 v = __ldcs(reinterpret_cast<const uint4*>(unit) + 2 * lane);
      const uint4 v2 = __ldcs(reinterpret_cast<const uint4*>(unit) + 2 * lane + 1);
      r[u][0] = v.x, r[u][1] = v.y, r[u][2] = v.z, r[u][3] = v.w;
      r[u][4] = v2.x, r[u][5] = v2.y, r[u][6] = v2.z, r[u][7] = v2.w;
    }
    if (p1 == 1) r[u][4] = __ldcs(unit + 32 * p0 + lane);
    if (p1 == 2) {
      const uint2 v = __ldcs(reinterpret_cast<const uint2*>(unit + 32 * p0) + lane);
      r[u][4] = v.x, r[u][5] = v.y;
    }
  }
}

// One group's products for the lane: c[t][m][e] for n-tile t (tokens 8 t + 2 q + e % 2), m-tile m
// (columns 16 m + g + 8 * (e / 2) of the strip). xs: the group's first row of token 0 (plane 0);
// xstride: elements between tokens; lo_off: elements to the remainders' plane.
template <int BITS, int NT, bool SPLIT>
__device__ __forceinline__ void group_products(const uint32_t (&r)[kMaxUnits][8], int units, const __nv_bfloat16* xs,
                                               int xstride, int lo_off, int n_valid, float (&c)[NT][2][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int e = 0; e < 4; ++e) c[t][m][e] = 0.f;
#pragma unroll
  for (int u = 0; u < kMaxUnits; ++u) {
    if (u >= units) break;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t b[8];
      if (h == 0) tiled::unit_half_regs<BITS, 0>(r[u], b);
      else tiled::unit_half_regs<BITS, 1>(r[u], b);
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

template <int NT, bool SPLIT>
__device__ __forceinline__ void group_step(const uint32_t (&r)[kMaxUnits][8], const Group& gr, uint32_t codes, float smax,
                                           const __nv_bfloat16* xs, int xstride, int lo_off, int n_valid,
                                           float (&acc)[NT][2][4]) {
  float c[NT][2][4];
  const int units = gr.padded / kUnitRows;
  switch (gr.bits) {
    case 2: group_products<2, NT, SPLIT>(r, units, xs, xstride, lo_off, n_valid, c); break;
    case 3: group_products<3, NT, SPLIT>(r, units, xs, xstride, lo_off, n_valid, c); break;
    case 4: group_products<4, NT, SPLIT>(r, units, xs, xstride, lo_off, n_valid, c); break;
    case 5: group_products<5, NT, SPLIT>(r, units, xs, xstride, lo_off, n_valid, c); break;
    case 6: group_products<6, NT, SPLIT>(r, units, xs, xstride, lo_off, n_valid, c); break;
    default: group_products<8, NT, SPLIT>(r, units, xs, xstride, lo_off, n_valid, c); break;
  }
  // Column 8 j + g of the strip (j = 2 m + e / 2): its code is nibble 2 j + g % 2 of the lane's word.
  const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float code = float(((codes >> (4 * (2 * j + (g & 1)))) & 15u) + 1u);
    const float scale = code * code * smax;
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int e = 0; e < 2; ++e) acc[t][j >> 1][2 * (j & 1) + e] = fmaf(c[t][j >> 1][2 * (j & 1) + e], scale, acc[t][j >> 1][2 * (j & 1) + e]);
  }
}

template <int NT, bool SPLIT>
__global__ void __launch_bounds__(kThreads, NT == 1 ? 4 : 3)
    exl2_stream_kernel(const float* __restrict__ x, int n_valid, const __grid_constant__ Exl2Batch P, int* __restrict__ counters,
                       int table_groups, int xstride) {
  int mi = 0;
  while (mi + 1 < P.count && int(blockIdx.x) >= P.col_end[mi]) ++mi;
  const int splits = P.splits[mi];
  if (int(blockIdx.y) >= splits) return;
  const int bx = int(blockIdx.x) - (mi ? P.col_end[mi - 1] : 0);
  const Exl2View& w = P.w[mi];
  const auto* __restrict__ xg = static_cast<const __nv_bfloat16*>(P.xg[mi]);
  extern __shared__ __align__(16) uint32_t smem[];
  int32_t* gtab = reinterpret_cast<int32_t*>(smem);                   // [groups of the split][8]
  float* gmax = reinterpret_cast<float*>(gtab + table_groups * 8);     // [groups of the split]: max / 256
  auto* xs = reinterpret_cast<__nv_bfloat16*>(gmax + table_groups);    // [planes][n_valid][xstride]
  __shared__ int last;
  const int K = int(w.in_features), N = int(w.out_features), Np = (N + 31) / 32 * 32, G = int(w.tiled_num_groups);
  const int S = Np / kStripCols, V = int(w.tiled_rows), s = blockIdx.y;
  const int g0 = int(int64_t(s) * G / splits), g1 = int(int64_t(s + 1) * G / splits);
  const int vbegin = w.tiled_groups[g0 * 8 + 3];
  const int vrows = (g1 < G ? w.tiled_groups[g1 * 8 + 3] : V) - vbegin;
  constexpr int kPlanes = SPLIT ? 2 : 1;

  for (int i = threadIdx.x; i < (g1 - g0) * 8; i += kThreads) gtab[i] = w.tiled_groups[g0 * 8 + i];
  for (int i = threadIdx.x; i < g1 - g0; i += kThreads)
    gmax[i] = __half2float(__ushort_as_half(w.q_scale_max[w.tiled_groups[(g0 + i) * 8 + 6]])) / 256.f;
  if (xg) {
    // Pre-gathered: plane p, token t at (p * n + t) * V; rows are multiples of 32 (16-byte copies).
    const int per_row = vrows / 8;
    for (int i = threadIdx.x; i < kPlanes * n_valid * per_row; i += kThreads) {
      const int r = i / per_row, c = i % per_row;
      *reinterpret_cast<uint4*>(xs + r * xstride + c * 8) = *reinterpret_cast<const uint4*>(xg + int64_t(r) * V + vbegin + c * 8);
    }
  } else {
    for (int i = threadIdx.x; i < vrows * n_valid; i += kThreads) {
      const int t = i / vrows, r = i % vrows;
      const int ch = w.tiled_perm[vbegin + r];
      const float v = ch >= 0 ? x[int64_t(t) * K + ch] : 0.f;
      const __nv_bfloat16 hi = __float2bfloat16_rn(v);
      xs[t * xstride + r] = hi;
      if constexpr (SPLIT) xs[(n_valid + t) * xstride + r] = __float2bfloat16_rn(v - __bfloat162float(hi));
    }
  }

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int strip = bx * kWarps + warp;
  const bool mine = strip < S;
  float acc[NT][2][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[t][m][e] = 0.f;
  __syncthreads();  // gtab, gmax and xs are written

  if (mine) {
    const int lo_off = n_valid * xstride;
    const int32_t* tab = gtab - g0 * 8;
    // Group gi's words and scale codes into a register buffer (issued, not waited for).
    const auto fetch = [&](int gi, uint32_t (&r)[kMaxUnits][8], uint32_t& codes, Group& gr) {
      gr = tiled::group_at(tab, gi);
      load_group(w.tiled + int64_t(gr.tq) * Np + int64_t(strip) * gr.padded * gr.bits, gr.bits, gr.padded / kUnitRows, lane, r);
      codes = __ldcs(w.tiled_scale + (int64_t(gi) * S + strip) * 4 + g / 2);
    };
    const auto step = [&](int gi, const uint32_t (&r)[kMaxUnits][8], uint32_t codes, const Group& gr) {
      group_step<NT, SPLIT>(r, gr, codes, gmax[gi - g0], xs + (gr.vrow - vbegin), xstride, lo_off, n_valid, acc);
    };
    uint32_t ra[kMaxUnits][8], rb[kMaxUnits][8], ca = 0, cb = 0;
    Group ga, gb;
    fetch(g0, ra, ca, ga);
    for (int gi = g0; gi < g1; gi += 2) {
      if (gi + 1 < g1) fetch(gi + 1, rb, cb, gb);
      step(gi, ra, ca, ga);
      if (gi + 1 >= g1) break;
      if (gi + 2 < g1) fetch(gi + 2, ra, ca, ga);
      step(gi + 1, rb, cb, gb);
    }
  }

  // Element e of tile (t, m): token 8 t + 2 q + e % 2, column 16 m + g + 8 (e / 2) of the strip.
  const int col0 = strip * kStripCols;
  const auto token_of = [&](int t, int e) { return 8 * t + 2 * q + (e & 1); };
  const auto col_of = [&](int m, int e) { return col0 + 16 * m + g + 8 * (e >> 1); };
  const auto bias_of = [&](int col) { return w.bias ? __half2float(__ushort_as_half(w.bias[col])) : 0.f; };
  float* __restrict__ y = P.y[mi];
  float* __restrict__ partial = P.partial[mi];
  if (splits == 1) {
    if (!mine) return;
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tok = token_of(t, e), col = col_of(m, e);
          if (tok < n_valid && col < N) y[int64_t(tok) * N + col] = acc[t][m][e] + bias_of(col);
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
          if (tok < n_valid) partial[(int64_t(s) * n_valid + tok) * Np + col_of(m, e)] = acc[t][m][e];
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
  // The last block adds every split's rows of its columns, in split order (results do not depend on
  // timing), a thread per (token, column), eight splits' loads in flight at a time.
  const int cols = min(kWarps * kStripCols, N - bx * kWarps * kStripCols);
  for (int i = threadIdx.x; i < n_valid * cols; i += kThreads) {
    const int tok = i / cols, col = bx * kWarps * kStripCols + i % cols;
    float sum = 0.f;
    for (int z0 = 0; z0 < splits; z0 += 8) {
      float v[8];
#pragma unroll
      for (int k = 0; k < 8; ++k)
        v[k] = z0 + k < splits ? __ldcg(partial + (int64_t(z0 + k) * n_valid + tok) * Np + col) : 0.f;
#pragma unroll
      for (int k = 0; k < 8; ++k) sum += v[k];
    }
    y[int64_t(tok) * N + col] = sum + bias_of(col);
  }
}

template <int NT, bool SPLIT>
void launch(Context& ctx, const float* x, int n, const Exl2MultiParams& p, int64_t t0) {
  constexpr int kPlanes = SPLIT ? 2 : 1;
  Exl2Batch b{};
  b.count = p.count;
  int64_t col_blocks = 0;
  for (int i = 0; i < p.count; ++i) {
    const Exl2View& w = p.w[i];
    b.w[i] = w;
    b.y[i] = p.y[i] + t0 * w.out_features;
    col_blocks += (w.padded_out() / kStripCols + kWarps - 1) / kWarps;
    b.col_end[i] = int(col_blocks);
  }
  // Per layer, k-splits so that all the layers' blocks come to about kBlocksPerSm per SM, at least
  // kMinSplitGroups groups a split, and more splits when the activations would not fit.
  const size_t limit = ctx.smem_optin > 1024 ? ctx.smem_optin - 1024 : 0;
  const size_t budget = std::min<size_t>(limit, 48 * 1024);
  const auto smem_for = [&](const Exl2View& w, int64_t sp, int64_t* xstride_out, int64_t* groups_out) {
    // (a multiple of 4: the tables' 36 bytes a group keep the activations 16-byte aligned)
    const int64_t groups = ((w.tiled_num_groups + sp - 1) / sp + 3) / 4 * 4;
    const int64_t rows = groups * w.max_tiled_rows;
    // = 8 mod 64 halves: the 8 tokens' rows fall in different banks (lane 4 g + q, bank 4 g + q).
    *xstride_out = rows + ((8 - rows % 64) + 64) % 64;
    *groups_out = groups;
    return size_t(groups) * 36 + size_t(kPlanes) * size_t(n) * size_t(*xstride_out) * 2;
  };
  int64_t xstride = 0, table_groups = 0, grid_y = 1;
  for (int i = 0; i < p.count; ++i) {
    const Exl2View& w = p.w[i];
    const int64_t G = w.tiled_num_groups;
    int64_t splits = std::clamp<int64_t>((kBlocksPerSm * int64_t(ctx.sm_count) + col_blocks - 1) / col_blocks, 1,
                                         std::max<int64_t>(1, G / kMinSplitGroups));
    int64_t xs = 0, tg = 0;
    while (smem_for(w, splits, &xs, &tg) > budget && splits < G) ++splits;
    b.splits[i] = int(splits);
    xstride = std::max(xstride, xs);
    table_groups = std::max(table_groups, tg);
    grid_y = std::max(grid_y, splits);
  }
  const size_t smem = size_t(table_groups) * 36 + size_t(kPlanes) * size_t(n) * size_t(xstride) * 2;
  if (smem > limit) raise(ErrorKind::kUnsupported, "cuda matmul_exl2: layer too large for the streaming path");
  static size_t allowed = 48 * 1024;  // per instance: the dynamic shared memory allowed so far
  if (smem > allowed) {
    LATHE_CUDA_CHECK(cudaFuncSetAttribute(exl2_stream_kernel<NT, SPLIT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
    allowed = limit;
  }
  if (n > 1) exl2_gather_activations(ctx, x, n, b, SPLIT);
  size_t partial_bytes = 0;
  for (int i = 0; i < p.count; ++i)
    if (b.splits[i] > 1) partial_bytes += sizeof(float) * size_t(int64_t(b.splits[i]) * n * p.w[i].padded_out());
  if (partial_bytes) {
    auto* at = static_cast<float*>(ctx.scratch(Scratch::kExl2, partial_bytes));
    for (int i = 0; i < p.count; ++i)
      if (b.splits[i] > 1) {
        b.partial[i] = at;
        at += int64_t(b.splits[i]) * n * p.w[i].padded_out();
      }
  }
  int* counters = static_cast<int*>(ctx.zeroed_scratch(Scratch::kCounters, sizeof(int) * size_t(std::max<int64_t>(col_blocks, 1024))));
  const dim3 grid{unsigned(col_blocks), unsigned(grid_y)};
  exl2_stream_kernel<NT, SPLIT><<<grid, kThreads, smem, ctx.stream>>>(x, n, b, counters, int(table_groups), int(xstride));
  LATHE_CUDA_CHECK_LAUNCH("exl2_stream_kernel");
}

}  // namespace

void exl2_stream(Context& ctx, const Exl2MultiParams& p, int64_t t0, int64_t n) {
  const float* x = p.x + t0 * p.w[0].in_features;
  if (n > kExl2StreamTokens) raise(ErrorKind::kInternal, "cuda exl2_stream: at most 16 tokens a launch");
  if (ctx.exact_matmul) return n <= 8 ? launch<1, true>(ctx, x, int(n), p, t0) : launch<2, true>(ctx, x, int(n), p, t0);
  return n <= 8 ? launch<1, false>(ctx, x, int(n), p, t0) : launch<2, false>(ctx, x, int(n), p, t0);
}

}  // namespace lathe::ops::cuda
