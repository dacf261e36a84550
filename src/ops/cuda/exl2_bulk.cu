// EXL2 matmul for decode sizes (1..8 tokens a launch, fast mode, Hopper) from the tiled layout
// (exl2_tiled.cuh, quant/exl2_tiled.h), up to three layers on one input in one launch.
//
// Why: every earlier decode kernel spent a fixed ~12-15 us a call beyond its bytes (a fit of
// time = F + bytes / R over the 8B layers, bench/RESULTS.md): all its blocks start together, each
// stages its tables and activations, and only then do the weights flow; at the end every block
// writes partial rows, and the last one of a column block adds them. The memory idles through both
// ends of every call, four calls a layer. Here the weights of the next call are already on their way
// while the kernels before it still run, and the end of a call is short:
//  * One block of 8 warps an SM (a quarter of its registers, ~100 KB of shared memory), so the next
//    matmul's blocks fit beside this one's and start (programmatic dependent launch, pdl.cuh) as soon
//    as the kernels between have started. Weights are no kernel's output: a block's first ~96 KB go
//    out before pdl_wait. For a 4096-wide q/k/v or o projection that is all of its share.
//  * Stream-K over bytes: the call's items (a group of one 32-column strip; up to 4 KB of one
//    contiguous run of the tiled layout) are ordered layer, strip, group, and every warp takes an
//    equal share of their bytes, so no SM waits for another (a k-split grid rounds to whole waves).
//    A warp owns the items that start in its share; a strip it shares with other warps ends in
//    partial rows, and the last of them to finish adds the partials in warp order (results do not
//    depend on timing). Shares are at least one item long, so every warp of a strip owns an item of it.
//  * Each warp streams its items into its own ring in shared memory with bulk copies (the copy engine
//    moves a whole item for one instruction of one lane, against 16 bytes a lane-instruction for
//    cp.async), each completing on its own mbarrier; the warp refills a slot as soon as it has read
//    it. No block barrier anywhere: warps run independently.
//  * Activations come pre-gathered in act-order and fragment order (exl2_gather_activations with
//    frag): a lane's 8 values of a unit are one 16-byte load, from L2 (the scratch they live in is
//    rewritten by the next gather while this grid may still be resident: no L1 copies).
//  * The weights are the mma's A operand and the tokens its n of 8 (exl2_tiled.cuh unit_products),
//    a group's sums scaled once per column in fp32 ((code + 1)^2 * max / 256).
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

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kQueue = 8;                    // items a warp has in flight at most (an mbarrier each)
constexpr int kDefaultRingBytes = 12 * 1024;  // a warp's ring
constexpr int kItemBytesPerQrow = kStripCols * 4;  // an item's bytes: its group's padded rows * bits / 32 of these

// The call's stream-K plan (a __grid_constant__ parameter).
struct BulkPlan {
  int64_t base[4];     // the first byte of each layer's items in the call's order; base[count]: all bytes
  int strip_bytes[3];  // a strip's bytes (all its groups)
  int strip0[3];       // each layer's first strip counter
  int cmax[3];         // partial slots a strip of each layer
  int warps;           // warps sharing the bytes
  int ring_bytes;      // a warp's ring
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n"
      "WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// bytes (a multiple of 16) from global src (16-byte aligned) to shared dst, completing on bar; the
// copy is marked first to leave L2 (the weights are read once a step).
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar, uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}

// Where a warp's walk over the items stands: layer, strip, group.
struct Cursor {
  int l, s, g;
};

// What a warp needs of an item.
struct Item {
  int64_t off;  // its first byte in the call's order
  const uint32_t* src;
  int bits, units, vrow, stored, bytes;
};

