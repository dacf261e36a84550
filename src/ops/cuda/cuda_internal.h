// Private interface of the ops/cuda backend: the per-backend context every launcher gets (stream,
// cuBLAS handle, device limits, growable scratch) and one launcher per op family. Launchers validate
// their parameters, turn runtime sizes/dtypes into template instances in one place, enqueue on
// ctx.stream and check the launch; they never synchronise.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "ops/ops.h"

namespace lathe::ops::cuda {

// Scratch slots: buffers a single op needs while it runs (never held across ops).
enum class Scratch : int { kMatmulX = 0, kAttention = 1, kCount = 2 };

class Context {
 public:
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  int device = 0;
  int sm_count = 0;
  size_t smem_optin = 0;  // largest dynamic shared memory a block may opt into
  bool exact_matmul = true;  // BackendOptions::exact_matmul

  // Device memory of at least `bytes` for `slot`, reused across calls. Growing waits for the
  // stream first, so earlier kernels that still read the old buffer finish before it is freed.
  void* scratch(Scratch slot, size_t bytes);
  void release_scratch() noexcept;

 private:
  void* scratch_[int(Scratch::kCount)] = {};
  size_t scratch_bytes_[int(Scratch::kCount)] = {};
};

void matmul(Context& ctx, const MatmulParams& p);
void matmul_multi(Context& ctx, const MultiMatmulParams& p);
void attention(Context& ctx, const AttentionParams& p);
void rms_norm(Context& ctx, const RmsNormParams& p);
void add_rms_norm(Context& ctx, float* x, const float* delta, const RmsNormParams& p);
void rope(Context& ctx, const RopeParams& p);
void glu(Context& ctx, const GluParams& p);
void embedding(Context& ctx, const EmbeddingParams& p);
void add(Context& ctx, float* y, const float* x, int64_t n);
void softcap(Context& ctx, float* x, int64_t n, float cap);
void gather_rows(Context& ctx, const GatherRowsParams& p);
void scatter_add_rows(Context& ctx, const ScatterAddRowsParams& p);

// n <= this runs the custom GEMV (fp32 activations, every weight row streamed once); above it
// cuBLAS with activations rounded to the weight dtype (bf16/f16), or exact fp32 SGEMM for F32.
inline constexpr int64_t kGemvMaxTokens = 8;

}  // namespace lathe::ops::cuda
