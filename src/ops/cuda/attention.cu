// Causal attention (GQA/MQA, sliding window, soft-capping) for the CUDA backend, fp32 throughout.
//
// One kernel serves prefill and decode, FlashAttention-2 style with an optional flash-decoding split:
//  * Rows. For kv head g the "rows" are the (query t, head h) pairs with h in g's group, t-major:
//    rho = t * group + (h - g * group). A block owns 4 warps x R rows of one kv head, so a K/V tile
//    brought into shared memory serves every query head that reads it (GQA reuse) and up to 32 rows.
//  * Keys. The block walks 32-key tiles of its visible key range only: from the first key its first
//    row may see (window) to its last row's position (causal). K and V tiles are staged in shared
//    memory by all 128 threads (16-byte loads); then each warp, for its R rows: lane j scores key j
//    (q rows are broadcast from shared memory, K rows are padded by 4 floats so the lanes' 16-byte
//    reads hit distinct banks), updates the online softmax (running max m, sum l; warp max/sum), and
//    accumulates P V with lane owning output dims lane + 32 i.
//  * Splits. When rows x kv heads give too few blocks to fill the GPU (decode: a handful of rows),
//    the key range is also split across gridDim.y blocks; each writes its unnormalised (m, l, acc)
//    and a combine kernel merges them with the usual log-sum-exp rescaling.
// head_dim 64/80/96/128/256 are compile-time instances (16-byte K/Q reads, unrolled loops); any other
// head_dim <= 256 runs the generic instance (runtime head_dim, scalar reads). Masked scores are -inf
// and a row whose tile is fully masked is left untouched, so no exp(-inf - -inf) NaN can appear.
//
// Fast mode (BackendOptions::exact_matmul off) sends prefill-like calls (>= kTcMinQueries queries,
// head_dim 64/128/256, 16-byte aligned operands) to the bf16 tensor-core kernel of attention_tc.cuh,
// which shares this file's split-KV combine. Exact mode always runs the fp32 kernel: it is the
// accuracy reference.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>

#include "ops/cuda/attention_decode.cuh"
#include "ops/cuda/attention_tc.cuh"
#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"

