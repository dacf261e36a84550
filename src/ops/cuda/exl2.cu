// EXL2 matmul on the CUDA backend (ops.h Exl2View, Ops::matmul_exl2): which kernel serves a call,
// and the path for large token counts.
//  * Up to 4 tokens (8 for very wide layers): the fp32 GEMV (exl2_gemv.cu; measured faster than the
//    tensor-core kernel at these sizes on the H100, see bench/RESULTS.md).
//  * Then up to 16 tokens (both modes) and in fast mode up to kExl2MmaMaxTokens: the tensor-core kernel
//    (exl2_mma.cu), launches of up to 64, each reading the packed weights once, fp32 accumulation;
//    up to 16 tokens with activations split in bf16 hi + lo (fp32-accurate), above in bf16.
//  * Exact mode from 17 tokens (and layers whose groups are not whole 16-row steps) up to
//    kExl2GemvMaxTokens: the fp32 GEMV, launches of 8.
//  * Above: the layer is reconstructed into float16 in chunks of output columns (act-order rows,
//    stored k-major so each thread's four columns are one 8-byte store), and cuBLAS multiplies the
//    act-order activations (x gathered through perm and rounded to f16; in exact mode also the
//    remainder x - hi, a second GEMM) by each chunk, writing straight into y's columns. The
//    reconstruction costs about one float16 copy of the layer per call, small beside a prefill's
//    GEMM and far smaller than keeping a float16 copy of every layer resident.
#include <algorithm>
#include <climits>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/exl2_format.cuh"

namespace lathe::ops::cuda {
namespace {

using exl2::kCpt;
using exl2::Width;

constexpr int kThreads = 128;
constexpr int64_t kChunkElems = int64_t(64) << 20;  // float16 elements reconstructed per chunk (128 MiB)

template <int BITS>
__device__ __forceinline__ void reconstruct_group(const uint32_t* qw, int64_t stride, int rows, const float (&scale)[kCpt],
                                                  __half* out, int64_t out_stride) {
  using F = Width<BITS>;
  for (int u = 0; u < rows / F::R; ++u) {
    uint4 wd[F::W];
    exl2::load_words(qw + int64_t(u) * F::W * stride, stride, wd);
    uint32_t cw[kCpt][F::W];
#pragma unroll
    for (int c = 0; c < kCpt; ++c)
#pragma unroll
      for (int j = 0; j < F::W; ++j) cw[c][j] = exl2::lane_of(wd[j], c);
#pragma unroll
    for (int i = 0; i < F::R; ++i) {
      __half v[kCpt];
#pragma unroll
      for (int c = 0; c < kCpt; ++c) v[c] = __float2half_rn(exl2::dq_row<BITS>(cw[c], i) * scale[c]);
      *reinterpret_cast<uint2*>(out + int64_t(u * F::R + i) * out_stride) =
          make_uint2(uint32_t(__half_as_ushort(v[0])) | uint32_t(__half_as_ushort(v[1])) << 16,
                     uint32_t(__half_as_ushort(v[2])) | uint32_t(__half_as_ushort(v[3])) << 16);
    }
  }
}

// out[p, c - c_begin] = dequantized weight of act-order row p, column c, for c in [c_begin, c_end);
// grid (column blocks of the chunk, groups). The value is (q - zero) * scale rounded to float16,
// the same as quant::exl2_dequantize's float rounded by the loader.
__global__ void __launch_bounds__(kThreads) exl2_reconstruct_kernel(const Exl2View w, int c_begin, int c_end, __half* out) {
  const int Np = int((w.out_features + 31) / 32 * 32);
  const int c0 = c_begin + (blockIdx.x * kThreads + threadIdx.x) * kCpt;
  if (c0 >= c_end) return;
  const int gi = blockIdx.y;
  const int bits = w.groups[gi * 4], rows = w.groups[gi * 4 + 1], qrow0 = w.groups[gi * 4 + 2], a = w.groups[gi * 4 + 3];
  float scale[kCpt];
  exl2::group_scales(w, gi, c0, scale);
  const uint32_t* qw = w.q_weight + int64_t(qrow0) * Np + c0;
  const int64_t ld = c_end - c_begin;
  __half* o = out + int64_t(a) * ld + (c0 - c_begin);
  switch (bits) {
    case 2: reconstruct_group<2>(qw, Np, rows, scale, o, ld); break;
    case 3: reconstruct_group<3>(qw, Np, rows, scale, o, ld); break;
    case 4: reconstruct_group<4>(qw, Np, rows, scale, o, ld); break;
    case 5: reconstruct_group<5>(qw, Np, rows, scale, o, ld); break;
    case 6: reconstruct_group<6>(qw, Np, rows, scale, o, ld); break;
    default: reconstruct_group<8>(qw, Np, rows, scale, o, ld); break;
  }
}

// hi[t, p] = f16(x[t, perm[p]]); lo (optional) = f16(x - hi).
__global__ void exl2_gather_x_kernel(const float* __restrict__ x, const int32_t* __restrict__ perm, int64_t n, int64_t K,
                                     __half* __restrict__ hi, __half* __restrict__ lo) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * K) return;
  const int64_t t = i / K, p = i % K;
  const float v = x[t * K + perm[p]];
  const __half h = __float2half_rn(v);
  hi[i] = h;
  if (lo) lo[i] = __float2half_rn(v - __half2float(h));
}

