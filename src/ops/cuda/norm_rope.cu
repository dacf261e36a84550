// rms_norm, rope and rope_store_kv for the CUDA backend.
//
// rms_norm: one block per row, fp32 sum of squares reduced warp-then-block. Rows of a multiple of 4
// floats (16-byte aligned) keep their float4s in registers (up to 1024 threads x 4), so the row is
// read once with every load in flight; others take a loop of scalar loads. y may alias x because
// each thread rereads (or holds) exactly the elements it later writes. The expression order
// matches the reference: (x * inv) * (offset + w).
// rope: one thread per rotated pair (i, i + rot_dim/2) of each head; the pass-through tail of a
// partial-rotary head is never touched. rope_store_kv: see its kernel; the cache may be fp32 or bf16.
#include <algorithm>
#include <climits>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/kv_quant.cuh"
#include "ops/cuda/pdl.cuh"

namespace lathe::ops::cuda {
namespace {

// The block-wide sum of every thread's v (blockDim.x a multiple of 32), returned to all threads.
__device__ __forceinline__ float block_sum(float v, float (&partial)[32]) {
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float t = lane < warps ? partial[lane] : 0.f;
    t = warp_sum(t);
    if (lane == 0) partial[0] = t;
  }
  __syncthreads();
  return partial[0];
}

// With `delta` (add_rms_norm), x += delta first: x is then written, so it is taken non-const and
// each thread updates exactly the elements it later rereads.
template <typename T>
__global__ void rms_norm_kernel(float* x, const float* __restrict__ delta, const T* __restrict__ w, float* y,
                                uint16_t* ylp, bool lp_bf16, int64_t dim, float eps, float offset) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  __shared__ float partial[32];
  float* xr = x + int64_t(blockIdx.x) * dim;
  float* yr = y ? y + int64_t(blockIdx.x) * dim : nullptr;
  uint16_t* lr = ylp ? ylp + int64_t(blockIdx.x) * dim : nullptr;
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
  const float inv = 1.f / sqrtf(block_sum(ss, partial) / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) store_out(yr, lr, lp_bf16, i, xr[i] * inv * (offset + widen(w[i])));
}

// The same norm for rows whose length is a multiple of 4 (16-byte aligned): each thread keeps its
// PER float4s of the row in registers, so all loads are issued at once, the row is read once, and
// a single-row call (decode) costs one round trip per pass instead of one per loop iteration.
template <typename T>
__device__ __forceinline__ float4 load_w4(const T* w, int i4) {
  if constexpr (std::is_same_v<T, float>) {
    return __ldg(reinterpret_cast<const float4*>(w) + i4);
  } else {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(w) + i4);
    if constexpr (std::is_same_v<T, Bf16>) return make_float4(bf16_lo(u.x), bf16_hi(u.x), bf16_lo(u.y), bf16_hi(u.y));
    else return make_float4(f16_lo(u.x), f16_hi(u.x), f16_lo(u.y), f16_hi(u.y));
  }
}