namespace lathe::ops::cuda {
namespace {

constexpr int kWarps = 4;          // warps per block
constexpr int kTile = 32;          // keys per tile: one per lane
constexpr int kMaxHeadDim = 256;

struct AttnArgs {
  const float* q;
  const float* k;
  const float* v;
  float* out;           // may be null when out_lowp is set
  uint16_t* out_lowp;   // bf16/f16 copy of out, or null
  bool lowp_bf16;
  float* part_ml;   // [splits][n * n_heads][2]: running max, sum (split runs only)
  float* part_acc;  // [splits][n * n_heads][head_dim]: unnormalised output (split runs only)
  int n, kv_len, n_heads, n_kv_heads, head_dim, group;
  int window;       // 0: none
  float scale, softcap;
  int splits, keys_per_split;
  // Sequences: null cu_q = one sequence of n queries and kv_len keys. Else sequence s owns query
  // rows [cu_q[s], cu_q[s + 1]) and kv_lens[s] keys; each has seq_blocks row blocks in the grid.
  const int* cu_q;
  const int* kv_lens;
  int seq_blocks;
  // Paged rows: null table = position j is row j of k/v; else row table[s * table_stride + j /
  // block_size] * block_size + j % block_size.
  const int* table;
  int block_size, table_stride;
};

// One sequence's share of a launch: its first query row, query count and key count.
struct SeqView {
  int s, q0, n, kv_len;
};

template <class A>
__device__ __forceinline__ SeqView seq_view(const A& a, int s) {
  if (!a.cu_q) return {0, 0, a.n, a.kv_len};
  const int q0 = a.cu_q[s];
  return {s, q0, a.cu_q[s + 1] - q0, a.kv_lens[s]};
}

// Address of key/value position j of sequence s, head offset already in `base`.
template <class A>
__device__ __forceinline__ const float* kv_at(const A& a, const float* base, int s, int j, int64_t kv_row) {
  if (!a.table) return base + int64_t(j) * kv_row;
  const int blk = __ldg(a.table + int64_t(s) * a.table_stride + j / a.block_size);
  return base + (int64_t(blk) * a.block_size + j % a.block_size) * kv_row;
}

// Dynamic shared memory of one block: Q rows, K tile (padded), V tile, per-warp P rows.
inline int k_stride(int hd, bool vec) { return vec ? hd + 4 : hd + 1; }
inline size_t attn_smem_bytes(int hd, int R, bool vec) {
  return sizeof(float) * (size_t(kWarps) * R * hd + size_t(kTile) * k_stride(hd, vec) + size_t(kTile) * hd +
                          size_t(kWarps) * R * kTile);
}

// Position of row rho's query in its sequence, or -1 for padding rows past the last real row.
__device__ __forceinline__ int row_pos(const AttnArgs& a, const SeqView& sv, int rho) {
  return rho < sv.n * a.group ? sv.kv_len - sv.n + rho / a.group : -1;
}

template <int HD, int R>
__global__ void __launch_bounds__(kWarps * kWarp) attention_kernel(const AttnArgs a) {
  constexpr bool kVec = HD > 0;
  constexpr int DL = (kVec ? HD : kMaxHeadDim) / kWarp + ((kVec ? HD : kMaxHeadDim) % kWarp ? 1 : 0);
  const int hd = kVec ? HD : a.head_dim;
  const int ks = kVec ? HD + 4 : a.head_dim + 1;
  extern __shared__ float4 smem4[];  // float4 so the 16-byte views below are aligned
  float* Qs = reinterpret_cast<float*>(smem4);
  float* Ks = Qs + kWarps * R * hd;
  float* Vs = Ks + kTile * ks;
  float* Ps = Vs + kTile * hd;

  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int bi = int(gridDim.x) - 1 - int(blockIdx.x);  // later (longer) row blocks start first
  const SeqView sv = seq_view(a, bi / a.seq_blocks);
  const int rb = bi % a.seq_blocks;
  const int split = blockIdx.y;
  const int g = blockIdx.z;
  const int row_base = rb * kWarps * R;
  const int rows_per_kv = sv.n * a.group;
  if (row_base >= rows_per_kv) return;  // a shorter sequence of the batch: no rows here

  // Q rows of the block (padding rows are zeros).
  for (int i = threadIdx.x; i < kWarps * R * hd; i += kWarps * kWarp) {
    const int lr = i / hd, d = i % hd, rho = row_base + lr;
    float val = 0.f;
    if (rho < rows_per_kv) {
      const int t = sv.q0 + rho / a.group, h = g * a.group + rho % a.group;
      val = a.q[(int64_t(t) * a.n_heads + h) * hd + d];
    }
    Qs[i] = val;
  }

  // Keys this block may need, then this split's share of them.
  const int last_rho = min(row_base + kWarps * R, rows_per_kv) - 1;
  const int first_pos = row_pos(a, sv, row_base), last_pos = row_pos(a, sv, last_rho);
  const int lo = a.window > 0 ? max(0, first_pos - a.window + 1) : 0;
  const int s_lo = lo + split * a.keys_per_split;
  const int s_hi = min(last_pos + 1, s_lo + a.keys_per_split);

  // This warp's rows.
  int pos[R];
  int w_min = INT_MAX, w_max = -1;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    pos[r] = row_pos(a, sv, row_base + warp * R + r);
    if (pos[r] >= 0) w_min = min(w_min, pos[r]), w_max = max(w_max, pos[r]);
  }
  const int w_lo = a.window > 0 ? w_min - a.window + 1 : 0;  // first key any row of the warp sees
  float* Pw = Ps + warp * R * kTile;

