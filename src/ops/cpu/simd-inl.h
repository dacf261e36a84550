// Per-target SIMD building blocks shared by the op families: weight widening (bf16/f16 -> f32) and
// the register-tiled micro-kernel C[R x C*N] (+)= A[R x kc] * B[kc x C*N] that both the prefill
// matmul (B = a packed weight panel) and attention (B = packed K^T, or V rows) run on.
//
// foreach_target.h re-includes this header once per Highway target, hence the toggled guard
// instead of #pragma once.
#if defined(LATHE_OPS_CPU_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef LATHE_OPS_CPU_SIMD_INL_H_
#undef LATHE_OPS_CPU_SIMD_INL_H_
#else
#define LATHE_OPS_CPU_SIMD_INL_H_
#endif

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>

#include <hwy/highway.h>

#include "core/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace lathe::ops::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Micro-tile shape. With 32 vector registers (AVX-512) a 4 x 4-vector tile keeps 16 accumulators,
// 4 B vectors and a broadcast in registers: 16 FMAs per 8 loads, enough to stay FMA-bound. Targets
// with 16 registers (AVX2, SSE4) get 4 x 2 so nothing spills.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
inline constexpr int kTileRows = 4;
inline constexpr int kTileVecs = 4;
#else
inline constexpr int kTileRows = 4;
inline constexpr int kTileVecs = 2;
#endif

// ---- weight widening ------------------------------------------------------------------------

// bf16 is the top half of a float32: zero-extend to 32 bits and shift into place (exact).
HWY_INLINE VF LoadBF16(DF d, const uint16_t* HWY_RESTRICT p) {
  const hn::Rebind<uint16_t, DF> d16;
  const hn::Rebind<uint32_t, DF> d32;
  return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(d32, hn::LoadU(d16, p))));
}

// IEEE half -> float: F16C on AVX2/AVX-512, emulated (still exact) elsewhere.
HWY_INLINE VF LoadF16(DF d, const uint16_t* HWY_RESTRICT p) {
  const hn::Rebind<hwy::float16_t, DF> dh;
  return hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p)));
}

// Weight element type as a compile-time tag so hot loops are specialised per dtype.
template <DType kType>
struct WeightTraits;
template <>
struct WeightTraits<DType::kF32> {
  using T = float;
  static HWY_INLINE VF Load(DF d, const float* HWY_RESTRICT p) { return hn::LoadU(d, p); }
  static HWY_INLINE float Scalar(float v) { return v; }
};
template <>
struct WeightTraits<DType::kBF16> {
  using T = uint16_t;
  static HWY_INLINE VF Load(DF d, const uint16_t* HWY_RESTRICT p) { return LoadBF16(d, p); }
  static HWY_INLINE float Scalar(uint16_t v) { return bf16_to_f32(v); }
};
template <>
struct WeightTraits<DType::kF16> {
  using T = uint16_t;
  static HWY_INLINE VF Load(DF d, const uint16_t* HWY_RESTRICT p) { return LoadF16(d, p); }
  static HWY_INLINE float Scalar(uint16_t v) { return f16_to_f32(v); }
};

// Widens n weights to float32 (dst may be any alignment).
template <DType kType>
HWY_INLINE void WidenRow(const typename WeightTraits<kType>::T* HWY_RESTRICT src, size_t n,
                         float* HWY_RESTRICT dst) {
  const DF d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(WeightTraits<kType>::Load(d, src + i), d, dst + i);
  for (; i < n; ++i) dst[i] = WeightTraits<kType>::Scalar(src[i]);
}

// ---- micro-kernel ---------------------------------------------------------------------------