__global__ void exl2_add_bias_kernel(float* __restrict__ y, const uint16_t* __restrict__ bias, int64_t n, int64_t N) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n * N) y[i] += __half2float(__ushort_as_half(bias[i % N]));
}

void reconstruct_matmul(Context& ctx, const Exl2MatmulParams& p) {
  const Exl2View& w = p.w;
  const int64_t K = w.in_features, N = w.out_features, n = p.n;
  const bool split = ctx.exact_matmul;  // exact: x = hi + lo, two GEMMs (as the dense f16 path)
  auto* xh = static_cast<__half*>(ctx.scratch(Scratch::kMatmulX, sizeof(__half) * size_t(n * K) * (split ? 2 : 1)));
  __half* xl = split ? xh + n * K : nullptr;
  {
    const int64_t total = n * K;
    exl2_gather_x_kernel<<<unsigned((total + 255) / 256), 256, 0, ctx.stream>>>(p.x, w.perm, n, K, xh, xl);
    LATHE_CUDA_CHECK_LAUNCH("exl2_gather_x_kernel");
  }
  const int64_t step = kThreads * kCpt;
  const int64_t chunk = std::clamp<int64_t>(kChunkElems / std::max<int64_t>(K, 1) / step * step, step, (N + step - 1) / step * step);
  auto* wt = static_cast<__half*>(ctx.scratch(Scratch::kExl2Dequant, sizeof(__half) * size_t(std::min<int64_t>(chunk, N + step) * K)));
  for (int64_t cb = 0; cb < N; cb += chunk) {
    const int64_t ce = std::min<int64_t>(N, cb + chunk);
    // Columns up to the stored padding (a multiple of 32) are computed; cuBLAS reads only [cb, ce).
    const int64_t cols = (ce - cb + 3) / 4 * 4;
    const dim3 grid{unsigned((cols + step - 1) / step), unsigned(w.num_groups)};
    exl2_reconstruct_kernel<<<grid, kThreads, 0, ctx.stream>>>(w, int(cb), int(cb + cols), wt);
    LATHE_CUDA_CHECK_LAUNCH("exl2_reconstruct_kernel");
    // Column-major view: C[N x n] (ldc N) = Wt[cols x K] (ld cols) * X[K x n] (ld K).
    const float one = 1.f, zero = 0.f;
    for (int pass = 0; pass < (split ? 2 : 1); ++pass)
      LATHE_CUBLAS_CHECK(cublasGemmEx(ctx.blas, CUBLAS_OP_N, CUBLAS_OP_N, int(ce - cb), int(n), int(K), &one, wt, CUDA_R_16F,
                                      int(cols), pass ? xl : xh, CUDA_R_16F, int(K), pass ? &one : &zero, p.y + cb,
                                      CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  if (w.bias) {
    exl2_add_bias_kernel<<<unsigned((n * N + 255) / 256), 256, 0, ctx.stream>>>(p.y, w.bias, n, N);
    LATHE_CUDA_CHECK_LAUNCH("exl2_add_bias_kernel");
  }
}

}  // namespace

void matmul_exl2(Context& ctx, const Exl2MatmulParams& p) {
  const Exl2View& w = p.w;
  if (p.n <= 0 || w.out_features <= 0) return;
  if (w.in_features <= 0 || w.num_groups <= 0 || w.max_group_rows <= 0 || !w.q_weight || !w.q_scale ||
      !w.q_scale_max || !w.perm || !w.groups)
    raise(ErrorKind::kInvalidArgument, "cuda matmul_exl2: incomplete layer");
  if (w.in_features > INT_MAX / 8 || w.padded_out() > INT_MAX / 8 || w.num_groups > 65535)
    raise(ErrorKind::kUnsupported, "cuda matmul_exl2: layer too large for one launch");
  // Measured on the H100 (bench/RESULTS.md): the GEMV wins up to 4 tokens, and up to 8 for very wide
  // layers (the LM head: its k-splits are few and its columns many); the tensor cores above.
  const bool gemv = p.n <= 4 || (p.n <= kGemvMaxTokens && w.out_features > 32768);
  if (w.rows16 && !gemv && p.n <= (ctx.exact_matmul ? kExl2MmaSplitTokens : kExl2MmaMaxTokens)) {
    for (int64_t t0 = 0; t0 < p.n; t0 += kExl2MmaTokens) {
      const int64_t nt = std::min<int64_t>(kExl2MmaTokens, p.n - t0);
      exl2_mma(ctx, p.x + t0 * w.in_features, nt, w, p.y + t0 * w.out_features);
    }
    return;
  }
  if (p.n > kExl2GemvMaxTokens) return reconstruct_matmul(ctx, p);
  for (int64_t t0 = 0; t0 < p.n; t0 += kGemvMaxTokens) {
    const int64_t nt = std::min<int64_t>(kGemvMaxTokens, p.n - t0);
    exl2_gemv(ctx, p.x + t0 * w.in_features, nt, w, p.y + t0 * w.out_features);
  }
}

}  // namespace lathe::ops::cuda
