// EXL2 matmul on the CUDA backend (ops.h Exl2View, Ops::matmul_exl2), from the tiled layout the
// loader makes at upload (quant/exl2_tiled.h; wants_exl2_tiled): which kernel serves a call, and
// the path for large token counts.
//  * Decode sizes, fast mode: exl2_bulk (exl2_bulk.cu) or exl2_direct (exl2_direct.cu) up to
//    Context::exl2_decode_tokens (kExl2DefaultDecode unless LATHE_EXL2_DECODE says otherwise), exl2_stream above that up to
//    kExl2StreamFastTokens; exl2_stream (exl2_stream.cu) in exact mode up to kExl2ExactMaxTokens
//    in launches of kExl2StreamTokens (split bf16 activations, fp32-accurate); exl2_tc (exl2_tc.cu) for the rest of fast mode up to
//    kExl2FastMaxTokens, in launches of up to kExl2TcTokens. Each launch reads the packed weights
//    once, fp32 accumulation.
//  * Above: the layer is reconstructed into float16 in chunks of output columns (padded act-order
//    rows, k-major: each warp dequantizes a unit into shared memory and writes it out row by row),
//    and cuBLAS multiplies the padded act-order activations (x gathered through the tiled perm,
//    zero on padding rows, rounded to f16; in exact mode also the remainder x - hi, a second GEMM)
//    by each chunk, writing straight into y's columns. The reconstruction costs about one float16
//    copy of the layer per call, small beside a prefill's GEMM and far smaller than keeping a
//    float16 copy of every layer resident.
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/exl2_tiled.cuh"

namespace lathe::ops::cuda {
namespace {

using tiled::kStripCols;
using tiled::kUnitRows;

constexpr int kWarps = 4;
constexpr int64_t kChunkElems = int64_t(64) << 20;  // float16 elements reconstructed per chunk (128 MiB)

// One unit: the lane's 32 values, scaled, into the warp's [32 rows][32 columns] tile of shared
// memory, then each lane writes one row's 32 columns (64 bytes) of the chunk.
template <int BITS>
__device__ __forceinline__ void reconstruct_unit(const uint32_t* unit, const float (&scale)[4], __half (*tile)[kStripCols + 8],
                                                 __half* out, int64_t ld, int rows_left) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    uint32_t b[8];
    tiled::unit_half<BITS>(unit, lane, ks, b);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int j = k >> 1, h = k & 1, r = 16 * ks + 8 * h + 2 * q;
      const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&b[k]));
      tile[r][8 * j + g] = __float2half_rn(v.x * scale[j]);
      tile[r + 1][8 * j + g] = __float2half_rn(v.y * scale[j]);
    }
  }
  __syncwarp();
  if (lane < rows_left) {
    const uint4* src = reinterpret_cast<const uint4*>(tile[lane]);
    uint4* dst = reinterpret_cast<uint4*>(out + int64_t(lane) * ld);
#pragma unroll
    for (int k = 0; k < 4; ++k) dst[k] = src[k];
  }
  __syncwarp();
}

// out[v, c - c_begin] = dequantized weight of padded row v, column c, for the strips of [c_begin,
// c_end) (padding rows 0); grid (strips of the chunk, groups), a warp per unit in turn.
__global__ void __launch_bounds__(kWarps * 32) exl2_reconstruct_kernel(const Exl2View w, int c_begin, int c_end, __half* out) {
  __shared__ __align__(16) __half tiles[kWarps][kUnitRows][kStripCols + 8];
  const int Np = int((w.out_features + 31) / 32 * 32), S = Np / kStripCols;
  const int strip = c_begin / kStripCols + int(blockIdx.x);
  const int gi = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2;
  const tiled::Group gr = tiled::group_at(w.tiled_groups, gi);
  // The lane's columns are 8 j + g: their codes are nibble 2 j + g % 2 of word g / 2.
  const uint32_t codes = w.tiled_scale[(int64_t(gi) * S + strip) * 4 + g / 2];
  const float smax = __half2float(__ushort_as_half(w.q_scale_max[gr.stored])) / 256.f;
  float scale[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float code = float(((codes >> (4 * (2 * j + g % 2))) & 15u) + 1);
    scale[j] = code * code * smax;
  }
  const int units = gr.padded / kUnitRows;
  const uint32_t* base = w.tiled + int64_t(gr.tq) * Np + int64_t(strip) * gr.padded * gr.bits;
  const int64_t ld = c_end - c_begin;
  for (int u = warp; u < units; u += kWarps) {
    const uint32_t* unit = base + u * kUnitRows * gr.bits;
    __half* o = out + int64_t(gr.vrow + u * kUnitRows) * ld + (int64_t(strip) * kStripCols - c_begin);
    switch (gr.bits) {
      case 2: reconstruct_unit<2>(unit, scale, tiles[warp], o, ld, kUnitRows); break;
      case 3: reconstruct_unit<3>(unit, scale, tiles[warp], o, ld, kUnitRows); break;
      case 4: reconstruct_unit<4>(unit, scale, tiles[warp], o, ld, kUnitRows); break;
      case 5: reconstruct_unit<5>(unit, scale, tiles[warp], o, ld, kUnitRows); break;
      case 6: reconstruct_unit<6>(unit, scale, tiles[warp], o, ld, kUnitRows); break;
      default: reconstruct_unit<8>(unit, scale, tiles[warp], o, ld, kUnitRows); break;
    }
  }
}

