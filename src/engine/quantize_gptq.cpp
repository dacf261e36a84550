#include "engine/quantize_gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"

namespace lathe::engine::qz {

GptqFactor::GptqFactor(ops::Ops& ops, const double* h, int64_t k, double damp) : k_(k), h_(h) {
  // Act-order from the diagonal (on the host: k values); ties keep channel order.
  std::vector<double> diag(static_cast<size_t>(k));
  ops.copy_to_host_strided(diag.data(), h, sizeof(double), k, sizeof(double) * size_t(k + 1));
  perm_.resize(size_t(k));
  std::iota(perm_.begin(), perm_.end(), 0);
  std::stable_sort(perm_.begin(), perm_.end(), [&](int32_t a, int32_t b) { return diag[size_t(a)] > diag[size_t(b)]; });
  perm_b_ = ops::Buffer(ops, size_t(k) * sizeof(int32_t));
  ops.copy_to_backend(perm_b_.data(), perm_.data(), size_t(k) * sizeof(int32_t));
  u_ = ops::Buffer(ops, size_t(k * k) * sizeof(float));
  double mean = 0;
  for (double d : diag) mean += d <= 0 ? 1.0 : d;  // dead channels count with the unit they get
  mean /= double(k);
  double damp_abs = damp * mean;
  for (int attempt = 0; attempt < 10; ++attempt, damp_abs *= 2)
    if (ops.gptq_factor({h, perm_backend(), k, damp_abs, static_cast<float*>(u_.data())})) return;
  fail(ErrorKind::kInternal, "GPTQ: the Hessian stays singular after damping; use more calibration text");
}

GptqFactor::GptqFactor(ops::Ops& ops, int64_t k) : k_(k) {
  perm_.resize(size_t(k));
  std::iota(perm_.begin(), perm_.end(), 0);
  perm_b_ = ops::Buffer(ops, size_t(k) * sizeof(int32_t));
  ops.copy_to_backend(perm_b_.data(), perm_.data(), size_t(k) * sizeof(int32_t));
}

GptqResult gptq_solve(ops::Ops& ops, const GptqFactor& f, const ops::Weight& w,
                      const std::vector<quant::Exl2Group>& groups, uint16_t* wq) {
  if (w.cols != f.k()) fail(ErrorKind::kInternal, "GPTQ: a weight of {} inputs with a factor of {}", w.cols, f.k());
  GptqResult r;
  r.groups = groups;
  r.out_features = w.rows;
  r.in_features = w.cols;
  const int64_t N = w.rows, K = w.cols, G = int64_t(groups.size());
  r.q = ops::Buffer(ops, size_t(K * N));
  r.codes = ops::Buffer(ops, size_t(G * N));
  r.maxes = ops::Buffer(ops, size_t(G) * sizeof(float));
  std::vector<ops::GptqGroup> gs;
  for (const quant::Exl2Group& g : groups) gs.push_back({g.bits, g.rows});
  ops::GptqExl2Params p;
  p.w = w;
  p.perm = f.perm_backend();
  p.h = f.h();
  p.u = f.u();
  p.groups = gs.data();
  p.num_groups = G;
  p.q = static_cast<uint8_t*>(r.q.data());
  p.codes = static_cast<uint8_t*>(r.codes.data());
  p.maxes = static_cast<float*>(r.maxes.data());
  p.wq = wq;
  ops.gptq_exl2(p);
  return r;
}

quant::Exl2Matrix gptq_pack(ops::Ops& ops, const GptqFactor& f, const GptqResult& r, const float* bias) {
  const int64_t N = r.out_features, K = r.in_features, G = int64_t(r.groups.size());
  std::vector<uint8_t> q(static_cast<size_t>(K * N)), codes(static_cast<size_t>(G * N));
  std::vector<float> maxes(static_cast<size_t>(G));
  ops.copy_to_host(q.data(), r.q.data(), q.size());
  ops.copy_to_host(codes.data(), r.codes.data(), codes.size());
  ops.copy_to_host(maxes.data(), r.maxes.data(), maxes.size() * sizeof(float));
  return quant::exl2_pack(K, N, r.groups, f.perm(), q.data(), codes.data(), maxes.data(), bias);
}

double relative_error(ops::Ops& ops, const ops::Weight& w, const uint16_t* wq, int64_t rows, int64_t cols) {
  std::vector<uint16_t> h(static_cast<size_t>(rows * cols));
  ops.copy_to_host(h.data(), wq, h.size() * sizeof(uint16_t));
  std::vector<double> num(static_cast<size_t>(rows)), den(static_cast<size_t>(rows));
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      convert_to_f32(static_cast<const char*>(w.data) + size_t(r * cols) * dtype_size(w.dtype), w.dtype, row.data(),
                     row.size());
      double a = 0, b = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double x = row[size_t(c)], e = x - double(f16_to_f32(h[size_t(r * cols + c)]));
        a += e * e;
        b += x * x;
      }
      num[size_t(r)] = a;
      den[size_t(r)] = b;
    }
  });
  const double n = std::accumulate(num.begin(), num.end(), 0.0), d = std::accumulate(den.begin(), den.end(), 0.0);
  return std::sqrt(n / std::max(d, 1e-30));
}

}  // namespace lathe::engine::qz
