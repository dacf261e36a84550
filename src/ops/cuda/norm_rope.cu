// rms_norm, rope and rope_store_kv for the CUDA backend.
//
// rms_norm: one block per row (threads = the row length rounded up to a warp, at most 256), fp32
// sum of squares reduced warp-then-block; y may alias x because each thread rereads exactly the
// elements it later writes. The expression order matches the reference: (x * inv) * (offset + w).
// rope: one thread per rotated pair (i, i + rot_dim/2) of each head; the pass-through tail of a
// partial-rotary head is never touched.
#include <algorithm>
#include <climits>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"

namespace lathe::ops::cuda {
namespace {

// With `delta` (add_rms_norm), x += delta first: x is then written, so it is taken non-const and
// each thread updates exactly the elements it later rereads.
template <typename T>
__global__ void rms_norm_kernel(float* x, const float* __restrict__ delta, const T* __restrict__ w, float* y,
                                int64_t dim, float eps, float offset) {
  __shared__ float partial[32];
  float* xr = x + int64_t(blockIdx.x) * dim;
  float* yr = y + int64_t(blockIdx.x) * dim;
  float ss = 0.f;
  if (delta) {
    const float* dr = delta + int64_t(blockIdx.x) * dim;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      const float v = xr[i] + dr[i];
      xr[i] = v;
      ss = fmaf(v, v, ss);
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  }
  ss = warp_sum(ss);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  if (lane == 0) partial[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    float v = lane < warps ? partial[lane] : 0.f;
    v = warp_sum(v);
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  const float inv = 1.f / sqrtf(partial[0] / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * inv * (offset + widen(w[i]));
}

__global__ void rope_kernel(float* __restrict__ x, const float* __restrict__ cos, const float* __restrict__ sin,
                            int64_t n, int64_t n_heads, int64_t head_dim, int64_t half) {
  const int64_t total = n * n_heads * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half, head = idx / half, t = head / n_heads;
    float* xh = x + head * head_dim;
    const float c = cos[t * half + i], s = sin[t * half + i];
    const float a = xh[i], b = xh[i + half];
    xh[i] = a * c - b * s;
    xh[i + half] = b * c + a * s;
  }
}

// One block per token: q pairs rotated (in place, or into the dense q_out); each k element computed
// from its pair and written straight to the cache row (so no thread reads an element another
// thread writes); v copied. Input rows may be strided (a fused q|k|v projection's output).
__global__ void rope_store_kernel(const RopeStoreParams p, int half) {
  const int64_t t = blockIdx.x;
  const int n_heads = int(p.n_heads), head_dim = int(p.head_dim);
  const int64_t qrow = int64_t(n_heads) * head_dim, row = p.n_kv_heads * p.head_dim;
  const float* ct = p.cos + t * half;
  const float* st = p.sin + t * half;
  const float* qin = p.q + t * (p.q_stride ? p.q_stride : qrow);
  float* qo = p.q_out ? p.q_out + t * qrow : p.q + t * (p.q_stride ? p.q_stride : qrow);
  for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
    const int i = idx % half;
    const int64_t h = int64_t(idx / half) * head_dim;
    const float c = ct[i], s = st[i];
    const float a = qin[h + i], b = qin[h + i + half];
    qo[h + i] = a * c - b * s;
    qo[h + i + half] = b * c + a * s;
  }
  if (p.q_out)  // the pass-through tail of partial-rotary heads
    for (int64_t e = threadIdx.x; e < qrow; e += blockDim.x)
      if (e % head_dim >= 2 * half) qo[e] = qin[e];
  const int64_t slot = p.slots[t];
  const float* kt = p.k + t * (p.k_stride ? p.k_stride : row);
  const float* vt = p.v + t * (p.v_stride ? p.v_stride : row);
  float* kd = p.k_cache + slot * row;
  float* vd = p.v_cache + slot * row;
  for (int64_t e = threadIdx.x; e < row; e += blockDim.x) {
    const int i = int(e % head_dim);
    float out = kt[e];
    if (i < 2 * half) {
      const int j = i < half ? i : i - half;
      const float c = ct[j], s = st[j];
      const float a = kt[e - i + j], b = kt[e - i + j + half];
      out = i < half ? a * c - b * s : b * c + a * s;
    }
    kd[e] = out;
    vd[e] = vt[e];
  }
}

}  // namespace

void rope_store_kv(Context& ctx, const RopeStoreParams& p) {
  if (p.n <= 0) return;
  if (p.rot_dim % 2 != 0 || p.rot_dim > p.head_dim)
    raise(ErrorKind::kInvalidArgument, "cuda rope_store_kv: rot_dim ", p.rot_dim, " must be even and <= head_dim ",
          p.head_dim);
  if (p.n > INT_MAX || p.n_heads * p.head_dim > INT_MAX)
    raise(ErrorKind::kUnsupported, "cuda rope_store_kv: too large for one launch");
  if (p.q_stride && p.q_stride != p.n_heads * p.head_dim && !p.q_out)
    raise(ErrorKind::kInvalidArgument, "cuda rope_store_kv: a strided q needs q_out");
  const int threads = int(std::min<int64_t>(256, std::max<int64_t>(32, p.n_heads * p.rot_dim / 2)));
  rope_store_kernel<<<unsigned(p.n), threads, 0, ctx.stream>>>(p, int(p.rot_dim / 2));
  LATHE_CUDA_CHECK_LAUNCH("rope_store_kernel");
}

void rms_norm(Context& ctx, const RmsNormParams& p) { add_rms_norm(ctx, const_cast<float*>(p.x), nullptr, p); }

void add_rms_norm(Context& ctx, float* x, const float* delta, const RmsNormParams& p) {
  if (p.n <= 0 || p.dim <= 0) return;
  if (p.w.cols != p.dim)
    raise(ErrorKind::kInvalidArgument, "cuda rms_norm: weight has ", p.w.cols, " columns, dim is ", p.dim);
  if (p.n > INT_MAX) raise(ErrorKind::kUnsupported, "cuda rms_norm: ", p.n, " rows is too many for one launch");
  const int threads = int(std::min<int64_t>(256, (p.dim + kWarp - 1) / kWarp * kWarp));
  const unsigned blocks = unsigned(p.n);
  switch (p.w.dtype) {
    case DType::kF32:
      rms_norm_kernel<<<blocks, threads, 0, ctx.stream>>>(x, delta, static_cast<const float*>(p.w.data), p.y,
                                                          p.dim, p.eps, p.weight_offset);
      break;
    case DType::kF16:
      rms_norm_kernel<<<blocks, threads, 0, ctx.stream>>>(x, delta, static_cast<const F16*>(p.w.data), p.y, p.dim,
                                                          p.eps, p.weight_offset);
      break;
    case DType::kBF16:
      rms_norm_kernel<<<blocks, threads, 0, ctx.stream>>>(x, delta, static_cast<const Bf16*>(p.w.data), p.y,
                                                          p.dim, p.eps, p.weight_offset);
      break;
    default: raise(ErrorKind::kUnsupported, "cuda rms_norm: weight dtype ", dtype_name(p.w.dtype), " is not supported");
  }
  LATHE_CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

void rope(Context& ctx, const RopeParams& p) {
  const int64_t half = p.rot_dim / 2;
  if (p.n <= 0 || p.n_heads <= 0 || half <= 0) return;
  if (p.rot_dim > p.head_dim || p.rot_dim % 2 != 0)
    raise(ErrorKind::kInvalidArgument, "cuda rope: rot_dim ", p.rot_dim, " must be even and <= head_dim ", p.head_dim);
  const int64_t total = p.n * p.n_heads * half;
  rope_kernel<<<elementwise_blocks(total, 256), 256, 0, ctx.stream>>>(p.x, p.cos, p.sin, p.n, p.n_heads, p.head_dim,
                                                                       half);
  LATHE_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace lathe::ops::cuda
