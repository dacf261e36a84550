// matmul y[n, m] = x[n, k] W[m, k]^T (+ bias) for the CUDA backend.
//
// n <= kGemvMaxTokens (decode, small batches): a custom GEMV. Each warp owns RW output rows and
// streams those weight rows once with 16-byte loads (8 bf16/f16 or 4 f32 per lane), keeping several
// loads in flight per lane; activations stay fp32 and are read through the read-only/L1 path (every
// warp of the SM reads the same x, so after the first warp they hit L1/L2: no shared-memory staging,
// no block barriers, no limit on k). Accumulation is fp32 per lane, then a warp-shuffle reduction.
// Rows whose length or base is not 16-byte aligned take the same kernel with scalar loads.
//
// n > kGemvMaxTokens (prefill): cuBLAS. F32 weights run cublasSgemm in default math (no TF32), so the
// result is a plain fp32 GEMM. BF16/F16 weights run cublasGemmEx on the tensor cores with fp32
// accumulation and fp32 output; x is rounded to the weight dtype first (one small kernel), which is
// the one place the backend departs from fp32 activations (relative error ~2^-9 per x element).
//
// Layout: cuBLAS is column-major. Row-major y[n, m] is column-major C = y^T [m x n] with ldc = m;
// row-major W[m, k] is column-major [k x m] (lda = k), used transposed; row-major x[n, k] is
// column-major [k x n] (ldb = k). So C = op_T(A) * B with A = W, B = x.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <map>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/check.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_internal.h"
#include "ops/cuda/gemv.cuh"

