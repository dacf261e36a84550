// Decode attention (flash-decoding) for the CUDA backend: calls whose sequences each bring a few
// queries (rows = queries x group <= kMaxRows per kv head), any K/V cache dtype the backend keeps
// (fp32, bf16, or q8/q4 codes widened in registers), fp32 math. Included by attention.cu only, which routes such calls here.
//
// Why a kernel of its own: at decode the work per (sequence, kv head) is a few rows against the
// cached keys, so time is latency (dependent global round trips), not math or bandwidth. The
// general kernel stages 32-key tiles in shared memory behind barriers, one tile per round trip;
// this one keeps everything in registers:
//  * Grid (kv head, sequence, split). A block's 4 or 8 warps share the split's keys round-robin in
//    chunks of kChunk keys; a lane holds head_dim / 32 consecutive elements of a key (and of the
//    query rows), so one chunk is kChunk independent 8-32 byte loads per lane for K and as many for
//    V, all in flight at once, with their block-table lookups issued before them.
//  * Scores are warp-reduced dot products; each warp keeps an online softmax (m, l, acc) per row;
//    the warps merge through shared memory at the end.
//  * Splits: the host picks a split count from the launch's key bound (the cache capacity when a
//    graph records the step); the kernel divides the sequence's actual key span over them, at least
//    kMinKeys keys each, so short contexts use few splits and idle splits exit at once. With more
//    than one split every block writes its partial (m, l, acc); the last block of a (sequence, kv
//    head) to finish, found with an atomic counter that it resets, merges them: no second launch.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cstdlib>
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/kv_quant.cuh"
#include "ops/cuda/pdl.cuh"

namespace lathe::ops::cuda::attn_dec {

// Warps per block: 8 for up to 4 rows (more loads in flight, fewer rounds per warp), 4 above (the
// per-warp partial states of the final merge must fit 48 KB of static shared memory).
template <int R>
inline constexpr int kWarpsFor = R <= 4 ? 8 : 4;
inline constexpr int kChunk = 8;        // keys per warp per round
inline constexpr int kMinKeys = 64;     // fewest keys a split is given
inline constexpr int kMaxSplits = 128;  // merge weights live in shared memory
inline constexpr int kMaxRows = 16;
// Blocks resident per SM: two where the registers allow it without spilling (bf16 or quantized K/V,
// head_dim <= 128, <= 4 rows: 128 registers a thread), so twice the loads are in flight; one elsewhere.
template <typename KV, int HD, int R>
inline constexpr int kBlocksPerSm = !std::is_same_v<KV, float> && HD <= 128 && R <= 4 ? 2 : 1;
inline int blocks_per_sm(bool narrow, int64_t head_dim, int64_t rows) { return narrow && head_dim <= 128 && rows <= 4 ? 2 : 1; }

struct Args {
  const float* q;
  const void* k;
  const void* v;
  const uint16_t* k_scale;  // quantized caches (KvQ8, KvQ4): the group scales, else null
  const uint16_t* v_scale;
  float* out;          // may be null when out_lowp is set
  uint16_t* out_lowp;  // bf16/f16 copy of out, or null
  bool lowp_bf16;
  float* part_ml;   // [splits][n * n_heads][2]: m (natural-log units), l
  float* part_acc;  // [splits][n * n_heads][head_dim]
  int* counters;    // [num_seqs * n_kv_heads], zero between launches
  int n, n_heads, n_kv_heads, group;
  int window;  // 0: none
  float scale, softcap;
  int splits;
  // Null cu_q: one sequence of n queries and kv_len keys; null table: contiguous rows.
  const int* cu_q;
  const int* kv_lens;
  int kv_len;
  const int* table;
  int block_size, table_stride;
};

// VEC consecutive elements of a K/V row (a lane's share: element `e` of the cache on), held as
// loaded (bf16 stays packed two per register, codes four or eight per register, so a round's K/V,
// and the next round's in flight, take few registers) and widened at use: dot() with the query
// slice, axpy() into the accumulator. A lane's VEC elements lie in one quantization group (VEC
// divides 32), so a quantized slice applies its one scale once per dot / axpy.
template <typename KV, int VEC>
struct KvRaw {
  float f[VEC];
  __device__ __forceinline__ void load(const void* base, const uint16_t*, int64_t e) {
    const float* p = static_cast<const float*>(base) + e;
    if constexpr (VEC == 2) {
      const float2 a = __ldg(reinterpret_cast<const float2*>(p));
      f[0] = a.x, f[1] = a.y;
    } else {
#pragma unroll
      for (int i = 0; i < VEC; i += 4) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(p + i));
        f[i] = a.x, f[i + 1] = a.y, f[i + 2] = a.z, f[i + 3] = a.w;
      }
    }
  }
  __device__ __forceinline__ float at(int i) const { return f[i]; }
  __device__ __forceinline__ float dot(const float (&q)[VEC]) const {
    float d = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) d = fmaf(q[i], f[i], d);
    return d;
  }
  __device__ __forceinline__ void axpy(float p, float (&acc)[VEC]) const {
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = fmaf(p, f[i], acc[i]);
  }
};

