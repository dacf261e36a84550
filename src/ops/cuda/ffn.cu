// The fused feed-forward block of the CUDA backend's fast mode (bf16/f16 weights, more tokens than
// the GEMV handles): x is rounded to the weight dtype once, the gate and up GEMMs write their outputs
// in that dtype, the activation reads and writes it, and the down GEMM reads it and writes fp32.
// Against matmul + glu + matmul on fp32 intermediates this moves ~1.3 GB less per layer at 2048
// tokens of an 8B model (the fp32 gate/up round trip and the second rounding of the activations),
// with the numerics of a bf16 engine: gate and up are rounded once more before the activation.
// Exact mode and every other case take the op contract's default (fp32 intermediates).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"

namespace lathe::ops::cuda {
namespace {

// out = act(gate) * up in fp32, rounded to T; out may alias gate (same thread reads then writes).
template <Activation A, typename T>
__global__ void glu_lowp_kernel(const T* gate, const T* __restrict__ up, T* out, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = round_to<T>(activate<A>(widen(gate[i])) * widen(up[i]));
}

// gate and up as one [n, 2 * inter] GEMM output (gate columns first): out[t, j] =
// act(gu[t, j]) * gu[t, inter + j], out [n, inter].
template <Activation A, typename T>
__global__ void glu_pair_lowp_kernel(const T* __restrict__ gu, T* __restrict__ out, int64_t total, int64_t inter) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / inter, j = i - t * inter;
    const T* row = gu + 2 * t * inter;
    out[i] = round_to<T>(activate<A>(widen(row[j])) * widen(row[inter + j]));
  }
}

template <typename T>
void glu_pair_lowp(Context& ctx, Activation act, const void* gu, void* out, int64_t n, int64_t inter) {
  const int64_t total = n * inter;
  const unsigned blocks = elementwise_blocks(total, 256);
  auto g = static_cast<const T*>(gu);
  auto o = static_cast<T*>(out);
  switch (act) {
    case Activation::kSilu: glu_pair_lowp_kernel<Activation::kSilu><<<blocks, 256, 0, ctx.stream>>>(g, o, total, inter); break;
    case Activation::kGeluTanh:
      glu_pair_lowp_kernel<Activation::kGeluTanh><<<blocks, 256, 0, ctx.stream>>>(g, o, total, inter);
      break;
    case Activation::kGelu: glu_pair_lowp_kernel<Activation::kGelu><<<blocks, 256, 0, ctx.stream>>>(g, o, total, inter); break;
    default: glu_pair_lowp_kernel<Activation::kRelu><<<blocks, 256, 0, ctx.stream>>>(g, o, total, inter); break;
  }
  LATHE_CUDA_CHECK_LAUNCH("glu_pair_lowp_kernel");
}

template <typename T>
void glu_lowp(Context& ctx, Activation act, const void* gate, const void* up, void* out, int64_t total) {
  const unsigned blocks = elementwise_blocks(total, 256);
  auto g = static_cast<const T*>(gate);
  auto u = static_cast<const T*>(up);
  auto o = static_cast<T*>(out);
  switch (act) {
    case Activation::kSilu: glu_lowp_kernel<Activation::kSilu><<<blocks, 256, 0, ctx.stream>>>(g, u, o, total); break;
    case Activation::kGeluTanh:
      glu_lowp_kernel<Activation::kGeluTanh><<<blocks, 256, 0, ctx.stream>>>(g, u, o, total);
      break;
    case Activation::kGelu: glu_lowp_kernel<Activation::kGelu><<<blocks, 256, 0, ctx.stream>>>(g, u, o, total); break;
    default: glu_lowp_kernel<Activation::kRelu><<<blocks, 256, 0, ctx.stream>>>(g, u, o, total); break;
  }
  LATHE_CUDA_CHECK_LAUNCH("glu_lowp_kernel");
}

}  // namespace

void ffn(Context& ctx, const FfnParams& p) {
  const int64_t n = p.n, inter = p.gate.rows, hidden = p.gate.cols;
  const LowpX xs = p.x_lowp ? LowpX{p.x_lowp, nullptr} : round_activations(ctx, p.x, n, hidden, p.gate.dtype, false);
  const bool bf16 = p.gate.dtype == DType::kBF16;
  // The fp32 scratch buffers hold the half-width intermediates. gate and up stored side by side
  // (model::Runner uploads them so) run as one GEMM of twice the width: one launch, better tiles.
  const size_t w_bytes = size_t(inter * hidden) * 2;
  if (static_cast<const char*>(p.up.data) == static_cast<const char*>(p.gate.data) + w_bytes) {
    Weight gu = p.gate;
    gu.rows = 2 * inter;
    gemm_lowp(ctx, gu, xs.hi, p.gate_buf, true, n, 0.f);  // [n, 2 * inter] half-width = n * inter floats
    if (bf16)
      glu_pair_lowp<__nv_bfloat16>(ctx, p.act, p.gate_buf, p.up_buf, n, inter);
    else
      glu_pair_lowp<__half>(ctx, p.act, p.gate_buf, p.up_buf, n, inter);
    gemm_lowp(ctx, p.down, p.up_buf, p.out, false, n, 0.f);
    return;
  }
  gemm_lowp(ctx, p.gate, xs.hi, p.gate_buf, true, n, 0.f);
  gemm_lowp(ctx, p.up, xs.hi, p.up_buf, true, n, 0.f);
  if (bf16)
    glu_lowp<__nv_bfloat16>(ctx, p.act, p.gate_buf, p.up_buf, p.gate_buf, n * inter);
  else
    glu_lowp<__half>(ctx, p.act, p.gate_buf, p.up_buf, p.gate_buf, n * inter);
  gemm_lowp(ctx, p.down, p.gate_buf, p.out, false, n, 0.f);
}

}  // namespace lathe::ops::cuda