// For r < R: c[r][0 .. C*N) = (accumulate ? c[r] : 0) + (bias ? bias : 0) + sum_kk a[r][kk] * b[kk*ldb + ..].
// a[r] are independent row pointers (query rows of one head are not evenly strided across a GQA
// group), b rows are C*N contiguous floats ldb apart. Accumulating one k-block at a time keeps each
// accumulator chain short (kc terms), which is also what keeps float32 error near the double ref.
template <int R, int C>
HWY_NOINLINE void TileKernel(const float* const* a, size_t kc, const float* HWY_RESTRICT b, size_t ldb,
                             float* const* c, const float* bias, bool accumulate) {
  const DF d;
  const size_t N = hn::Lanes(d);
  VF acc[R][C];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) acc[r][j] = hn::Zero(d);
  const float* a_row[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) a_row[r] = a[r];
  for (size_t kk = 0; kk < kc; ++kk) {
    const float* HWY_RESTRICT brow = b + kk * ldb;
    VF bv[C];
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) bv[j] = hn::LoadU(d, brow + j * N);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const VF av = hn::Set(d, a_row[r][kk]);
#pragma GCC unroll 16
      for (int j = 0; j < C; ++j) acc[r][j] = hn::MulAdd(av, bv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) {
      VF v = acc[r][j];
      if (bias) v = hn::Add(v, hn::LoadU(d, bias + j * N));
      if (accumulate) v = hn::Add(v, hn::LoadU(d, c[r] + j * N));
      hn::StoreU(v, d, c[r] + j * N);
    }
  }
}

using TileFn = void (*)(const float* const*, size_t, const float*, size_t, float* const*, const float*,
                        bool);

template <size_t... I>
constexpr auto MakeTileTable(std::index_sequence<I...>) {
  return std::array<TileFn, sizeof...(I)>{&TileKernel<int(I / kTileVecs) + 1, int(I % kTileVecs) + 1>...};
}

// Runs the rows x vecs tile (1 <= rows <= kTileRows, 1 <= vecs <= kTileVecs) chosen at run time.
HWY_INLINE void Tile(int rows, int vecs, const float* const* a, size_t kc, const float* b, size_t ldb,
                     float* const* c, const float* bias, bool accumulate) {
  static constexpr auto kTable = MakeTileTable(std::make_index_sequence<kTileRows * kTileVecs>());
  kTable[size_t((rows - 1) * kTileVecs + (vecs - 1))](a, kc, b, ldb, c, bias, accumulate);
}

// Horizontal sum of one vector.
HWY_INLINE float SumLanes(VF v) { return hn::GetLane(hn::SumOfLanes(DF(), v)); }
HWY_INLINE float MaxLanes(VF v) { return hn::GetLane(hn::MaxOfLanes(DF(), v)); }

// Horizontal sums of many vectors: out[i] = sum of lanes of v[i]. Four at a time, two rounds of
// in-block interleave + add leave [sum a, sum b, sum c, sum d] per 128-bit block, and halving the
// vector adds the blocks; ~half the shuffles of four separate reductions, which matters for
// GEMV epilogues (one reduction per output).
#if HWY_TARGET != HWY_SCALAR
template <class D>
HWY_INLINE hn::Vec<hn::Full128<float>> FoldBlocks(D d, hn::Vec<D> v) {
  if constexpr (hn::MaxLanes(D()) > 4) {
    const hn::Half<D> dh;
    return FoldBlocks(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  } else {
    return v;
  }
}
#endif

template <size_t kCount>
HWY_INLINE void SumLanesMany(const VF* v, float* out) {
  size_t i = 0;
#if HWY_TARGET != HWY_SCALAR
  const DF d;
  const hn::Repartition<double, DF> d64;
  for (; i + 4 <= kCount; i += 4) {
    const VF ab = hn::Add(hn::InterleaveLower(d, v[i], v[i + 1]), hn::InterleaveUpper(d, v[i], v[i + 1]));
    const VF cd = hn::Add(hn::InterleaveLower(d, v[i + 2], v[i + 3]), hn::InterleaveUpper(d, v[i + 2], v[i + 3]));
    const auto ab64 = hn::BitCast(d64, ab), cd64 = hn::BitCast(d64, cd);
    const VF sums = hn::Add(hn::BitCast(d, hn::InterleaveLower(d64, ab64, cd64)),
                            hn::BitCast(d, hn::InterleaveUpper(d64, ab64, cd64)));
    hn::StoreU(FoldBlocks(d, sums), hn::Full128<float>(), out + i);
  }
#endif
  for (; i < kCount; ++i) out[i] = SumLanes(v[i]);
}

}  // namespace HWY_NAMESPACE
}  // namespace lathe::ops::cpu
HWY_AFTER_NAMESPACE();

#endif  // LATHE_OPS_CPU_SIMD_INL_H_