__device__ __forceinline__ Item item_at(const Exl2Batch& P, const BulkPlan& Q, const Cursor& c) {
  const Exl2View& w = P.w[c.l];
  const Group gr = tiled::group_at(w.tiled_groups, c.g);
  const int64_t Np = (w.out_features + 31) / 32 * 32;
  Item it;
  it.off = Q.base[c.l] + int64_t(c.s) * Q.strip_bytes[c.l] + int64_t(gr.tq) * kItemBytesPerQrow;
  it.src = w.tiled + int64_t(gr.tq) * Np + int64_t(c.s) * gr.padded * gr.bits;
  it.bits = gr.bits;
  it.units = gr.padded / kUnitRows;
  it.vrow = gr.vrow;
  it.stored = gr.stored;
  it.bytes = gr.padded * gr.bits * 4;
  return it;
}

__device__ __forceinline__ void advance(const Exl2Batch& P, Cursor& c) {
  if (++c.g < int(P.w[c.l].tiled_num_groups)) return;
  c.g = 0;
  if (++c.s < int((P.w[c.l].out_features + 31) / 32)) return;
  c.s = 0;
  ++c.l;
}

// Where an item of a ring of rb bytes starts, the previous one ending at `at` (monotonic): an item
// that would cross the end goes to the start instead.
__device__ __forceinline__ int ring_start(int at, int bytes, int rb) { return at % rb + bytes <= rb ? at : (at / rb + 1) * rb; }

// An item's products (at most 4 units) from its ring slot; xv[u]: the lane's activations of unit u.
// Even and odd units accumulate apart (two mma chains of half the length), added at the end.
template <int BITS>
__device__ __forceinline__ void item_products(const uint32_t* slot, int units, const uint4 (&xv)[4], float (&c)[1][2][4]) {
  const int lane = threadIdx.x & 31;
  float odd[1][2][4];
  tiled::zero(odd);
#pragma unroll
  for (int u = 0; u < 4; ++u)
    if (u < units) {
      uint32_t r[BITS];
      tiled::load_unit<BITS, false>(slot + u * kUnitRows * BITS, lane, r);
      const uint4 x[1] = {xv[u]};
      tiled::unit_products<BITS, 1>(r, x, u & 1 ? odd : c);
    }
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int e = 0; e < 4; ++e) c[0][m][e] += odd[0][m][e];
}
#endif  // __CUDA_ARCH__ >= 900