namespace lathe::ops::cuda {
namespace {

// Up to three matrices sharing x, one launch: blocks [first1, first2) serve segment 1, [first2, ...)
// segment 2 (q/k/v or gate/up in one go: fewer launches per decode step). Fields are named, not
// arrays, and picked with selects: a runtime index into a by-value kernel parameter array makes nvcc
// copy the parameters to local memory.
static_assert(MultiMatmulParams::kMax == 3, "GemvSegments holds exactly three segments");

template <typename T>
struct GemvSegments {
  const T* w0 = nullptr;
  const T* w1 = nullptr;
  const T* w2 = nullptr;
  const float* b0 = nullptr;
  const float* b1 = nullptr;
  const float* b2 = nullptr;
  float* y0 = nullptr;
  float* y1 = nullptr;
  float* y2 = nullptr;
  int64_t m0 = 0, m1 = 0, m2 = 0;
  unsigned first1 = 0xffffffffu, first2 = 0xffffffffu;  // first block of segments 1 and 2
};

// One warp per RW consecutive rows; lane l covers columns l*VEC + j*32*VEC. Requires k % VEC == 0
// and 16-byte aligned rows when VEC > 1 (checked by the launcher). U * RW weight vectors are in
// flight per lane. (Launching it as a programmatic dependent launch, first weight loads before
// waiting on the previous kernel, measured no gain on the 8B decode: 142.3 vs 143.9 tok/s.)
template <typename T, int NT, int VEC, int RW, int U>
__global__ void __launch_bounds__(kGemvWarps * kWarp) gemv_kernel(const float* __restrict__ x,
                                                                const GemvSegments<T> seg, int64_t k) {
  const unsigned b = blockIdx.x;
  const int s = b >= seg.first2 ? 2 : b >= seg.first1 ? 1 : 0;
  const T* __restrict__ w = s == 0 ? seg.w0 : s == 1 ? seg.w1 : seg.w2;
  const float* __restrict__ bias = s == 0 ? seg.b0 : s == 1 ? seg.b1 : seg.b2;
  float* __restrict__ y = s == 0 ? seg.y0 : s == 1 ? seg.y1 : seg.y2;
  const int64_t m = s == 0 ? seg.m0 : s == 1 ? seg.m1 : seg.m2;
  const unsigned first = s == 0 ? 0u : s == 1 ? seg.first1 : seg.first2;
  const int lane = threadIdx.x & (kWarp - 1);
  const int warp = threadIdx.x / kWarp;
  const int64_t row0 = (int64_t(b - first) * kGemvWarps + warp) * RW;
  if (row0 >= m) return;
  const T* wr_[RW];
#pragma unroll
  for (int r = 0; r < RW; ++r) wr_[r] = w + (row0 + r < m ? row0 + r : m - 1) * k;  // clamp: read, never write
  const T* const(&wr)[RW] = wr_;

  float acc[RW][NT];
  gemv_rows<T, NT, VEC, RW, U>(acc, wr, x, lane, k);
  // Every lane now holds every sum; lane r*NT + t stores (r, t) so the stores go out in parallel.
#pragma unroll
  for (int r = 0; r < RW; ++r) {
    const int64_t row = row0 + r;
#pragma unroll
    for (int t = 0; t < NT; ++t)
      if (lane == (r * NT + t) % kWarp && row < m) y[t * m + row] = acc[r][t] + (bias ? bias[row] : 0.f);
  }
}

// The feed-forward's gate|up GEMV with the activation in its epilogue: warp r streams gate row r and
// up row r (rows r and inter + r of the side-by-side weights) and writes act(gate) * up, so the
// decode step needs no separate glu kernel and writes half the outputs. Same per-row arithmetic as
// gemv_kernel with RW = 2.
template <typename T, int NT, Activation A>
__global__ void __launch_bounds__(kGemvWarps * kWarp) gemv_glu_kernel(const float* __restrict__ x,
                                                                    const T* __restrict__ w, float* __restrict__ y,
                                                                    int64_t inter, int64_t k) {
  constexpr int VEC = 8, RW = 2, U = 2;
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t r = int64_t(blockIdx.x) * kGemvWarps + threadIdx.x / kWarp;
  if (r >= inter) return;
  const T* const wr[RW] = {w + r * k, w + (inter + r) * k};
  float acc[RW][NT];
  gemv_rows<T, NT, VEC, RW, U>(acc, wr, x, lane, k);
#pragma unroll
  for (int t = 0; t < NT; ++t)
    if (lane == t % kWarp) y[t * inter + r] = activate<A>(acc[0][t]) * acc[1][t];
}

template <typename T, int NT>
void launch_gemv_glu_nt(Context& ctx, Activation act, const float* x, const T* w, float* y, int64_t inter, int64_t k) {
  const unsigned blocks = unsigned((inter + kGemvWarps - 1) / kGemvWarps);
  switch (act) {
    case Activation::kSilu:
      gemv_glu_kernel<T, NT, Activation::kSilu><<<blocks, kGemvWarps * kWarp, 0, ctx.stream>>>(x, w, y, inter, k);
      break;
    case Activation::kGeluTanh:
      gemv_glu_kernel<T, NT, Activation::kGeluTanh><<<blocks, kGemvWarps * kWarp, 0, ctx.stream>>>(x, w, y, inter, k);
      break;
    case Activation::kGelu:
      gemv_glu_kernel<T, NT, Activation::kGelu><<<blocks, kGemvWarps * kWarp, 0, ctx.stream>>>(x, w, y, inter, k);
      break;
    default:
      gemv_glu_kernel<T, NT, Activation::kRelu><<<blocks, kGemvWarps * kWarp, 0, ctx.stream>>>(x, w, y, inter, k);
      break;
  }
  LATHE_CUDA_CHECK_LAUNCH("gemv_glu_kernel");
}

template <typename T>
void launch_gemv_glu(Context& ctx, const FfnParams& p) {
  const T* w = static_cast<const T*>(p.gate.data);
  const int64_t inter = p.gate.rows, k = p.gate.cols;
  switch (p.n) {
    case 1: return launch_gemv_glu_nt<T, 1>(ctx, p.act, p.x, w, p.gate_buf, inter, k);
    case 2: return launch_gemv_glu_nt<T, 2>(ctx, p.act, p.x, w, p.gate_buf, inter, k);
    case 3: return launch_gemv_glu_nt<T, 3>(ctx, p.act, p.x, w, p.gate_buf, inter, k);
    case 4: return launch_gemv_glu_nt<T, 4>(ctx, p.act, p.x, w, p.gate_buf, inter, k);
    case 5: return launch_gemv_glu_nt<T, 5>(ctx, p.act, p.x, w, p.gate_buf, inter, k);
    case 6: return launch_gemv_glu_nt<T, 6>(ctx, p.act, p.x, w, p.gate_buf, inter, k);
    case 7: return launch_gemv_glu_nt<T, 7>(ctx, p.act, p.x, w, p.gate_buf, inter, k);
    default: return launch_gemv_glu_nt<T, 8>(ctx, p.act, p.x, w, p.gate_buf, inter, k);
  }
}

// Blocks of one GEMV instance that fit on the GPU at once (occupancy x SMs), asked once per instance.
template <typename T, int NT, int VEC, int RW, int U>
int64_t gemv_slots(const Context& ctx) {
  static int per_sm = 0;
  if (per_sm == 0 && cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemv_kernel<T, NT, VEC, RW, U>,
                                                                     kGemvWarps * kWarp, 0) != cudaSuccess) {
    cudaGetLastError();
    per_sm = 1;
  }
  return int64_t(per_sm) * ctx.sm_count;
}

// Grid of one launch: segment i gets ceil(rows_i / (8 warps x RW)) blocks.
template <typename T>
int64_t gemv_segments(const MultiMatmulParams& p, int rw, GemvSegments<T>& seg) {
  const int64_t rows_per_block = int64_t(kGemvWarps) * rw;
  int64_t blocks = 0;
  const T** w[3] = {&seg.w0, &seg.w1, &seg.w2};
  const float** bias[3] = {&seg.b0, &seg.b1, &seg.b2};
  float** y[3] = {&seg.y0, &seg.y1, &seg.y2};
  int64_t* m[3] = {&seg.m0, &seg.m1, &seg.m2};
  unsigned* first[3] = {nullptr, &seg.first1, &seg.first2};
  for (int i = 0; i < p.count; ++i) {
    *w[i] = static_cast<const T*>(p.w[i].data);
    *bias[i] = p.bias[i];
    *y[i] = p.y[i];
    *m[i] = p.w[i].rows;
    if (i > 0) *first[i] = unsigned(blocks);
    blocks += (p.w[i].rows + rows_per_block - 1) / rows_per_block;
  }
  if (blocks > INT_MAX) raise(ErrorKind::kUnsupported, "cuda matmul: too many output rows for one launch");
  return blocks;
}

template <typename T, int NT, int VEC, int RW, int U>
void launch_gemv_rw(Context& ctx, const MultiMatmulParams& p) {
  GemvSegments<T> seg;
  const int64_t blocks = gemv_segments(p, RW, seg);
  gemv_kernel<T, NT, VEC, RW, U><<<unsigned(blocks), kGemvWarps * kWarp, 0, ctx.stream>>>(p.x, seg, p.w[0].cols);
  LATHE_CUDA_CHECK_LAUNCH("gemv_kernel");
}

template <typename T, int VEC, int NT>
void launch_gemv_nt(Context& ctx, const MultiMatmulParams& p) {
  // More rows per warp as the token count grows, so each x load feeds more weight vectors; U * RW
  // = 4 weight vectors in flight per lane either way. (8 in flight for the few-row shapes measured
  // slower: qkv of an 8B model went from 22 to 24 us.)
  constexpr int RW = NT <= 2 ? 1 : NT <= 4 ? 2 : 4;
  constexpr int U = RW >= 4 ? 1 : 4 / RW;
  if constexpr (RW == 1) {
    // A grid a little larger than what fits at once runs a second, mostly idle wave (qkv of an
    // 8B model: 768 blocks). Then two rows per warp halve the blocks to one wave.
    GemvSegments<T> seg;
    const int64_t blocks = gemv_segments(p, 1, seg);
    const int64_t slots = gemv_slots<T, NT, VEC, 1, 4>(ctx);
    if (blocks > slots && blocks < 3 * slots) return launch_gemv_rw<T, NT, VEC, 2, 2>(ctx, p);
  }
  launch_gemv_rw<T, NT, VEC, RW, U>(ctx, p);
}

template <typename T, int VEC>
void launch_gemv(Context& ctx, const MultiMatmulParams& p) {
  switch (p.n) {
    case 1: return launch_gemv_nt<T, VEC, 1>(ctx, p);
    case 2: return launch_gemv_nt<T, VEC, 2>(ctx, p);
    case 3: return launch_gemv_nt<T, VEC, 3>(ctx, p);
    case 4: return launch_gemv_nt<T, VEC, 4>(ctx, p);
    case 5: return launch_gemv_nt<T, VEC, 5>(ctx, p);
    case 6: return launch_gemv_nt<T, VEC, 6>(ctx, p);
    case 7: return launch_gemv_nt<T, VEC, 7>(ctx, p);
    case 8: return launch_gemv_nt<T, VEC, 8>(ctx, p);
    default: raise(ErrorKind::kInternal, "cuda gemv: n=", p.n, " is above the GEMV limit");
  }
}

template <typename T, int VEC>
void gemv_vec_or_scalar(Context& ctx, const MultiMatmulParams& p) {
  const int64_t k = p.w[0].cols;
  bool vec = k % VEC == 0 && aligned16(p.x);
  for (int i = 0; i < p.count; ++i) vec = vec && aligned16(p.w[i].data);
  if (vec) launch_gemv<T, VEC>(ctx, p);
  else launch_gemv<T, 1>(ctx, p);
}

MultiMatmulParams single(const MatmulParams& p) {
  MultiMatmulParams m;
  m.x = p.x;
  m.n = p.n;
  m.count = 1;
  m.w[0] = p.w;
  m.bias[0] = p.bias;
  m.y[0] = p.y;
  return m;
}

void gemv(Context& ctx, const MultiMatmulParams& p) {
  switch (p.w[0].dtype) {
    case DType::kF32: return gemv_vec_or_scalar<float, 4>(ctx, p);
    case DType::kF16: return gemv_vec_or_scalar<F16, 8>(ctx, p);
    default: return gemv_vec_or_scalar<Bf16, 8>(ctx, p);
  }
}

// ---- cuBLAS path helpers ---------------------------------------------------------------------

__global__ void fill_bias_kernel(float* __restrict__ y, const float* __restrict__ bias, int64_t n, int64_t m) {
  const int64_t total = n * m;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = bias ? bias[i % m] : 0.f;
}

// out = round(x); with lo: lo = round(x - round(x)), so hi + lo carries ~16 mantissa bits (bf16)
// and W.hi + W.lo is float32-accurate up to the accumulation order.
template <typename T>
__global__ void round_x_kernel(const float* __restrict__ x, T* __restrict__ out, T* __restrict__ lo, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const T hi = round_to<T>(x[i]);
    out[i] = hi;
    if (lo) lo[i] = round_to<T>(x[i] - widen(hi));
  }
}