  float m[R], l[R], acc[R][DL];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int i = 0; i < DL; ++i) acc[r][i] = 0.f;
  }

  const int64_t kv_row = int64_t(a.n_kv_heads) * hd;  // floats between consecutive positions
  const float* kg = a.k + int64_t(g) * hd;
  const float* vg = a.v + int64_t(g) * hd;

  for (int j0 = s_lo; j0 < s_hi; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and, first time round, Qs is written)
    // Stage the tile; keys past s_hi are zero so they stay finite (they are masked anyway).
    if constexpr (kVec) {
      constexpr int kQuads = HD / 4;
      for (int i = threadIdx.x; i < kTile * kQuads; i += kWarps * kWarp) {
        const int jj = i / kQuads, d4 = i % kQuads, j = j0 + jj;
        float4 kv4 = make_float4(0.f, 0.f, 0.f, 0.f), vv4 = kv4;
        if (j < s_hi) {
          kv4 = __ldg(reinterpret_cast<const float4*>(kv_at(a, kg, sv.s, j, kv_row)) + d4);
          vv4 = __ldg(reinterpret_cast<const float4*>(kv_at(a, vg, sv.s, j, kv_row)) + d4);
        }
        reinterpret_cast<float4*>(Ks + jj * ks)[d4] = kv4;
        reinterpret_cast<float4*>(Vs + jj * hd)[d4] = vv4;
      }
    } else {
      for (int i = threadIdx.x; i < kTile * hd; i += kWarps * kWarp) {
        const int jj = i / hd, d = i % hd, j = j0 + jj;
        Ks[jj * ks + d] = j < s_hi ? kv_at(a, kg, sv.s, j, kv_row)[d] : 0.f;
        Vs[jj * hd + d] = j < s_hi ? kv_at(a, vg, sv.s, j, kv_row)[d] : 0.f;
      }
    }
    __syncthreads();
    // Warp-uniform skip: no row of this warp sees any key of the tile.
    if (w_max < 0 || j0 > w_max || j0 + kTile <= w_lo) continue;

    // Scores: lane j <-> key j0 + lane.
    float s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = 0.f;
    const float* krow = Ks + lane * ks;
    const float* qw = Qs + warp * R * hd;
    if constexpr (kVec) {
#pragma unroll 4
      for (int d4 = 0; d4 < HD / 4; ++d4) {
        const float4 kk = reinterpret_cast<const float4*>(krow)[d4];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float4 qq = reinterpret_cast<const float4*>(qw + r * HD)[d4];
          s[r] = fmaf(qq.x, kk.x, s[r]);
          s[r] = fmaf(qq.y, kk.y, s[r]);
          s[r] = fmaf(qq.z, kk.z, s[r]);
          s[r] = fmaf(qq.w, kk.w, s[r]);
        }
      }
    } else {
      for (int d = 0; d < hd; ++d) {
        const float kk = krow[d];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r] = fmaf(qw[r * hd + d], kk, s[r]);
      }
    }

    // Online softmax per row.
    const int j = j0 + lane;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float sc = s[r] * a.scale;
      if (a.softcap > 0.f) sc = a.softcap * tanhf(sc / a.softcap);
      const bool visible = j < s_hi && j <= pos[r] && (a.window <= 0 || j > pos[r] - a.window);
      sc = visible ? sc : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(sc));
      float p = 0.f, corr = 1.f;
      if (m_new != -INFINITY) {  // else nothing visible yet: keep the row as it is
        p = visible ? expf(sc - m_new) : 0.f;
        corr = expf(m[r] - m_new);  // m = -inf (first visible tile) gives 0
      }
      l[r] = l[r] * corr + warp_sum(p);
      m[r] = m_new;
#pragma unroll
      for (int i = 0; i < DL; ++i) acc[r][i] *= corr;
      Pw[r * kTile + lane] = p;
    }
    __syncwarp();

    // acc += P V: lane owns dims lane + 32 i; P is broadcast from shared memory.
#pragma unroll 4
    for (int jj = 0; jj < kTile; ++jj) {
      float pr[R];
#pragma unroll
      for (int r = 0; r < R; ++r) pr[r] = Pw[r * kTile + jj];
#pragma unroll
      for (int i = 0; i < DL; ++i) {
        const int d = lane + kWarp * i;
        if (d < hd) {
          const float vv = Vs[jj * hd + d];
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r][i] = fmaf(pr[r], vv, acc[r][i]);
        }
      }
    }
    __syncwarp();  // Pw is rewritten by the next tile
  }

  // Results: normalised output, or this split's partial state.
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (pos[r] < 0) continue;
    const int rho = row_base + warp * R + r;
    const int t = sv.q0 + rho / a.group, h = g * a.group + rho % a.group;
    const int64_t row = int64_t(t) * a.n_heads + h;
    if (a.splits == 1) {
      const float inv = 1.f / l[r];  // l >= 1: the row's own position is always visible
#pragma unroll
      for (int i = 0; i < DL; ++i)
        if (lane + kWarp * i < hd) store_out(a.out, a.out_lowp, a.lowp_bf16, row * hd + lane + kWarp * i, acc[r][i] * inv);
    } else {
      const int64_t prow = int64_t(split) * a.n * a.n_heads + row;
      if (lane == 0) {
        a.part_ml[prow * 2] = m[r];
        a.part_ml[prow * 2 + 1] = l[r];
      }
      float* pa = a.part_acc + prow * hd;
#pragma unroll
      for (int i = 0; i < DL; ++i)
        if (lane + kWarp * i < hd) pa[lane + kWarp * i] = acc[r][i];
    }
  }
}