template <int VEC>
struct KvRaw<Bf16, VEC> {
  uint32_t w[VEC / 2];
  __device__ __forceinline__ void load(const void* base, const uint16_t*, int64_t e) {
    const Bf16* p = static_cast<const Bf16*>(base) + e;
    if constexpr (VEC == 2) {
      w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
    } else if constexpr (VEC == 4) {
      const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
      w[0] = u.x, w[1] = u.y;
    } else {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
      w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
    }
  }
  __device__ __forceinline__ float at(int i) const { return i % 2 ? bf16_hi(w[i / 2]) : bf16_lo(w[i / 2]); }
  __device__ __forceinline__ float dot(const float (&q)[VEC]) const {
    float d = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) d = fmaf(q[i], at(i), d);
    return d;
  }
  __device__ __forceinline__ void axpy(float p, float (&acc)[VEC]) const {
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = fmaf(p, at(i), acc[i]);
  }
};

// Codes (VEC of 1 or 1/2 byte: at most 8 bytes) and their group's scale.
template <typename KV, int VEC>
  requires kIsQuantKv<KV>
struct KvRaw<KV, VEC> {
  static constexpr bool kQ4 = std::is_same_v<KV, KvQ4>;
  static constexpr int kBytes = kQ4 ? VEC / 2 : VEC;
  uint32_t w[kBytes > 4 ? 2 : 1];
  float s;
  __device__ __forceinline__ void load(const void* base, const uint16_t* scales, int64_t e) {
    const uint8_t* p = static_cast<const uint8_t*>(base) + kv_code_byte<KV>(e);
    if constexpr (kBytes == 1) {
      w[0] = __ldg(p);
    } else if constexpr (kBytes == 2) {
      w[0] = __ldg(reinterpret_cast<const uint16_t*>(p));
    } else if constexpr (kBytes == 4) {
      w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
    } else {
      const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
      w[0] = u.x, w[1] = u.y;
    }
    s = kv_scale_at(scales, e);
  }
  __device__ __forceinline__ float code(int i) const {
    if constexpr (kQ4) return q4_code(w[i / 8], i % 8);
    else return q8_code(w[i / 4], i % 4);
  }
  __device__ __forceinline__ float dot(const float (&q)[VEC]) const {
    float d = 0.f;
#pragma unroll
    for (int i = 0; i < VEC; ++i) d = fmaf(q[i], code(i), d);
    return d * s;
  }
  __device__ __forceinline__ void axpy(float p, float (&acc)[VEC]) const {
    const float ps = p * s;
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = fmaf(ps, code(i), acc[i]);
  }
};

// An online softmax with nothing seen yet: running max -inf, sums and accumulators 0.
template <int R, int N>
__device__ __forceinline__ void empty_state(float (&m)[R], float (&l)[R], float (&acc)[R][N]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int i = 0; i < N; ++i) acc[r][i] = 0.f;
  }
}

// Both decode kernels' loads: the K and V slices (element lane_e on of a position's row) of keys
// j[0..N), positions found through the block table (null: contiguous rows); all addresses first,
// then every load, so they are in flight together.
template <int N, typename Raw>
__device__ __forceinline__ void fetch_keys(const Args& a, const int* table, int64_t kv_row, int64_t lane_e,
                                           const int (&j)[N], Raw (&k)[N], Raw (&v)[N]) {
  int64_t at[N];
#pragma unroll
  for (int u = 0; u < N; ++u)
    at[u] = (table ? int64_t(__ldg(table + j[u] / a.block_size)) * a.block_size + j[u] % a.block_size : int64_t(j[u])) *
                kv_row + lane_e;
#pragma unroll
  for (int u = 0; u < N; ++u) k[u].load(a.k, a.k_scale, at[u]);
#pragma unroll
  for (int u = 0; u < N; ++u) v[u].load(a.v, a.v_scale, at[u]);
}

