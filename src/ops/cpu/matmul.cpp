// matmul for the CPU backend: y[n, m] = x[n, k] @ W[m, k]^T (+ bias), W in F32/F16/BF16.
//
// Two regimes:
//  - decode (n <= kGemvMaxTokens): memory-bound. Rows of W are split across threads and each row is
//    streamed once, widened on the fly and multiplied against all n token rows (which sit in L1).
//  - prefill: compute-bound. W is cut into panels of kTileVecs*N rows x kKc columns, each widened
//    and transposed once into a per-thread float32 buffer (L2-resident), then the register-tiled
//    micro-kernel sweeps the tokens over it. The panel is reused by every token, so widening costs
//    ~1/n of the math.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/cpu/matmul.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/cpu/cpu_internal.h"
#include "ops/cpu/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lathe::ops::cpu {
namespace HWY_NAMESPACE {

// k-block of the packed path: a panel of 64 x 256 floats (64 KB) stays in L2 while every token
// strip passes over it, and accumulator chains stay 256 long (float32 error well under 1e-6).
constexpr size_t kKc = 256;

// ---- decode: GEMV over weight rows ---------------------------------------------------------

// Software prefetch distance along the weight stream. One core alone cannot keep enough misses in
// flight for DRAM bandwidth with the hardware prefetcher only; asking ~8 KB ahead helps.
template <class T>
constexpr size_t kPrefetchElems = 8192 / sizeof(T);

// y[t, row + i] for t < NT, i < RW: every widened weight vector feeds NT FMAs, so W is read once
// for all tokens. NT * RW accumulators stay in registers.
template <DType kType, int NT, int RW>
HWY_INLINE void GemvRows(const float* HWY_RESTRICT x, size_t k, const typename WeightTraits<kType>::T* w,
                         size_t row, const float* bias, float* HWY_RESTRICT y, size_t m) {
  using Tr = WeightTraits<kType>;
  const DF d;
  const size_t N = hn::Lanes(d);
  VF acc[NT][RW];  // contiguous, so the epilogue can reduce them as one list
#pragma GCC unroll 16
  for (int t = 0; t < NT; ++t)
#pragma GCC unroll 16
    for (int i = 0; i < RW; ++i) acc[t][i] = hn::Zero(d);
  const typename Tr::T* wr[RW];
#pragma GCC unroll 16
  for (int i = 0; i < RW; ++i) wr[i] = w + (row + size_t(i)) * k;

  size_t kk = 0;
  for (; kk + N <= k; kk += N) {
#pragma GCC unroll 16
    for (int i = 0; i < RW; ++i) hwy::Prefetch(wr[i] + kk + kPrefetchElems<typename Tr::T>);
    VF wv[RW];
#pragma GCC unroll 16
    for (int i = 0; i < RW; ++i) wv[i] = Tr::Load(d, wr[i] + kk);
#pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      const VF xv = hn::LoadU(d, x + size_t(t) * k + kk);
#pragma GCC unroll 16
      for (int i = 0; i < RW; ++i) acc[t][i] = hn::MulAdd(xv, wv[i], acc[t][i]);
    }
  }
  float tail[NT][RW] = {};
  for (; kk < k; ++kk) {
    for (int i = 0; i < RW; ++i) {
      const float wv = Tr::Scalar(wr[i][kk]);
      for (int t = 0; t < NT; ++t) tail[t][i] += x[size_t(t) * k + kk] * wv;
    }
  }
  float sums[NT][RW];
  SumLanesMany<size_t(NT * RW)>(&acc[0][0], &sums[0][0]);
  for (int t = 0; t < NT; ++t)
    for (int i = 0; i < RW; ++i)
      y[size_t(t) * m + row + size_t(i)] = sums[t][i] + tail[t][i] + (bias ? bias[row + size_t(i)] : 0.f);
}

template <DType kType, int NT>
void GemvRange(const MatmulParams& p, size_t r0, size_t r1) {
  // Several rows per step give independent FMA chains (latency hiding) and amortise the x loads;
  // NT * RW accumulators must fit the register file (32 vectors on AVX-512, 16 elsewhere).
  constexpr int RW = NT <= 2 ? 4 : (NT <= 4 || kTileVecs == 4) ? 2 : 1;
  const auto* w = static_cast<const typename WeightTraits<kType>::T*>(p.w.data);
  const size_t k = size_t(p.w.cols), m = size_t(p.w.rows);
  size_t row = r0;
  for (; row + RW <= r1; row += RW) GemvRows<kType, NT, RW>(p.x, k, w, row, p.bias, p.y, m);
  for (; row < r1; ++row) GemvRows<kType, NT, 1>(p.x, k, w, row, p.bias, p.y, m);
}

