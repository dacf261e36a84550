// Token selection on the GPU (engine sampling without moving logits to the host): sampling
// penalties in place, argmax, and sorted top-k with the row's softmax denominator.
//
// Top-k runs one block of 1024 threads per logits row (rows are few: one per sequence of a step).
//  * Sum: each thread keeps an online (max, sum) over its elements; the block merges the pairs.
//  * Argmax (k == 1): many blocks per row, folded with a 64-bit atomicMax (value key, ~index).
//  * Top-k: a radix select on order-preserving 32-bit keys finds the k-th largest key in four
//    8-bit passes (shared-memory histograms of the elements that match the prefix so far); then one
//    ordered pass collects the keys above it and the lowest-index keys equal to it (block-wide
//    prefix sums, so the result does not depend on thread timing); a bitonic sort in shared memory
//    orders the k candidates by (value descending, index ascending), the host's order.
#include <cfloat>
#include <algorithm>
#include <climits>
#include <cstdint>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/pdl.cuh"

namespace lathe::ops::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / kWarp;

// Larger float <-> larger key; -0 is folded into +0 so equal logits have equal keys.
__device__ __forceinline__ uint32_t order_key(float f) {
  uint32_t u = __float_as_uint(f == 0.f ? 0.f : f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Calls f(j, row[j]) for every j this thread owns. Aligned rows are read as float4, four loads in
// flight per thread: a scalar strided loop is latency-bound (one block read 513 KB in 65 us).
// Which thread sees which j is fixed, but not in ascending order: callers must not depend on it.
template <class F>
__device__ __forceinline__ void for_row(const float* __restrict__ row, int64_t vocab, F&& f) {
  int64_t j0 = 0;
  if ((reinterpret_cast<uintptr_t>(row) & 15u) == 0) {
    const int64_t quads = vocab / 4;
    const float4* r4 = reinterpret_cast<const float4*>(row);
    int64_t q = threadIdx.x;
    for (; q + 3 * kThreads < quads; q += 4 * kThreads) {
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = __ldg(r4 + q + u * kThreads);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int64_t j = 4 * (q + u * kThreads);
        f(j, v[u].x);
        f(j + 1, v[u].y);
        f(j + 2, v[u].z);
        f(j + 3, v[u].w);
      }
    }
    for (; q < quads; q += kThreads) {
      const float4 v = __ldg(r4 + q);
      f(4 * q, v.x);
      f(4 * q + 1, v.y);
      f(4 * q + 2, v.z);
      f(4 * q + 3, v.w);
    }
    j0 = quads * 4;
  }
  for (int64_t j = j0 + threadIdx.x; j < vocab; j += kThreads) f(j, __ldg(row + j));
}

__global__ void penalties_kernel(PenaltyParams p) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  float* row = p.logits + int64_t(blockIdx.x) * p.vocab;
  const int r = blockIdx.x;
  const float rep = p.repetition[r], pres = p.presence[r], freq = p.frequency[r];
  for (int i = p.offsets[r] + threadIdx.x; i < p.offsets[r + 1]; i += blockDim.x) {
    float& l = row[p.ids[i]];
    float v = l;
    if (rep != 1.f) v = v > 0 ? v / rep : v * rep;
    l = v - (pres + freq * float(p.counts[i]));
  }
}

// Block-wide merge of per-thread (max, sum of exp((x - max) * it)) pairs; every thread gets the result.
__device__ void block_max_sum(float& m, float& s, float it) {
  __shared__ float sm[kWarps], ss[kWarps];
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    const float mm = fmaxf(m, m2);
    s = (m == -INFINITY ? 0.f : s * expf((m - mm) * it)) + (m2 == -INFINITY ? 0.f : s2 * expf((m2 - mm) * it));
    m = mm;
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) sm[warp] = m, ss[warp] = s;
  __syncthreads();
  m = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m = fmaxf(m, sm[w]);
  s = 0.f;
  for (int w = 0; w < kWarps; ++w)
    if (sm[w] != -INFINITY) s += ss[w] * expf((sm[w] - m) * it);
  __syncthreads();
}

