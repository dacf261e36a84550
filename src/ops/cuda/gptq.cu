// GPTQ for EXL2 on the GPU (the quantizer's solves; the host default in ops/ref/gptq.cpp is the
// reference). gptq_factor: the permuted, damped Hessian factored by cuSOLVER in double (Cholesky,
// inverse from it, Cholesky again). gptq_exl2: the weight transposed into act-order rows once,
// then group by group
//  * the scale search: column maxima, then every column's |err|^3.5 at each of the 97 candidate
//    group maxima summed per block, then one block picks the least (sums in a fixed order, so runs
//    repeat exactly);
//  * the sequential part: a block of up to 128 rows (whole groups, or a piece of a larger one)
//    with one thread per column, the rows and the u block in shared memory, each row's error
//    spread over the block's later rows at once;
//  * the block's error over every later row by one cuBLAS SGEMM (fp32, no TF32).
// Blocks end at group boundaries so a group's scales always see rows every earlier group's error
// has reached, as on the host.
#include <cusolverDn.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"

namespace lathe::ops::cuda {
namespace {

constexpr int kBlockRows = 128;     // rows of one sequential block (its u block: 64 KiB of smem)
constexpr int kColsPerBlock = 32;   // columns per block of the sequential kernel (a warp's lanes)
constexpr int kRowThreads = 256;    // its threads: 8 row slices of the update
constexpr int kMultipliers = 97;    // candidate group maxima: gmax * [0.70, 1.20]
constexpr int kScaleThreads = 128;

// Stream-ordered device memory for one call.
class DeviceBuffer {
 public:
  DeviceBuffer(Context& ctx, size_t bytes) : stream_(ctx.stream) {
    const cudaError_t err = cudaMallocAsync(&p_, std::max<size_t>(bytes, 16), stream_);
    if (err != cudaSuccess) raise_cuda(err, "cudaMallocAsync (gptq)", __FILE__, __LINE__, bytes);
  }
  ~DeviceBuffer() {
    if (p_) cudaFreeAsync(p_, stream_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  cudaStream_t stream_;
};

struct SolverDeleter {
  void operator()(cusolverDnContext* h) const noexcept { cusolverDnDestroy(h); }
};

cusolverDnHandle_t solver_for(Context& ctx) {
  // One handle per backend context, made on first use (most runs never factor anything).
  static thread_local std::vector<std::pair<Context*, std::unique_ptr<cusolverDnContext, SolverDeleter>>> handles;
  cusolverDnHandle_t h = nullptr;
  for (auto& [c, held] : handles)
    if (c == &ctx) h = held.get();
  if (!h) {
    if (cusolverDnCreate(&h) != CUSOLVER_STATUS_SUCCESS) raise(ErrorKind::kInternal, "cusolverDnCreate failed");
    handles.emplace_back(&ctx, std::unique_ptr<cusolverDnContext, SolverDeleter>(h));
  }
  // Every call: a later backend may reuse a destroyed one's address with a stream of its own.
  if (cusolverDnSetStream(h, ctx.stream) != CUSOLVER_STATUS_SUCCESS) raise(ErrorKind::kInternal, "cusolverDnSetStream failed");
  return h;
}

void check_solver(cusolverStatus_t s, const char* what) {
  if (s != CUSOLVER_STATUS_SUCCESS) raise(ErrorKind::kInternal, "cuSOLVER ", what, " failed (status ", int(s), ")");
}

// a = h[perm][perm] with dead channels' diagonal 1, plus damp on the diagonal.
__global__ void permute_hessian_kernel(const double* __restrict__ h, const int32_t* __restrict__ perm, int64_t K,
                                       double damp, double* __restrict__ a) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, i = blockIdx.y;
  if (j >= K) return;
  double v = h[int64_t(perm[i]) * K + perm[j]];
  if (i == j) v = (v <= 0 ? 1.0 : v) + damp;
  a[i * K + j] = v;
}

// u (row-major, fp32) = the upper factor cuSOLVER left in a's upper triangle (column-major).
__global__ void upper_to_float_kernel(const double* __restrict__ a, int64_t K, float* __restrict__ u) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, i = blockIdx.y;
  if (j >= K) return;
  u[i * K + j] = j >= i ? float(a[i + j * K]) : 0.f;
}

// wt [K, N] = w[n][perm[p]] in fp32; channels that never fired (h's diagonal <= 0) as zero.
template <typename T>
__global__ void act_order_kernel(const T* __restrict__ w, const int32_t* __restrict__ perm, const double* __restrict__ h,
                                 int64_t K, int64_t N, float* __restrict__ wt) {
  __shared__ float tile[32][33];
  const int64_t p0 = int64_t(blockIdx.x) * 32, n0 = int64_t(blockIdx.y) * 32;
  const int tx = threadIdx.x;
  for (int ty = threadIdx.y; ty < 32; ty += blockDim.y) {
    const int64_t n = n0 + ty, p = p0 + tx;
    float v = 0.f;
    if (n < N && p < K) {
      const int64_t ch = perm[p];
      v = (h && h[ch * K + ch] <= 0) ? 0.f : widen(w[n * K + ch]);
    }
    tile[ty][tx] = v;
  }
  __syncthreads();
  for (int ty = threadIdx.y; ty < 32; ty += blockDim.y) {
    const int64_t p = p0 + ty, n = n0 + tx;
    if (p < K && n < N) wt[p * N + n] = tile[tx][ty];
  }
}

__device__ __forceinline__ int quantize_one(float x, float scale, int bits) {
  const int zero = 1 << (bits - 1), maxq = (1 << bits) - 1;
  return min(max(__float2int_rn(x / scale) + zero, 0), maxq);
}

__device__ __forceinline__ float exl2_scale_dev(int code, float scale_max) {
  return float(code * code) * scale_max / 256.f;
}

// Column maxima of |w| over the group's rows, and the largest of them (as bits: all >= 0).
__global__ void column_max_kernel(const float* __restrict__ w, int64_t rows, int64_t N, float* __restrict__ colmax,
                                  unsigned* __restrict__ gmax_bits) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  float m = 0.f;
  if (c < N) {
    for (int64_t r = 0; r < rows; ++r) m = fmaxf(m, fabsf(w[r * N + c]));
    colmax[c] = m;
  }
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) atomicMax(gmax_bits, __float_as_uint(m));
}

