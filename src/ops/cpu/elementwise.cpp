// glu, embedding, add and softcap for the CPU backend. Element-wise ops stream memory; the only
// care is accuracy of the transcendental activations (see Erfc below) and handling tails with the
// same vector code (a padded copy) so every element gets identical math.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/cpu/elementwise.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/cpu/cpu_internal.h"
#include "ops/cpu/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lathe::ops::cpu {
namespace HWY_NAMESPACE {

// Elements per parallel chunk for streaming ops: below this the fork/join costs more than it saves.
constexpr int64_t kStreamGrain = 1 << 15;

// erfc(z) with fractional error ~1.2e-7 over the whole real line (the Chebyshev-fitted
// t*exp(-z^2 + P(t)), t = 1/(1 + |z|/2), from Press et al., Numerical Recipes, sec. 6.2). Relative
// accuracy of erfc, not just absolute accuracy of erf, is what keeps gelu(x) = x/2 * erfc(-x/sqrt2)
// accurate for negative x where the result is tiny.
HWY_INLINE VF Erfc(DF d, VF z) {
  const VF az = hn::Abs(z);
  const VF t = hn::Div(hn::Set(d, 1.f), hn::MulAdd(hn::Set(d, 0.5f), az, hn::Set(d, 1.f)));
  VF poly = hn::Set(d, 0.17087277f);
  poly = hn::MulAdd(poly, t, hn::Set(d, -0.82215223f));
  poly = hn::MulAdd(poly, t, hn::Set(d, 1.48851587f));
  poly = hn::MulAdd(poly, t, hn::Set(d, -1.13520398f));
  poly = hn::MulAdd(poly, t, hn::Set(d, 0.27886807f));
  poly = hn::MulAdd(poly, t, hn::Set(d, -0.18628806f));
  poly = hn::MulAdd(poly, t, hn::Set(d, 0.09678418f));
  poly = hn::MulAdd(poly, t, hn::Set(d, 0.37409196f));
  poly = hn::MulAdd(poly, t, hn::Set(d, 1.00002368f));
  poly = hn::MulAdd(poly, t, hn::Set(d, -1.26551223f));
  const VF r = hn::Mul(t, hn::Exp(d, hn::Sub(poly, hn::Mul(az, az))));
  return hn::IfThenElse(hn::Lt(z, hn::Zero(d)), hn::Sub(hn::Set(d, 2.f), r), r);
}

// hwy::Exp is only valid up to ~+88 (larger inputs wrap to garbage instead of +inf). Clamping to
// 88 gives ~1.6e38, which in x / (1 + e) yields the same (tiny) result as +inf would.
HWY_INLINE VF ExpClamped(DF d, VF x) { return hn::Exp(d, hn::Min(x, hn::Set(d, 88.f))); }

template <Activation kAct>
HWY_INLINE VF Activate(DF d, VF x) {
  if constexpr (kAct == Activation::kSilu) {
    return hn::Div(x, hn::Add(hn::Set(d, 1.f), ExpClamped(d, hn::Neg(x))));
  } else if constexpr (kAct == Activation::kGeluTanh) {
    // 0.5 x (1 + tanh(u)) == x * sigmoid(2u): no cancellation in 1 + tanh(u) for negative u.
    const VF x3 = hn::Mul(hn::Mul(x, x), x);
    const VF u = hn::Mul(hn::Set(d, 0.7978845608028654f), hn::MulAdd(hn::Set(d, 0.044715f), x3, x));
    return hn::Div(x, hn::Add(hn::Set(d, 1.f), ExpClamped(d, hn::Mul(hn::Set(d, -2.f), u))));
  } else if constexpr (kAct == Activation::kGelu) {
    return hn::Mul(hn::Mul(hn::Set(d, 0.5f), x), Erfc(d, hn::Mul(x, hn::Set(d, -0.70710678118654752f))));
  } else {
    return hn::Max(x, hn::Zero(d));
  }
}

// Runs f(i, count) over [0, n) in full vectors, the tail through a zero-padded copy so the same
// vector code handles it. f loads/stores through the pointers it is given.
template <class F>
HWY_INLINE void ForVectors(size_t n, const F& f) {
  const DF d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) f(i, N);
  if (i < n) f(i, n - i);
}

template <Activation kAct>
void GluRange(const GluParams& p, size_t begin, size_t end) {
  const DF d;
  ForVectors(end - begin, [&](size_t off, size_t count) {
    const size_t i = begin + off;
    if (count == hn::Lanes(d)) {
      const VF g = hn::LoadU(d, p.gate + i), u = hn::LoadU(d, p.up + i);
      hn::StoreU(hn::Mul(Activate<kAct>(d, g), u), d, p.out + i);
    } else {
      HWY_ALIGN float g[hn::MaxLanes(d)] = {}, u[hn::MaxLanes(d)] = {}, o[hn::MaxLanes(d)];
      std::memcpy(g, p.gate + i, count * sizeof(float));
      std::memcpy(u, p.up + i, count * sizeof(float));
      hn::Store(hn::Mul(Activate<kAct>(d, hn::Load(d, g)), hn::Load(d, u)), d, o);
      std::memcpy(p.out + i, o, count * sizeof(float));
    }
  });
}

