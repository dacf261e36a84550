// Default (host) memory management and row gather/scatter of the op contract, shared by every
// backend whose memory is ordinary host memory.
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "ops/ops.h"

namespace lathe::ops {

void* Ops::alloc(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p) fail(ErrorKind::kOutOfRange, "out of host memory allocating {} bytes", bytes);
  std::memset(p, 0, rounded == 0 ? 64 : rounded);
  return p;
}

void Ops::free(void* p) noexcept { std::free(p); }

void Ops::copy_to_backend(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void Ops::copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void Ops::copy(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}

void Ops::matmul_multi(const MultiMatmulParams& p) {
  for (int i = 0; i < p.count; ++i) {
    MatmulParams m;
    m.x = p.x;
    m.w = p.w[i];
    m.bias = p.bias[i];
    m.y = p.y[i];
    m.n = p.n;
    matmul(m);
  }
}

void Ops::add_rms_norm(float* x, const float* delta, const RmsNormParams& p) {
  add(x, delta, p.n * p.dim);
  RmsNormParams q = p;
  q.x = x;
  rms_norm(q);
}

void Ops::gather_rows(const GatherRowsParams& p) {
  for (int64_t i = 0; i < p.n; ++i)
    std::memcpy(p.dst + i * p.dim, p.src + int64_t(p.idx[i]) * p.dim, size_t(p.dim) * sizeof(float));
}

void Ops::scatter_add_rows(const ScatterAddRowsParams& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    float* d = p.dst + int64_t(p.idx[i]) * p.dim;
    const float* s = p.src + i * p.dim;
    const float w = p.weight[i];
    for (int64_t j = 0; j < p.dim; ++j) d[j] += w * s[j];
  }
}

#ifndef LATHE_HAVE_CUDA
std::unique_ptr<Ops> make_cuda_ops(const BackendOptions&) { return nullptr; }
bool cuda_available() { return false; }
#endif

}  // namespace lathe::ops