__device__ __forceinline__ double group_base_max(unsigned gmax_bits, double half) {
  const double g = double(__uint_as_float(gmax_bits)) / half;
  return g <= 0 ? 1e-8 : g;
}

__device__ __forceinline__ float multiplier_max(double gmax, int i) {
  const double p = 0.70 + 0.5 * double(i) / 96.0;
  return __half2float(__float2half_rn(float(gmax * p)));
}

// Each column's code (written by the first row of blocks), then for candidate maximum blockIdx.y
// the block's summed |err|^3.5 (partial[block][i]). One multiplier per block row keeps even a
// narrow layer's search (k_proj under GQA: 1,024 columns) spread over the whole GPU.
__global__ void scale_error_kernel(const float* __restrict__ w, int64_t rows, int64_t N, int bits,
                                   const float* __restrict__ colmax, const unsigned* __restrict__ gmax_bits,
                                   uint8_t* __restrict__ codes, double* __restrict__ partial) {
  __shared__ double warp_sums[kScaleThreads / 32];
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int i = blockIdx.y;
  const double half = double((1 << bits) - 1) / 2.0;
  const double gmax = group_base_max(*gmax_bits, half);
  const int zero = 1 << (bits - 1);
  double err = 0;
  if (c < N) {
    const double base = double(colmax[c]) / half;
    const int code = min(max(__double2int_rn(sqrt(base / gmax) * 16.0), 1), 16);
    if (i == 0) codes[c] = uint8_t(code);
    const float m = multiplier_max(gmax, i);
    if (m > 0) {
      const float s = exl2_scale_dev(code, m);
      for (int64_t r = 0; r < rows; ++r) {
        const float x = w[r * N + c];
        const double d = fabs(double(x) - double(quantize_one(x, s, bits) - zero) * double(s));
        err += d * d * d * sqrt(d);
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) err += __shfl_xor_sync(0xffffffffu, err, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = err;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0;
    for (int k = 0; k < kScaleThreads / 32; ++k) sum += warp_sums[k];
    partial[int64_t(blockIdx.x) * kMultipliers + i] = sum;
  }
}

// The group maximum: the candidate with the least error (the first on ties, as on the host).
__global__ void pick_scale_kernel(const double* __restrict__ partial, int blocks, int bits,
                                  const unsigned* __restrict__ gmax_bits, float* __restrict__ scale_max) {
  __shared__ double err[kMultipliers];
  const double gmax = group_base_max(*gmax_bits, double((1 << bits) - 1) / 2.0);
  for (int i = threadIdx.x; i < kMultipliers; i += blockDim.x) {
    double s = 0;
    for (int b = 0; b < blocks; ++b) s += partial[int64_t(b) * kMultipliers + i];
    err[i] = multiplier_max(gmax, i) > 0 ? s : INFINITY;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double best = INFINITY;
    float best_max = float(gmax);
    for (int i = 0; i < kMultipliers; ++i)
      if (err[i] < best) best = err[i], best_max = multiplier_max(gmax, i);
    *scale_max = best_max;
  }
}

// Rows [r0, r0 + rows) of one group, quantized in order; each row's error (divided by u's
// diagonal) goes to err (row r0 + i at err[(r0 + i - blk0) * N]) and is spread over the rows up to
// the block's end e1. A block holds kColsPerBlock columns of those rows and the u block in shared
// memory: per row, one warp quantizes it (a lane per column), then all threads update the later
// rows together, so even a narrow layer keeps the GPU busy.
__global__ void __launch_bounds__(kRowThreads) gptq_rows_kernel(
    float* __restrict__ wt, const float* __restrict__ u, int64_t K, int64_t N, int64_t r0, int rows, int64_t e1,
    int64_t blk0, int bits, const uint8_t* __restrict__ codes, const float* __restrict__ scale_max,
    const int32_t* __restrict__ perm, float* __restrict__ err, uint8_t* __restrict__ q, uint16_t* __restrict__ wq) {
  extern __shared__ float smem[];
  __shared__ float row_err[kColsPerBlock];
  const int R = int(e1 - r0);  // rows held: the group's and the block's later ones
  float* us = smem;            // [rows][R]: u[r0 + i][r0 + j]
  float* ws = smem + rows * R; // [R][kColsPerBlock]
  const int tid = threadIdx.x, lane = tid % kColsPerBlock, slice = tid / kColsPerBlock;
  constexpr int kSlices = kRowThreads / kColsPerBlock;
  for (int idx = tid; idx < rows * R; idx += blockDim.x) {
    const int i = idx / R, j = idx % R;
    us[idx] = u ? u[(r0 + i) * K + r0 + j] : (i == j ? 1.f : 0.f);
  }
  const int64_t c = int64_t(blockIdx.x) * kColsPerBlock + lane;
  const bool live = c < N;
  for (int j = slice; j < R; j += kSlices) ws[j * kColsPerBlock + lane] = live ? wt[(r0 + j) * N + c] : 0.f;
  const int zero = 1 << (bits - 1);
  const float scale = live ? exl2_scale_dev(codes[c], *scale_max) : 1.f;
  __syncthreads();
  for (int i = 0; i < rows; ++i) {
    if (slice == 0) {
      const float x = ws[i * kColsPerBlock + lane];
      const int qi = quantize_one(x, scale, bits);
      const float dq = float(qi - zero) * scale;
      const float e = (x - dq) / us[i * R + i];
      row_err[lane] = e;
      if (live) {
        q[(r0 + i) * N + c] = uint8_t(qi);
        if (err) err[(r0 + i - blk0) * N + c] = e;
        if (wq) wq[c * K + perm[r0 + i]] = __half_as_ushort(__float2half_rn(dq));
      }
    }
    if (!u) continue;
    __syncthreads();
    const float e = row_err[lane];
    const float* ui = us + i * R;
    for (int j = i + 1 + slice; j < R; j += kSlices) ws[j * kColsPerBlock + lane] -= ui[j] * e;
    __syncthreads();
  }
  if (u && live)
    for (int j = rows + slice; j < R; j += kSlices) wt[(r0 + j) * N + c] = ws[j * kColsPerBlock + lane];
}

// A block of the sequential pass: rows [r0, r0 + rows) of group g; `scales`: the group starts here.
struct Segment {
  int64_t r0, rows;
  int64_t g;
  bool scales;
};

// Whole groups while they fit in kBlockRows rows; a larger group alone, in pieces of kBlockRows.
std::vector<std::vector<Segment>> plan_blocks(const GptqGroup* groups, int64_t num_groups) {
  std::vector<std::vector<Segment>> blocks;
  int64_t row = 0, in_block = kBlockRows;  // rows in the open block (full: open a new one)
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t n = groups[g].rows;
    if (n > kBlockRows) {
      for (int64_t at = 0; at < n; at += kBlockRows)
        blocks.push_back({{row + at, std::min<int64_t>(kBlockRows, n - at), g, at == 0}});
      in_block = kBlockRows;
    } else {
      if (in_block + n > kBlockRows) {
        blocks.emplace_back();
        in_block = 0;
      }
      blocks.back().push_back({row, n, g, true});
      in_block += n;
    }
    row += n;
  }
  return blocks;
}

template <typename T>
void launch_act_order(Context& ctx, const GptqExl2Params& p, float* wt) {
  const int64_t K = p.w.cols, N = p.w.rows;
  const dim3 grid(unsigned((K + 31) / 32), unsigned((N + 31) / 32)), block(32, 8);
  act_order_kernel<T><<<grid, block, 0, ctx.stream>>>(static_cast<const T*>(p.w.data), p.perm, p.u ? p.h : nullptr, K,
                                                      N, wt);
  LATHE_CUDA_CHECK_LAUNCH("act_order_kernel");
}

}  // namespace

