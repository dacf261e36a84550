// rms_norm (plain and fused with the residual add) and rope for the CPU backend: row-wise, memory-light ops, SIMD within a row and rows
// split across threads once there is enough work to pay for the fork/join.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/cpu/norm_rope.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/cpu/cpu_internal.h"
#include "ops/cpu/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace lathe::ops::cpu {
namespace HWY_NAMESPACE {

// Rows per parallel chunk so a chunk touches >= ~16K floats.
int64_t RowGrain(int64_t row_floats) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(row_floats, 1)); }

// Widens the norm weight once per call with the offset folded in, so rows compute
// y = (x * inv) * (offset + w) in the reference's order. Lives in the caller's scratch slot.
const float* NormWeight(const RmsNormParams& p) {
  const size_t dim = size_t(p.dim);
  if (p.w.cols != p.dim) fail(ErrorKind::kInvalidArgument, "rms_norm: weight has {} columns, dim is {}", p.w.cols, p.dim);
  float* wf = thread_scratch(3, dim);
  switch (p.w.dtype) {
    case DType::kF32: WidenRow<DType::kF32>(static_cast<const float*>(p.w.data), dim, wf); break;
    case DType::kF16: WidenRow<DType::kF16>(static_cast<const uint16_t*>(p.w.data), dim, wf); break;
    case DType::kBF16: WidenRow<DType::kBF16>(static_cast<const uint16_t*>(p.w.data), dim, wf); break;
    default: fail(ErrorKind::kUnsupported, "cpu rms_norm: weight dtype {} is not supported", dtype_name(p.w.dtype));
  }
  if (p.weight_offset != 0.f)
    for (size_t i = 0; i < dim; ++i) wf[i] = p.weight_offset + wf[i];
  return wf;
}

// One row. With delta, x += delta first (the fused residual add): the sum of squares is taken over
// the updated values in the same pass, so the row is read once for both.
HWY_INLINE void NormRow(float* x_io, const float* x_in, const float* delta, const float* wf, float* y, size_t dim,
                        float eps) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const float* x = delta ? x_io : x_in;
  VF s0 = hn::Zero(d), s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= dim; i += 2 * N) {
    VF a = hn::LoadU(d, x + i), b = hn::LoadU(d, x + i + N);
    if (delta) {
      a = hn::Add(a, hn::LoadU(d, delta + i));
      b = hn::Add(b, hn::LoadU(d, delta + i + N));
      hn::StoreU(a, d, x_io + i);
      hn::StoreU(b, d, x_io + i + N);
    }
    s0 = hn::MulAdd(a, a, s0);
    s1 = hn::MulAdd(b, b, s1);
  }
  for (; i + N <= dim; i += N) {
    VF a = hn::LoadU(d, x + i);
    if (delta) {
      a = hn::Add(a, hn::LoadU(d, delta + i));
      hn::StoreU(a, d, x_io + i);
    }
    s0 = hn::MulAdd(a, a, s0);
  }
  double ss = SumLanes(hn::Add(s0, s1));
  for (; i < dim; ++i) {
    if (delta) x_io[i] += delta[i];
    ss += double(x[i]) * x[i];
  }
  const float inv = float(1.0 / std::sqrt(ss / double(dim) + double(eps)));
  const VF vinv = hn::Set(d, inv);
  // y may alias x: every x of the row was read above, before the first y is written.
  i = 0;
  for (; i + N <= dim; i += N) hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(d, x + i), vinv), hn::LoadU(d, wf + i)), d, y + i);
  for (; i < dim; ++i) y[i] = x[i] * inv * wf[i];
}

void RmsNormImpl(const RmsNormParams& p) {
  if (p.n <= 0 || p.dim <= 0) return;
  const float* wf = NormWeight(p);
  const size_t dim = size_t(p.dim);
  parallel_for(p.n, RowGrain(p.dim), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      NormRow(nullptr, p.x + size_t(t) * dim, nullptr, wf, p.y + size_t(t) * dim, dim, p.eps);
  });
}

void AddRmsNormImpl(float* x, const float* delta, const RmsNormParams& p) {
  if (p.n <= 0 || p.dim <= 0) return;
  const float* wf = NormWeight(p);
  const size_t dim = size_t(p.dim);
  parallel_for(p.n, RowGrain(p.dim), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const size_t off = size_t(t) * dim;
      NormRow(x + off, nullptr, delta + off, wf, p.y + off, dim, p.eps);
    }
  });
}

void RopeImpl(const RopeParams& p) {
  const size_t half = size_t(p.rot_dim / 2), hd = size_t(p.head_dim), heads = size_t(p.n_heads);
  if (p.n <= 0 || half == 0 || heads == 0) return;
  if (p.rot_dim > p.head_dim) fail(ErrorKind::kInvalidArgument, "rope: rot_dim {} exceeds head_dim {}", p.rot_dim, p.head_dim);
  parallel_for(p.n, RowGrain(p.n_heads * p.rot_dim), [&](int64_t t0, int64_t t1) {
    const DF d;
    const size_t N = hn::Lanes(d);
    for (int64_t t = t0; t < t1; ++t) {
      const float* cs = p.cos + size_t(t) * half;
      const float* sn = p.sin + size_t(t) * half;
      for (size_t h = 0; h < heads; ++h) {
        float* x = p.x + (size_t(t) * heads + h) * hd;
        size_t i = 0;
        for (; i + N <= half; i += N) {
          const VF a = hn::LoadU(d, x + i), b = hn::LoadU(d, x + i + half);
          const VF c = hn::LoadU(d, cs + i), s = hn::LoadU(d, sn + i);
          hn::StoreU(hn::Sub(hn::Mul(a, c), hn::Mul(b, s)), d, x + i);
          hn::StoreU(hn::Add(hn::Mul(b, c), hn::Mul(a, s)), d, x + i + half);
        }
        for (; i < half; ++i) {
          const float a = x[i], b = x[i + half];
          x[i] = a * cs[i] - b * sn[i];
          x[i + half] = b * cs[i] + a * sn[i];
        }
      }
    }
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace lathe::ops::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace lathe::ops::cpu {
HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(RopeImpl);
HWY_EXPORT(AddRmsNormImpl);
void rms_norm(const RmsNormParams& p) { HWY_DYNAMIC_DISPATCH(RmsNormImpl)(p); }
void add_rms_norm(float* x, const float* delta, const RmsNormParams& p) {
  HWY_DYNAMIC_DISPATCH(AddRmsNormImpl)(x, delta, p);
}
void rope(const RopeParams& p) { HWY_DYNAMIC_DISPATCH(RopeImpl)(p); }
}  // namespace lathe::ops::cpu
#endif