__device__ void row_sum(const float* row, int64_t vocab, float it, float* out) {
  float m = -INFINITY, s = 0.f;
  for_row(row, vocab, [&](int64_t, float x) {
    if (x > m) {
      s = (m == -INFINITY ? 0.f : s * expf((m - x) * it)) + 1.f;
      m = x;
    } else {
      s += expf((x - m) * it);
    }
  });
  block_max_sum(m, s, it);
  if (threadIdx.x == 0) *out = s;
}

// Argmax over many blocks per row: each block reduces its chunk and folds (value, index) into one
// 64-bit word per row with atomicMax: the value's order key in the high half, the complement of the
// index in the low half, so the maximum wins and, among equal values, the lowest index.
constexpr int kArgmaxThreads = 256;
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

__global__ void __launch_bounds__(kArgmaxThreads) argmax_partial_kernel(const float* __restrict__ logits, int64_t vocab,
                                                                      int64_t chunk, unsigned long long* best) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  const int64_t r = blockIdx.y;
  const float* row = logits + r * vocab;
  const int64_t lo = int64_t(blockIdx.x) * chunk, hi = min(vocab, lo + chunk);
  unsigned long long mine = 0;
  for (int64_t j = lo + threadIdx.x; j < hi; j += kArgmaxThreads) {
    const unsigned long long w =
        (static_cast<unsigned long long>(order_key(__ldg(row + j))) << 32) | (0xffffffffu - uint32_t(j));
    mine = w > mine ? w : mine;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, mine, o);
    mine = other > mine ? other : mine;
  }
  if (threadIdx.x % kWarp == 0) atomicMax(best + r, mine);
}

__global__ void argmax_finish_kernel(const unsigned long long* best, int64_t rows, int32_t* ids, float* values) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  const unsigned long long w = best[r];
  ids[r] = int32_t(0xffffffffu - uint32_t(w & 0xffffffffu));
  values[r] = key_value(uint32_t(w >> 32));
}

__global__ void __launch_bounds__(kThreads) row_sum_kernel(TopKParams p) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  row_sum(p.logits + int64_t(blockIdx.x) * p.vocab, p.vocab, p.inv_temperature[blockIdx.x], p.sums + blockIdx.x);
}

