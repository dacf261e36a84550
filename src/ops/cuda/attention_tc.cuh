// Tensor-core prefill attention (bf16 mma.sync, fp32 accumulation) for the CUDA backend's fast mode.
// Included by attention.cu only, which routes to it (see attention() there) and owns the split-KV
// combine; this header holds the kernel and its launcher.
//
// Same contract as the fp32 kernel (ops.h AttentionParams: causal, GQA/MQA, sliding window, softcap),
// FlashAttention-2 style:
//  * Rows. As in the fp32 kernel, the rows of kv head g are the (query t, head h in g's group) pairs,
//    rho = t * group + (h - g * group), so one block's K/V tiles serve every query head that reads
//    them. A block is 8 warps x 16 rows = 128 rows; a warp's 16 rows are the M of m16n8k16.
//    128 rows (rather than 64) per block halves the fp32 K/V bytes pulled from L2 per flop: with
//    fp32 caches that traffic, not the tensor cores, is what limits a 64-row block.
//  * Staging. Q is fp32; K and V are the cache's dtype (fp32, or bf16 in the backend's fast mode).
//    fp32 is rounded to bf16 on the way into shared memory (16-byte global loads, cvt to bf16x2,
//    8-byte shared stores); bf16 goes in as it is (16-byte loads and stores), half the bytes pulled
//    through L2 per tile. K/V tiles are double-buffered through registers: the next tile's K is
//    loaded from global before this tile's Q K^T and stored after it, its V loaded before the
//    softmax and stored after P V, so the loads are in flight while the tensor cores work; one
//    barrier per tile.
//  * Fragments. Shared-memory rows are padded by 8 bf16 (16 bytes) so ldmatrix's 8 row addresses
//    fall in distinct banks. Q fragments (A) stay in registers for head_dim <= 128; K fragments (B of
//    S = Q K^T, "col" = K row-major) come from ldmatrix, V fragments (B of O = P V) from
//    ldmatrix.trans. S's accumulator layout is exactly the A layout of the next mma, so P goes from
//    fp32 registers to bf16 A fragments with no shared-memory round trip.
//  * Softmax. Online, in registers, in base 2 (exp2 of score * scale * log2 e); each thread holds 2
//    rows x 16 keys of a tile and reduces row maxima across its quad; the row sums stay per thread
//    until the end. Only tiles crossing the causal diagonal or the window's lower edge are masked;
//    tiles entirely above the diagonal or below the window are never visited. A row with no visible
//    key yet keeps m = -inf and uses 0 as its exponent base, so no (-inf) - (-inf) NaN can appear.
//  * Splits. Like the fp32 kernel, a launch may split each block's key range over gridDim.z; then it
//    writes (m, l) in natural-log units and the unnormalised accumulator, in the fp32 kernel's
//    partial layout, and attention.cu's combine kernel merges them.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/kv_quant.cuh"