// What a block of either decode kernel works on: kv head g of sequence s, split z, its query rows
// and the split's key range [s_lo, s_hi).
struct Block {
  int g, s, z, q0, rows, first_pos, s_lo, s_hi;
  __device__ __forceinline__ explicit Block(const Args& a) {
    g = int(blockIdx.x), s = int(blockIdx.y), z = int(blockIdx.z);
    q0 = a.cu_q ? a.cu_q[s] : 0;
    const int nq = a.cu_q ? a.cu_q[s + 1] - q0 : a.n;
    const int kv_len = a.cu_q ? a.kv_lens[s] : a.kv_len;
    rows = nq * a.group;  // <= R (the launcher's bound)
    first_pos = kv_len - nq;
    const int lo = a.window > 0 ? max(0, first_pos - a.window + 1) : 0;
    const int span = max(0, kv_len - lo);
    int per = (span + a.splits - 1) / a.splits;
    per = max(kMinKeys, (per + kWarp - 1) / kWarp * kWarp);
    s_lo = lo + z * per;
    s_hi = min(kv_len, s_lo + per);  // exclusive
  }
  // Whether key j is visible to a row at position p.
  __device__ __forceinline__ bool visible(const Args& a, int j, int p) const {
    return j < s_hi && j <= p && (a.window <= 0 || j > p - a.window);
  }
};

// Both kernels' query rows: N floats of row r (query t = q0 + r / group, head g * group + r %
// group) from element e of the head, zeros for rows past b.rows; pos[r] is the row's position
// (-1 past the end, so no key is visible to it).
template <int R, int N>
__device__ __forceinline__ void load_queries(const Args& a, const Block& b, int HD, int e, float (&q)[R][N],
                                             int (&pos)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    pos[r] = -1;
#pragma unroll
    for (int i = 0; i < N; ++i) q[r][i] = 0.f;
    if (r < b.rows) {
      const int t = b.q0 + r / a.group, h = b.g * a.group + r % a.group;
      KvRaw<float, N> qr;
      qr.load(a.q, nullptr, (int64_t(t) * a.n_heads + h) * HD + e);
#pragma unroll
      for (int i = 0; i < N; ++i) q[r][i] = qr.at(i);
      pos[r] = b.first_pos + r / a.group;
    }
  }
}