void fill_bias(Context& ctx, float* y, const float* bias, int64_t n, int64_t m) {
  fill_bias_kernel<<<elementwise_blocks(n * m, 256), 256, 0, ctx.stream>>>(y, bias, n, m);
  LATHE_CUDA_CHECK_LAUNCH("fill_bias_kernel");
}

void check_dims(int64_t n, int64_t m, int64_t k) {
  if (m > INT_MAX || k > INT_MAX || n > INT_MAX)
    raise(ErrorKind::kUnsupported, "cuda matmul: shape n=", n, " m=", m, " k=", k, " exceeds cuBLAS int dimensions");
}

void cublas_matmul(Context& ctx, const MatmulParams& p) {
  const int64_t m = p.w.rows, k = p.w.cols, n = p.n;
  check_dims(n, m, k);
  // Bias first, then C = A B + 1 * C: one pass over y for the bias, no epilogue kernel after.
  const float alpha = 1.f;
  const float beta = p.bias ? 1.f : 0.f;
  if (p.bias) fill_bias(ctx, p.y, p.bias, n, m);
  if (p.w.dtype == DType::kF32) {
    LATHE_CUBLAS_CHECK(cublasSgemm(ctx.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(n), int(k), &alpha,
                                   static_cast<const float*>(p.w.data), int(k), p.x, int(k), &beta, p.y, int(m)));
    return;
  }
  const LowpX xs = p.x_lowp && !ctx.exact_matmul ? LowpX{p.x_lowp, nullptr}
                                                  : round_activations(ctx, p.x, n, k, p.w.dtype, ctx.exact_matmul);
  gemm_lowp(ctx, p.w, xs.hi, p.y, false, n, beta);
  if (xs.lo) gemm_lowp(ctx, p.w, xs.lo, p.y, false, n, 1.f);  // + W . lo: what bf16 rounding dropped
}

}  // namespace

