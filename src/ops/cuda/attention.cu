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
  float* out;
  float* part_ml;   // [splits][n * n_heads][2]: running max, sum (split runs only)
  float* part_acc;  // [splits][n * n_heads][head_dim]: unnormalised output (split runs only)
  int n, kv_len, n_heads, n_kv_heads, head_dim, group;
  int rows_per_kv;  // n * group
  int window;       // 0: none
  float scale, softcap;
  int splits, keys_per_split;
};

// Dynamic shared memory of one block: Q rows, K tile (padded), V tile, per-warp P rows.
inline int k_stride(int hd, bool vec) { return vec ? hd + 4 : hd + 1; }
inline size_t attn_smem_bytes(int hd, int R, bool vec) {
  return sizeof(float) * (size_t(kWarps) * R * hd + size_t(kTile) * k_stride(hd, vec) + size_t(kTile) * hd +
                          size_t(kWarps) * R * kTile);
}

// Position of row rho's query in the cache, or -1 for padding rows past the last real row.
__device__ __forceinline__ int row_pos(const AttnArgs& a, int rho) {
  return rho < a.rows_per_kv ? a.kv_len - a.n + rho / a.group : -1;
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
  const int rb = int(gridDim.x) - 1 - int(blockIdx.x);  // later (longer) row blocks start first
  const int split = blockIdx.y;
  const int g = blockIdx.z;
  const int row_base = rb * kWarps * R;

  // Q rows of the block (padding rows are zeros).
  for (int i = threadIdx.x; i < kWarps * R * hd; i += kWarps * kWarp) {
    const int lr = i / hd, d = i % hd, rho = row_base + lr;
    float val = 0.f;
    if (rho < a.rows_per_kv) {
      const int t = rho / a.group, h = g * a.group + rho % a.group;
      val = a.q[(int64_t(t) * a.n_heads + h) * hd + d];
    }
    Qs[i] = val;
  }

  // Keys this block may need, then this split's share of them.
  const int last_rho = min(row_base + kWarps * R, a.rows_per_kv) - 1;
  const int first_pos = row_pos(a, row_base), last_pos = row_pos(a, last_rho);
  const int lo = a.window > 0 ? max(0, first_pos - a.window + 1) : 0;
  const int s_lo = lo + split * a.keys_per_split;
  const int s_hi = min(last_pos + 1, s_lo + a.keys_per_split);

  // This warp's rows.
  int pos[R];
  int w_min = INT_MAX, w_max = -1;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    pos[r] = row_pos(a, row_base + warp * R + r);
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
          kv4 = __ldg(reinterpret_cast<const float4*>(kg + j * kv_row) + d4);
          vv4 = __ldg(reinterpret_cast<const float4*>(vg + j * kv_row) + d4);
        }
        reinterpret_cast<float4*>(Ks + jj * ks)[d4] = kv4;
        reinterpret_cast<float4*>(Vs + jj * hd)[d4] = vv4;
      }
    } else {
      for (int i = threadIdx.x; i < kTile * hd; i += kWarps * kWarp) {
        const int jj = i / hd, d = i % hd, j = j0 + jj;
        Ks[jj * ks + d] = j < s_hi ? kg[j * kv_row + d] : 0.f;
        Vs[jj * hd + d] = j < s_hi ? vg[j * kv_row + d] : 0.f;
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
    const int t = rho / a.group, h = g * a.group + rho % a.group;
    const int64_t row = int64_t(t) * a.n_heads + h;
    if (a.splits == 1) {
      const float inv = 1.f / l[r];  // l >= 1: the row's own position is always visible
      float* o = a.out + row * hd;
#pragma unroll
      for (int i = 0; i < DL; ++i)
        if (lane + kWarp * i < hd) o[lane + kWarp * i] = acc[r][i] * inv;
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

  float den = 0.f;
  for (int s = threadIdx.x; s < a.splits; s += kCombineThreads) {
    const float ms = a.part_ml[(s * rows + row) * 2];
    const float e = ms == -INFINITY ? 0.f : expf(ms - mx);
    w[s] = e;
    den += e * a.part_ml[(s * rows + row) * 2 + 1];
  }
  den = warp_sum(den);
  if (lane == 0) red[warp] = den;
  __syncthreads();
  den = 0.f;
  for (int i = 0; i < kWarpsC; ++i) den += red[i];
  const float inv = den > 0.f ? 1.f / den : 0.f;

  const float* acc = a.part_acc + row * a.head_dim;
  const int64_t split_stride = rows * a.head_dim;
  for (int d = threadIdx.x; d < a.head_dim; d += kCombineThreads) {
    float num = 0.f;
#pragma unroll 8
    for (int s = 0; s < a.splits; ++s) num = fmaf(acc[s * split_stride + d], w[s], num);
    a.out[row * a.head_dim + d] = num * inv;
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

// Fewest queries that take the tensor-core kernel in fast mode. Below it the call is decode-like:
// the fp32 kernel's small row blocks and key splits fit it better, and its cost is K/V bandwidth,
// not math. At 64 queries a 128-row tensor-core block is already full for any group >= 2.
constexpr int64_t kTcMinQueries = 64;

bool use_tensor_cores(const Context& ctx, const AttentionParams& p, int64_t rows_per_kv) {
  return !ctx.exact_matmul && p.n >= kTcMinQueries && attn_tc::supports_head_dim(p.head_dim) && aligned16(p.q) &&
         aligned16(p.k) && aligned16(p.v) && aligned16(p.out) &&
         (rows_per_kv + attn_tc::kRows - 1) / attn_tc::kRows <= 65535;  // row blocks are gridDim.y
}

// The tensor-core launch; `a` carries the fp32 kernel's view of the call for the combine kernel.
void attention_tensor_cores(Context& ctx, const AttentionParams& p, AttnArgs& a) {
  attn_tc::Args t{};
  t.q = p.q;
  t.k = p.k;
  t.v = p.v;
  t.out = p.out;
  t.n = a.n;
  t.kv_len = a.kv_len;
  t.n_heads = a.n_heads;
  t.n_kv_heads = a.n_kv_heads;
  t.group = a.group;
  t.rows_per_kv = a.rows_per_kv;
  t.window = a.window;
  t.scale = a.scale;
  t.softcap = a.softcap;

  const int64_t bn = attn_tc::key_tile(a.head_dim);
  const int64_t row_blocks = (int64_t(a.rows_per_kv) + attn_tc::kRows - 1) / attn_tc::kRows;
  const int64_t blocks = row_blocks * a.n_kv_heads;
  // Longest key range one block walks, counted from its first tile's (aligned-down) start.
  const int64_t rows_span = (attn_tc::kRows + a.group - 1) / a.group + 1;
  const int64_t span = a.window > 0 ? std::min<int64_t>(a.kv_len, a.window + rows_span + bn) : a.kv_len;
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
  t.splits = int(splits);
  t.keys_per_split = int(per_split * bn);
  a.splits = t.splits;
  a.keys_per_split = t.keys_per_split;
  if (splits > 1) {
    const int64_t rows = p.n * p.n_heads;
    float* part = static_cast<float*>(
        ctx.scratch(Scratch::kAttention, sizeof(float) * size_t(splits * rows * (2 + p.head_dim))));
    a.part_ml = t.part_ml = part;
    a.part_acc = t.part_acc = part + splits * rows * 2;
  }
  // kv heads fastest, then row blocks (the kernel reverses them: longest first), then splits.
  attn_tc::run(ctx, t, dim3(unsigned(a.n_kv_heads), unsigned(row_blocks), unsigned(splits)), a.head_dim);
  if (splits > 1) {
    const int64_t rows = p.n * p.n_heads;
    combine_kernel<<<unsigned(rows), kCombineThreads, sizeof(float) * size_t(splits), ctx.stream>>>(a);
    LATHE_CUDA_CHECK_LAUNCH("attention combine_kernel");
  }
}

}  // namespace

void attention(Context& ctx, const AttentionParams& p) {
  if (p.n <= 0) return;
  if (p.kv_len < p.n)
    raise(ErrorKind::kInvalidArgument, "cuda attention: kv_len ", p.kv_len, " is shorter than the ", p.n, " queries");
  if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0)
    raise(ErrorKind::kInvalidArgument, "cuda attention: ", p.n_heads, " heads is not a multiple of ", p.n_kv_heads,
          " kv heads");
  if (p.head_dim < 1 || p.head_dim > kMaxHeadDim)
    raise(ErrorKind::kUnsupported, "cuda attention: head_dim ", p.head_dim, " is not supported (1..", kMaxHeadDim, ")");
  const int64_t group = p.n_heads / p.n_kv_heads;
  const int64_t rows_per_kv = p.n * group;
  if (p.kv_len > INT_MAX / 2 || rows_per_kv > INT_MAX / 2 || p.n_kv_heads > 65535)
    raise(ErrorKind::kUnsupported, "cuda attention: kv_len ", p.kv_len, " x ", rows_per_kv,
          " rows per kv head is too large for one launch");

  AttnArgs a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.out = p.out;
  a.n = int(p.n);
  a.kv_len = int(p.kv_len);
  a.n_heads = int(p.n_heads);
  a.n_kv_heads = int(p.n_kv_heads);
  a.head_dim = int(p.head_dim);
  a.group = int(group);
  a.rows_per_kv = int(rows_per_kv);
  a.window = p.window > 0 ? int(std::min<int64_t>(p.window, INT_MAX)) : 0;
  a.scale = p.scale;
  a.softcap = p.softcap;

  if (use_tensor_cores(ctx, p, rows_per_kv)) return attention_tensor_cores(ctx, p, a);

  // Rows per warp: enough to fill the block's 4 warps, at most 8 (register budget: 8 x head_dim/32).
  const int R = rows_per_kv >= 32 ? 8 : rows_per_kv >= 16 ? 4 : rows_per_kv >= 8 ? 2 : 1;
  const int64_t row_blocks = (rows_per_kv + kWarps * R - 1) / (kWarps * R);
  const int64_t blocks = row_blocks * p.n_kv_heads;
  // Longest key range one block walks: everything (causal) or window + the block's own positions.
  const int64_t rows_span = (int64_t(kWarps) * R + group - 1) / group + 1;
  const int64_t span = a.window > 0 ? std::min<int64_t>(p.kv_len, a.window + rows_span) : p.kv_len;
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
  if (splits > 1) {
    const int64_t rows = p.n * p.n_heads;
    float* part = static_cast<float*>(
        ctx.scratch(Scratch::kAttention, sizeof(float) * size_t(splits * rows * (2 + p.head_dim))));
    a.part_ml = part;
    a.part_acc = part + splits * rows * 2;
  }
  if (row_blocks > INT_MAX) raise(ErrorKind::kUnsupported, "cuda attention: too many query rows for one launch");
  const dim3 grid(unsigned(row_blocks), unsigned(splits), unsigned(p.n_kv_heads));

  // Compile-time head_dim needs 16-byte aligned K/V rows; anything else runs the generic instance.
  const bool vec = aligned16(p.k) && aligned16(p.v);
  switch (vec ? p.head_dim : 0) {
    case 64: launch_rows<64>(ctx, a, grid, R, true); break;
    case 80: launch_rows<80>(ctx, a, grid, R, true); break;
    case 96: launch_rows<96>(ctx, a, grid, R, true); break;
    case 128: launch_rows<128>(ctx, a, grid, R, true); break;
    case 256: launch_rows<256>(ctx, a, grid, R, true); break;
    default: launch_rows<0>(ctx, a, grid, R, false); break;
  }
  if (splits > 1) {
    const int64_t rows = p.n * p.n_heads;
    combine_kernel<<<unsigned(rows), kCombineThreads, sizeof(float) * size_t(splits), ctx.stream>>>(a);
    LATHE_CUDA_CHECK_LAUNCH("attention combine_kernel");
  }
}

}  // namespace lathe::ops::cuda