// One block per output row: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M), M = max_s m_s.
// The per-split weights e^(m_s - M) are computed once into shared memory (threads over splits), so
// the output loop (threads over dims) is plain independent loads and FMAs that pipeline well; a warp
// per row walking every split serially with an expf per load was latency-bound (~60 us at 64 splits).
// Splits that saw no visible key have m = -inf and weigh 0.
constexpr int kCombineThreads = 128;
__global__ void __launch_bounds__(kCombineThreads) combine_kernel(const AttnArgs a) {
  extern __shared__ float w[];  // [splits]
  __shared__ float red[kCombineThreads / kWarp];
  const int64_t rows = int64_t(a.n) * a.n_heads;
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  constexpr int kWarpsC = kCombineThreads / kWarp;

  float mx = -INFINITY;
  for (int s = threadIdx.x; s < a.splits; s += kCombineThreads) mx = fmaxf(mx, a.part_ml[(s * rows + row) * 2]);
  mx = warp_max(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
  for (int i = 1; i < kWarpsC; ++i) mx = fmaxf(mx, red[i]);
  __syncthreads();  // red is reused below

  __shared__ int first, last;
  if (threadIdx.x == 0) first = INT_MAX, last = -1;
  __syncthreads();
  float den = 0.f;
  for (int s = threadIdx.x; s < a.splits; s += kCombineThreads) {
    const float ms = a.part_ml[(s * rows + row) * 2];
    const float e = ms == -INFINITY ? 0.f : expf(ms - mx);
    w[s] = e;
    den += e * a.part_ml[(s * rows + row) * 2 + 1];
    if (ms != -INFINITY) atomicMin(&first, s), atomicMax(&last, s);
  }
  den = warp_sum(den);
  if (lane == 0) red[warp] = den;
  __syncthreads();
  den = 0.f;
  for (int i = 0; i < kWarpsC; ++i) den += red[i];
  const float inv = den > 0.f ? 1.f / den : 0.f;

  // Only the range of splits that saw keys is read: a recorded decode graph sizes the splits for the
  // whole cache, and at a short context most of them are empty.
  const float* acc = a.part_acc + row * a.head_dim;
  const int64_t split_stride = rows * a.head_dim;
  const int s_first = first, s_last = last;
  for (int d = threadIdx.x; d < a.head_dim; d += kCombineThreads) {
    float num = 0.f;
#pragma unroll 4
    for (int s = s_first; s <= s_last; ++s) num = fmaf(acc[s * split_stride + d], w[s], num);
    store_out(a.out, a.out_lowp, a.lowp_bf16, row * a.head_dim + d, num * inv);
  }
}

template <int HD, int R>
void launch(Context& ctx, const AttnArgs& a, dim3 grid, bool vec) {
  const size_t smem = attn_smem_bytes(a.head_dim, R, vec);
  if (smem > ctx.smem_optin)
    raise(ErrorKind::kUnsupported, "cuda attention: head_dim ", a.head_dim, " needs ", smem,
          " bytes of shared memory, the device allows ", ctx.smem_optin);
  // Opting into more than 48 KB is per kernel; remember the largest size already allowed.
  static size_t allowed = 48 * 1024;
  if (smem > allowed) {
    LATHE_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<HD, R>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(smem)));
    allowed = smem;
  }
  attention_kernel<HD, R><<<grid, kWarps * kWarp, smem, ctx.stream>>>(a);
  LATHE_CUDA_CHECK_LAUNCH("attention_kernel");
}

template <int HD>
void launch_rows(Context& ctx, const AttnArgs& a, dim3 grid, int R, bool vec) {
  switch (R) {
    case 1: return launch<HD, 1>(ctx, a, grid, vec);
    case 2: return launch<HD, 2>(ctx, a, grid, vec);
    case 4: return launch<HD, 4>(ctx, a, grid, vec);
    default: return launch<HD, 8>(ctx, a, grid, vec);
  }
}

// Fewest queries (of one sequence) that take the tensor-core kernel in fast mode. Below it the call
// is decode-like: the fp32 kernel's small row blocks and key splits fit it better, and its cost is
// K/V bandwidth, not math. At 64 queries a 128-row tensor-core block is already full for any group
// >= 2.
constexpr int64_t kTcMinQueries = 64;

// One attention launch, single-sequence or batched, as the launchers see it.
struct Call {
  const float* q;
  const void* k;
  const void* v;
  DType kv_dtype;
  KvQuant kv_quant;  // else the codes' format, with these scales
  const uint16_t* k_scale;
  const uint16_t* v_scale;
  float* out;
  uint16_t* out_lowp;
  bool lowp_bf16;
  int64_t n, kv_len;          // all query rows; kv_len of a single sequence
  int64_t num_seqs, max_q, max_kv;
  const int32_t* cu_q;        // null: single sequence
  const int32_t* kv_lens;
  const int32_t* table;       // null: contiguous rows
  int64_t block_size, table_stride;
  int64_t n_heads, n_kv_heads, head_dim, window;
  float scale, softcap;
};