// The merge both kernels end with, once every warp has put its state (m, l per row; acc per row
// and dim) into shared memory and the block has synchronised: warps merged one thread per (row,
// dim); with one split, the output; else the split's partial, and the last block of a (sequence,
// kv head) to finish (an atomic counter it resets) merges all splits.
template <int HD, int R, int kWarps>
__device__ __forceinline__ void merge_and_store(const Args& a, const Block& b, const float (&sm_m)[kWarps][R],
                                                const float (&sm_l)[kWarps][R], const float (&sm_acc)[kWarps][R][HD]) {
  constexpr int kThreads = kWarps * kWarp;
  __shared__ float sm_w[R][kMaxSplits];
  __shared__ int sm_last;
  const int lane = int(threadIdx.x) % kWarp, warp = int(threadIdx.x) / kWarp;
  const int g = b.g, s = b.s, z = b.z, q0 = b.q0, rows = b.rows;

  for (int idx = int(threadIdx.x); idx < rows * HD; idx += kThreads) {
    const int r = idx / HD, d = idx % HD;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][r]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float e = __expf(sm_m[w][r] - M);
        L = fmaf(sm_l[w][r], e, L);
        O = fmaf(sm_acc[w][r][d], e, O);
      }
    }
    const int t = q0 + r / a.group, h = g * a.group + r % a.group;
    const int64_t row = int64_t(t) * a.n_heads + h;
    if (a.splits == 1) {
      store_out(a.out, a.out_lowp, a.lowp_bf16, row * HD + d, L > 0.f ? O / L : 0.f);
    } else {
      const int64_t prow = int64_t(z) * a.n * a.n_heads + row;
      a.part_acc[prow * HD + d] = O;
      if (d == 0) a.part_ml[prow * 2] = M, a.part_ml[prow * 2 + 1] = L;
    }
  }
  if (a.splits == 1) return;

  // The last split block of this (sequence, kv head) merges all partials.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = a.counters + int64_t(s) * a.n_kv_heads + g;
    const int done = atomicAdd(counter, 1);
    sm_last = done == a.splits - 1;
    if (sm_last) *counter = 0;  // ready for the next launch (or graph replay)
  }
  __syncthreads();
  if (!sm_last) return;
  __threadfence();
  const int64_t stride = int64_t(a.n) * a.n_heads;
  for (int r = warp; r < rows; r += kWarps) {
    const int t = q0 + r / a.group, h = g * a.group + r % a.group;
    const int64_t row = int64_t(t) * a.n_heads + h;
    float M = -INFINITY;
    for (int zz = lane; zz < a.splits; zz += kWarp) M = fmaxf(M, __ldcg(a.part_ml + (zz * stride + row) * 2));
    M = warp_max(M);
    float L = 0.f;
    for (int zz = lane; zz < a.splits; zz += kWarp) {
      const float mz = __ldcg(a.part_ml + (zz * stride + row) * 2);
      const float e = mz == -INFINITY ? 0.f : __expf(mz - M);
      sm_w[r][zz] = e;
      L = fmaf(__ldcg(a.part_ml + (zz * stride + row) * 2 + 1), e, L);
    }
    L = warp_sum(L);
    __syncwarp();
    const float inv = L > 0.f ? 1.f / L : 0.f;
    // Independent loads (no branch on the weight, unrolled) so many are in flight at once; splits
    // that saw no key wrote zeros with weight 0.
    for (int d = lane; d < HD; d += kWarp) {
      float O = 0.f;
#pragma unroll 8
      for (int zz = 0; zz < a.splits; ++zz) O = fmaf(__ldcg(a.part_acc + (zz * stride + row) * HD + d), sm_w[r][zz], O);
      store_out(a.out, a.out_lowp, a.lowp_bf16, row * HD + d, O * inv);
    }
  }
}

template <typename KV, int HD, int R>
__global__ void __launch_bounds__(kWarpsFor<R> * kWarp, kBlocksPerSm<KV, HD, R>) decode_kernel(const Args a) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  constexpr int kWarps = kWarpsFor<R>;
  constexpr int VEC = HD / kWarp;
  __shared__ float sm_m[kWarps][R], sm_l[kWarps][R];
  __shared__ float sm_acc[kWarps][R][HD];
  const Block blk(a);
  const int g = blk.g, s = blk.s, q0 = blk.q0, rows = blk.rows, first_pos = blk.first_pos;
  const int s_lo = blk.s_lo, s_hi = blk.s_hi;
  const int lane = int(threadIdx.x) % kWarp, warp = int(threadIdx.x) / kWarp;

  float q[R][VEC];
  int pos[R];
  load_queries(a, blk, HD, lane * VEC, q, pos);
  float m[R], l[R], acc[R][VEC];
  empty_state(m, l, acc);

  const int64_t kv_row = int64_t(a.n_kv_heads) * HD;
  const int64_t lane_e = int64_t(g) * HD + lane * VEC;  // the lane's first element of a position's row
  const int* table = a.table ? a.table + int64_t(s) * a.table_stride : nullptr;

  // Software pipeline: the next round's K/V loads are issued before this round's math.
  using Raw = KvRaw<KV, VEC>;
  const auto fetch = [&](int j0, Raw (&kf)[kChunk], Raw (&vf)[kChunk]) {
    int j[kChunk];
#pragma unroll
    for (int u = 0; u < kChunk; ++u) j[u] = min(j0 + u, s_hi - 1);  // past the end: the last key again, masked below
    fetch_keys(a, table, kv_row, lane_e, j, kf, vf);
  };
  Raw kf[kChunk], vf[kChunk], kn[kChunk], vn[kChunk];
  int j0 = s_lo + warp * kChunk;
  if (j0 < s_hi) fetch(j0, kf, vf);
  for (; j0 < s_hi; j0 += kWarps * kChunk) {
    const bool more = j0 + kWarps * kChunk < s_hi;
    if (more) fetch(j0 + kWarps * kChunk, kn, vn);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r >= rows) break;  // warp-uniform
      float sc[kChunk];
      float mx = -INFINITY;
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        float d = warp_sum(kf[u].dot(q[r])) * a.scale;
        if (a.softcap > 0.f) d = a.softcap * tanhf(d / a.softcap);
        const int j = j0 + u;
        const bool visible = blk.visible(a, j, pos[r]);
        sc[u] = visible ? d : -INFINITY;
        mx = fmaxf(mx, sc[u]);
      }
      const float m_new = fmaxf(m[r], mx);
      if (m_new == -INFINITY) continue;  // nothing visible to this row yet
      const float corr = __expf(m[r] - m_new);  // m = -inf: 0 (acc and l are 0 then anyway)
      l[r] *= corr;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[r][i] *= corr;
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        const float p = __expf(sc[u] - m_new);
        l[r] += p;
        vf[u].axpy(p, acc[r]);
      }
      m[r] = m_new;
    }
    if (more) {
#pragma unroll
      for (int u = 0; u < kChunk; ++u) kf[u] = kn[u], vf[u] = vn[u];
    }
  }

  // Merge the warps: every warp's state to shared memory, then one thread per (row, dim).
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r >= rows) break;
    if (lane == 0) sm_m[warp][r] = m[r], sm_l[warp][r] = l[r];