bool gptq_factor(Context& ctx, const GptqFactorParams& p) {
  const int64_t K = p.k;
  if (K <= 0 || !p.h || !p.perm || !p.u) raise(ErrorKind::kInvalidArgument, "gptq_factor: missing input or output");
  if (K > INT32_MAX / 2) raise(ErrorKind::kUnsupported, "gptq_factor: dimension too large");
  cusolverDnHandle_t solver = solver_for(ctx);
  DeviceBuffer a(ctx, sizeof(double) * size_t(K * K)), info(ctx, sizeof(int));
  const dim3 grid(unsigned((K + 255) / 256), unsigned(K));
  permute_hessian_kernel<<<grid, 256, 0, ctx.stream>>>(p.h, p.perm, K, p.damp, a.as<double>());
  LATHE_CUDA_CHECK_LAUNCH("permute_hessian_kernel");
  // Symmetric, so row-major is column-major: factor the upper triangle in place.
  const cublasFillMode_t up = CUBLAS_FILL_MODE_UPPER;
  int lwork = 0, lwork2 = 0;
  check_solver(cusolverDnDpotrf_bufferSize(solver, up, int(K), a.as<double>(), int(K), &lwork), "potrf_bufferSize");
  check_solver(cusolverDnDpotri_bufferSize(solver, up, int(K), a.as<double>(), int(K), &lwork2), "potri_bufferSize");
  DeviceBuffer work(ctx, sizeof(double) * size_t(std::max(lwork, lwork2)));
  auto ok = [&] {
    int h_info = 0;
    LATHE_CUDA_CHECK(cudaMemcpyAsync(&h_info, info.as<int>(), sizeof(int), cudaMemcpyDeviceToHost, ctx.stream));
    LATHE_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    if (h_info < 0) raise(ErrorKind::kInternal, "cuSOLVER: argument ", -h_info, " is wrong");
    return h_info == 0;
  };
  check_solver(cusolverDnDpotrf(solver, up, int(K), a.as<double>(), int(K), work.as<double>(), lwork, info.as<int>()),
               "potrf");
  if (!ok()) return false;
  check_solver(cusolverDnDpotri(solver, up, int(K), a.as<double>(), int(K), work.as<double>(), lwork2, info.as<int>()),
               "potri");
  if (!ok()) return false;
  check_solver(cusolverDnDpotrf(solver, up, int(K), a.as<double>(), int(K), work.as<double>(), lwork, info.as<int>()),
               "potrf");
  if (!ok()) return false;
  upper_to_float_kernel<<<grid, 256, 0, ctx.stream>>>(a.as<double>(), K, p.u);
  LATHE_CUDA_CHECK_LAUNCH("upper_to_float_kernel");
  return true;
}