// MB: blocks an SM the registers must allow (2: 115 registers, no spills; 3: 80, some spills).
template <int MB>
__global__ void __launch_bounds__(kThreads, MB)
    exl2_bulk_kernel(int n_valid, const __grid_constant__ Exl2Batch P, const __grid_constant__ BulkPlan Q,
                     int* __restrict__ counters) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  pdl_trigger();  // the next kernels may start in the room this block leaves (pdl.cuh)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int64_t W = Q.warps, wid = int64_t(blockIdx.x) * kWarps + warp;
  if (wid >= W) return;  // (no block barrier below)
  const int count = P.count, rb = Q.ring_bytes;
  const int64_t T = Q.base[count];
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* ring = smem + size_t(warp) * size_t(rb + kQueue * 8);
  const uint32_t ring_s = tiled::smem_addr(ring), bars = ring_s + uint32_t(rb);
  if (lane == 0) {
    for (int k = 0; k < kQueue; ++k) mbar_init(bars + 8 * k, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncwarp();
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));

  // The warp's share of the bytes, and its first item: the first to start in it.
  const int64_t os = (wid * T + W - 1) / W, oe = ((wid + 1) * T + W - 1) / W;
  Cursor first{0, 0, 0};
  while (first.l + 1 < count && os >= Q.base[first.l + 1]) ++first.l;
  {
    const Exl2View& w = P.w[first.l];
    const int64_t rel = os - Q.base[first.l];
    first.s = int(rel / Q.strip_bytes[first.l]);
    const int64_t rem = rel - int64_t(first.s) * Q.strip_bytes[first.l];
    const int G = int(w.tiled_num_groups);
    int before = 0;  // groups that start before rem (their first packed rows rise with the group)
    for (int g0 = 0; g0 < G; g0 += 32) {
      const int gi = g0 + lane;
      const bool b = gi < G && int64_t(__ldg(w.tiled_groups + gi * 8 + 2)) * kItemBytesPerQrow < rem;
      before += __popc(__ballot_sync(~0u, b));
    }
    first.g = before;
    if (first.g == G) {  // every group starts before rem: the next strip's first
      first.g = G - 1;
      advance(P, first);
    }
  }

  // Producer side (lane 0 issues; every lane keeps the same state): items go into the ring while
  // fewer than kQueue are in flight and their bytes fit behind the ones not yet read.
  Cursor pc = first;
  bool producing = true;
  int64_t issued = 0, consumed = 0;
  int head = 0, released = 0;
  const auto fill = [&]() {
    while (producing && issued - consumed < kQueue) {
      if (pc.l >= count) {
        producing = false;
        break;
      }
      const Item it = item_at(P, Q, pc);
      if (it.off >= oe) {
        producing = false;
        break;
      }
      const int start = ring_start(head, it.bytes, rb);
      if (start + it.bytes > released + rb) break;
      if (lane == 0) {
        const uint32_t bar = bars + 8 * uint32_t(issued % kQueue);
        // The warp's reads of this space (the __syncwarp before every fill) come before the copy's writes.
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        mbar_expect_tx(bar, uint32_t(it.bytes));
        bulk_copy(ring_s + uint32_t(start % rb), it.src, uint32_t(it.bytes), bar, policy);
      }
      head = start + it.bytes;
      ++issued;
      advance(P, pc);
    }
  };
  fill();      // weights: before the wait
  pdl_wait();  // the activations are the previous kernel's output

  float acc[1][2][4];
  tiled::zero(acc);
  const int tok = min(g, n_valid - 1);  // the lane's token (its n column); past n_valid: never stored
  int at = 0, sl = -1, ss = -1;
  // A strip's sums: into y when this warp owns all its items, else into its partial slot, and the
  // strip's last warp to finish adds the slots in order.
  const auto finish = [&](int l, int s) {
    const Exl2View& w = P.w[l];
    const int N = int(w.out_features), G = int(w.tiled_num_groups);
    float* __restrict__ y = P.y[l];
    const int64_t lo = Q.base[l] + int64_t(s) * Q.strip_bytes[l];
    const int64_t hi = lo + int64_t(__ldg(w.tiled_groups + (G - 1) * 8 + 2)) * kItemBytesPerQrow;
    const int64_t a = lo * W / T, b = hi * W / T;
    const auto bias_of = [&](int col) { return w.bias ? __half2float(__ushort_as_half(w.bias[col])) : 0.f; };
    if (a == b) {  // the warp's own strip: y (+ bias) directly, as a kernel with one k-split
      tiled::finish_strips<1>(acc, true, s * kStripCols, n_valid, N, 0, 1, 0, 0, 0, w.bias, y, nullptr, nullptr);
      return;
    }
    const int k = int(b - a + 1), slot = int(wid - a);
    float* part = P.partial[l] + int64_t(s) * Q.cmax[l] * n_valid * kStripCols;  // [cmax][n_valid][32]
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = 2 * q + (e & 1);
        if (t < n_valid) part[(slot * n_valid + t) * kStripCols + 16 * m + g + 8 * (e >> 1)] = acc[0][m][e];
      }
    __syncwarp();
    int last = 0;
    if (lane == 0) {
      __threadfence();  // the warp's partial rows (ordered before by the __syncwarp), then the count
      int* counter = counters + Q.strip0[l] + s;
      last = atomicAdd(counter, 1) == k - 1;
      if (last) {
        *counter = 0;     // for the next launch or graph replay
        __threadfence();  // acquire: the other warps' rows, before this warp reads them
      }
    }
    if (!__shfl_sync(~0u, last, 0)) return;
    const int col = s * kStripCols + lane;
    if (col >= N) return;
    for (int t = 0; t < n_valid; ++t) {
      float sum = 0.f;
      for (int c = 0; c < k; ++c) sum += __ldcg(part + (c * n_valid + t) * kStripCols + lane);
      y[int64_t(t) * N + col] = sum + bias_of(col);
    }
  };

  // An item's loads from memory (its activations, scale codes and max) go out one item ahead, so
  // their L2 round trip hides behind the item before.
  struct Next {
    Item it;
    Cursor at;
    uint4 xv[4];
    uint32_t codes;
    float smax;
    bool valid;
  };
  const auto prepare = [&](const Cursor& cur) {
    Next n;
    n.at = cur;
    n.valid = cur.l < count;
    if (!n.valid) return n;
    n.it = item_at(P, Q, cur);
    n.valid = n.it.off < oe;
    if (!n.valid) return n;
    const Exl2View& w = P.w[cur.l];
    const auto* xg = static_cast<const __nv_bfloat16*>(P.xg[cur.l]) + int64_t(tok) * w.tiled_rows + n.it.vrow + 8 * q;
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (u < n.it.units) n.xv[u] = __ldcg(reinterpret_cast<const uint4*>(xg + u * kUnitRows));
    const int S = int((w.out_features + 31) / 32);
    n.codes = __ldg(w.tiled_scale + (int64_t(cur.g) * S + cur.s) * 4 + (g >> 1));
    n.smax = __half2float(__ushort_as_half(__ldg(w.q_scale_max + n.it.stored))) * (1.f / 256.f);
    return n;
  };
  Next cur = prepare(first);
  while (true) {
    if (sl >= 0 && (!cur.valid || cur.at.l != sl || cur.at.s != ss)) {
      finish(sl, ss);
      tiled::zero(acc);
    }
    if (!cur.valid) break;
    sl = cur.at.l, ss = cur.at.s;
    Cursor nc = cur.at;
    advance(P, nc);
    const Next nxt = prepare(nc);
    const Item& it = cur.it;
    const int start = ring_start(at, it.bytes, rb);
    mbar_wait(bars + 8 * uint32_t(consumed % kQueue), uint32_t(consumed / kQueue) & 1u);
    float c[1][2][4];
    tiled::zero(c);
    const auto* slot = reinterpret_cast<const uint32_t*>(ring + start % rb);
    switch (it.bits) {
      case 2: item_products<2>(slot, it.units, cur.xv, c); break;
      case 3: item_products<3>(slot, it.units, cur.xv, c); break;
      case 4: item_products<4>(slot, it.units, cur.xv, c); break;
      case 5: item_products<5>(slot, it.units, cur.xv, c); break;
      case 6: item_products<6>(slot, it.units, cur.xv, c); break;
      default: item_products<8>(slot, it.units, cur.xv, c); break;
    }
    __syncwarp();  // every lane has read the slot
    at = start + it.bytes;
    released = at;
    ++consumed;
    fill();
    const uint32_t codes = cur.codes;
    const float smax = cur.smax;
    // Column 8 j + g of the strip (j = 2 m + e / 2): its code is nibble 2 j + g % 2 of word g / 2.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float code = float(((codes >> (4 * (2 * j + (g & 1)))) & 15u) + 1u);
      const float scale = code * code * smax;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& a = acc[0][j >> 1][2 * (j & 1) + e];
        a = fmaf(c[0][j >> 1][2 * (j & 1) + e], scale, a);
      }
    }
    cur = nxt;
  }
