// Causal (optionally sliding-window, soft-capped) GQA attention for the CPU backend.
//
// Work is split into items = (kv head, block of query tokens[, key split]). An item owns the rows
// (token, query head) of its kv head's group, so every K/V element it loads serves all of them,
// and runs a flash-attention style loop over blocks of kBk keys: scores S = Q K^T for the block,
// an online-softmax update (running max m and sum l per row, O rescaled when m grows), then
// O += P V. Two ways to get S:
//  - prefill (n >= kPackMinTokens): K of each kv head is transposed once into K^T[d][kv] and S comes
//    from the same register-tiled micro-kernel as matmul (no horizontal sums).
//  - decode: each score is a SIMD dot product; transposing K would cost as much as using it once.
// P V always runs on the micro-kernel, reading V rows in place (they are contiguous along d).
// When there are fewer items than threads (decode with few kv heads) the key range is split and
// the partial (m, l, O) results are merged afterwards.
// A paged source (a block table, float or quantized rows: AttentionParams) is read a block of kBk
// keys at a time: the item gathers (and widens) the block's K and V rows of its kv head into its
// own scratch, so no copy of the whole context is ever made.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/cpu/attention.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/cpu/cpu_internal.h"
#include "ops/cpu/simd-inl.h"
#include "ops/kv_quant.h"

HWY_BEFORE_NAMESPACE();
namespace lathe::ops::cpu {
namespace HWY_NAMESPACE {

constexpr size_t kBk = 64;                 // keys per block (a multiple of every target's lanes)
constexpr int64_t kPackMinTokens = 16;     // from here on K^T is built once and shared by all queries
constexpr size_t kRowsPerItem = 32;        // query rows per item in prefill (S tile = 32 x 64)
constexpr size_t kMinKeysPerSplit = 256;   // a key split shorter than this is not worth a merge

struct Plan {
  const AttentionParams* p;
  size_t n, L, H, Hkv, d, group, ldkv;
  const float* kt = nullptr;  // K^T [Hkv][d][ldkt] (prefill) or null (decode)
  size_t ldkt = 0;
  size_t tb = 1;      // query tokens per item
  size_t blocks = 1;  // token blocks
  size_t splits = 1;  // key splits per (kv head, token block)
  size_t rows_max = 1;
  float* part_o = nullptr;  // splits > 1: [item][rows_max][d], then m and l [item][rows_max]
  float* part_m = nullptr;
  float* part_l = nullptr;