namespace lathe::ops::cuda::attn_tc {

inline constexpr int kWarps = 8;
inline constexpr int kThreads = kWarps * kWarp;
inline constexpr int kRows = kWarps * 16;  // query rows per block
inline constexpr int kPad = 8;             // bf16 per shared-memory row beyond head_dim

struct Args {
  const float* q;
  const void* k;  // float, Bf16, or KvQ8 / KvQ4 codes (the kernel's KV parameter)
  const void* v;
  const uint16_t* k_scale;  // quantized caches: the group scales, else null
  const uint16_t* v_scale;
  float* out;          // may be null when out_lowp is set
  uint16_t* out_lowp;  // bf16/f16 copy of out, or null
  bool lowp_bf16;
  float* part_ml;   // [splits][n * n_heads][2] (split runs only)
  float* part_acc;  // [splits][n * n_heads][head_dim] (split runs only)
  int n, kv_len, n_heads, n_kv_heads, group;
  int window;       // 0: none
  float scale, softcap;
  int splits, keys_per_split;  // keys_per_split is a multiple of the key tile
  // Sequences and paging, as in attention.cu's AttnArgs (null cu_q: one sequence; null table:
  // contiguous rows); each sequence has seq_blocks row blocks in gridDim.y.
  const int* cu_q;
  const int* kv_lens;
  int seq_blocks;
  const int* table;
  int block_size, table_stride;
};

// Per-head_dim shape: key tile and whether Q fragments live in registers.
template <int HD>
struct Shape {
  static constexpr int kKeys = HD > 128 ? 32 : 64;  // head_dim 256: a smaller tile keeps O + S in registers
  static constexpr int kStride = HD + kPad;          // bf16 per shared row
  static constexpr bool kQInRegs = HD <= 128;
  static constexpr size_t kSmemBytes = sizeof(uint16_t) * size_t(kStride) * (kRows + 4 * kKeys);  // Q, 2 K, 2 V
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// bf16x2 of (lo, hi), round to nearest even; lo in the low half (the lower column / k index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  uint32_t u;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(u) : "f"(hi), "f"(lo));
  return u;
}

// Shared-memory accesses are all volatile asm, so the compiler keeps them in program order with
// each other and with the barriers that separate a tile's writers from its readers.
__device__ __forceinline__ void st_shared_v2(uint32_t addr, uint32_t x, uint32_t y) {
  asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(addr), "r"(x), "r"(y));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a (16x16, row) * b (16x8, col); bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// How a K/V tile of element type KV travels: raw vectors of kElems elements per load (16 bytes of
// fp32 or bf16; 16 codes of a quantized cache, 16 or 8 bytes, with their group's scale).
template <typename KV>
struct TileRaw {
  using Raw = float4;
  static constexpr int kElems = 4;
  __device__ static Raw load(const void* base, const uint16_t*, int64_t e) {
    return __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(base) + e));
  }
};
template <>
struct TileRaw<Bf16> {
  using Raw = uint4;
  static constexpr int kElems = 8;
  __device__ static Raw load(const void* base, const uint16_t*, int64_t e) {
    return __ldg(reinterpret_cast<const uint4*>(static_cast<const Bf16*>(base) + e));
  }
};
struct QuantRaw {
  uint4 c;  // KvQ8: 16 codes; KvQ4: 16 codes in c.x, c.y
  float s;
};
template <>
struct TileRaw<KvQ8> {
  using Raw = QuantRaw;
  static constexpr int kElems = 16;
  __device__ static Raw load(const void* base, const uint16_t* scales, int64_t e) {
    return {__ldg(reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(base) + e)), kv_scale_at(scales, e)};
  }
};
template <>
struct TileRaw<KvQ4> {
  using Raw = QuantRaw;
  static constexpr int kElems = 16;
  __device__ static Raw load(const void* base, const uint16_t* scales, int64_t e) {
    const uint2 c = __ldg(reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(base) + e / 2));
    return {make_uint4(c.x, c.y, 0u, 0u), kv_scale_at(scales, e)};
  }
};
template <typename KV, int HD>
inline constexpr int kTileLoads = Shape<HD>::kKeys * HD / TileRaw<KV>::kElems / kThreads;  // per thread

// Global rows -> registers: thread i of the block takes vectors i, i + kThreads, ... of the
// [kKeys, HD] tile starting at key j0 (row-major, so a warp reads contiguous 512-byte runs). Keys past
// `last` (the block's last needed key: beyond it the cache may end) read as zeros, which the causal
// mask hides. Position j of sequence s is found through the block table when there is one.
// base/scales: the cache (element `head0` starts this kv head's slice of position 0).
template <typename KV, int HD>
__device__ __forceinline__ void load_tile(typename TileRaw<KV>::Raw (&r)[kTileLoads<KV, HD>], const Args& a, int s,
                                          const void* base, const uint16_t* scales, int64_t head0, int64_t row_stride,
                                          int j0, int last) {
  using Raw = typename TileRaw<KV>::Raw;
  constexpr int kE = TileRaw<KV>::kElems;
  constexpr int kVecs = HD / kE;  // vectors per row
#pragma unroll
  for (int i = 0; i < kTileLoads<KV, HD>; ++i) {
    const int idx = int(threadIdx.x) + i * kThreads;
    const int j = j0 + idx / kVecs;
    int64_t row = j;
    if (a.table && j <= last)
      row = int64_t(__ldg(a.table + int64_t(s) * a.table_stride + j / a.block_size)) * a.block_size + j % a.block_size;
    if (j <= last) {
      r[i] = TileRaw<KV>::load(base, scales, row * row_stride + head0 + kE * (idx % kVecs));
    } else {
      r[i] = Raw{};
    }
  }
}