bool use_tensor_cores(const Context& ctx, const Call& c) {
  return !ctx.exact_matmul && c.max_q >= kTcMinQueries && attn_tc::supports_head_dim(c.head_dim) &&
         aligned16(c.q) && aligned16(c.k) && aligned16(c.v) && aligned16(c.out) && aligned16(c.out_lowp);
}

void validate(const Call& c) {
  if (c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0)
    raise(ErrorKind::kInvalidArgument, "cuda attention: ", c.n_heads, " heads is not a multiple of ", c.n_kv_heads,
          " kv heads");
  if (c.head_dim < 1 || c.head_dim > kMaxHeadDim)
    raise(ErrorKind::kUnsupported, "cuda attention: head_dim ", c.head_dim, " is not supported (1..", kMaxHeadDim, ")");
  const int64_t group = c.n_heads / c.n_kv_heads;
  if (c.max_kv > INT_MAX / 2 || c.n * group > INT_MAX / 2 || c.n_kv_heads > 65535 || c.num_seqs > INT_MAX / 2)
    raise(ErrorKind::kUnsupported, "cuda attention: ", c.max_kv, " keys x ", c.n * group,
          " rows per kv head is too large for one launch");
}

AttnArgs make_args(const Call& c) {
  AttnArgs a{};
  a.q = c.q;
  a.k = static_cast<const float*>(c.k);  // the fp32 kernel runs fp32 caches only (run() checks)
  a.v = static_cast<const float*>(c.v);
  a.out = c.out;
  a.out_lowp = c.out_lowp;
  a.lowp_bf16 = c.lowp_bf16;
  a.n = int(c.n);
  a.kv_len = int(c.kv_len);
  a.n_heads = int(c.n_heads);
  a.n_kv_heads = int(c.n_kv_heads);
  a.head_dim = int(c.head_dim);
  a.group = int(c.n_heads / c.n_kv_heads);
  a.window = c.window > 0 ? int(std::min<int64_t>(c.window, INT_MAX)) : 0;
  a.scale = c.scale;
  a.softcap = c.softcap;
  a.cu_q = c.cu_q;
  a.kv_lens = c.kv_lens;
  a.table = c.table;
  a.block_size = int(c.block_size);
  a.table_stride = int(c.table_stride);
  return a;
}

void combine(Context& ctx, const AttnArgs& a) {
  const int64_t rows = int64_t(a.n) * a.n_heads;
  combine_kernel<<<unsigned(rows), kCombineThreads, sizeof(float) * size_t(a.splits), ctx.stream>>>(a);
  LATHE_CUDA_CHECK_LAUNCH("attention combine_kernel");
}

float* split_scratch(Context& ctx, const Call& c, int64_t splits) {
  const int64_t rows = c.n * c.n_heads;
  return static_cast<float*>(
      ctx.scratch(Scratch::kAttention, sizeof(float) * size_t(splits * rows * (2 + c.head_dim))));
}

// The tensor-core launch; `a` carries the fp32 kernel's view of the call for the combine kernel.
void attention_tensor_cores(Context& ctx, const Call& c, AttnArgs& a) {
  attn_tc::Args t{};
  t.q = c.q;
  t.k = c.k;
  t.v = c.v;
  t.k_scale = c.k_scale;
  t.v_scale = c.v_scale;
  t.out = c.out;
  t.out_lowp = c.out_lowp;
  t.lowp_bf16 = c.lowp_bf16;
  t.n = a.n;
  t.kv_len = a.kv_len;
  t.n_heads = a.n_heads;
  t.n_kv_heads = a.n_kv_heads;
  t.group = a.group;
  t.window = a.window;
  t.scale = a.scale;
  t.softcap = a.softcap;
  t.cu_q = a.cu_q;
  t.kv_lens = a.kv_lens;
  t.table = a.table;
  t.block_size = a.block_size;
  t.table_stride = a.table_stride;

  const int64_t bn = attn_tc::key_tile(a.head_dim);
  const int64_t seq_blocks = (c.max_q * a.group + attn_tc::kRows - 1) / attn_tc::kRows;
  if (seq_blocks * c.num_seqs > 65535)
    raise(ErrorKind::kUnsupported, "cuda attention: ", c.num_seqs, " sequences x ", c.max_q,
          " queries is too many row blocks for one launch");
  t.seq_blocks = a.seq_blocks = int(seq_blocks);
  const int64_t blocks = seq_blocks * c.num_seqs * a.n_kv_heads;
  // Longest key range one block walks, counted from its first tile's (aligned-down) start.
  const int64_t rows_span = (attn_tc::kRows + a.group - 1) / a.group + 1;
  const int64_t span = a.window > 0 ? std::min<int64_t>(c.max_kv, a.window + rows_span + bn) : c.max_kv;
  const int64_t tiles = (span + bn - 1) / bn;
  // A block fills an SM (head_dim >= 128: ~100 KB shared memory, most of the registers). With fewer
  // blocks than SMs (a short chunk against a long cache), split the keys, >= 4 tiles per split.
  int64_t splits = 1;
  if (blocks < ctx.sm_count) {
    const int64_t want = (2 * int64_t(ctx.sm_count) + blocks - 1) / blocks;
    splits = std::max<int64_t>(1, std::min<int64_t>(want, tiles / 4));
  }
  const int64_t per_split = (tiles + splits - 1) / splits;  // tiles
  splits = (tiles + per_split - 1) / per_split;
  t.splits = a.splits = int(splits);
  t.keys_per_split = a.keys_per_split = int(per_split * bn);
  if (splits > 1) {
    float* part = split_scratch(ctx, c, splits);
    a.part_ml = t.part_ml = part;
    a.part_acc = t.part_acc = part + splits * c.n * c.n_heads * 2;
  }
  // kv heads fastest, then row blocks (the kernel reverses them: longest first), then splits.
  const dim3 grid(unsigned(a.n_kv_heads), unsigned(seq_blocks * c.num_seqs), unsigned(splits));
  if (c.kv_quant == KvQuant::kQ8)
    attn_tc::run<KvQ8>(ctx, t, grid, a.head_dim);
  else if (c.kv_quant == KvQuant::kQ4)
    attn_tc::run<KvQ4>(ctx, t, grid, a.head_dim);
  else if (c.kv_dtype == DType::kBF16)
    attn_tc::run<Bf16>(ctx, t, grid, a.head_dim);
  else
    attn_tc::run<float>(ctx, t, grid, a.head_dim);
  if (splits > 1) combine(ctx, a);
}