template <DType kType>
void Gemv(const MatmulParams& p) {
  const int64_t m = p.w.rows, k = p.w.cols;
  // A chunk should stream >= ~32 KB of weights or the fork/join costs more than it saves.
  const int64_t grain = std::max<int64_t>(8, 16384 / std::max<int64_t>(k, 1));
  parallel_for(m, grain, [&](int64_t r0, int64_t r1) {
    switch (p.n) {
      case 1: GemvRange<kType, 1>(p, size_t(r0), size_t(r1)); break;
      case 2: GemvRange<kType, 2>(p, size_t(r0), size_t(r1)); break;
      case 3: GemvRange<kType, 3>(p, size_t(r0), size_t(r1)); break;
      case 4: GemvRange<kType, 4>(p, size_t(r0), size_t(r1)); break;
      case 5: GemvRange<kType, 5>(p, size_t(r0), size_t(r1)); break;
      case 6: GemvRange<kType, 6>(p, size_t(r0), size_t(r1)); break;
      case 7: GemvRange<kType, 7>(p, size_t(r0), size_t(r1)); break;
      default: GemvRange<kType, 8>(p, size_t(r0), size_t(r1)); break;
    }
  });
}
static_assert(kGemvMaxTokens <= 8, "Gemv instantiates token counts 1..8 only");

// ---- prefill: packed panels + micro-kernel ---------------------------------------------------

// pack[kk * nr + j] = W[col0 + j, k0 + kk] as float32, zero for j >= cols (the padded columns of
// the last panel then compute harmless zeros). Rows are widened with SIMD into `lines`, then
// transposed 4 x 4 at a time in 128-bit registers, which halves the work of a scalar transpose.
template <DType kType>
void PackPanel(const typename WeightTraits<kType>::T* w, size_t k, size_t col0, size_t cols, size_t k0,
               size_t kl, size_t nr, float* HWY_RESTRICT pack, float* HWY_RESTRICT lines) {
  size_t j = 0;
#if HWY_TARGET != HWY_SCALAR
  const hn::Full128<float> d4;
  const hn::Full128<double> d2;
  for (; j + 4 <= cols; j += 4) {
    float* l[4];
    for (size_t i = 0; i < 4; ++i) {
      l[i] = lines + i * kKc;
      WidenRow<kType>(w + (col0 + j + i) * k + k0, kl, l[i]);
    }
    size_t kk = 0;
    for (; kk + 4 <= kl; kk += 4) {
      const auto a0 = hn::LoadU(d4, l[0] + kk), a1 = hn::LoadU(d4, l[1] + kk);
      const auto a2 = hn::LoadU(d4, l[2] + kk), a3 = hn::LoadU(d4, l[3] + kk);
      // (a0[0] a1[0] a0[1] a1[1]), (a2[0] a3[0] a2[1] a3[1]), same for lanes 2, 3
      const auto lo01 = hn::BitCast(d2, hn::InterleaveLower(d4, a0, a1));
      const auto lo23 = hn::BitCast(d2, hn::InterleaveLower(d4, a2, a3));
      const auto hi01 = hn::BitCast(d2, hn::InterleaveUpper(d4, a0, a1));
      const auto hi23 = hn::BitCast(d2, hn::InterleaveUpper(d4, a2, a3));
      float* dst = pack + kk * nr + j;
      hn::StoreU(hn::BitCast(d4, hn::InterleaveLower(d2, lo01, lo23)), d4, dst);
      hn::StoreU(hn::BitCast(d4, hn::InterleaveUpper(d2, lo01, lo23)), d4, dst + nr);
      hn::StoreU(hn::BitCast(d4, hn::InterleaveLower(d2, hi01, hi23)), d4, dst + 2 * nr);
      hn::StoreU(hn::BitCast(d4, hn::InterleaveUpper(d2, hi01, hi23)), d4, dst + 3 * nr);
    }
    for (; kk < kl; ++kk)
      for (size_t i = 0; i < 4; ++i) pack[kk * nr + j + i] = l[i][kk];
  }
#endif
  for (; j < cols; ++j) {
    WidenRow<kType>(w + (col0 + j) * k + k0, kl, lines);
    for (size_t kk = 0; kk < kl; ++kk) pack[kk * nr + j] = lines[kk];
  }
  for (j = cols; j < nr; ++j)
    for (size_t kk = 0; kk < kl; ++kk) pack[kk * nr + j] = 0.f;
}