// 16 codes of a quantized tile vector, widened and scaled, as 8 bf16 pairs.
template <typename KV>
__device__ __forceinline__ void widen_codes(const QuantRaw& r, uint32_t (&out)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    float lo, hi;
    if constexpr (std::is_same_v<KV, KvQ8>) {
      const uint32_t w = i < 2 ? r.c.x : i < 4 ? r.c.y : i < 6 ? r.c.z : r.c.w;
      lo = q8_code(w, 2 * (i % 2)), hi = q8_code(w, 2 * (i % 2) + 1);
    } else {
      const uint32_t w = i < 4 ? r.c.x : r.c.y;
      lo = q4_code(w, 2 * (i % 4)), hi = q4_code(w, 2 * (i % 4) + 1);
    }
    out[i] = pack_bf16(lo * r.s, hi * r.s);
  }
}

// Registers -> bf16 shared tile (same element order as load_tile).
template <typename KV, int HD>
__device__ __forceinline__ void store_tile(uint32_t tile, const typename TileRaw<KV>::Raw (&r)[kTileLoads<KV, HD>]) {
  constexpr int kE = TileRaw<KV>::kElems;
  constexpr int kVecs = HD / kE;
#pragma unroll
  for (int i = 0; i < kTileLoads<KV, HD>; ++i) {
    const int idx = int(threadIdx.x) + i * kThreads;
    const uint32_t at = tile + 2u * uint32_t((idx / kVecs) * Shape<HD>::kStride + kE * (idx % kVecs));
    if constexpr (kIsQuantKv<KV>) {
      uint32_t w[8];
      widen_codes<KV>(r[i], w);
      asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(at), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]));
      asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(at + 16u), "r"(w[4]), "r"(w[5]), "r"(w[6]),
                   "r"(w[7]));
    } else if constexpr (kE == 4) {
      st_shared_v2(at, pack_bf16(r[i].x, r[i].y), pack_bf16(r[i].z, r[i].w));
    } else {
      asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(at), "r"(r[i].x), "r"(r[i].y), "r"(r[i].z),
                   "r"(r[i].w));
    }
  }
}