#pragma unroll
    for (int i = 0; i < VEC; ++i) sm_acc[warp][r][lane * VEC + i] = acc[r][i];
  }
  __syncthreads();
  merge_and_store<HD, R, kWarps>(a, blk, sm_m, sm_l, sm_acc);
}

// ---- key-parallel decode kernel (bf16 and quantized caches, <= 4 rows) ---------------------------
//
// The kernel above gives each lane head_dim / 32 elements of one key, so every (row, key) score is
// a 5-shuffle warp reduction and every lane widens every element of every key once per row: at
// long contexts its cost is instructions per key (~35 per row and key), not bytes, and a quantized
// cache, with 2-4x fewer bytes a key, ran no faster (bench/RESULTS.md). Here kKpElems = 16
// consecutive elements of a key sit in one lane, so G = head_dim / 16 lanes share a key and a
// warp takes 32 / G keys per load: a score is a log2(G)-shuffle reduction inside the lane group,
// K and V are widened once per key (not per row) and reused by every row, and the softmax of a key
// is computed by its own group only. Each group keeps its own l and accumulator (the running max m
// is warp-uniform, so the groups' states share one base) and the groups are added once at the end.
inline constexpr int kKpElems = 16;
inline constexpr int kKpWarps = 8;
inline constexpr int kKpRows = 4;

// 16 consecutive K/V elements of a lane as loaded, widened to float, and the factor the widened
// values still need (a quantized group's scale, applied once per score and per weight p instead
// of once per element).
template <typename KV>
struct KpRaw;
template <>
struct KpRaw<Bf16> {
  __device__ __forceinline__ float scale() const { return 1.f; }
  uint4 w[2];
  __device__ __forceinline__ void load(const void* base, const uint16_t*, int64_t e) {
    const uint4* p = reinterpret_cast<const uint4*>(static_cast<const Bf16*>(base) + e);
    w[0] = __ldg(p), w[1] = __ldg(p + 1);
  }
  __device__ __forceinline__ void widen(float (&f)[kKpElems]) const {
    const uint32_t u[8] = {w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w};
#pragma unroll
    for (int i = 0; i < 8; ++i) f[2 * i] = bf16_lo(u[i]), f[2 * i + 1] = bf16_hi(u[i]);
  }
};
// Codes widen without an integer-to-float conversion (a quarter-rate instruction): a code's bits
// under the exponent of 2^23 make the float 2^23 + bits exactly, and one subtraction leaves the
// code (q8: the byte's sign bit flipped first, so bits = code + 128).
template <>
struct KpRaw<KvQ8> {
  uint4 w;
  float s;
  __device__ __forceinline__ float scale() const { return s; }
  __device__ __forceinline__ void load(const void* base, const uint16_t* scales, int64_t e) {
    w = __ldg(reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(base) + e));
    s = kv_scale_at(scales, e);
  }
  __device__ __forceinline__ void widen(float (&f)[kKpElems]) const {
    const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      // Byte i % 4 of u[i / 4] into the low byte of 0x4B000000 (byte_perm selector: byte 0 from x,
      // bytes 1-3 from y = 0x4B000000), its sign bit flipped: 2^23 + code + 128.
      const uint32_t b = __byte_perm(u[i / 4], 0x4B000000u, 0x7650u | uint32_t(i % 4)) ^ 0x80u;
      f[i] = __uint_as_float(b) - 8388736.f;  // 2^23 + 128
    }
  }
};
template <>
struct KpRaw<KvQ4> {
  uint2 w;
  float s;
  __device__ __forceinline__ float scale() const { return s; }
  __device__ __forceinline__ void load(const void* base, const uint16_t* scales, int64_t e) {
    w = __ldg(reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(base) + e / 2));
    s = kv_scale_at(scales, e);
  }
  __device__ __forceinline__ void widen(float (&f)[kKpElems]) const {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t n = ((i < 8 ? w.x : w.y) >> (4 * (i % 8))) & 15u;  // code + 8
      f[i] = __uint_as_float(n | 0x4B000000u) - 8388616.f;             // 2^23 + 8
    }
  }
};