template <DType kType>
void MatmulPacked(const MatmulParams& p) {
  const auto* w = static_cast<const typename WeightTraits<kType>::T*>(p.w.data);
  const size_t n = size_t(p.n), m = size_t(p.w.rows), k = size_t(p.w.cols);
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t nr = kTileVecs * N;  // panel width (output columns per micro-tile)
  const size_t panels = (m + nr - 1) / nr;
  const size_t kblocks = (k + kKc - 1) / kKc;
  const size_t threads = size_t(num_threads());
  // Few panels (small m): also split the tokens so every thread has work; each split re-packs its
  // panel, which costs ~1/(tokens per split) of the math.
  size_t tsplit = 1;
  if (panels < 4 * threads) {
    tsplit = (4 * threads + panels - 1) / panels;
    tsplit = std::min(tsplit, std::max<size_t>(1, n / (4 * kTileRows)));
  }
  const size_t items = panels * tsplit;

  parallel_for(int64_t(items), 1, [&](int64_t begin, int64_t end) {
    float* pack = thread_scratch(0, kKc * nr);
    float* lines = thread_scratch(1, 4 * kKc);
    float* tmp = thread_scratch(2, (kTileRows + 1) * nr);  // partial-panel tile + padded bias
    float* bias_pad = tmp + kTileRows * nr;
    for (size_t item = size_t(begin); item < size_t(end); ++item) {
      const size_t panel = item / tsplit, split = item % tsplit;
      const size_t t0 = n * split / tsplit, t1 = n * (split + 1) / tsplit;
      const size_t col0 = panel * nr, cols = std::min(nr, m - col0);
      const int vecs = int((cols + N - 1) / N);
      const bool direct = cols % N == 0;  // whole vectors: the kernel writes y directly
      const float* bias = nullptr;
      if (p.bias) {
        if (cols == nr) {
          bias = p.bias + col0;
        } else {
          std::fill(bias_pad, bias_pad + nr, 0.f);
          std::copy(p.bias + col0, p.bias + col0 + cols, bias_pad);
          bias = bias_pad;
        }
      }
      for (size_t kb = 0; kb < kblocks; ++kb) {
        const size_t k0 = k * kb / kblocks, kl = k * (kb + 1) / kblocks - k0;
        PackPanel<kType>(w, k, col0, cols, k0, kl, nr, pack, lines);
        const bool first = kb == 0;
        for (size_t t = t0; t < t1; t += kTileRows) {
          const int rows = int(std::min<size_t>(kTileRows, t1 - t));
          const float* a[kTileRows];
          float* c[kTileRows];
          for (int r = 0; r < rows; ++r) {
            a[r] = p.x + (t + size_t(r)) * k + k0;
            c[r] = direct ? p.y + (t + size_t(r)) * m + col0 : tmp + size_t(r) * nr;
            if (!direct && !first) std::memcpy(c[r], p.y + (t + size_t(r)) * m + col0, cols * sizeof(float));
          }
          Tile(rows, vecs, a, kl, pack, nr, c, first ? bias : nullptr, !first);
          if (!direct)
            for (int r = 0; r < rows; ++r)
              std::memcpy(p.y + (t + size_t(r)) * m + col0, c[r], cols * sizeof(float));
        }
      }
    }
  });
}

template <DType kType>
void MatmulTyped(const MatmulParams& p) {
  if (p.n <= kGemvMaxTokens)
    Gemv<kType>(p);
  else
    MatmulPacked<kType>(p);
}

void MatmulImpl(const MatmulParams& p) {
  if (p.n <= 0 || p.w.rows <= 0) return;
  if (p.w.cols == 0) {  // empty reduction: y = bias (or 0)
    for (int64_t t = 0; t < p.n; ++t)
      for (int64_t r = 0; r < p.w.rows; ++r) p.y[t * p.w.rows + r] = p.bias ? p.bias[r] : 0.f;
    return;
  }
  switch (p.w.dtype) {
    case DType::kF32: return MatmulTyped<DType::kF32>(p);
    case DType::kF16: return MatmulTyped<DType::kF16>(p);
    case DType::kBF16: return MatmulTyped<DType::kBF16>(p);
    default:
      fail(ErrorKind::kUnsupported, "cpu matmul: weight dtype {} is not supported", dtype_name(p.w.dtype));
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lathe::ops::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lathe::ops::cpu {
HWY_EXPORT(MatmulImpl);
void matmul(const MatmulParams& p) { HWY_DYNAMIC_DISPATCH(MatmulImpl)(p); }
}  // namespace lathe::ops::cpu
#endif