// One block per SM: ptxas schedules ldmatrix far ahead and takes ~180-255 registers; capping
// head_dim 64 at 128 (two blocks per SM) made it spill.
template <int HD, typename KV>
__global__ void __launch_bounds__(kThreads, 1) attention_tc_kernel(const Args a) {
  using S = Shape<HD>;
  constexpr int BN = S::kKeys;
  constexpr int KS = S::kStride;
  constexpr uint32_t kRowBytes = 2u * KS;
  constexpr uint32_t kTileBytes = kRowBytes * BN;
  constexpr float kLog2e = 1.4426950408889634f;

  extern __shared__ uint4 smem_tc[];  // uint4: 16-byte alignment for ldmatrix rows
  const uint32_t q_sm = smem_addr(smem_tc);
  const uint32_t k_sm = q_sm + kRowBytes * kRows;  // two K tiles, then two V tiles
  const uint32_t v_sm = k_sm + 2 * kTileBytes;

  const int tid = int(threadIdx.x);
  const int lane = tid % kWarp, warp = tid / kWarp;
  const int g = int(blockIdx.x);                           // kv head
  const int bi = int(gridDim.y) - 1 - int(blockIdx.y);     // later (longer) row blocks start first
  const int seq = a.cu_q ? bi / a.seq_blocks : 0;
  const int rb = bi % a.seq_blocks;
  const int q0 = a.cu_q ? a.cu_q[seq] : 0;
  const int n_seq = a.cu_q ? a.cu_q[seq + 1] - q0 : a.n;
  const int kv_seq = a.cu_q ? a.kv_lens[seq] : a.kv_len;
  const int rows_per_kv = n_seq * a.group;
  const int split = int(blockIdx.z);
  const int row_base = rb * kRows;
  if (row_base >= rows_per_kv) return;  // a shorter sequence of the batch: no rows here
  const int first_q = kv_seq - n_seq;  // position of the sequence's first query

  // Keys this block may see: from its first row's window start to its last row's own position;
  // this split's share starts at a tile boundary.
  const int last_row = min(row_base + kRows, rows_per_kv) - 1;
  const int first_pos = first_q + row_base / a.group;
  const int last_pos = first_q + last_row / a.group;
  const int lo = a.window > 0 ? max(0, first_pos - a.window + 1) : 0;
  const int s_lo = lo / BN * BN + split * a.keys_per_split;
  const int s_hi = min(last_pos, s_lo + a.keys_per_split - 1);  // inclusive
  const int n_tiles = s_hi >= s_lo ? (s_hi - s_lo) / BN + 1 : 0;

  // This thread's two rows (quad row gq and gq + 8 of the warp's 16). Padding rows past the last
  // real row duplicate it: finite, never stored.
  const int gq = lane / 4, cq = lane % 4;
  int pos[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) pos[r] = first_q + min(row_base + warp * 16 + gq + 8 * r, rows_per_kv - 1) / a.group;

  const int64_t kv_row = int64_t(a.n_kv_heads) * HD;  // elements between consecutive positions
  const int64_t head0 = int64_t(g) * HD;
  using Raw = typename TileRaw<KV>::Raw;

  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  // exp2 multiplier of a (possibly soft-capped) score; softcap already applies the scale.
  const float mult = a.softcap > 0.f ? kLog2e : a.scale * kLog2e;

  if (n_tiles > 0) {
    // Q rows -> bf16 shared memory.
    {
      constexpr int kQuads = HD / 4;
      for (int i = tid; i < kRows * kQuads; i += kThreads) {
        const int lr = i / kQuads, d4 = i % kQuads;
        const int rho = min(row_base + lr, rows_per_kv - 1);
        const int t = q0 + rho / a.group, h = g * a.group + rho % a.group;
        const float4 x = __ldg(reinterpret_cast<const float4*>(a.q + (int64_t(t) * a.n_heads + h) * HD) + d4);
        st_shared_v2(q_sm + 2u * uint32_t(lr * KS + 4 * d4), pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
      }
    }
    {
      Raw st[kTileLoads<KV, HD>];
      load_tile<KV, HD>(st, a, seq, a.k, a.k_scale, head0, kv_row, s_lo, s_hi);
      store_tile<KV, HD>(k_sm, st);
      load_tile<KV, HD>(st, a, seq, a.v, a.v_scale, head0, kv_row, s_lo, s_hi);
      store_tile<KV, HD>(v_sm, st);
    }
    __syncthreads();

    // Per-lane ldmatrix offsets (matrix mi = lane / 8 gets the row addresses of lanes 8 mi .. 8 mi + 7).
    const int mi = lane / 8, mr = lane % 8;
    // Q (A, 16x16): matrices = (rows 0-7 | 8-15) x (k 0-7 | 8-15), a0..a3 order.
    const uint32_t q_lane = q_sm + kRowBytes * uint32_t(warp * 16 + mr + 8 * (mi & 1)) + 16u * uint32_t(mi >> 1);
    // K (B of two n8 blocks): matrices = keys 0-7 (k 0-7, 8-15), keys 8-15 (k 0-7, 8-15).
    const uint32_t k_lane = kRowBytes * uint32_t(mr + 8 * (mi >> 1)) + 16u * uint32_t(mi & 1);
    // V (B of two n8 dim blocks, transposed): matrices = dims 0-7 (keys 0-7, 8-15), dims 8-15 (...).
    const uint32_t v_lane = kRowBytes * uint32_t(mr + 8 * (mi & 1)) + 16u * uint32_t(mi >> 1);

    uint32_t qf[S::kQInRegs ? HD / 16 : 1][4];
    if constexpr (S::kQInRegs) {
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks) ldsm_x4(qf[ks], q_lane + 32u * ks);
    }

    for (int it = 0; it < n_tiles; ++it) {
      const int j0 = s_lo + it * BN;
      const uint32_t buf = uint32_t(it & 1);
      const bool more = it + 1 < n_tiles;
      const uint32_t k_cur = k_sm + buf * kTileBytes, k_next = k_sm + (buf ^ 1u) * kTileBytes;
      const uint32_t v_cur = v_sm + buf * kTileBytes, v_next = v_sm + (buf ^ 1u) * kTileBytes;

      Raw st[kTileLoads<KV, HD>];
      if (more) load_tile<KV, HD>(st, a, seq, a.k, a.k_scale, head0, kv_row, j0 + BN, s_hi);

      // S = Q K^T for the warp's 16 rows x BN keys.
      float s[BN / 8][4];
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks) {
        uint32_t qa[4];
        if constexpr (S::kQInRegs) {
          qa[0] = qf[ks][0], qa[1] = qf[ks][1], qa[2] = qf[ks][2], qa[3] = qf[ks][3];
        } else {
          ldsm_x4(qa, q_lane + 32u * ks);
        }
#pragma unroll
        for (int np = 0; np < BN / 16; ++np) {
          uint32_t kb[4];
          ldsm_x4(kb, k_cur + k_lane + kRowBytes * 16u * np + 32u * ks);
          mma_bf16(s[2 * np], qa, kb[0], kb[1]);
          mma_bf16(s[2 * np + 1], qa, kb[2], kb[3]);
        }
      }
      if (more) {
        store_tile<KV, HD>(k_next, st);
        load_tile<KV, HD>(st, a, seq, a.v, a.v_scale, head0, kv_row, j0 + BN, s_hi);
      }

      // Soft-capping acts on scaled scores, before masking (the reference's order).
      if (a.softcap > 0.f) {
        const float in = a.scale / a.softcap;
#pragma unroll
        for (int i = 0; i < BN / 8; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[i][e] = a.softcap * tanhf(s[i][e] * in);
      }
      // Mask only tiles that reach past the block's first position or below its last row's window.
      const bool edge = j0 + BN - 1 > first_pos || (a.window > 0 && j0 <= last_pos - a.window);
      if (edge) {
        // Key j0 + 2 cq + c (c = 8 i + (e & 1), a constant) is visible to row r iff lo_r <= c <= hi_r.
        int hi[2], lo[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          hi[r] = pos[r] - j0 - 2 * cq;
          lo[r] = a.window > 0 ? hi[r] - a.window + 1 : INT_MIN;
        }
#pragma unroll
        for (int i = 0; i < BN / 8; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = i * 8 + (e & 1);
            if (c > hi[e >> 1] || c < lo[e >> 1]) s[i][e] = -INFINITY;
          }
      }

      // Online softmax, row r = e >> 1.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < BN / 8; ++i) mx = fmaxf(mx, fmaxf(s[i][2 * r], s[i][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[r], mx);
        const float base = m_new == -INFINITY ? 0.f : m_new * mult;  // nothing visible yet: any finite base
        const float corr = exp2f(m[r] * mult - base);                 // m = -inf (first visible tile): 0
        m[r] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < BN / 8; ++i) {
          s[i][2 * r] = exp2f(fmaf(s[i][2 * r], mult, -base));
          s[i][2 * r + 1] = exp2f(fmaf(s[i][2 * r + 1], mult, -base));
          sum += s[i][2 * r] + s[i][2 * r + 1];
        }
        l[r] = l[r] * corr + sum;
#pragma unroll
        for (int i = 0; i < HD / 8; ++i) {
          o[i][2 * r] *= corr;
          o[i][2 * r + 1] *= corr;
        }
      }

      // O += P V: key step kk's A fragment is S blocks 2kk, 2kk + 1 rounded to bf16.
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < HD / 16; ++dp) {
          uint32_t vb[4];
          ldsm_x4_trans(vb, v_cur + v_lane + kRowBytes * 16u * kk + 32u * dp);
          mma_bf16(o[2 * dp], pa, vb[0], vb[1]);
          mma_bf16(o[2 * dp + 1], pa, vb[2], vb[3]);
        }
      }
      if (more) store_tile<KV, HD>(v_next, st);
      __syncthreads();  // next tile staged; this tile's buffers free for the one after
    }
  }

  // Row sums were kept per thread (16 of the 64 keys each): reduce across the quad.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rho = row_base + warp * 16 + gq + 8 * r;
    if (rho >= rows_per_kv) continue;
    const int t = q0 + rho / a.group, h = g * a.group + rho % a.group;
    const int64_t row = int64_t(t) * a.n_heads + h;
    if (a.splits == 1) {
      const float inv = 1.f / l[r];  // l >= 1: the row's own position is always visible
      const int64_t at = row * HD + 2 * cq;
#pragma unroll
      for (int i = 0; i < HD / 8; ++i) {
        const float x0 = o[i][2 * r] * inv, x1 = o[i][2 * r + 1] * inv;
        if (a.out) *reinterpret_cast<float2*>(a.out + at + 8 * i) = make_float2(x0, x1);
        if (a.out_lowp) {
          const uint32_t lo = a.lowp_bf16 ? store_as<Bf16>(x0).bits : store_as<F16>(x0).bits;
          const uint32_t hi = a.lowp_bf16 ? store_as<Bf16>(x1).bits : store_as<F16>(x1).bits;
          *reinterpret_cast<uint32_t*>(a.out_lowp + at + 8 * i) = lo | hi << 16;
        }
      }
    } else {
      // Partial state in the fp32 kernel's units: m as a natural-log score, l = sum e^(score - m).
      const int64_t prow = int64_t(split) * a.n * a.n_heads + row;
      if (cq == 0) {
        a.part_ml[prow * 2] = m[r] == -INFINITY ? -INFINITY : m[r] * (mult / kLog2e);
        a.part_ml[prow * 2 + 1] = l[r];
      }
      float* dst = a.part_acc + prow * HD + 2 * cq;
#pragma unroll
      for (int i = 0; i < HD / 8; ++i)
        *reinterpret_cast<float2*>(dst + 8 * i) = make_float2(o[i][2 * r], o[i][2 * r + 1]);
    }
  }
}