bool ffn_gemv(Context& ctx, const FfnParams& p) {
  const DType t = p.gate.dtype;
  const int64_t inter = p.gate.rows, k = p.gate.cols;
  const size_t w_bytes = size_t(inter * k) * 2;
  const bool ok = p.n >= 1 && p.n <= kGemvMaxTokens && (t == DType::kBF16 || t == DType::kF16) && p.up.dtype == t &&
                  p.up.rows == inter && p.up.cols == k && !p.gate_bias && !p.up_bias && k % 8 == 0 && aligned16(p.x) &&
                  aligned16(p.gate.data) &&
                  static_cast<const char*>(p.up.data) == static_cast<const char*>(p.gate.data) + w_bytes &&
                  (inter + kGemvWarps - 1) / kGemvWarps <= INT_MAX;
  if (!ok) return false;
  if (t == DType::kBF16)
    launch_gemv_glu<Bf16>(ctx, p);
  else
    launch_gemv_glu<F16>(ctx, p);
  MatmulParams d;
  d.x = p.gate_buf;
  d.w = p.down;
  d.bias = p.down_bias;
  d.y = p.out;
  d.n = p.n;
  matmul(ctx, d);
  return true;
}

LowpX round_activations(Context& ctx, const float* x, int64_t n, int64_t k, DType wtype, bool split) {
  char* hi = static_cast<char*>(ctx.scratch(Scratch::kMatmulX, size_t(n * k) * 2 * (split ? 2 : 1)));
  char* lo = split ? hi + size_t(n * k) * 2 : nullptr;
  if (wtype == DType::kBF16)
    round_x_kernel<<<elementwise_blocks(n * k, 256), 256, 0, ctx.stream>>>(
        x, reinterpret_cast<__nv_bfloat16*>(hi), reinterpret_cast<__nv_bfloat16*>(lo), n * k);
  else
    round_x_kernel<<<elementwise_blocks(n * k, 256), 256, 0, ctx.stream>>>(x, reinterpret_cast<__half*>(hi),
                                                                            reinterpret_cast<__half*>(lo), n * k);
  LATHE_CUDA_CHECK_LAUNCH("round_x_kernel");
  return {hi, lo};
}

