#include "quant/gptq_solver.h"

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/bitpack.h"

namespace lathe::quant {

namespace {
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline int quantize_one(float x, float scale, int bits) {
  const int zero = 1 << (bits - 1), maxq = (1 << bits) - 1;
  const int q = int(std::lrint(x / scale)) + zero;
  return std::clamp(q, 0, maxq);
}
}  // namespace

void exl2_find_scales(const float* w, int64_t rows, int64_t n, int bits, uint8_t* codes, float* scale_max) {
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

Exl2Matrix gptq_quantize_exl2(const float* w, int64_t N, int64_t K, const double* h,
                              const std::vector<Exl2Group>& groups, const float* bias, const GptqOptions& opt,
                              double* rel_err) {
  // Act-order: channels by descending Hessian diagonal (stable: ties keep channel order).
  std::vector<int32_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  MatD H;
  if (h) {
    H = Eigen::Map<const MatD>(h, K, K);
    std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return H(a, a) > H(b, b); });
  }
  MatF Wt(K, N);  // act-order rows x output columns
  for (int64_t p = 0; p < K; ++p)
    for (int64_t n = 0; n < N; ++n) Wt(p, n) = w[n * K + perm[size_t(p)]];

  // Upper Cholesky factor of the inverse of the damped, permuted Hessian (identity without one).
  MatD U = MatD::Identity(K, K);
  if (h) {
    MatD Hp(K, K);
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) Hp(i, j) = H(perm[size_t(i)], perm[size_t(j)]);
    for (int64_t i = 0; i < K; ++i)
      if (Hp(i, i) <= 0) {  // a channel that never fired: no information, quantize it alone
        Hp(i, i) = 1;
        Wt.row(i).setZero();
      }
    const double mean_diag = Hp.diagonal().mean();
    double damp = opt.damp * mean_diag;
    bool ok = false;
    for (int attempt = 0; attempt < 10 && !ok; ++attempt, damp *= 2) {
      MatD D = Hp;
      D.diagonal().array() += damp;
      Eigen::LLT<MatD> llt(D);
      if (llt.info() != Eigen::Success) continue;
      const MatD inv = llt.solve(MatD::Identity(K, K));
      Eigen::LLT<MatD> llt2(inv);
      if (llt2.info() != Eigen::Success) continue;
      U = llt2.matrixU();
      ok = true;
    }
    if (!ok) fail(ErrorKind::kInternal, "GPTQ: the Hessian stays singular after damping; use more calibration text");
  }

  const MatF W0 = Wt;
  std::vector<uint8_t> q(static_cast<size_t>(K * N)), codes(groups.size() * size_t(N));
  std::vector<float> maxes(groups.size());
  int64_t g0 = 0;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const int bits = groups[gi].bits, zero = 1 << (bits - 1);
    const int64_t g1 = g0 + groups[gi].rows;
    exl2_find_scales(Wt.data() + g0 * N, g1 - g0, N, bits, codes.data() + gi * size_t(N), &maxes[gi]);
    std::vector<float> scale(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) scale[size_t(n)] = exl2_scale(codes[gi * size_t(N) + size_t(n)], maxes[gi]);
    MatF Err(g1 - g0, N);
    for (int64_t i = g0; i < g1; ++i) {
      const float d = float(U(i, i));
      for (int64_t n = 0; n < N; ++n) {
        const int qi = quantize_one(Wt(i, n), scale[size_t(n)], bits);
        q[size_t(i * N + n)] = uint8_t(qi);
        Err(i - g0, n) = (Wt(i, n) - float(qi - zero) * scale[size_t(n)]) / d;
      }
      // Spread this row's error over the group's later rows.
      for (int64_t j = i + 1; j < g1; ++j) Wt.row(j) -= float(U(i, j)) * Err.row(i - g0);
    }
    // ... and the group's error over every later row at once.
    if (g1 < K) Wt.bottomRows(K - g1).noalias() -= U.block(g0, g1, g1 - g0, K - g1).cast<float>().transpose() * Err;
    g0 = g1;
  }

  Exl2Matrix m = exl2_pack(K, N, groups, perm, q.data(), codes.data(), maxes.data(), bias);
  if (rel_err) {
    std::vector<float> dq(static_cast<size_t>(N * K));
    exl2_dequantize(m, dq.data());
    double num = 0, den = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const double a = w[n * K + k], b = dq[size_t(n * K + k)];
        num += (a - b) * (a - b);
        den += a * a;
      }
    *rel_err = std::sqrt(num / std::max(den, 1e-30));
  }
  return m;
}

std::vector<Exl2Group> exl2_groups_for_bpw(double bits, int64_t K, int64_t N, int64_t group_size) {
  if (!(bits >= 2.0 && bits <= 8.5))
    fail(ErrorKind::kInvalidArgument, "{} bits per weight is outside what EXL2 can store (about 2.2 to 8.1)", bits);
  static const int kWidths[] = {8, 6, 5, 4, 3, 2};
  group_size = std::min(group_size, K);
  const int64_t units = K / group_size, tail = K % group_size;
  const int64_t n_groups = units + (tail ? 1 : 0);
  // The format's overhead per weight at this layout (scales, maxima, group table, permutation),
  // then the payload width that leaves: the first groups at `hi`, the rest at `lo`.
  const double overhead =
      (32.0 * double(K) + double(n_groups) * (16.0 + 32.0 + 4.0 * double(N))) / (double(K) * double(N));
  const double target = bits - overhead;
  int hi = 8, lo = 8;
  for (int b : kWidths)
    if (double(b) >= target) hi = b;
  for (int b : kWidths)
    if (double(b) <= target) {
      lo = b;
      break;
    }
  if (target < 2.0) hi = lo = 2;
  int64_t hi_groups = units;
  if (hi != lo)
    hi_groups = std::clamp<int64_t>(int64_t(std::lround((target - lo) / double(hi - lo) * double(n_groups))), 0, units);
  std::vector<Exl2Group> groups;
  for (int64_t u = 0; u < units; ++u) groups.push_back({u < hi_groups ? hi : lo, group_size});
  if (tail) groups.push_back({lo, tail});
  return groups;
}

}  // namespace lathe::quant