  // Row j of kv head g of K (v = false) or V: in place in a plain source, else from the block
  // table, widened into `tmp` (head_dim floats) when quantized.
  const float* row(bool v, size_t j, size_t g, float* tmp) const {
    if (!p->block_table) return (v ? p->v : p->k) + (j * Hkv + g) * d;
    const int64_t bs = p->block_size;
    const int64_t slot = int64_t(p->block_table[int64_t(j) / bs]) * bs + int64_t(j) % bs;
    const int64_t e = (slot * int64_t(Hkv) + int64_t(g)) * int64_t(d);
    if (p->kv_quant == KvQuant::kNone) return (v ? p->v : p->k) + e;
    const auto* codes = static_cast<const uint8_t*>(v ? p->v_codes : p->k_codes) + kv_code_bytes(p->kv_quant, e);
    kv_dequantize(p->kv_quant, codes, (v ? p->v_scale : p->k_scale) + e / kKvQuantGroup, int64_t(d), tmp);
    return tmp;
  }
  size_t pos(size_t t) const { return L - n + t; }
  size_t first(size_t t) const {
    const int64_t w = p->window;
    return (w > 0 && int64_t(pos(t)) + 1 > w) ? pos(t) + 1 - size_t(w) : 0;
  }
};

HWY_INLINE float Dot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, size_t n) {
  const DF d;
  const size_t N = hn::Lanes(d);
  VF s0 = hn::Zero(d), s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(d, a + i + N), hn::LoadU(d, b + i + N), s1);
  }
  for (; i + N <= n; i += N) s0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), s0);
  float s = SumLanes(hn::Add(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Scales, soft-caps and masks one row of raw scores (valid keys [lo, hi) of the block), then turns
// it into probabilities relative to the running max. Returns the factor the row's O and l must be
// rescaled by; the row's p are left in s.
HWY_INLINE float SoftmaxBlock(const AttentionParams& p, float* HWY_RESTRICT s, size_t lo, size_t hi,
                              float& m, float& l) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF scale = hn::Set(d, p.scale), ninf = hn::Set(d, -std::numeric_limits<float>::infinity());
  const VF vlo = hn::Set(d, float(lo)), vhi = hn::Set(d, float(hi));
  const bool cap = p.softcap > 0.f;
  const VF vcap = hn::Set(d, p.softcap), vinv_cap = hn::Set(d, cap ? 1.f / p.softcap : 0.f);
  VF vmax = ninf;
  for (size_t i = 0; i < kBk; i += N) {
    VF x = hn::Mul(hn::LoadU(d, s + i), scale);
    if (cap) x = hn::Mul(vcap, hn::Tanh(d, hn::Mul(x, vinv_cap)));
    const VF idx = hn::Iota(d, float(i));
    x = hn::IfThenElse(hn::And(hn::Ge(idx, vlo), hn::Lt(idx, vhi)), x, ninf);
    hn::StoreU(x, d, s + i);
    vmax = hn::Max(vmax, x);
  }
  const float m_new = std::max(m, MaxLanes(vmax));
  const float alpha = m == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(m - m_new);
  const VF vm = hn::Set(d, m_new);
  VF vsum = hn::Zero(d);
  for (size_t i = 0; i < kBk; i += N) {
    // Masked lanes hold -inf and Exp returns exactly 0 below -104.
    const VF e = hn::Exp(d, hn::Sub(hn::LoadU(d, s + i), vm));
    hn::StoreU(e, d, s + i);
    vsum = hn::Add(vsum, e);
  }
  l = l * alpha + SumLanes(vsum);
  m = m_new;
  return alpha;
}

// Runs one item: rows r = (t0 + r / group, head g * group + r % group) over keys of split `split`.
void ProcessItem(const Plan& P, size_t item) {
  const AttentionParams& p = *P.p;
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t split = item % P.splits, rest = item / P.splits;
  const size_t g = rest % P.Hkv, t0 = (rest / P.Hkv) * P.tb;
  const size_t t1 = std::min(P.n, t0 + P.tb);
  const size_t rows = (t1 - t0) * P.group, dd = P.d;
  float* S = thread_scratch(0, rows * kBk);
  float* O = thread_scratch(1, rows * dd);
  float* st = thread_scratch(2, 2 * rows);
  float* mrow = st;
  float* lrow = st + rows;
  auto qrow = [&](size_t r) { return p.q + ((t0 + r / P.group) * P.H + g * P.group + r % P.group) * dd; };
  auto row_first = [&](size_t r) { return P.first(t0 + r / P.group); };
  auto row_end = [&](size_t r) { return P.pos(t0 + r / P.group) + 1; };

  std::fill(O, O + rows * dd, 0.f);
  std::fill(mrow, mrow + rows, -std::numeric_limits<float>::infinity());
  std::fill(lrow, lrow + rows, 0.f);
  // Keys any row of the item sees (the first token has the earliest window start, the last one
  // the latest position), narrowed to this split.
  size_t kbeg = row_first(0), kend = row_end(rows - 1);
  if (P.splits > 1) {
    const size_t span = kend - kbeg;
    kend = kbeg + span * (split + 1) / P.splits;
    kbeg = kbeg + span * split / P.splits;
  }
  const size_t dfull = dd / N * N;
  const size_t nr = kTileVecs * N;
  const float* a[kTileRows];
  float* c[kTileRows];
  // A paged source: the block's K and V rows of kv head g, gathered (widened) kBk at a time.
  const bool paged = p.block_table != nullptr;
  float* kblk = paged ? thread_scratch(6, kBk * dd) : nullptr;
  float* vblk = paged ? thread_scratch(7, kBk * dd) : nullptr;
  // Packed K^T is padded to a multiple of kBk, so prefill blocks start aligned.
  for (size_t j0 = P.kt ? kbeg / kBk * kBk : kbeg; j0 < kend; j0 += kBk) {
    const size_t bk = std::min(kBk, kend - j0);
    if (paged) {
      for (size_t jj = 0; jj < bk; ++jj) {
        if (!P.kt) {
          const float* kr = P.row(false, j0 + jj, g, kblk + jj * dd);
          if (kr != kblk + jj * dd) std::copy(kr, kr + dd, kblk + jj * dd);
        }
        const float* vr = P.row(true, j0 + jj, g, vblk + jj * dd);
        if (vr != vblk + jj * dd) std::copy(vr, vr + dd, vblk + jj * dd);
      }
    }
    // ---- S = Q K^T for this block
    if (P.kt) {
      const float* ktg = P.kt + g * dd * P.ldkt + j0;
      for (size_t r0 = 0; r0 < rows; r0 += kTileRows) {
        const int rr = int(std::min<size_t>(kTileRows, rows - r0));
        for (size_t c0 = 0; c0 < kBk; c0 += nr) {
          for (int i = 0; i < rr; ++i) {
            a[i] = qrow(r0 + size_t(i));
            c[i] = S + (r0 + size_t(i)) * kBk + c0;
          }
          Tile(rr, int(std::min(nr, kBk - c0) / N), a, dd, ktg + c0, P.ldkt, c, nullptr, false);
        }
      }
    } else {
      for (size_t jj = 0; jj < bk; ++jj) {
        const size_t j = j0 + jj;
        const float* kj = paged ? kblk + jj * dd : p.k + (j * P.Hkv + g) * dd;
        for (size_t r = 0; r < rows; ++r)
          if (j >= row_first(r) && j < row_end(r)) S[r * kBk + jj] = Dot(qrow(r), kj, dd);
      }
    }
    // ---- online softmax
    bool any = false;
    for (size_t r = 0; r < rows; ++r) {
      float* s = S + r * kBk;
      const size_t lo = std::max({row_first(r), kbeg, j0}), hi = std::min({row_end(r), kend, j0 + bk});
      if (lo >= hi) {  // nothing visible in this block: contributes zero, state unchanged
        std::fill(s, s + kBk, 0.f);
        continue;
      }
      any = true;
      const float alpha = SoftmaxBlock(p, s, lo - j0, hi - j0, mrow[r], lrow[r]);
      if (alpha != 1.f) {
        float* o = O + r * dd;
        const VF va = hn::Set(d, alpha);
        size_t i = 0;
        for (; i + N <= dd; i += N) hn::StoreU(hn::Mul(hn::LoadU(d, o + i), va), d, o + i);
        for (; i < dd; ++i) o[i] *= alpha;
      }
    }
    if (!any) continue;
    // ---- O += P V (V rows read in place, ldkv apart)
    const float* vb = paged ? vblk : p.v + (j0 * P.Hkv + g) * dd;
    const size_t ldv = paged ? dd : P.ldkv;
    for (size_t r0 = 0; r0 < rows; r0 += kTileRows) {
      const int rr = int(std::min<size_t>(kTileRows, rows - r0));
      for (size_t c0 = 0; c0 < dfull; c0 += nr) {
        for (int i = 0; i < rr; ++i) {
          a[i] = S + (r0 + size_t(i)) * kBk;
          c[i] = O + (r0 + size_t(i)) * dd + c0;
        }
        Tile(rr, int(std::min(nr, dfull - c0) / N), a, bk, vb + c0, ldv, c, nullptr, true);
      }
      for (size_t col = dfull; col < dd; ++col)  // head_dim not a multiple of the vector width
        for (int i = 0; i < rr; ++i) {
          const float* pr = S + (r0 + size_t(i)) * kBk;
          float acc = 0.f;
          for (size_t jj = 0; jj < bk; ++jj) acc += pr[jj] * vb[jj * ldv + col];
          O[(r0 + size_t(i)) * dd + col] += acc;
        }
    }
  }
  // ---- write out: normalised rows, or this split's partial state for the merge
  for (size_t r = 0; r < rows; ++r) {
    const float* o = O + r * dd;
    if (P.splits > 1) {
      std::copy(o, o + dd, P.part_o + (item * P.rows_max + r) * dd);
      P.part_m[item * P.rows_max + r] = mrow[r];
      P.part_l[item * P.rows_max + r] = lrow[r];
      continue;
    }
    float* out = p.out + ((t0 + r / P.group) * P.H + g * P.group + r % P.group) * dd;
    const float inv = 1.f / lrow[r];
    for (size_t i = 0; i < dd; ++i) out[i] = o[i] * inv;
  }
}

// Combines the key splits of one (kv head, token block): out = sum_s e^(m_s - M) O_s / sum_s e^(m_s - M) l_s.
void MergeSplits(const Plan& P, size_t base_item) {
  const AttentionParams& p = *P.p;
  const size_t rest = base_item / P.splits;
  const size_t g = rest % P.Hkv, t0 = (rest / P.Hkv) * P.tb;
  const size_t rows = (std::min(P.n, t0 + P.tb) - t0) * P.group, dd = P.d;
  for (size_t r = 0; r < rows; ++r) {
    float mx = -std::numeric_limits<float>::infinity();
    for (size_t s = 0; s < P.splits; ++s) mx = std::max(mx, P.part_m[(base_item + s) * P.rows_max + r]);
    float* out = p.out + ((t0 + r / P.group) * P.H + g * P.group + r % P.group) * dd;
    std::fill(out, out + dd, 0.f);
    float denom = 0.f;
    for (size_t s = 0; s < P.splits; ++s) {
      const size_t idx = (base_item + s) * P.rows_max + r;
      if (P.part_l[idx] == 0.f) continue;  // this split saw no key of the row
      const float w = std::exp(P.part_m[idx] - mx);
      denom += w * P.part_l[idx];
      const float* o = P.part_o + idx * dd;
      for (size_t i = 0; i < dd; ++i) out[i] += w * o[i];
    }
    const float inv = 1.f / denom;
    for (size_t i = 0; i < dd; ++i) out[i] *= inv;
  }
}

void AttentionImpl(const AttentionParams& p) {
  if (p.n <= 0 || p.n_heads <= 0) return;
  if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0)
    fail(ErrorKind::kInvalidArgument, "attention: {} heads is not a multiple of {} kv heads", p.n_heads, p.n_kv_heads);
  if (p.n > p.kv_len)
    fail(ErrorKind::kInvalidArgument, "attention: {} queries but only {} cached positions", p.n, p.kv_len);
  if (p.head_dim <= 0) return;

  Plan P;
  P.p = &p;
  P.n = size_t(p.n);
  P.L = size_t(p.kv_len);
  P.H = size_t(p.n_heads);
  P.Hkv = size_t(p.n_kv_heads);
  P.d = size_t(p.head_dim);
  P.group = P.H / P.Hkv;
  P.ldkv = P.Hkv * P.d;
  const size_t threads = size_t(num_threads());

  if (p.n >= kPackMinTokens) {
    // K^T [g][dim][key], padded with zeros to whole key blocks.
    P.ldkt = (P.L + kBk - 1) / kBk * kBk;
    float* kt = thread_scratch(3, P.Hkv * P.d * P.ldkt);
    const size_t kblocks = P.ldkt / kBk;
    parallel_for(int64_t(P.Hkv * kblocks), 8, [&](int64_t b, int64_t e) {
      for (size_t blk = size_t(b); blk < size_t(e); ++blk) {
        const size_t g = blk / kblocks, j0 = (blk % kblocks) * kBk;
        float* dst = kt + g * P.d * P.ldkt;
        float* tmp = p.block_table ? thread_scratch(6, P.d) : nullptr;  // a quantized row widened
        for (size_t j = j0; j < j0 + kBk; ++j) {
          if (j < P.L) {
            const float* src = P.row(false, j, g, tmp);
            for (size_t i = 0; i < P.d; ++i) dst[i * P.ldkt + j] = src[i];
          } else {
            for (size_t i = 0; i < P.d; ++i) dst[i * P.ldkt + j] = 0.f;
          }
        }
      }
    });
    P.kt = kt;
    P.tb = std::min(P.n, std::max<size_t>(1, kRowsPerItem / P.group));
  }
  P.blocks = (P.n + P.tb - 1) / P.tb;
  P.rows_max = P.tb * P.group;
  const size_t base_items = P.blocks * P.Hkv;
  if (base_items < 2 * threads) {
    const size_t span = p.window > 0 ? std::min(P.L, size_t(p.window) + P.tb) : P.L;
    P.splits = std::max<size_t>(1, std::min((2 * threads + base_items - 1) / base_items, span / kMinKeysPerSplit));
  }
  const size_t items = base_items * P.splits;
  if (P.splits > 1) {
    float* part = thread_scratch(4, items * P.rows_max * (P.d + 2));
    P.part_o = part;
    P.part_m = part + items * P.rows_max * P.d;
    P.part_l = P.part_m + items * P.rows_max;
  }
  // Items are handed out round-robin: causal cost grows with the token block, so contiguous chunks
  // would leave the first thread idle.
  const size_t workers = std::min(threads, items);
  parallel_for(int64_t(workers), 1, [&](int64_t b, int64_t e) {
    for (size_t w = size_t(b); w < size_t(e); ++w)
      for (size_t item = w; item < items; item += workers) ProcessItem(P, item);
  });
  if (P.splits > 1) {
    parallel_for(int64_t(base_items), 1, [&](int64_t b, int64_t e) {
      for (size_t i = size_t(b); i < size_t(e); ++i) MergeSplits(P, i * P.splits);
    });
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lathe::ops::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lathe::ops::cpu {
HWY_EXPORT(AttentionImpl);
void attention(const AttentionParams& p) { HWY_DYNAMIC_DISPATCH(AttentionImpl)(p); }
}  // namespace lathe::ops::cpu
#endif