// hi[t, v] = f16(x[t, perm[v]]) (0 on padding rows); lo (optional) = f16(x - hi).
__global__ void exl2_gather_x_kernel(const float* __restrict__ x, const int32_t* __restrict__ perm, int64_t n, int64_t K,
                                     int64_t V, __half* __restrict__ hi, __half* __restrict__ lo) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * V) return;
  const int64_t t = i / V, v = i % V;
  const int32_t ch = perm[v];
  const float val = ch >= 0 ? x[t * K + ch] : 0.f;
  const __half h = __float2half_rn(val);
  hi[i] = h;
  if (lo) lo[i] = __float2half_rn(val - __half2float(h));
}

__global__ void exl2_add_bias_kernel(float* __restrict__ y, const uint16_t* __restrict__ bias, int64_t n, int64_t N) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n * N) y[i] += __half2float(__ushort_as_half(bias[i % N]));
}

void reconstruct_matmul(Context& ctx, const Exl2MatmulParams& p) {
  const Exl2View& w = p.w;
  const int64_t K = w.in_features, V = w.tiled_rows, N = w.out_features, n = p.n;
  const bool split = ctx.exact_matmul;  // exact: x = hi + lo, two GEMMs (as the dense f16 path)
  auto* xh = static_cast<__half*>(ctx.scratch(Scratch::kMatmulX, sizeof(__half) * size_t(n * V) * (split ? 2 : 1)));
  __half* xl = split ? xh + n * V : nullptr;
  {
    const int64_t total = n * V;
    exl2_gather_x_kernel<<<unsigned((total + 255) / 256), 256, 0, ctx.stream>>>(p.x, w.tiled_perm, n, K, V, xh, xl);
    LATHE_CUDA_CHECK_LAUNCH("exl2_gather_x_kernel");
  }
  const int64_t Np = w.padded_out();
  const int64_t chunk = std::clamp<int64_t>(kChunkElems / std::max<int64_t>(V, 1) / kStripCols * kStripCols, kStripCols, Np);
  auto* wt = static_cast<__half*>(ctx.scratch(Scratch::kExl2Dequant, sizeof(__half) * size_t(chunk * V)));
  for (int64_t cb = 0; cb < N; cb += chunk) {
    const int64_t ce = std::min<int64_t>(N, cb + chunk);
    // Whole strips (up to the stored padding, a multiple of 32) are made; cuBLAS reads only [cb, ce).
    const int64_t cols = std::min<int64_t>(Np, cb + chunk) - cb;
    const dim3 grid{unsigned(cols / kStripCols), unsigned(w.tiled_num_groups)};
    exl2_reconstruct_kernel<<<grid, kWarps * 32, 0, ctx.stream>>>(w, int(cb), int(cb + cols), wt);
    LATHE_CUDA_CHECK_LAUNCH("exl2_reconstruct_kernel");
    // Column-major view: C[N x n] (ldc N) = Wt[cols x V] (ld cols) * X[V x n] (ld V).
    const float one = 1.f, zero = 0.f;
    for (int pass = 0; pass < (split ? 2 : 1); ++pass)
      LATHE_CUBLAS_CHECK(cublasGemmEx(ctx.blas, CUBLAS_OP_N, CUBLAS_OP_N, int(ce - cb), int(n), int(V), &one, wt, CUDA_R_16F,
                                      int(cols), pass ? xl : xh, CUDA_R_16F, int(V), pass ? &one : &zero, p.y + cb,
                                      CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  if (w.bias) {
    exl2_add_bias_kernel<<<unsigned((n * N + 255) / 256), 256, 0, ctx.stream>>>(p.y, w.bias, n, N);
    LATHE_CUDA_CHECK_LAUNCH("exl2_add_bias_kernel");
  }
}

}  // namespace

namespace {
void check_layer(const Exl2View& w) {
  if (!w.tiled || !w.tiled_scale || !w.tiled_groups || !w.tiled_perm)
    raise(ErrorKind::kInvalidArgument,
          "cuda matmul_exl2: the layer is not in the tiled layout this backend reads (quant::exl2_tile at upload)");
  if (w.in_features <= 0 || w.tiled_num_groups <= 0 || w.max_tiled_rows <= 0 || w.max_tiled_qrows <= 0 || w.tiled_rows <= 0 ||
      !w.q_scale_max)
    raise(ErrorKind::kInvalidArgument, "cuda matmul_exl2: incomplete layer");
  if (w.tiled_rows > INT_MAX / 8 || w.padded_out() > INT_MAX / 8 || w.tiled_num_groups > 65535 ||
      w.max_tiled_rows > kExl2TiledMaxGroupRows)
    raise(ErrorKind::kUnsupported, "cuda matmul_exl2: layer too large for one launch");
}
}  // namespace

int exl2_tune(const char* key, int fallback, int least) {
  const char* e = std::getenv("LATHE_EXL2_TUNE");
  if (!e) return fallback;
  const std::string s(e);
  const size_t at = s.find(key);
  if (at == std::string::npos) return fallback;
  return std::max(least, std::atoi(s.c_str() + at + std::char_traits<char>::length(key)));
}

void matmul_exl2_multi(Context& ctx, const Exl2MultiParams& p) {
  if (p.n <= 0 || p.count <= 0) return;
  if (p.count > 3) raise(ErrorKind::kInvalidArgument, "cuda matmul_exl2_multi: at most 3 layers a call");
  for (int i = 0; i < p.count; ++i) {
    check_layer(p.w[i]);
    if (p.w[i].in_features != p.w[0].in_features)
      raise(ErrorKind::kInvalidArgument, "cuda matmul_exl2_multi: the layers' input widths differ");
  }
  const int64_t packed_max = ctx.exact_matmul ? kExl2ExactMaxTokens : kExl2FastMaxTokens;
  if (p.glu_up && p.n > packed_max) {
    // The decode kernels' activation gather applies a fused glu; the reconstruction path runs it first.
    const int64_t K = p.w[0].in_features;
    float* a = static_cast<float*>(ctx.scratch(Scratch::kGlu, sizeof(float) * size_t(p.n * K)));
    GluParams g;
    g.gate = p.x;
    g.up = p.glu_up;
    g.out = a;
    g.n = p.n;
    g.dim = K;
    g.act = p.glu_act;
    glu(ctx, g);
    Exl2MultiParams q = p;
    q.x = a;
    q.glu_up = nullptr;
    return matmul_exl2_multi(ctx, q);
  }
  if (p.n > packed_max) {
    for (int i = 0; i < p.count; ++i) reconstruct_matmul(ctx, p.layer(i));
    return;
  }
  if (!ctx.exact_matmul) {
    if (p.n <= ctx.exl2_decode_tokens) {
      if (ctx.exl2_decode == Context::Exl2Decode::kBulk) return exl2_bulk(ctx, p, 0, p.n);
      if (ctx.exl2_decode == Context::Exl2Decode::kDirect) return exl2_direct(ctx, p, 0, p.n);
    }
    if (p.n <= kExl2StreamFastTokens) return exl2_stream(ctx, p, 0, p.n);
    // Launches of equal size, each at most kExl2TcTokens.
    const int64_t launches = (p.n + kExl2TcTokens - 1) / kExl2TcTokens, each = (p.n + launches - 1) / launches;
    for (int64_t t0 = 0; t0 < p.n; t0 += each) exl2_tc(ctx, p, t0, std::min(each, p.n - t0));
    return;
  }
  for (int64_t t0 = 0; t0 < p.n; t0 += kExl2StreamTokens) exl2_stream(ctx, p, t0, std::min<int64_t>(kExl2StreamTokens, p.n - t0));
}

void matmul_exl2(Context& ctx, const Exl2MatmulParams& p) {
  if (p.n <= 0 || p.w.out_features <= 0) return;
  Exl2MultiParams m;
  m.x = p.x;
  m.n = p.n;
  m.count = 1;
  m.w[0] = p.w;
  m.y[0] = p.y;
  m.glu_up = p.glu_up;
  m.glu_act = p.glu_act;
  matmul_exl2_multi(ctx, m);
}

}  // namespace lathe::ops::cuda
