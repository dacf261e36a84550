// Elementwise and row-copy ops of the CUDA backend: glu, embedding, add, softcap, gather_rows,
// scatter_rows, scatter_add_rows. All are memory-bound one-pass kernels (grid-stride loops, coalesced along the
// row), using the accurate expf/tanhf/erff so results stay within a few ulp of the reference.
#include <algorithm>
#include <climits>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/pdl.cuh"

namespace lathe::ops::cuda {
namespace {

constexpr int kThreads = 256;

// out may alias gate or up: each element is read before it is written, by the same thread.
template <Activation A>
__global__ void glu_kernel(const float* gate, const float* up, float* out, int64_t total) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = activate<A>(gate[i]) * up[i];
}

// Ids are validated on the host by the model before they are uploaded; an id out of range here
// would read outside the table, so it is clamped into [0, vocab) instead (a device-side error would
// need a sync per call to report).
template <typename T>
__global__ void embedding_kernel(const T* __restrict__ table, const int32_t* __restrict__ ids,
                                 float* __restrict__ out, int64_t vocab, int64_t dim, float scale) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  int64_t id = ids[blockIdx.x];
  id = id < 0 ? 0 : id >= vocab ? vocab - 1 : id;
  const T* row = table + id * dim;
  float* o = out + int64_t(blockIdx.x) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = widen(row[i]) * scale;
}

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

__global__ void softcap_kernel(float* __restrict__ x, int64_t n, float cap) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = cap * tanhf(x[i] / cap);
}

__global__ void gather_rows_kernel(const float* __restrict__ src, const int32_t* __restrict__ idx,
                                   float* __restrict__ dst, int64_t dim) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  const float* s = src + int64_t(idx[blockIdx.x]) * dim;
  float* d = dst + int64_t(blockIdx.x) * dim;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) d[j] = s[j];
}

// Indices are unique within one call (the op contract), so blocks never update the same row.
__global__ void scatter_add_rows_kernel(float* __restrict__ dst, const int32_t* __restrict__ idx,
                                        const float* __restrict__ weight, const float* __restrict__ src,
                                        int64_t dim) {
  float* d = dst + int64_t(idx[blockIdx.x]) * dim;
  const float* s = src + int64_t(blockIdx.x) * dim;
  const float w = weight[blockIdx.x];
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) d[j] += w * s[j];
}

__global__ void scatter_rows_kernel(float* __restrict__ dst, const int32_t* __restrict__ idx,
                                    const float* __restrict__ src, int64_t dim) {
  float* d = dst + int64_t(idx[blockIdx.x]) * dim;
  const float* s = src + int64_t(blockIdx.x) * dim;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) d[j] = s[j];
}

int row_threads(int64_t dim) { return int(std::min<int64_t>(kThreads, (dim + kWarp - 1) / kWarp * kWarp)); }

void check_rows(int64_t n, const char* op) {
  if (n > INT_MAX) raise(ErrorKind::kUnsupported, "cuda ", op, ": ", n, " rows is too many for one launch");
}

}  // namespace

void glu(Context& ctx, const GluParams& p) {
  const int64_t total = p.n * p.dim;
  if (total <= 0) return;
  const unsigned blocks = elementwise_blocks(total, kThreads);
  switch (p.act) {
    case Activation::kSilu:
      launch_pdl(ctx, glu_kernel<Activation::kSilu>, dim3(blocks), dim3(kThreads), 0, p.gate, p.up, p.out, total);
      break;
    case Activation::kGeluTanh:
      launch_pdl(ctx, glu_kernel<Activation::kGeluTanh>, dim3(blocks), dim3(kThreads), 0, p.gate, p.up, p.out, total);
      break;
    case Activation::kGelu:
      launch_pdl(ctx, glu_kernel<Activation::kGelu>, dim3(blocks), dim3(kThreads), 0, p.gate, p.up, p.out, total);
      break;
    case Activation::kRelu:
      launch_pdl(ctx, glu_kernel<Activation::kRelu>, dim3(blocks), dim3(kThreads), 0, p.gate, p.up, p.out, total);
      break;
    default: raise(ErrorKind::kUnsupported, "cuda glu: activation ", int(p.act), " is not supported");
  }
  LATHE_CUDA_CHECK_LAUNCH("glu_kernel");
}