// Few queries per sequence: the register-resident flash-decoding kernel (attention_decode.cuh).
bool use_decode_kernel(const Call& c) {
  const int64_t group = c.n_heads / c.n_kv_heads;
  return attn_dec::supports_head_dim(c.head_dim) && c.max_q * group <= attn_dec::max_rows(c.head_dim) &&
         c.num_seqs <= 65535 && aligned16(c.q) && aligned16(c.k) && aligned16(c.v);
}

void attention_decode(Context& ctx, const Call& c) {
  attn_dec::Args d{};
  d.q = c.q;
  d.k = c.k;
  d.v = c.v;
  d.k_scale = c.k_scale;
  d.v_scale = c.v_scale;
  d.out = c.out;
  d.out_lowp = c.out_lowp;
  d.lowp_bf16 = c.lowp_bf16;
  d.n = int(c.n);
  d.n_heads = int(c.n_heads);
  d.n_kv_heads = int(c.n_kv_heads);
  d.group = int(c.n_heads / c.n_kv_heads);
  d.window = c.window > 0 ? int(std::min<int64_t>(c.window, INT_MAX)) : 0;
  d.scale = c.scale;
  d.softcap = c.softcap;
  d.cu_q = c.cu_q;
  d.kv_lens = c.kv_lens;
  d.kv_len = int(c.kv_len);
  d.table = c.table;
  d.block_size = int(c.block_size);
  d.table_stride = int(c.table_stride);
  // Splits: one wave of (sequence, kv head, split) blocks (what fits at once: blocks_per_sm per
  // SM), each with >= kMinKeys keys of the launch's key bound; the kernel spreads the actual keys
  // over them. A second wave, or thinner splits, only lengthen the step (measured on the 8B decode:
  // 146 tok/s at one block per SM vs 133-143 with 2-4x the blocks of the 1-block-per-SM instance).
  const int64_t blocks = c.num_seqs * c.n_kv_heads;
  const int64_t span = c.window > 0 ? std::min<int64_t>(c.max_kv, c.window + c.max_q) : c.max_kv;
  static const int64_t knob = [] {  // LATHE_DECODE_BLOCKS_PER_SM: a tuning knob for measurements
    const char* e = std::getenv("LATHE_DECODE_BLOCKS_PER_SM");
    return e ? int64_t(std::atoll(e)) : int64_t(0);
  }();
  const bool narrow = c.kv_quant != KvQuant::kNone || c.kv_dtype == DType::kBF16;
  const int64_t rows_per_kv = c.max_q * (c.n_heads / c.n_kv_heads);
  // The key-parallel kernel holds one block an SM (its registers).
  const int64_t per_sm = knob > 0 ? knob
                         : attn_dec::use_key_parallel(narrow, c.head_dim, rows_per_kv)
                             ? 1
                             : attn_dec::blocks_per_sm(narrow, c.head_dim, rows_per_kv);
  const int64_t want = (per_sm * int64_t(ctx.sm_count) + blocks - 1) / blocks;
  const int64_t splits = std::clamp<int64_t>(std::min<int64_t>(want, (span + attn_dec::kMinKeys - 1) / attn_dec::kMinKeys),
                                             1, attn_dec::kMaxSplits);
  d.splits = int(splits);
  if (splits > 1) {
    float* part = split_scratch(ctx, c, splits);
    d.part_ml = part;
    d.part_acc = part + splits * c.n * c.n_heads * 2;
    d.counters = static_cast<int*>(ctx.zeroed_scratch(Scratch::kCounters, sizeof(int) * size_t(blocks)));
  }
  const dim3 grid(unsigned(c.n_kv_heads), unsigned(c.num_seqs), unsigned(splits));
  const int rows = int(c.max_q * d.group);
  if (c.kv_quant == KvQuant::kQ8)
    attn_dec::launch<KvQ8>(ctx, d, grid, rows, int(c.head_dim));
  else if (c.kv_quant == KvQuant::kQ4)
    attn_dec::launch<KvQ4>(ctx, d, grid, rows, int(c.head_dim));
  else if (c.kv_dtype == DType::kBF16)
    attn_dec::launch<Bf16>(ctx, d, grid, rows, int(c.head_dim));
  else
    attn_dec::launch<float>(ctx, d, grid, rows, int(c.head_dim));
}