template <typename T, int PER>
__global__ void rms_norm_vec_kernel(float* x, const float* __restrict__ delta, const T* __restrict__ w, float* y,
                                    uint16_t* ylp, bool lp_bf16, int dim4, float eps, float offset) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  __shared__ float partial[32];
  float4* xr = reinterpret_cast<float4*>(x + int64_t(blockIdx.x) * dim4 * 4);
  float4* yr = y ? reinterpret_cast<float4*>(y + int64_t(blockIdx.x) * dim4 * 4) : nullptr;
  uint2* lr = ylp ? reinterpret_cast<uint2*>(ylp + int64_t(blockIdx.x) * dim4 * 4) : nullptr;
  float4 v[PER];
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int i = int(threadIdx.x) + k * int(blockDim.x);
    v[k] = i < dim4 ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  if (delta) {
    const float4* dr = reinterpret_cast<const float4*>(delta + int64_t(blockIdx.x) * dim4 * 4);
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int i = int(threadIdx.x) + k * int(blockDim.x);
      if (i < dim4) {
        const float4 d = dr[i];
        v[k].x += d.x, v[k].y += d.y, v[k].z += d.z, v[k].w += d.w;
        xr[i] = v[k];
      }
    }
  }
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    ss = fmaf(v[k].x, v[k].x, ss);
    ss = fmaf(v[k].y, v[k].y, ss);
    ss = fmaf(v[k].z, v[k].z, ss);
    ss = fmaf(v[k].w, v[k].w, ss);
  }
  const float inv = 1.f / sqrtf(block_sum(ss, partial) / float(dim4 * 4) + eps);
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int i = int(threadIdx.x) + k * int(blockDim.x);
    if (i < dim4) {
      const float4 g = load_w4(w, i);
      const float4 o = make_float4(v[k].x * inv * (offset + g.x), v[k].y * inv * (offset + g.y),
                                   v[k].z * inv * (offset + g.z), v[k].w * inv * (offset + g.w));
      if (yr) yr[i] = o;
      if (lr) {
        const auto bits = [&](float f) -> uint32_t {
          return lp_bf16 ? store_as<Bf16>(f).bits : store_as<F16>(f).bits;
        };
        lr[i] = make_uint2(bits(o.x) | bits(o.y) << 16, bits(o.z) | bits(o.w) << 16);
      }
    }
  }
}

template <typename T>
bool launch_rms_norm_vec(Context& ctx, float* x, const float* delta, const T* w, const RmsNormParams& p) {
  if (p.dim % 4 != 0 || p.dim > 4 * 4 * 1024 || !aligned16(x) || !aligned16(p.y) || (delta && !aligned16(delta)) ||
      !aligned16(w) || (reinterpret_cast<uintptr_t>(p.y_lowp) & 7u) != 0)
    return false;
  auto* lp = static_cast<uint16_t*>(p.y_lowp);
  const bool lp_bf16 = p.lowp_dtype == DType::kBF16;
  const int dim4 = int(p.dim / 4);
  const int threads = std::min(1024, (dim4 + kWarp - 1) / kWarp * kWarp);
  const int per = (dim4 + threads - 1) / threads;
  const unsigned blocks = unsigned(p.n);
  switch (per) {
    case 1: launch_pdl(ctx, rms_norm_vec_kernel<T, 1>, dim3(blocks), dim3(threads), 0, x, delta, w, p.y, lp, lp_bf16, dim4, p.eps, p.weight_offset); break;
    case 2: launch_pdl(ctx, rms_norm_vec_kernel<T, 2>, dim3(blocks), dim3(threads), 0, x, delta, w, p.y, lp, lp_bf16, dim4, p.eps, p.weight_offset); break;
    default: launch_pdl(ctx, rms_norm_vec_kernel<T, 4>, dim3(blocks), dim3(threads), 0, x, delta, w, p.y, lp, lp_bf16, dim4, p.eps, p.weight_offset); break;
  }
  LATHE_CUDA_CHECK_LAUNCH("rms_norm_vec_kernel");
  return true;
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

// Grid (token, chunk): the work items of one token (q pairs to rotate, the pass-through tail of a
// partial-rotary q when it goes to q_out, k elements, v elements) are spread over gridDim.y blocks,
// one item per thread, so a decode step's single token is handled by many blocks at once instead of
// one block looping (each loop round was a dependent global round trip). Each k element is computed
// from its pair and written straight to the cache row; nothing reads what another thread writes.
//
// Quantized caches (KV = KvQ8 / KvQ4): the k and v items start at q_span, q_items rounded up to a
// whole warp, so every warp of them holds one quantization group (32 consecutive elements of a row;
// head_dim is a multiple of 32) and quantizes it together (kv_quant.cuh).
template <typename KV>
__global__ void rope_store_kernel(const RopeStoreParams p, int half, int q_items_per_head, int q_span) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  const int64_t t = blockIdx.x;
  const int n_heads = int(p.n_heads), head_dim = int(p.head_dim);
  const int row = int(p.n_kv_heads) * head_dim;
  const int q_items = n_heads * q_items_per_head;
  int item = int(blockIdx.y) * int(blockDim.x) + int(threadIdx.x);
  if (item >= q_span + 2 * row) return;  // whole warps (q_span and row are multiples of 32 when quantized)
  if (item >= q_items && item < q_span) return;  // the quantized layout's padding
  if (item >= q_span) item -= q_span - q_items;
  const float* ct = p.cos + t * half;
  const float* st = p.sin + t * half;
  const int64_t qrow = int64_t(n_heads) * head_dim;
  if (item < q_items) {
    const int h = item / q_items_per_head, i = item % q_items_per_head;
    const float* qin = p.q + t * (p.q_stride ? p.q_stride : qrow) + int64_t(h) * head_dim;
    float* qo = (p.q_out ? p.q_out + t * qrow : p.q + t * (p.q_stride ? p.q_stride : qrow)) + int64_t(h) * head_dim;
    if (i < half) {
      const float c = ct[i], s = st[i];
      const float a = qin[i], b = qin[i + half];
      qo[i] = a * c - b * s;
      qo[i + half] = b * c + a * s;
    } else {
      const int e = 2 * half + (i - half);  // pass-through tail element (q_out only)
      qo[e] = qin[e];
    }
    return;
  }
  const int slot = p.slots[t];
  if (item < q_items + row) {
    const int e = item - q_items, i = e % head_dim;
    const float* kt = p.k + t * (p.k_stride ? p.k_stride : row);
    float out = kt[e];
    if (i < 2 * half) {
      const int j = i < half ? i : i - half;
      const float c = ct[j], s = st[j];
      const float a = kt[e - i + j], b = kt[e - i + j + half];
      out = i < half ? a * c - b * s : b * c + a * s;
    }
    if constexpr (kIsQuantKv<KV>)
      kv_store_group<KV>(p.k_cache, p.k_scale, int64_t(slot) * row + e / kWarp * kWarp, out);
    else
      static_cast<KV*>(p.k_cache)[int64_t(slot) * row + e] = store_as<KV>(out);
  } else {
    const int e = item - q_items - row;
    const float* vt = p.v + t * (p.v_stride ? p.v_stride : row);
    if constexpr (kIsQuantKv<KV>)
      kv_store_group<KV>(p.v_cache, p.v_scale, int64_t(slot) * row + e / kWarp * kWarp, vt[e]);
    else
      static_cast<KV*>(p.v_cache)[int64_t(slot) * row + e] = store_as<KV>(vt[e]);
  }
}

}  // namespace