void gptq_exl2(Context& ctx, const GptqExl2Params& p) {
  const int64_t K = p.w.cols, N = p.w.rows;
  check_gptq_exl2(p);
  if (N > INT32_MAX || K > INT32_MAX) raise(ErrorKind::kUnsupported, "gptq_exl2: layer too large");

  DeviceBuffer wt(ctx, sizeof(float) * size_t(K * N));
  switch (p.w.dtype) {
    case DType::kF32: launch_act_order<float>(ctx, p, wt.as<float>()); break;
    case DType::kBF16: launch_act_order<Bf16>(ctx, p, wt.as<float>()); break;
    case DType::kF16: launch_act_order<F16>(ctx, p, wt.as<float>()); break;
    default: raise(ErrorKind::kUnsupported, "gptq_exl2: weights must be f32, bf16 or f16");
  }
  const int scale_blocks = int((N + kScaleThreads - 1) / kScaleThreads);
  DeviceBuffer colmax(ctx, sizeof(float) * size_t(N)), gmax(ctx, sizeof(unsigned)),
      partial(ctx, sizeof(double) * size_t(scale_blocks) * kMultipliers),
      err(ctx, p.u ? sizeof(float) * size_t(kBlockRows) * size_t(N) : 16);
  const unsigned col_blocks = unsigned((N + kColsPerBlock - 1) / kColsPerBlock);
  int64_t group_start = 0;
  std::vector<int64_t> starts(size_t(p.num_groups));
  for (int64_t g = 0; g < p.num_groups; ++g) starts[size_t(g)] = group_start, group_start += p.groups[g].rows;

  for (const std::vector<Segment>& block : plan_blocks(p.groups, p.num_groups)) {
    const int64_t blk0 = block.front().r0, blk1 = block.back().r0 + block.back().rows;
    for (const Segment& s : block) {
      const GptqGroup& g = p.groups[s.g];
      uint8_t* codes = p.codes + s.g * N;
      if (s.scales) {
        const float* rows = wt.as<float>() + starts[size_t(s.g)] * N;
        LATHE_CUDA_CHECK(cudaMemsetAsync(gmax.as<unsigned>(), 0, sizeof(unsigned), ctx.stream));
        column_max_kernel<<<scale_blocks, kScaleThreads, 0, ctx.stream>>>(rows, g.rows, N, colmax.as<float>(),
                                                                          gmax.as<unsigned>());
        LATHE_CUDA_CHECK_LAUNCH("column_max_kernel");
        scale_error_kernel<<<dim3(unsigned(scale_blocks), kMultipliers), kScaleThreads, 0, ctx.stream>>>(
            rows, g.rows, N, g.bits, colmax.as<float>(), gmax.as<unsigned>(), codes, partial.as<double>());
        LATHE_CUDA_CHECK_LAUNCH("scale_error_kernel");
        pick_scale_kernel<<<1, 128, 0, ctx.stream>>>(partial.as<double>(), scale_blocks, g.bits, gmax.as<unsigned>(),
                                                     p.maxes + s.g);
        LATHE_CUDA_CHECK_LAUNCH("pick_scale_kernel");
      }
      const int64_t e1 = p.u ? blk1 : s.r0 + s.rows;
      const int R = int(e1 - s.r0);
      const size_t smem = sizeof(float) * (size_t(s.rows) * R + size_t(R) * kColsPerBlock);
      static bool opted = false;
      if (!opted) {
        LATHE_CUDA_CHECK(cudaFuncSetAttribute(gptq_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              int(sizeof(float) * (kBlockRows * kBlockRows + kBlockRows * kColsPerBlock))));
        opted = true;
      }
      gptq_rows_kernel<<<col_blocks, kRowThreads, smem, ctx.stream>>>(
          wt.as<float>(), p.u, K, N, s.r0, int(s.rows), e1, blk0, g.bits, codes, p.maxes + s.g, p.perm,
          p.u ? err.as<float>() : nullptr, p.q, p.wq);
      LATHE_CUDA_CHECK_LAUNCH("gptq_rows_kernel");
    }
    if (p.u && blk1 < K) {
      // wt[blk1:, :] -= u[blk0:blk1, blk1:]^T err  (column-major view: wt^T -= err^T u_block).
      const float minus = -1.f, one = 1.f;
      LATHE_CUBLAS_CHECK(cublasSgemm(ctx.blas, CUBLAS_OP_N, CUBLAS_OP_T, int(N), int(K - blk1), int(blk1 - blk0), &minus,
                                     err.as<float>(), int(N), p.u + blk0 * K + blk1, int(K), &one,
                                     wt.as<float>() + blk1 * N, int(N)));
    }
  }
}

}  // namespace lathe::ops::cuda
