// EXL2 matmul for the CPU backend (ops.h Exl2View): the packed weights are read as stored and
// dequantized in vector registers, never expanded in memory.
//
// The format packs every output column as its own bitstream down the rows, so one packed row holds
// the same bit range of every column: a SIMD vector of L consecutive 32-bit words is L columns, and
// extracting value i of a unit is the same shift for every lane. A thread owns a range of column
// vectors and walks all groups for them; per group it forms the integer-code dot products
// (q - 2^(b-1)) . x in float lanes and multiplies them by the columns' scales ((code + 1)^2 *
// max / 256) once. Activations are gathered in act-order (x[perm[p]]) once per call and broadcast.
// Within a group, rows are the outer loop and the thread's columns the inner one (see GroupRows).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/cpu/exl2.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "ops/cpu/cpu_internal.h"

HWY_BEFORE_NAMESPACE();
namespace lathe::ops::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <int BITS>
constexpr int UnitRows() {
  return BITS == 2 ? 16 : BITS == 3 ? 32 : BITS == 4 ? 8 : BITS == 5 ? 32 : BITS == 6 ? 16 : 4;
}

// gacc[v][t] += sum over the group's rows of (q - 2^(BITS-1)) * xa[t][row], for the thread's nv
// column vectors v (lanes = columns). Rows outside, columns inside: each packed row's words of the
// thread's columns are read as one contiguous run (walking down one column vector instead strides
// by a whole row per load, which measured 2x slower than bf16 from DRAM); the per-vector partial
// sums live in an L1-resident buffer.
template <int BITS, int NT, class DF>
HWY_INLINE void GroupRows(DF df, const uint32_t* HWY_RESTRICT qw, size_t stride, int64_t rows, size_t nv,
                          const float* HWY_RESTRICT xa, size_t x_stride, float* HWY_RESTRICT gacc) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const size_t L = hn::Lanes(df);
  constexpr int R = UnitRows<BITS>(), W = R * BITS / 32;
  const auto mask = hn::Set(du, (1u << BITS) - 1);
  const auto zero = hn::Set(df, float(1 << (BITS - 1)));
  for (int64_t u = 0; u < rows / R; ++u) {
    const uint32_t* qu = qw + size_t(u * W) * stride;
    const float* xr = xa + u * R;
    for (size_t v = 0; v < nv; ++v) {
      hn::Vec<decltype(du)> wd[W];
#pragma GCC unroll 8
      for (int j = 0; j < W; ++j) wd[j] = hn::LoadU(du, qu + size_t(j) * stride + v * L);
      hn::Vec<DF> g[NT];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) g[t] = hn::Load(df, gacc + (v * NT + size_t(t)) * L);
      // Unrolled (the project builds at -O2): word indices and shifts become constants.
#pragma GCC unroll 32
      for (int i = 0; i < R; ++i) {
        const int bit = i * BITS, word = bit / 32, sh = bit % 32;
        auto val = hn::ShiftRightSame(wd[word], sh);
        if (sh + BITS > 32) val = hn::Or(val, hn::ShiftLeftSame(wd[word + 1], 32 - sh));
        const auto q = hn::Sub(hn::ConvertTo(df, hn::BitCast(di, hn::And(val, mask))), zero);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) g[t] = hn::MulAdd(q, hn::Set(df, xr[size_t(t) * x_stride + size_t(i)]), g[t]);
      }
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) hn::Store(g[t], df, gacc + (v * NT + size_t(t)) * L);
    }
  }
}