void rope_store_kv(Context& ctx, const RopeStoreParams& p) {
  if (p.n <= 0) return;
  if (p.rot_dim % 2 != 0 || p.rot_dim > p.head_dim)
    raise(ErrorKind::kInvalidArgument, "cuda rope_store_kv: rot_dim ", p.rot_dim, " must be even and <= head_dim ",
          p.head_dim);
  if (p.n > INT_MAX || p.n_heads * p.head_dim > INT_MAX / 4)
    raise(ErrorKind::kUnsupported, "cuda rope_store_kv: too large for one launch");
  if (p.q_stride && p.q_stride != p.n_heads * p.head_dim && !p.q_out)
    raise(ErrorKind::kInvalidArgument, "cuda rope_store_kv: a strided q needs q_out");
  const int half = int(p.rot_dim / 2);
  const int q_items_per_head = half + (p.q_out ? int(p.head_dim) - 2 * half : 0);
  const bool quant = p.kv_quant != KvQuant::kNone;
  if (quant && (p.head_dim % kKvQuantGroup != 0 || !p.k_scale || !p.v_scale))
    raise(ErrorKind::kInvalidArgument, "cuda rope_store_kv: a ", kv_quant_name(p.kv_quant),
          " cache needs scales and head_dim a multiple of ", kKvQuantGroup, " (got ", p.head_dim, ")");
  const int q_items = int(p.n_heads) * q_items_per_head;
  const int q_span = quant ? (q_items + kWarp - 1) / kWarp * kWarp : q_items;
  const int64_t items = q_span + 2 * p.n_kv_heads * p.head_dim;
  constexpr int kThreads = 128;
  const int64_t chunks = (items + kThreads - 1) / kThreads;
  if (chunks > 65535) raise(ErrorKind::kUnsupported, "cuda rope_store_kv: heads too large for one launch");
  const dim3 grid(unsigned(p.n), unsigned(chunks));
  if (p.kv_quant == KvQuant::kQ8)
    launch_pdl(ctx, rope_store_kernel<KvQ8>, dim3(grid), dim3(kThreads), 0, p, half, q_items_per_head, q_span);
  else if (p.kv_quant == KvQuant::kQ4)
    launch_pdl(ctx, rope_store_kernel<KvQ4>, dim3(grid), dim3(kThreads), 0, p, half, q_items_per_head, q_span);
  else if (p.kv_dtype == DType::kF32)
    launch_pdl(ctx, rope_store_kernel<float>, dim3(grid), dim3(kThreads), 0, p, half, q_items_per_head, q_span);
  else if (p.kv_dtype == DType::kBF16)
    launch_pdl(ctx, rope_store_kernel<Bf16>, dim3(grid), dim3(kThreads), 0, p, half, q_items_per_head, q_span);
  else
    raise(ErrorKind::kUnsupported, "cuda rope_store_kv: K/V cache dtype ", dtype_name(p.kv_dtype), " is not supported");
  LATHE_CUDA_CHECK_LAUNCH("rope_store_kernel");
}