void GluImpl(const GluParams& p) {
  const int64_t total = p.n * p.dim;
  parallel_for(total, kStreamGrain, [&](int64_t b, int64_t e) {
    switch (p.act) {
      case Activation::kSilu: return GluRange<Activation::kSilu>(p, size_t(b), size_t(e));
      case Activation::kGeluTanh: return GluRange<Activation::kGeluTanh>(p, size_t(b), size_t(e));
      case Activation::kGelu: return GluRange<Activation::kGelu>(p, size_t(b), size_t(e));
      case Activation::kRelu: return GluRange<Activation::kRelu>(p, size_t(b), size_t(e));
    }
  });
}

void EmbeddingImpl(const EmbeddingParams& p) {
  const int64_t dim = p.table.cols;
  // Validate every id before any thread starts: errors must not be thrown inside a parallel region.
  for (int64_t t = 0; t < p.n; ++t)
    if (p.ids[t] < 0 || p.ids[t] >= p.table.rows)
      fail(ErrorKind::kInvalidArgument, "token id {} is out of range for a vocabulary of {}", p.ids[t], p.table.rows);
  if (p.table.dtype != DType::kF32 && p.table.dtype != DType::kF16 && p.table.dtype != DType::kBF16)
    fail(ErrorKind::kUnsupported, "cpu embedding: table dtype {} is not supported", dtype_name(p.table.dtype));
  parallel_for(p.n, std::max<int64_t>(1, kStreamGrain / std::max<int64_t>(dim, 1)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const size_t row = size_t(p.ids[t]) * size_t(dim);
      float* out = p.out + size_t(t) * size_t(dim);
      switch (p.table.dtype) {
        case DType::kF32: WidenRow<DType::kF32>(static_cast<const float*>(p.table.data) + row, size_t(dim), out); break;
        case DType::kF16: WidenRow<DType::kF16>(static_cast<const uint16_t*>(p.table.data) + row, size_t(dim), out); break;
        default: WidenRow<DType::kBF16>(static_cast<const uint16_t*>(p.table.data) + row, size_t(dim), out); break;
      }
      if (p.scale != 1.f)
        for (int64_t i = 0; i < dim; ++i) out[i] *= p.scale;
    }
  });
}

void AddImpl(float* y, const float* x, int64_t n) {
  parallel_for(n, kStreamGrain, [&](int64_t b, int64_t e) {
    const DF d;
    const size_t N = hn::Lanes(d);
    size_t i = size_t(b);
    for (; i + N <= size_t(e); i += N) hn::StoreU(hn::Add(hn::LoadU(d, y + i), hn::LoadU(d, x + i)), d, y + i);
    for (; i < size_t(e); ++i) y[i] += x[i];
  });
}

void SoftcapImpl(float* x, int64_t n, float cap) {
  parallel_for(n, kStreamGrain, [&](int64_t b, int64_t e) {
    const DF d;
    const VF vcap = hn::Set(d, cap), vinv = hn::Set(d, 1.f / cap);
    ForVectors(size_t(e - b), [&](size_t off, size_t count) {
      float* p = x + size_t(b) + off;
      if (count == hn::Lanes(d)) {
        hn::StoreU(hn::Mul(vcap, hn::Tanh(d, hn::Mul(hn::LoadU(d, p), vinv))), d, p);
      } else {
        HWY_ALIGN float buf[hn::MaxLanes(d)] = {};
        std::memcpy(buf, p, count * sizeof(float));
        hn::Store(hn::Mul(vcap, hn::Tanh(d, hn::Mul(hn::Load(d, buf), vinv))), d, buf);
        std::memcpy(p, buf, count * sizeof(float));
      }
    });
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace lathe::ops::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lathe::ops::cpu {
HWY_EXPORT(GluImpl);
HWY_EXPORT(EmbeddingImpl);
HWY_EXPORT(AddImpl);
HWY_EXPORT(SoftcapImpl);
void glu(const GluParams& p) { HWY_DYNAMIC_DISPATCH(GluImpl)(p); }
void embedding(const EmbeddingParams& p) { HWY_DYNAMIC_DISPATCH(EmbeddingImpl)(p); }
void add(float* y, const float* x, int64_t n) { HWY_DYNAMIC_DISPATCH(AddImpl)(y, x, n); }
void softcap(float* x, int64_t n, float cap) { HWY_DYNAMIC_DISPATCH(SoftcapImpl)(x, n, cap); }
}  // namespace lathe::ops::cpu
#endif