#else
  __trap();  // launched only on compute capability 9+ (exl2_bulk)
#endif
}

// LATHE_EXL2_TUNE="ring=KB,blocks=B" (a measuring aid): a warp's ring in KB, blocks an SM.
struct Tune {
  int ring_kb = exl2_tune("ring=", kDefaultRingBytes / 1024, 1), blocks_per_sm = exl2_tune("blocks=", 1, 1);
};

}  // namespace

void exl2_bulk(Context& ctx, const Exl2MultiParams& p, int64_t t0, int64_t n) {
  if (ctx.exact_matmul) raise(ErrorKind::kInternal, "cuda exl2_bulk: fast mode only (exact mode runs exl2_stream)");
  if (n < 1 || n > kExl2BulkTokens) raise(ErrorKind::kInternal, "cuda exl2_bulk: 1 to 8 tokens a launch");
  if (ctx.cc_major < 9) raise(ErrorKind::kInternal, "cuda exl2_bulk: needs compute capability 9 (bulk copies)");
  static const Tune tune;
  Exl2Batch b{};
  exl2_batch_layers(p, t0, 1, b);
  BulkPlan q{};
  int64_t total = 0, strips = 0, max_item = 0;
  for (int i = 0; i < p.count; ++i) {
    const Exl2View& w = p.w[i];
    if (w.tiled_qrows <= 0) raise(ErrorKind::kInvalidArgument, "cuda matmul_exl2: the layer's tiled_qrows is not set");
    const int64_t sb = w.tiled_qrows * kItemBytesPerQrow, S = w.padded_out() / kStripCols;
    q.base[i] = total;
    q.strip_bytes[i] = int(sb);
    q.strip0[i] = int(strips);
    total += S * sb;
    strips += S;
    max_item = std::max<int64_t>(max_item, w.max_tiled_qrows * kItemBytesPerQrow);
  }
  q.base[p.count] = total;
  // Every share at least one item long (so each warp of a strip owns an item of it).
  const int64_t W = std::clamp<int64_t>(total / std::max<int64_t>(max_item, 1), 1,
                                        int64_t(ctx.sm_count) * kWarps * tune.blocks_per_sm);
  q.warps = int(W);
  // At least two items a ring, so an item always fits once the ones before it are read.
  q.ring_bytes = int(std::max<int64_t>(int64_t(tune.ring_kb) * 1024, 2 * ((max_item + 127) / 128 * 128)));
  size_t partial_bytes = 0;
  for (int i = 0; i < p.count; ++i) {
    q.cmax[i] = int((int64_t(q.strip_bytes[i]) * W + total - 1) / total + 1);
    partial_bytes += sizeof(float) * size_t(p.w[i].padded_out() / kStripCols) * size_t(q.cmax[i]) * size_t(n) * kStripCols;
  }
  auto* part = static_cast<float*>(ctx.scratch(Scratch::kExl2, partial_bytes));
  for (int i = 0; i < p.count; ++i) {
    b.partial[i] = part;
    part += (p.w[i].padded_out() / kStripCols) * q.cmax[i] * n * kStripCols;
  }
  const size_t smem = size_t(kWarps) * size_t(q.ring_bytes + kQueue * 8);
  const size_t limit = ctx.smem_optin > 1024 ? ctx.smem_optin - 1024 : 0;
  if (smem > limit) raise(ErrorKind::kUnsupported, "cuda matmul_exl2: the bulk decode path's ring does not fit");
  // Up to 2 blocks an SM the registers allow as they are; 3 or more take the instance capped at 80.
  auto* kernel = tune.blocks_per_sm >= 3 ? exl2_bulk_kernel<3> : exl2_bulk_kernel<2>;
  static size_t allowed[2] = {48 * 1024, 48 * 1024};
  size_t& ok = allowed[tune.blocks_per_sm >= 3 ? 1 : 0];
  if (smem > ok) {
    LATHE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)));
    ok = limit;
  }
  exl2_gather_activations(ctx, p, t0, int(n), b, false, true);
  int* counters = static_cast<int*>(ctx.zeroed_scratch(Scratch::kCounters, sizeof(int) * size_t(std::max<int64_t>(strips, 1024))));
  launch_pdl(ctx, kernel, dim3(unsigned((W + kWarps - 1) / kWarps)), dim3(kThreads), smem, int(n), b, q, counters);
}

}  // namespace lathe::ops::cuda