template <int NT>
void ColumnsRange(const Exl2MatmulParams& p, const float* xa, size_t v0, size_t v1) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df), nv = v1 - v0;
  const Exl2View& w = p.w;
  const size_t K = size_t(w.in_features), N = size_t(w.out_features), Np = size_t(w.padded_out());
  float* acc = thread_scratch(0, nv * NT * L);
  float* gacc = thread_scratch(1, nv * NT * L);
  float* scales = thread_scratch(2, nv * L);
  std::fill(acc, acc + nv * NT * L, 0.f);
  for (int64_t gi = 0; gi < w.num_groups; ++gi) {
    const int32_t* g = w.groups + gi * 4;
    const int bits = g[0];
    const int64_t grows = g[1], qrow0 = g[2], row0 = g[3];
    const float smax = f16_to_f32(w.q_scale_max[gi]) / 256.f;
    for (size_t l = 0; l < nv * L; ++l) {
      const size_t c = v0 * L + l;
      const uint32_t code = ((w.q_scale[size_t(gi) * (Np / 8) + c / 8] >> (4 * (c % 8))) & 15u) + 1;
      scales[l] = float(code * code) * smax;
    }
    std::fill(gacc, gacc + nv * NT * L, 0.f);
    const uint32_t* qw = w.q_weight + size_t(qrow0) * Np + v0 * L;
    const float* xg = xa + row0;
    switch (bits) {
      case 2: GroupRows<2, NT>(df, qw, Np, grows, nv, xg, K, gacc); break;
      case 3: GroupRows<3, NT>(df, qw, Np, grows, nv, xg, K, gacc); break;
      case 4: GroupRows<4, NT>(df, qw, Np, grows, nv, xg, K, gacc); break;
      case 5: GroupRows<5, NT>(df, qw, Np, grows, nv, xg, K, gacc); break;
      case 6: GroupRows<6, NT>(df, qw, Np, grows, nv, xg, K, gacc); break;
      default: GroupRows<8, NT>(df, qw, Np, grows, nv, xg, K, gacc); break;
    }
    for (size_t v = 0; v < nv; ++v) {
      const auto sv = hn::Load(df, scales + v * L);
      for (int t = 0; t < NT; ++t) {
        float* a = acc + (v * NT + size_t(t)) * L;
        hn::Store(hn::MulAdd(hn::Load(df, gacc + (v * NT + size_t(t)) * L), sv, hn::Load(df, a)), df, a);
      }
    }
  }
  for (size_t v = 0; v < nv; ++v)
    for (int t = 0; t < NT; ++t)
      for (size_t l = 0; l < L; ++l) {
        const size_t c = (v0 + v) * L + l;
        if (c < N) p.y[size_t(t) * N + c] = acc[(v * NT + size_t(t)) * L + l] + (w.bias ? f16_to_f32(w.bias[c]) : 0.f);
      }
}

void Exl2Impl(const Exl2MatmulParams& p) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  const Exl2View& w = p.w;
  const int64_t K = w.in_features, Np = w.padded_out();
  // Np is a multiple of 32 and L divides 32 on every target, so vectors never run past a row.
  if (Np % int64_t(L) != 0) fail(ErrorKind::kInternal, "cpu matmul_exl2: {} lanes do not divide {}", L, Np);
  const size_t vectors = size_t(Np) / L;
  for (int64_t t0 = 0; t0 < p.n; t0 += 4) {
    const int64_t nt = std::min<int64_t>(4, p.n - t0);
    // Act-order activations of these tokens, shared by every thread (the caller's scratch slot).
    float* xa = thread_scratch(3, size_t(nt * K));
    for (int64_t t = 0; t < nt; ++t)
      for (int64_t k = 0; k < K; ++k) xa[t * K + k] = p.x[(t0 + t) * K + w.perm[k]];
    Exl2MatmulParams q = p;
    q.y = p.y + t0 * w.out_features;
    parallel_for(int64_t(vectors), 8, [&](int64_t v0, int64_t v1) {
      switch (nt) {
        case 1: ColumnsRange<1>(q, xa, size_t(v0), size_t(v1)); break;
        case 2: ColumnsRange<2>(q, xa, size_t(v0), size_t(v1)); break;
        case 3: ColumnsRange<3>(q, xa, size_t(v0), size_t(v1)); break;
        default: ColumnsRange<4>(q, xa, size_t(v0), size_t(v1)); break;
      }
    });
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace lathe::ops::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lathe::ops::cpu {
HWY_EXPORT(Exl2Impl);
void matmul_exl2(const Exl2MatmulParams& p) {
  if (p.n <= 0 || p.w.out_features <= 0) return;
  if (p.w.in_features <= 0 || p.w.num_groups <= 0 || !p.w.q_weight || !p.w.q_scale || !p.w.q_scale_max ||
      !p.w.perm || !p.w.groups)
    fail(ErrorKind::kInvalidArgument, "cpu matmul_exl2: incomplete layer");
  HWY_DYNAMIC_DISPATCH(Exl2Impl)(p);
}
}  // namespace lathe::ops::cpu
#endif