// One cuBLASLt plan per GEMM shape: C[m x n] (column-major; row-major y[n, m]) = op_T(A) B with
// A = W [k x m], B = x [k x n]. The heuristic's first algorithm is not always the fastest (measured:
// up to ~10% on prefill shapes), so the first call of a shape that overwrites its output (beta 0)
// and is not being recorded into a graph times the top candidates on its own operands and keeps the
// fastest; LATHE_GEMM_TUNE=0 keeps the heuristic's choice.
struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  static constexpr int kCandidates = 6;
  cublasLtMatmulAlgo_t candidates[kCandidates]{};  // the heuristic's top algorithms, best guess first
  int n_candidates = 0;
  bool tuned = false;
  bool ok = false;
};
struct LtPlans {
  std::map<std::tuple<int64_t, int64_t, int64_t, int, int>, LtPlan> plans;
  ~LtPlans() {
    for (auto& [key, p] : plans) {
      if (p.op) cublasLtMatmulDescDestroy(p.op);
      if (p.a) cublasLtMatrixLayoutDestroy(p.a);
      if (p.b) cublasLtMatrixLayoutDestroy(p.b);
      if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    }
  }
};

LtPlans* create_lt_plans() { return new LtPlans(); }
void destroy_lt_plans(LtPlans* plans) noexcept { delete plans; }