// Keys a warp takes per round: 8 for bf16 and q8 (two or one 16-byte loads a lane per key), 16
// for q4 (8 bytes a key: more keys keep as many bytes in flight). More spills registers.
template <typename KV>
inline constexpr int kKpKeysPerRound = std::is_same_v<KV, KvQ4> ? 16 : 8;

template <typename KV, int HD>
__global__ void __launch_bounds__(kKpWarps * kWarp, 1) decode_kp_kernel(const Args a) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  constexpr int R = kKpRows, E = kKpElems, G = HD / E, KPS = kWarp / G;  // lanes a key, keys a load step
  constexpr int KPR = kKpKeysPerRound<KV>, U = KPR / KPS;                // keys a round, load steps a round
  static_assert(KPR % KPS == 0 && G >= 4 && G <= kWarp / 2, "head_dim 64 or 128");
  __shared__ float sm_m[kKpWarps][R], sm_l[kKpWarps][R];
  __shared__ float sm_acc[kKpWarps][R][HD];
  const Block blk(a);
  const int lane = int(threadIdx.x) % kWarp, warp = int(threadIdx.x) / kWarp;
  const int gi = lane / G, li = lane % G;  // key slot of the step, element chunk of the key

  float q[R][E];
  int pos[R];
  load_queries(a, blk, HD, li * E, q, pos);
  float m[R], l[R], acc[R][E];
  empty_state(m, l, acc);

  const int64_t kv_row = int64_t(a.n_kv_heads) * HD;
  const int64_t lane_e = int64_t(blk.g) * HD + li * E;
  const int* table = a.table ? a.table + int64_t(blk.s) * a.table_stride : nullptr;
  using Raw = KpRaw<KV>;
  const auto fetch = [&](int j0, Raw (&kr)[U], Raw (&vr)[U]) {
    int j[U];
#pragma unroll
    for (int u = 0; u < U; ++u) j[u] = min(j0 + u * KPS + gi, blk.s_hi - 1);  // past the end: masked
    fetch_keys(a, table, kv_row, lane_e, j, kr, vr);
  };
  Raw kr[U], vr[U], kn[U], vn[U];
  int j0 = blk.s_lo + warp * KPR;
  if (j0 < blk.s_hi) fetch(j0, kr, vr);
  for (; j0 < blk.s_hi; j0 += kKpWarps * KPR) {
    const bool more = j0 + kKpWarps * KPR < blk.s_hi;
    if (more) fetch(j0 + kKpWarps * KPR, kn, vn);
    // Scores: partial dots over the lane's 16 elements, then added inside the lane group.
    float sc[R][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[E];
      kr[u].widen(kf);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < E; ++i) d = fmaf(q[r][i], kf[i], d);
        sc[r][u] = d * kr[u].scale();
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) sc[r][u] += __shfl_xor_sync(0xffffffffu, sc[r][u], o);
    float p[R][U];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float d = sc[r][u] * a.scale;
        if (a.softcap > 0.f) d = a.softcap * tanhf(d / a.softcap);
        const bool vis = r < blk.rows && blk.visible(a, j0 + u * KPS + gi, pos[r]);
        sc[r][u] = vis ? d : -INFINITY;
        mx = fmaxf(mx, sc[r][u]);
      }
