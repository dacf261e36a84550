// Small-batch mixture-of-experts feed-forward for the CUDA backend (ops.h MoeParams): decode steps
// of Mixtral-style models route, run their experts and combine without the host, so the step can be
// recorded as a graph like a dense model's.
//  * Routing: one warp per token picks the top_k router logits (warp argmax top_k times; equal
//    logits go to the lower expert index, as the host path's stable sort does) and their softmax.
//  * Experts: GEMVs whose weight rows come from the expert the routing picked, read through a
//    per-layer table of expert pointers in device memory. gate|up: grid (row blocks, token x slot),
//    each warp streams gate row r and up row r of its slot's expert and writes act(gate) * up.
//    down: grid (row blocks, token); each warp computes row r for every slot of its token in slot
//    order and adds the weighted sum to the residual row once (deterministic, no atomics).
// Every expert matrix is read once per token that picked it: at decode sizes that is the whole cost,
// and the host path's per-expert gathers and launches are gone.
#include <climits>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/gemv.cuh"

namespace lathe::ops::cuda {
namespace {

constexpr int kMaxTopK = 16;

__global__ void moe_route_kernel(const float* __restrict__ logits, int experts, int top, int* __restrict__ sel_e,
                                 float* __restrict__ sel_w) {
  const int t = blockIdx.x, lane = threadIdx.x;
  const float* lg = logits + int64_t(t) * experts;
  int chosen[kMaxTopK];
  float val[kMaxTopK];
  for (int j = 0; j < top; ++j) {
    float best = -INFINITY;
    int bi = INT_MAX;
    for (int e = lane; e < experts; e += kWarp) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= chosen[i] == e;
      const float v = lg[e];
      if (!taken && (v > best || (v == best && e < bi) || bi == INT_MAX)) best = v, bi = e;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (oi != INT_MAX && (bi == INT_MAX || ob > best || (ob == best && oi < bi))) best = ob, bi = oi;
    }
    chosen[j] = bi;
    val[j] = best;
  }
  if (lane != 0) return;
  double sum = 0;
  for (int j = 0; j < top; ++j) sum += exp(double(val[j]) - double(val[0]));
  for (int j = 0; j < top; ++j) {
    sel_e[t * top + j] = chosen[j];
    sel_w[t * top + j] = float(exp(double(val[j]) - double(val[0])) / sum);
  }
}

template <typename T, Activation A>
__global__ void __launch_bounds__(kGemvWarps * kWarp)
    moe_gate_up_kernel(const float* __restrict__ x, const void* const* __restrict__ gate,
                       const void* const* __restrict__ up, const int* __restrict__ sel_e, float* __restrict__ mid,
                       int64_t inter, int64_t k, int top) {
  const int p = blockIdx.y, t = p / top;
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t r = int64_t(blockIdx.x) * kGemvWarps + threadIdx.x / kWarp;
  if (r >= inter) return;
  const int e = sel_e[p];
  const T* const wr[2] = {static_cast<const T*>(gate[e]) + r * k, static_cast<const T*>(up[e]) + r * k};
  float acc[2][1];
  gemv_rows<T, 1, 8, 2, 2>(acc, wr, x + int64_t(t) * k, lane, k);
  if (lane == 0) mid[int64_t(p) * inter + r] = activate<A>(acc[0][0]) * acc[1][0];
}

template <typename T>
__global__ void __launch_bounds__(kGemvWarps * kWarp)
    moe_down_kernel(const void* const* __restrict__ down, const int* __restrict__ sel_e,
                    const float* __restrict__ sel_w, const float* __restrict__ mid, float* __restrict__ out,
                    int64_t hidden, int64_t inter, int top) {
  const int t = blockIdx.y;
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t r = int64_t(blockIdx.x) * kGemvWarps + threadIdx.x / kWarp;
  if (r >= hidden) return;
  float sum = 0.f;
  for (int j = 0; j < top; ++j) {
    const int p = t * top + j;
    const T* const wr[1] = {static_cast<const T*>(down[sel_e[p]]) + r * inter};
    float acc[1][1];
    gemv_rows<T, 1, 8, 1, 4>(acc, wr, mid + int64_t(p) * inter, lane, inter);
    sum = fmaf(sel_w[p], acc[0][0], sum);
  }
  if (lane == 0) out[int64_t(t) * hidden + r] += sum;
}

template <typename T>
void launch_experts(Context& ctx, const MoeParams& p, const int* sel_e, const float* sel_w, float* mid) {
  const int top = int(p.top_k);
  const dim3 gu_grid(unsigned((p.inter + kGemvWarps - 1) / kGemvWarps), unsigned(p.n * p.top_k));
  constexpr int kThreads = kGemvWarps * kWarp;
  switch (p.act) {
    case Activation::kSilu:
      moe_gate_up_kernel<T, Activation::kSilu>
          <<<gu_grid, kThreads, 0, ctx.stream>>>(p.x, p.gate, p.up, sel_e, mid, p.inter, p.hidden, top);
      break;
    case Activation::kGeluTanh:
      moe_gate_up_kernel<T, Activation::kGeluTanh>
          <<<gu_grid, kThreads, 0, ctx.stream>>>(p.x, p.gate, p.up, sel_e, mid, p.inter, p.hidden, top);
      break;
    case Activation::kGelu:
      moe_gate_up_kernel<T, Activation::kGelu>
          <<<gu_grid, kThreads, 0, ctx.stream>>>(p.x, p.gate, p.up, sel_e, mid, p.inter, p.hidden, top);
      break;
    default:
      moe_gate_up_kernel<T, Activation::kRelu>
          <<<gu_grid, kThreads, 0, ctx.stream>>>(p.x, p.gate, p.up, sel_e, mid, p.inter, p.hidden, top);
      break;
  }
  LATHE_CUDA_CHECK_LAUNCH("moe_gate_up_kernel");
  const dim3 down_grid(unsigned((p.hidden + kGemvWarps - 1) / kGemvWarps), unsigned(p.n));
  moe_down_kernel<T><<<down_grid, kThreads, 0, ctx.stream>>>(p.down, sel_e, sel_w, mid, p.out, p.hidden, p.inter, top);
  LATHE_CUDA_CHECK_LAUNCH("moe_down_kernel");
}

}  // namespace