namespace {
LtPlan& lt_plan(Context& ctx, int64_t m, int64_t n, int64_t k, cudaDataType_t type, cudaDataType_t ytype) {
  auto key = std::make_tuple(m, n, k, int(type), int(ytype));
  auto it = ctx.lt_plans->plans.find(key);
  if (it != ctx.lt_plans->plans.end()) return it->second;
  LtPlan& p = ctx.lt_plans->plans[key];
  const cublasOperation_t ta = CUBLAS_OP_T;
  bool ok = cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatrixLayoutCreate(&p.a, type, uint64_t(k), uint64_t(m), k) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatrixLayoutCreate(&p.b, type, uint64_t(k), uint64_t(n), k) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatrixLayoutCreate(&p.c, ytype, uint64_t(m), uint64_t(n), m) == CUBLAS_STATUS_SUCCESS;
  if (ok) {
    cublasLtMatmulPreference_t pref = nullptr;
    ok = cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS;
    const uint64_t ws = ctx.blas_workspace_bytes;
    if (ok)
      ok = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws) ==
           CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulHeuristicResult_t results[LtPlan::kCandidates]{};
    int found = 0;
    if (ok)
      ok = cublasLtMatmulAlgoGetHeuristic(ctx.lt, p.op, p.a, p.b, p.c, p.c, pref, LtPlan::kCandidates, results, &found) ==
               CUBLAS_STATUS_SUCCESS &&
           found > 0;
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ok) {
      p.algo = results[0].algo;
      for (int i = 0; i < found; ++i)
        if (results[i].state == CUBLAS_STATUS_SUCCESS) p.candidates[p.n_candidates++] = results[i].algo;
    }
  }
  p.ok = ok;  // else cublasGemmEx serves this shape
  return p;
}

bool tuning_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("LATHE_GEMM_TUNE");
    return !(e && std::string_view(e) == "0");
  }();
  return on;
}

// Times each candidate (one warm-up, then the median of 3) on this call's operands; y is
// overwritten each time (beta 0), so the caller's GEMM that follows gives the same result.
void tune(Context& ctx, LtPlan& p, const void* w, const void* x, void* y) {
  p.tuned = true;
  if (p.n_candidates < 2 || !tuning_enabled()) return;
  cudaEvent_t start, stop;
  if (cudaEventCreate(&start) != cudaSuccess) return;
  if (cudaEventCreate(&stop) != cudaSuccess) {
    cudaEventDestroy(start);
    return;
  }
  const float alpha = 1.f, beta = 0.f;
  float best = INFINITY;
  for (int c = 0; c < p.n_candidates; ++c) {
    const cublasLtMatmulAlgo_t& algo = p.candidates[c];
    float t[3] = {INFINITY, INFINITY, INFINITY};
    bool ok = cublasLtMatmul(ctx.lt, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &algo, ctx.blas_workspace,
                             ctx.blas_workspace_bytes, ctx.stream) == CUBLAS_STATUS_SUCCESS;
    for (int r = 0; ok && r < 3; ++r) {
      ok = cudaEventRecord(start, ctx.stream) == cudaSuccess &&
           cublasLtMatmul(ctx.lt, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &algo, ctx.blas_workspace,
                          ctx.blas_workspace_bytes, ctx.stream) == CUBLAS_STATUS_SUCCESS &&
           cudaEventRecord(stop, ctx.stream) == cudaSuccess && cudaEventSynchronize(stop) == cudaSuccess &&
           cudaEventElapsedTime(&t[r], start, stop) == cudaSuccess;
    }
    if (!ok) continue;
    std::sort(t, t + 3);
    if (t[1] < best) best = t[1], p.algo = algo;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  LATHE_CUDA_CHECK(cudaGetLastError());
}
}  // namespace

