// accumulate_gram on the GPU (the quantizer's input Hessians): x converted to double a slice of rows
// at a time, then h += x^T x by cublasDgemm (both triangles, in double like the host reference; the
// H100's FP64 tensor cores make this a small part of a calibration pass).
#include <algorithm>
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/cuda_internal.h"

namespace lathe::ops::cuda {
namespace {

constexpr int64_t kSliceElems = int64_t(16) << 20;  // doubles of x converted at a time (128 MiB)

__global__ void to_double_kernel(const float* __restrict__ x, double* __restrict__ out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = double(x[i]);
}

}  // namespace

void accumulate_gram(Context& ctx, const GramParams& p) {
  if (p.rows < 0 || p.dim < 0) raise(ErrorKind::kInvalidArgument, "accumulate_gram: negative size");
  if (p.rows == 0 || p.dim == 0) return;
  if (p.dim > INT32_MAX / 2) raise(ErrorKind::kUnsupported, "accumulate_gram: dim too large");
  const int64_t slice = std::max<int64_t>(1, std::min<int64_t>(p.rows, kSliceElems / p.dim));
  auto* xd = static_cast<double*>(ctx.scratch(Scratch::kMatmulX, sizeof(double) * size_t(slice * p.dim)));
  for (int64_t r0 = 0; r0 < p.rows; r0 += slice) {
    const int64_t n = std::min(slice, p.rows - r0), total = n * p.dim;
    to_double_kernel<<<unsigned((total + 255) / 256), 256, 0, ctx.stream>>>(p.x + r0 * p.dim, xd, total);
    LATHE_CUDA_CHECK_LAUNCH("to_double_kernel");
    // Column-major view: x row-major [n, dim] is A = x^T [dim, n] (ld dim); h (symmetric, so either
    // order) += A A^T.
    const double one = 1.0;
    LATHE_CUBLAS_CHECK(cublasDgemm(ctx.blas, CUBLAS_OP_N, CUBLAS_OP_T, int(p.dim), int(p.dim), int(n), &one, xd, int(p.dim), xd,
                                   int(p.dim), &one, p.h, int(p.dim)));
  }
}

}  // namespace lathe::ops::cuda