void run(Context& ctx, const Call& c) {
  validate(c);
  if (c.kv_quant != KvQuant::kNone) {
    // Quantized caches are read by the two kernels that widen codes as they load them: decode
    // (fp32 math) and tensor cores (bf16 tiles), in either precision mode.
    if (!attn_tc::supports_head_dim(c.head_dim) || !c.k_scale || !c.v_scale || !aligned16(c.q) || !aligned16(c.out) ||
        !aligned16(c.out_lowp))
      raise(ErrorKind::kUnsupported, "cuda attention: a ", kv_quant_name(c.kv_quant),
            " K/V cache needs head_dim 64/128/256, its scales and aligned rows");
    if (use_decode_kernel(c)) return attention_decode(ctx, c);
    AttnArgs a = make_args(c);
    return attention_tensor_cores(ctx, c, a);
  }
  if (c.kv_dtype != DType::kF32 && c.kv_dtype != DType::kBF16)
    raise(ErrorKind::kUnsupported, "cuda attention: K/V cache dtype ", dtype_name(c.kv_dtype), " is not supported");
  if (use_decode_kernel(c)) return attention_decode(ctx, c);
  AttnArgs a = make_args(c);
  if (c.kv_dtype == DType::kBF16) {
    // bf16 caches exist only where the tensor-core kernel takes every other call (kv_dtype()).
    if (!attn_tc::supports_head_dim(c.head_dim) || !aligned16(c.q) || !aligned16(c.k) || !aligned16(c.v) ||
        !aligned16(c.out) || !aligned16(c.out_lowp))
      raise(ErrorKind::kUnsupported, "cuda attention: a bf16 K/V cache needs head_dim 64/128/256 and aligned rows");
    return attention_tensor_cores(ctx, c, a);
  }
  if (use_tensor_cores(ctx, c)) return attention_tensor_cores(ctx, c, a);

  // Rows per warp: enough to fill the block's 4 warps, at most 8 (register budget: 8 x head_dim/32).
  const int64_t group = a.group;
  const int64_t rows_per_kv = c.max_q * group;
  const int R = rows_per_kv >= 32 ? 8 : rows_per_kv >= 16 ? 4 : rows_per_kv >= 8 ? 2 : 1;
  const int64_t seq_blocks = (rows_per_kv + kWarps * R - 1) / (kWarps * R);
  const int64_t row_blocks = seq_blocks * c.num_seqs;
  const int64_t blocks = row_blocks * c.n_kv_heads;
  // Longest key range one block walks: everything (causal) or window + the block's own positions.
  const int64_t rows_span = (int64_t(kWarps) * R + group - 1) / group + 1;
  const int64_t span = a.window > 0 ? std::min<int64_t>(c.max_kv, a.window + rows_span) : c.max_kv;
  // Split the keys when the row blocks alone leave SMs idle; each split gets >= 2 tiles.
  int64_t splits = 1;
  if (blocks < 2 * int64_t(ctx.sm_count)) {
    const int64_t want = (4 * int64_t(ctx.sm_count) + blocks - 1) / blocks;
    splits = std::max<int64_t>(1, std::min<int64_t>(want, (span + 2 * kTile - 1) / (2 * kTile)));
  }
  int64_t per_split = (span + splits - 1) / splits;
  per_split = (per_split + kTile - 1) / kTile * kTile;
  splits = std::min<int64_t>(65535, (span + per_split - 1) / per_split);
  if (splits > 8192) {  // the combine kernel keeps one weight per split in shared memory
    per_split = (span + 8191) / 8192;
    per_split = (per_split + kTile - 1) / kTile * kTile;
    splits = (span + per_split - 1) / per_split;
  }
  a.splits = int(splits);
  a.keys_per_split = int(per_split);
  a.seq_blocks = int(seq_blocks);
  if (splits > 1) {
    float* part = split_scratch(ctx, c, splits);
    a.part_ml = part;
    a.part_acc = part + splits * c.n * c.n_heads * 2;
  }
  if (row_blocks > INT_MAX) raise(ErrorKind::kUnsupported, "cuda attention: too many query rows for one launch");
  const dim3 grid(unsigned(row_blocks), unsigned(splits), unsigned(c.n_kv_heads));

  // Compile-time head_dim needs 16-byte aligned K/V rows; anything else runs the generic instance.
  const bool vec = aligned16(c.k) && aligned16(c.v);
  switch (vec ? c.head_dim : 0) {
    case 64: launch_rows<64>(ctx, a, grid, R, true); break;
    case 80: launch_rows<80>(ctx, a, grid, R, true); break;
    case 96: launch_rows<96>(ctx, a, grid, R, true); break;
    case 128: launch_rows<128>(ctx, a, grid, R, true); break;
    case 256: launch_rows<256>(ctx, a, grid, R, true); break;
    default: launch_rows<0>(ctx, a, grid, R, false); break;
  }
  if (splits > 1) combine(ctx, a);
}