// Exclusive prefix sum of a 0/1 flag over the block; returns this thread's offset, *total the sum.
__device__ int block_scan(bool flag, int* total) {
  __shared__ int warp_tot[kWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  if (lane == 0) warp_tot[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < kWarps; ++w) {
    before += w < warp ? warp_tot[w] : 0;
    all += warp_tot[w];
  }
  __syncthreads();
  *total = all;
  return before + __popc(ballot & ((1u << lane) - 1u));
}

__global__ void __launch_bounds__(kThreads) topk_kernel(TopKParams p) {
  pdl_enter();  // pdl.cuh: the next kernel may start; wait for the previous one
  __shared__ int hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  __shared__ float cand_v[kThreads];
  __shared__ int32_t cand_i[kThreads];
  const float* row = p.logits + int64_t(blockIdx.x) * p.vocab;
  const int k = int(p.k);

  // Radix select: after the four passes, prefix is the k-th largest key and `remaining` how many
  // elements equal to it belong to the top k.
  if (threadIdx.x == 0) s_prefix = 0, s_remaining = k;
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    const uint32_t prefix = s_prefix;
    for_row(row, p.vocab, [&](int64_t, float x) {
      const uint32_t key = order_key(x);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
    });
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0, d = 255;
      for (; d > 0 && above + hist[d] < s_remaining; --d) above += hist[d];
      s_remaining -= above;
      s_prefix = prefix | (uint32_t(d) << shift);
    }
    mask |= 0xffu << shift;
    __syncthreads();
  }
  const uint32_t kth = s_prefix;
  const int take_eq = s_remaining, n_gt = k - take_eq;

  // Ordered collection: keys above kth in index order, then the first take_eq keys equal to it.
  int gt_base = 0, eq_base = 0;
  for (int64_t base = 0; base < p.vocab; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    const float x = j < p.vocab ? row[j] : 0.f;
    const uint32_t key = j < p.vocab ? order_key(x) : 0u;
    const bool gt = j < p.vocab && key > kth, eq = j < p.vocab && key == kth;
    int tot_gt, tot_eq;
    const int og = block_scan(gt, &tot_gt);
    const int oe = block_scan(eq, &tot_eq);
    if (gt) cand_v[gt_base + og] = x, cand_i[gt_base + og] = int32_t(j);
    if (eq && eq_base + oe < take_eq) cand_v[n_gt + eq_base + oe] = x, cand_i[n_gt + eq_base + oe] = int32_t(j);
    gt_base += tot_gt;
    eq_base += tot_eq;
  }
  __syncthreads();

  // Bitonic sort of the k candidates (padded to a power of two) by (value desc, index asc).
  int size = 1;
  while (size < k) size <<= 1;
  for (int i = threadIdx.x; i < size; i += kThreads)
    if (i >= k) cand_v[i] = -INFINITY, cand_i[i] = INT_MAX;
  __syncthreads();
  for (int len = 2; len <= size; len <<= 1) {
    for (int stride = len >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < size; i += kThreads) {
        const int j = i ^ stride;
        if (j > i) {
          const bool first_before = cand_v[i] > cand_v[j] || (cand_v[i] == cand_v[j] && cand_i[i] < cand_i[j]);
          const bool ascending_block = (i & len) == 0;  // this half sorts "before" first
          if (first_before != ascending_block) {
            const float tv = cand_v[i];
            cand_v[i] = cand_v[j];
            cand_v[j] = tv;
            const int32_t ti = cand_i[i];
            cand_i[i] = cand_i[j];
            cand_i[j] = ti;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < k; i += kThreads) {
    p.ids[int64_t(blockIdx.x) * k + i] = cand_i[i];
    p.values[int64_t(blockIdx.x) * k + i] = cand_v[i];
  }
  if (p.inv_temperature) row_sum(row, p.vocab, p.inv_temperature[blockIdx.x], p.sums + blockIdx.x);
}

}  // namespace

void apply_penalties(Context& ctx, const PenaltyParams& p) {
  if (p.rows <= 0) return;
  if (p.rows > INT_MAX) raise(ErrorKind::kUnsupported, "cuda apply_penalties: too many rows");
  launch_pdl(ctx, penalties_kernel, dim3(unsigned(p.rows)), dim3(128), 0, p);
  LATHE_CUDA_CHECK_LAUNCH("penalties_kernel");
}

void top_k(Context& ctx, const TopKParams& p) {
  if (p.rows <= 0) return;
  if (p.k < 1 || p.k > std::min<int64_t>(p.vocab, TopKParams::kMaxK))
    raise(ErrorKind::kInvalidArgument, "cuda top_k: k = ", p.k, " is outside 1..",
          std::min<int64_t>(p.vocab, TopKParams::kMaxK));
  if (p.rows > INT_MAX || p.vocab > INT_MAX) raise(ErrorKind::kUnsupported, "cuda top_k: too large for one launch");
  if (p.k == 1) {
    if (p.rows > 65535) raise(ErrorKind::kUnsupported, "cuda top_k: too many rows for one launch");
    auto* best = static_cast<unsigned long long*>(ctx.scratch(Scratch::kSelect, size_t(p.rows) * 8));
    LATHE_CUDA_CHECK(cudaMemsetAsync(best, 0, size_t(p.rows) * 8, ctx.stream));
    const int64_t blocks = std::min<int64_t>(64, (p.vocab + 4095) / 4096);
    const int64_t chunk = (p.vocab + blocks - 1) / blocks;
    launch_pdl(ctx, argmax_partial_kernel, dim3(dim3(unsigned(blocks), unsigned(p.rows))), dim3(kArgmaxThreads), 0, 
        p.logits, p.vocab, chunk, best);
    LATHE_CUDA_CHECK_LAUNCH("argmax_partial_kernel");
    launch_pdl(ctx, argmax_finish_kernel, dim3(unsigned((p.rows + 127) / 128)), dim3(128), 0, best, p.rows, p.ids, p.values);
    LATHE_CUDA_CHECK_LAUNCH("argmax_finish_kernel");
    if (p.inv_temperature) {
      launch_pdl(ctx, row_sum_kernel, dim3(unsigned(p.rows)), dim3(kThreads), 0, p);
      LATHE_CUDA_CHECK_LAUNCH("row_sum_kernel");
    }
    return;
  }
  launch_pdl(ctx, topk_kernel, dim3(unsigned(p.rows)), dim3(kThreads), 0, p);
  LATHE_CUDA_CHECK_LAUNCH("top_k");
}

}  // namespace lathe::ops::cuda