void rms_norm(Context& ctx, const RmsNormParams& p) { add_rms_norm(ctx, const_cast<float*>(p.x), nullptr, p); }

void add_rms_norm(Context& ctx, float* x, const float* delta, const RmsNormParams& p) {
  if (p.n <= 0 || p.dim <= 0) return;
  if (p.w.cols != p.dim)
    raise(ErrorKind::kInvalidArgument, "cuda rms_norm: weight has ", p.w.cols, " columns, dim is ", p.dim);
  if (p.n > INT_MAX) raise(ErrorKind::kUnsupported, "cuda rms_norm: ", p.n, " rows is too many for one launch");
  if (!p.y && !p.y_lowp) raise(ErrorKind::kInvalidArgument, "cuda rms_norm: no output");
  if (p.y_lowp && p.lowp_dtype != DType::kBF16 && p.lowp_dtype != DType::kF16)
    raise(ErrorKind::kInvalidArgument, "cuda rms_norm: a lowp copy must be bf16 or f16, not ", dtype_name(p.lowp_dtype));
  auto* lp = static_cast<uint16_t*>(p.y_lowp);
  const bool lp_bf16 = p.lowp_dtype == DType::kBF16;
  switch (p.w.dtype) {
    case DType::kF32:
      if (launch_rms_norm_vec(ctx, x, delta, static_cast<const float*>(p.w.data), p)) return;
      break;
    case DType::kF16:
      if (launch_rms_norm_vec(ctx, x, delta, static_cast<const F16*>(p.w.data), p)) return;
      break;
    case DType::kBF16:
      if (launch_rms_norm_vec(ctx, x, delta, static_cast<const Bf16*>(p.w.data), p)) return;
      break;
    default: break;
  }
  const int threads = int(std::min<int64_t>(256, (p.dim + kWarp - 1) / kWarp * kWarp));
  const unsigned blocks = unsigned(p.n);
  switch (p.w.dtype) {
    case DType::kF32:
      launch_pdl(ctx, rms_norm_kernel<float>, dim3(blocks), dim3(threads), 0, x, delta, static_cast<const float*>(p.w.data), p.y, lp, lp_bf16,
                                                          p.dim, p.eps, p.weight_offset);
      break;
    case DType::kF16:
      launch_pdl(ctx, rms_norm_kernel<F16>, dim3(blocks), dim3(threads), 0, x, delta, static_cast<const F16*>(p.w.data), p.y, lp, lp_bf16,
                                                          p.dim, p.eps, p.weight_offset);
      break;
    case DType::kBF16:
      launch_pdl(ctx, rms_norm_kernel<Bf16>, dim3(blocks), dim3(threads), 0, x, delta, static_cast<const Bf16*>(p.w.data), p.y, lp, lp_bf16,
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