void gemm_lowp(Context& ctx, const Weight& w, const void* x_lowp, void* y, bool y_lowp, int64_t n, float beta) {
  const int64_t m = w.rows, k = w.cols;
  check_dims(n, m, k);
  const float alpha = 1.f;
  const cudaDataType_t type = w.dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
  if (ctx.lt) {
    LtPlan& p = lt_plan(ctx, m, n, k, type, y_lowp ? type : CUDA_R_32F);
    if (p.ok && !p.tuned && beta == 0.f && !ctx.capturing) tune(ctx, p, w.data, x_lowp, y);
    if (p.ok) {
      LATHE_CUBLAS_CHECK(cublasLtMatmul(ctx.lt, p.op, &alpha, w.data, p.a, x_lowp, p.b, &beta, y, p.c, y, p.c, &p.algo,
                                        ctx.blas_workspace, ctx.blas_workspace_bytes, ctx.stream));
      return;
    }
  }
  LATHE_CUBLAS_CHECK(cublasGemmEx(ctx.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(n), int(k), &alpha, w.data, type,
                                  int(k), x_lowp, type, int(k), &beta, y, y_lowp ? type : CUDA_R_32F, int(m),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void matmul(Context& ctx, const MatmulParams& p) {
  const int64_t m = p.w.rows, k = p.w.cols;
  if (p.n < 0 || m < 0 || k < 0) raise(ErrorKind::kInvalidArgument, "cuda matmul: negative shape");
  if (p.w.dtype != DType::kF32 && p.w.dtype != DType::kF16 && p.w.dtype != DType::kBF16)
    raise(ErrorKind::kUnsupported, "cuda matmul: weight dtype ", dtype_name(p.w.dtype), " is not supported");
  if (p.n == 0 || m == 0) return;
  if (k == 0) return fill_bias(ctx, p.y, p.bias, p.n, m);  // empty sum: y = bias (or 0)
  if (p.n > kGemvMaxTokens) return cublas_matmul(ctx, p);
  gemv(ctx, single(p));
}

void matmul_multi(Context& ctx, const MultiMatmulParams& p) {
  if (p.count < 1 || p.count > MultiMatmulParams::kMax)
    raise(ErrorKind::kInvalidArgument, "cuda matmul_multi: ", p.count, " outputs (1..", MultiMatmulParams::kMax, ")");
  // One GEMV launch when every segment can share it; otherwise one matmul per segment.
  bool together = p.n >= 1 && p.n <= kGemvMaxTokens;
  for (int i = 0; i < p.count; ++i)
    together = together && p.w[i].dtype == p.w[0].dtype && p.w[i].cols == p.w[0].cols && p.w[i].rows > 0 &&
               p.w[i].cols > 0 &&
               (p.w[i].dtype == DType::kF32 || p.w[i].dtype == DType::kF16 || p.w[i].dtype == DType::kBF16);
  if (together) return gemv(ctx, p);
  // cuBLAS path with bf16/f16 weights of one dtype: round x once for every output.
  bool shared_x = p.n > kGemvMaxTokens && (p.w[0].dtype == DType::kBF16 || p.w[0].dtype == DType::kF16);
  for (int i = 0; i < p.count; ++i)
    shared_x = shared_x && p.w[i].dtype == p.w[0].dtype && p.w[i].cols == p.w[0].cols && p.w[i].rows > 0 &&
               p.w[i].cols > 0;
  if (shared_x) {
    const LowpX xs = p.x_lowp && !ctx.exact_matmul
                         ? LowpX{p.x_lowp, nullptr}
                         : round_activations(ctx, p.x, p.n, p.w[0].cols, p.w[0].dtype, ctx.exact_matmul);
    for (int i = 0; i < p.count; ++i) {
      const float beta = p.bias[i] ? 1.f : 0.f;
      if (p.bias[i]) fill_bias(ctx, p.y[i], p.bias[i], p.n, p.w[i].rows);
      gemm_lowp(ctx, p.w[i], xs.hi, p.y[i], false, p.n, beta);
      if (xs.lo) gemm_lowp(ctx, p.w[i], xs.lo, p.y[i], false, p.n, 1.f);
    }
    return;
  }
  for (int i = 0; i < p.count; ++i) {
    MatmulParams m;
    m.x = p.x;
    m.x_lowp = p.x_lowp;
    m.w = p.w[i];
    m.bias = p.bias[i];
    m.y = p.y[i];
    m.n = p.n;
    matmul(ctx, m);
  }
}

}  // namespace lathe::ops::cuda