template <int HD, typename KV>
void launch(Context& ctx, const Args& a, dim3 grid) {
  constexpr size_t smem = Shape<HD>::kSmemBytes;
  if (smem > ctx.smem_optin)
    raise(ErrorKind::kUnsupported, "cuda attention (tensor cores): head_dim ", HD, " needs ", smem,
          " bytes of shared memory, the device allows ", ctx.smem_optin);
  // Opting into more than 48 KB is per kernel; once per instance is enough.
  static bool opted_in = false;
  if (!opted_in) {
    LATHE_CUDA_CHECK(
        cudaFuncSetAttribute(attention_tc_kernel<HD, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    opted_in = true;
  }
  attention_tc_kernel<HD, KV><<<grid, kThreads, smem, ctx.stream>>>(a);
  LATHE_CUDA_CHECK_LAUNCH("attention_tc_kernel");
}

// Key tile of a head_dim (host side, for the split sizes).
inline int key_tile(int head_dim) { return head_dim > 128 ? Shape<256>::kKeys : Shape<128>::kKeys; }

inline bool supports_head_dim(int64_t head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

template <typename KV>
void run(Context& ctx, const Args& a, dim3 grid, int head_dim) {
  switch (head_dim) {
    case 64: return launch<64, KV>(ctx, a, grid);
    case 128: return launch<128, KV>(ctx, a, grid);
    case 256: return launch<256, KV>(ctx, a, grid);
    default: raise(ErrorKind::kInternal, "cuda attention (tensor cores): head_dim ", head_dim, " has no instance");
  }
}

}  // namespace lathe::ops::cuda::attn_tc