#pragma unroll
      for (int o = G; o < kWarp; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m[r], mx);
      const float base = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: any finite base
      const float corr = __expf(m[r] - base);               // m = -inf: 0 (l and acc are 0 then)
      m[r] = m_new;
      l[r] *= corr;
#pragma unroll
      for (int i = 0; i < E; ++i) acc[r][i] *= corr;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        p[r][u] = __expf(sc[r][u] - base);
        l[r] += p[r][u];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vf[E];
      vr[u].widen(vf);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float ps = p[r][u] * vr[u].scale();
#pragma unroll
        for (int i = 0; i < E; ++i) acc[r][i] = fmaf(ps, vf[i], acc[r][i]);
      }
    }
    if (more) {
#pragma unroll
      for (int u = 0; u < U; ++u) kr[u] = kn[u], vr[u] = vn[u];
    }
  }

  // Add the lane groups' states (they share the base m), then the warp's state to shared memory.
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r >= blk.rows) break;
#pragma unroll
    for (int o = G; o < kWarp; o <<= 1) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], o);
#pragma unroll
      for (int i = 0; i < E; ++i) acc[r][i] += __shfl_xor_sync(0xffffffffu, acc[r][i], o);
    }
    if (lane == 0) sm_m[warp][r] = m[r], sm_l[warp][r] = l[r];
    if (gi == 0) {
#pragma unroll
      for (int i = 0; i < E; ++i) sm_acc[warp][r][li * E + i] = acc[r][i];
    }
  }
  __syncthreads();
  merge_and_store<HD, R, kKpWarps>(a, blk, sm_m, sm_l, sm_acc);
}

// Whether the key-parallel kernel takes a call: bf16 or quantized K/V, head_dim 64 or 128 (256
// would spill its registers), <= kKpRows rows a kv head. LATHE_DECODE_KP=0 keeps every call on
// decode_kernel (for A/B measurements).
inline bool use_key_parallel(bool narrow_kv, int64_t head_dim, int64_t rows) {
  static const bool on = [] {
    const char* e = std::getenv("LATHE_DECODE_KP");
    return !(e && e[0] == '0');
  }();
  return on && narrow_kv && (head_dim == 64 || head_dim == 128) && rows <= kKpRows;
}

inline int max_rows(int64_t head_dim) { return head_dim == 256 ? 8 : kMaxRows; }

inline bool supports_head_dim(int64_t head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

template <typename KV, int HD>
void launch_hd(const Context& ctx, const Args& a, dim3 grid, int rows) {
  if (rows <= 4) {
    launch_pdl(ctx, decode_kernel<KV, HD, 4>, dim3(grid), dim3(kWarpsFor<4> * kWarp), 0, a);
  } else if constexpr (HD == 256) {
    launch_pdl(ctx, decode_kernel<KV, HD, 8>, dim3(grid), dim3(kWarpsFor<8> * kWarp), 0, a);
  } else {
    launch_pdl(ctx, decode_kernel<KV, HD, kMaxRows>, dim3(grid), dim3(kWarpsFor<kMaxRows> * kWarp), 0, a);
  }
  LATHE_CUDA_CHECK_LAUNCH("attention decode_kernel");
}

template <typename KV>
void launch(const Context& ctx, const Args& a, dim3 grid, int rows, int head_dim) {
  if constexpr (!std::is_same_v<KV, float>) {
    if (use_key_parallel(true, head_dim, rows)) {
      if (head_dim == 64)
        launch_pdl(ctx, decode_kp_kernel<KV, 64>, dim3(grid), dim3(kKpWarps * kWarp), 0, a);
      else
        launch_pdl(ctx, decode_kp_kernel<KV, 128>, dim3(grid), dim3(kKpWarps * kWarp), 0, a);
      LATHE_CUDA_CHECK_LAUNCH("attention decode_kp_kernel");
      return;
    }
  }
  switch (head_dim) {
    case 64: return launch_hd<KV, 64>(ctx, a, grid, rows);
    case 128: return launch_hd<KV, 128>(ctx, a, grid, rows);
    case 256: return launch_hd<KV, 256>(ctx, a, grid, rows);
    default: raise(ErrorKind::kInternal, "cuda attention (decode): head_dim ", head_dim, " has no instance");
  }
}

}  // namespace lathe::ops::cuda::attn_dec