// The fields both entry points share.
template <class P>
Call common_call(const P& p) {
  Call c{};
  c.q = p.q;
  c.k = p.k;
  c.v = p.v;
  c.kv_dtype = DType::kF32;
  c.kv_quant = KvQuant::kNone;
  c.k_scale = c.v_scale = nullptr;
  c.out = p.out;
  c.out_lowp = nullptr;
  c.lowp_bf16 = true;
  c.n = p.n;
  c.n_heads = p.n_heads;
  c.n_kv_heads = p.n_kv_heads;
  c.head_dim = p.head_dim;
  c.window = p.window;
  c.scale = p.scale;
  c.softcap = p.softcap;
  return c;
}

}  // namespace

void attention(Context& ctx, const AttentionParams& p) {
  if (p.n <= 0) return;
  if (p.kv_len < p.n)
    raise(ErrorKind::kInvalidArgument, "cuda attention: kv_len ", p.kv_len, " is shorter than the ", p.n, " queries");
  Call c = common_call(p);
  c.kv_len = p.kv_len;
  c.num_seqs = 1;
  c.max_q = p.n;
  c.max_kv = p.kv_len;
  run(ctx, c);
}

void attention_batch(Context& ctx, const BatchAttentionParams& p) {
  if (p.n <= 0 || p.num_seqs <= 0) return;
  if (!p.cu_q || !p.kv_len || !p.block_table || p.block_size <= 0 || p.table_stride <= 0)
    raise(ErrorKind::kInvalidArgument, "cuda attention_batch: cu_q, kv_len and a block table are required");
  if (p.max_q <= 0 || p.max_kv < p.max_q)
    raise(ErrorKind::kInvalidArgument, "cuda attention_batch: bounds max_q ", p.max_q, ", max_kv ", p.max_kv,
          " are inconsistent");
  Call c = common_call(p);
  c.kv_dtype = p.kv_dtype;
  c.kv_quant = p.kv_quant;
  c.k_scale = p.k_scale;
  c.v_scale = p.v_scale;
  c.out_lowp = static_cast<uint16_t*>(p.out_lowp);
  c.lowp_bf16 = p.lowp_dtype == DType::kBF16;
  if (p.out_lowp && p.lowp_dtype != DType::kBF16 && p.lowp_dtype != DType::kF16)
    raise(ErrorKind::kInvalidArgument, "cuda attention_batch: a lowp copy must be bf16 or f16");
  if (!p.out && !p.out_lowp) raise(ErrorKind::kInvalidArgument, "cuda attention_batch: no output");
  c.num_seqs = p.num_seqs;
  c.max_q = p.max_q;
  c.max_kv = std::min(p.max_kv, p.table_stride * p.block_size);
  c.cu_q = p.cu_q;
  c.kv_lens = p.kv_len;
  c.table = p.block_table;
  c.block_size = p.block_size;
  c.table_stride = p.table_stride;
  run(ctx, c);
}

}  // namespace lathe::ops::cuda
