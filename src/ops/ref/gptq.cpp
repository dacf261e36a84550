// The default gptq_factor / gptq_exl2 (host memory): the quantizer's solves on the CPU backends,
// and the reference the device backends are tested against. Straightforward on purpose: per group
// the scales, then row by row quantize and spread the error over the group's later rows, then the
// group's error over all later rows at once (one GEMM).
#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "ops/ops.h"

namespace lathe::ops {

namespace {
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline int quantize_one(float x, float scale, int bits) {
  const int zero = 1 << (bits - 1), maxq = (1 << bits) - 1;
  const int q = int(std::lrint(x / scale)) + zero;
  return std::clamp(q, 0, maxq);
}

}  // namespace

void check_gptq_exl2(const GptqExl2Params& p) {
  if (p.w.rows <= 0 || p.w.cols <= 0 || !p.perm || !p.q || !p.codes || !p.maxes || !p.groups)
    fail(ErrorKind::kInvalidArgument, "gptq_exl2: missing input or output");
  int64_t rows = 0;
  for (int64_t g = 0; g < p.num_groups; ++g) {
    const int b = p.groups[g].bits;
    if (!(b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8) || p.groups[g].rows <= 0)
      fail(ErrorKind::kInvalidArgument, "gptq_exl2: group {} has {} bits and {} rows", g, b, p.groups[g].rows);
    rows += p.groups[g].rows;
  }
  if (rows != p.w.cols)
    fail(ErrorKind::kInvalidArgument, "gptq_exl2: the groups cover {} rows of {}", rows, p.w.cols);
}

void gptq_find_scales(const float* w, int64_t rows, int64_t n, int bits, uint8_t* codes, float* scale_max) {
  const double half = double((1 << bits) - 1) / 2.0;
  std::vector<double> base(static_cast<size_t>(n), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) base[size_t(c)] = std::max(base[size_t(c)], double(std::fabs(w[r * n + c])));
  double gmax = 0;
  for (auto& b : base) {
    b /= half;
    gmax = std::max(gmax, b);
  }
  if (gmax <= 0) gmax = 1e-8;
  for (int64_t c = 0; c < n; ++c)
    codes[c] = uint8_t(std::clamp(int(std::lrint(std::sqrt(base[size_t(c)] / gmax) * 16.0)), 1, 16));
  // The group maximum times the multiplier with the least sum |err|^3.5, computed with the maximum
  // as float16 stores it (what the dequantizer will use).
  double best_err = INFINITY;
  float best_max = float(gmax);
  for (int i = 0; i <= 96; ++i) {
    const double p = 0.70 + 0.5 * double(i) / 96.0;
    const float m = f16_to_f32(f32_to_f16(float(gmax * p)));
    if (!(m > 0)) continue;
    double err = 0;
    for (int64_t c = 0; c < n && err < best_err; ++c) {
      const float s = exl2_scale(codes[c], m);
      const int zero = 1 << (bits - 1);
      for (int64_t r = 0; r < rows; ++r) {
        const float x = w[r * n + c];
        const double d = std::fabs(double(x) - double(quantize_one(x, s, bits) - zero) * double(s));
        err += d * d * d * std::sqrt(d);  // |err|^3.5
      }
    }
    if (err < best_err) best_err = err, best_max = m;
  }
  *scale_max = best_max;
}

bool Ops::gptq_factor(const GptqFactorParams& p) {
  if (!host_memory())
    fail(ErrorKind::kInternal, "backend {} must implement gptq_factor (its memory is not host memory)", name());
  const int64_t K = p.k;
  if (K <= 0 || !p.h || !p.perm || !p.u) fail(ErrorKind::kInvalidArgument, "gptq_factor: missing input or output");
  const Eigen::Map<const MatD> H(p.h, K, K);
  MatD D(K, K);
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) D(i, j) = H(p.perm[i], p.perm[j]);
  for (int64_t i = 0; i < K; ++i) D(i, i) = (D(i, i) <= 0 ? 1.0 : D(i, i)) + p.damp;
  Eigen::LLT<MatD> llt(D);
  if (llt.info() != Eigen::Success) return false;
  const MatD inv = llt.solve(MatD::Identity(K, K));
  Eigen::LLT<MatD> llt2(inv);
  if (llt2.info() != Eigen::Success) return false;
  Eigen::Map<MatF>(p.u, K, K) = MatD(llt2.matrixU()).cast<float>();
  return true;
}

void Ops::gptq_exl2(const GptqExl2Params& p) {
  if (!host_memory())
    fail(ErrorKind::kInternal, "backend {} must implement gptq_exl2 (its memory is not host memory)", name());
  check_gptq_exl2(p);
  const int64_t K = p.w.cols, N = p.w.rows;
  // Act-order rows x output columns; channels that never fired quantize as zero.
  MatF Wt(K, N);
  {
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t n = 0; n < N; ++n) {
      convert_to_f32(static_cast<const char*>(p.w.data) + size_t(n * K) * dtype_size(p.w.dtype), p.w.dtype,
                     row.data(), row.size());
      for (int64_t k = 0; k < K; ++k) Wt(k, n) = row[size_t(p.perm[k])];
    }
  }
  if (p.u && p.h)
    for (int64_t k = 0; k < K; ++k)
      if (p.h[int64_t(p.perm[k]) * K + p.perm[k]] <= 0) Wt.row(k).setZero();
  const float one = 1.f;
  auto U = [&](int64_t i, int64_t j) { return p.u ? p.u[i * K + j] : (i == j ? one : 0.f); };

  std::vector<float> scale(static_cast<size_t>(N));
  int64_t g0 = 0;
  for (int64_t gi = 0; gi < p.num_groups; ++gi) {
    const int bits = p.groups[gi].bits, zero = 1 << (bits - 1);
    const int64_t g1 = g0 + p.groups[gi].rows;
    uint8_t* codes = p.codes + gi * N;
    gptq_find_scales(Wt.data() + g0 * N, g1 - g0, N, bits, codes, &p.maxes[gi]);
    for (int64_t n = 0; n < N; ++n) scale[size_t(n)] = exl2_scale(codes[n], p.maxes[gi]);
    MatF Err(g1 - g0, N);
    for (int64_t i = g0; i < g1; ++i) {
      const float d = U(i, i);
      for (int64_t n = 0; n < N; ++n) {
        const int qi = quantize_one(Wt(i, n), scale[size_t(n)], bits);
        p.q[i * N + n] = uint8_t(qi);
        Err(i - g0, n) = (Wt(i, n) - float(qi - zero) * scale[size_t(n)]) / d;
        if (p.wq)
          p.wq[n * K + p.perm[i]] = f32_to_f16(float(qi - zero) * scale[size_t(n)]);
      }
      if (!p.u) continue;
      for (int64_t j = i + 1; j < g1; ++j) Wt.row(j) -= U(i, j) * Err.row(i - g0);  // the group's later rows
    }
    if (p.u && g1 < K)  // ... and the group's error over every later row at once
      Wt.bottomRows(K - g1).noalias() -=
          Eigen::Map<const MatF>(p.u, K, K).block(g0, g1, g1 - g0, K - g1).transpose() * Err;
    g0 = g1;
  }
}

}  // namespace lathe::ops