void embedding(Context& ctx, const EmbeddingParams& p) {
  const int64_t dim = p.table.cols;
  if (p.n <= 0 || dim <= 0) return;
  if (p.table.rows <= 0) raise(ErrorKind::kInvalidArgument, "cuda embedding: the table has no rows");
  check_rows(p.n, "embedding");
  const unsigned blocks = unsigned(p.n);
  const int threads = row_threads(dim);
  switch (p.table.dtype) {
    case DType::kF32:
      launch_pdl(ctx, embedding_kernel<float>, dim3(blocks), dim3(threads), 0, static_cast<const float*>(p.table.data), p.ids, p.out,
                                                           p.table.rows, dim, p.scale);
      break;
    case DType::kF16:
      launch_pdl(ctx, embedding_kernel<F16>, dim3(blocks), dim3(threads), 0, static_cast<const F16*>(p.table.data), p.ids, p.out,
                                                           p.table.rows, dim, p.scale);
      break;
    case DType::kBF16:
      launch_pdl(ctx, embedding_kernel<Bf16>, dim3(blocks), dim3(threads), 0, static_cast<const Bf16*>(p.table.data), p.ids, p.out,
                                                           p.table.rows, dim, p.scale);
      break;
    default:
      raise(ErrorKind::kUnsupported, "cuda embedding: table dtype ", dtype_name(p.table.dtype), " is not supported");
  }
  LATHE_CUDA_CHECK_LAUNCH("embedding_kernel");
}

void add(Context& ctx, float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  launch_pdl(ctx, add_kernel, dim3(elementwise_blocks(n, kThreads)), dim3(kThreads), 0, y, x, n);
  LATHE_CUDA_CHECK_LAUNCH("add_kernel");
}

void softcap(Context& ctx, float* x, int64_t n, float cap) {
  if (n <= 0) return;
  if (!(cap > 0.f)) raise(ErrorKind::kInvalidArgument, "cuda softcap: cap must be > 0, got ", cap);
  launch_pdl(ctx, softcap_kernel, dim3(elementwise_blocks(n, kThreads)), dim3(kThreads), 0, x, n, cap);
  LATHE_CUDA_CHECK_LAUNCH("softcap_kernel");
}

void scatter_rows(Context& ctx, const ScatterRowsParams& p) {
  if (p.n <= 0 || p.dim <= 0) return;
  check_rows(p.n, "scatter_rows");
  scatter_rows_kernel<<<unsigned(p.n), row_threads(p.dim), 0, ctx.stream>>>(p.dst, p.idx, p.src, p.dim);
  LATHE_CUDA_CHECK_LAUNCH("scatter_rows_kernel");
}

void gather_rows(Context& ctx, const GatherRowsParams& p) {
  if (p.n <= 0 || p.dim <= 0) return;
  check_rows(p.n, "gather_rows");
  launch_pdl(ctx, gather_rows_kernel, dim3(unsigned(p.n)), dim3(row_threads(p.dim)), 0, p.src, p.idx, p.dst, p.dim);
  LATHE_CUDA_CHECK_LAUNCH("gather_rows_kernel");
}

void scatter_add_rows(Context& ctx, const ScatterAddRowsParams& p) {
  if (p.n <= 0 || p.dim <= 0) return;
  check_rows(p.n, "scatter_add_rows");
  scatter_add_rows_kernel<<<unsigned(p.n), row_threads(p.dim), 0, ctx.stream>>>(p.dst, p.idx, p.weight, p.src, p.dim);
  LATHE_CUDA_CHECK_LAUNCH("scatter_add_rows_kernel");
}

}  // namespace lathe::ops::cuda