bool moe_small_batch(Context& ctx, const MoeParams& p) {
  // The GEMVs read 8 weights per 16-byte load: rows must be multiples of 8 with aligned activations
  // (the expert matrices themselves are separate allocations: 256-byte aligned).
  const bool ok = p.n >= 1 && p.n <= kGemvMaxTokens && (p.dtype == DType::kBF16 || p.dtype == DType::kF16) &&
                  p.top_k >= 1 && p.top_k <= kMaxTopK && p.top_k <= p.experts && p.hidden % 8 == 0 &&
                  p.inter % 8 == 0 && p.hidden > 0 && p.inter > 0 && aligned16(p.x) && p.gate && p.up && p.down &&
                  p.logits && p.out && p.experts <= INT_MAX;
  if (!ok) return false;
  const int64_t pairs = p.n * p.top_k;
  // Scratch: selected experts and weights, then the gate|up outputs (16-byte aligned).
  const size_t sel_bytes = (size_t(pairs) * 8 + 15) / 16 * 16;
  char* scratch = static_cast<char*>(ctx.scratch(Scratch::kMoe, sel_bytes + size_t(pairs * p.inter) * sizeof(float)));
  int* sel_e = reinterpret_cast<int*>(scratch);
  float* sel_w = reinterpret_cast<float*>(scratch + size_t(pairs) * 4);
  float* mid = reinterpret_cast<float*>(scratch + sel_bytes);
  moe_route_kernel<<<unsigned(p.n), kWarp, 0, ctx.stream>>>(p.logits, int(p.experts), int(p.top_k), sel_e, sel_w);
  LATHE_CUDA_CHECK_LAUNCH("moe_route_kernel");
  if (p.dtype == DType::kBF16)
    launch_experts<Bf16>(ctx, p, sel_e, sel_w, mid);
  else
    launch_experts<F16>(ctx, p, sel_e, sel_w, mid);
  return true;
}

}  // namespace lathe::ops::cuda
