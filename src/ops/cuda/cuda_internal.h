// Private interface of the ops/cuda backend: the per-backend context every launcher gets (stream,
// cuBLAS handle, device limits, growable scratch) and one launcher per op family. Launchers validate
// their parameters, turn runtime sizes/dtypes into template instances in one place, enqueue on
// ctx.stream and check the launch; they never synchronise.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "ops/ops.h"

namespace lathe::ops::cuda {

// Scratch slots: buffers a single op needs while it runs (never held across ops).
enum class Scratch : int {
  kMatmulX = 0,
  kAttention = 1,
  kSelect = 2,
  kCounters = 3,
  kMoe = 4,
  kExl2 = 5,
  kExl2Dequant = 6,
  kGlu = 7,  // matmul_exl2's fused glu input, where the kernel cannot apply it itself
  kCount = 8
};

class Context {
 public:
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  int device = 0;
  int sm_count = 0;
  int cc_major = 0;  // compute capability (9: Hopper, programmatic dependent launch)
  bool pdl = false;  // launch_pdl launches as programmatic dependents (pdl.cuh)
  size_t smem_optin = 0;  // largest dynamic shared memory a block may opt into
  bool exact_matmul = true;  // BackendOptions::exact_matmul
  cublasLtHandle_t lt = nullptr;  // prefill GEMMs (matmul.cu); null: cublasGemmEx only
  void* blas_workspace = nullptr;  // shared by cuBLAS and cuBLASLt (one stream: never concurrent)
  size_t blas_workspace_bytes = 0;
  struct LtPlans* lt_plans = nullptr;  // cuBLASLt descriptors and algorithms per GEMM shape
  bool capturing = false;    // a graph is being recorded: no allocation, no synchronisation
  // Fast-mode EXL2 matmuls of 1..exl2_decode_tokens tokens go to exl2_decode's kernel; larger ones
  // (and all of them with kRing) to the ring kernel (exl2_stream) up to kExl2StreamFastTokens and
  // exl2_tc above. LATHE_EXL2_DECODE=ring|direct|bulk (every size the kernel takes) or direct:N,
  // bulk:N overrides the default (kExl2DefaultDecode; a measuring aid). Bulk needs Hopper.
  enum class Exl2Decode : int { kRing, kDirect, kBulk };
  Exl2Decode exl2_decode = Exl2Decode::kRing;
  int64_t exl2_decode_tokens = 0;

  // Device memory of at least `bytes` for `slot`, reused across calls. Growing waits for the
  // stream first, so earlier kernels that still read the old buffer finish before it is freed.
  void* scratch(Scratch slot, size_t bytes);
  // The same, zero-filled when (re)allocated; for counters the kernels using them leave at zero.
  void* zeroed_scratch(Scratch slot, size_t bytes);
  void release_scratch() noexcept;
  // Bumped whenever a scratch buffer is reallocated: graphs recorded before point at freed memory.
  uint64_t scratch_epoch() const { return scratch_epoch_; }

 private:
  void* scratch_[int(Scratch::kCount)] = {};
  size_t scratch_bytes_[int(Scratch::kCount)] = {};
  uint64_t scratch_epoch_ = 0;
};

void matmul(Context& ctx, const MatmulParams& p);
void matmul_multi(Context& ctx, const MultiMatmulParams& p);
void attention(Context& ctx, const AttentionParams& p);
void attention_batch(Context& ctx, const BatchAttentionParams& p);
void rms_norm(Context& ctx, const RmsNormParams& p);
void add_rms_norm(Context& ctx, float* x, const float* delta, const RmsNormParams& p);
void rope(Context& ctx, const RopeParams& p);
void rope_store_kv(Context& ctx, const RopeStoreParams& p);
void glu(Context& ctx, const GluParams& p);
void embedding(Context& ctx, const EmbeddingParams& p);
void add(Context& ctx, float* y, const float* x, int64_t n);
void softcap(Context& ctx, float* x, int64_t n, float cap);
void gather_rows(Context& ctx, const GatherRowsParams& p);
void scatter_add_rows(Context& ctx, const ScatterAddRowsParams& p);
void scatter_rows(Context& ctx, const ScatterRowsParams& p);
void apply_penalties(Context& ctx, const PenaltyParams& p);
void top_k(Context& ctx, const TopKParams& p);
bool moe_small_batch(Context& ctx, const MoeParams& p);
void matmul_exl2(Context& ctx, const Exl2MatmulParams& p);
void accumulate_gram(Context& ctx, const GramParams& p);
bool gptq_factor(Context& ctx, const GptqFactorParams& p);  // gptq.cu (cuSOLVER)
void gptq_exl2(Context& ctx, const GptqExl2Params& p);
void matmul_exl2_multi(Context& ctx, const Exl2MultiParams& p);
// Up to three EXL2 layers on one input, one launch (exl2_tc.cu, exl2_stream.cu): a grid's column
// blocks are the layers' in turn.
struct Exl2Batch {
  Exl2View w[3];
  float* y[3];
  const void* xg[3];  // pre-gathered bf16 activations, else null
  const float* up;    // the gather's input is act(x) * up (Exl2MatmulParams::glu_up), act = glu_act
  Activation glu_act;
  float* partial[3];  // k-split partial rows (splits > 1)
  int col_end[3];     // cumulative column blocks
  int splits[3];
  int count;
};
// Fills b.xg for p's tokens [t0, t0 + n): per layer, [planes][n][tiled_rows] bf16 x[t, perm[v]] (0 on
// padding rows; with p.glu_up, act(x) * up in place of x); split: plane 1 holds the remainders x - hi rounded again. In scratch
// kMatmulX.
// frag: each 32-row unit's rows in fragment order (tiled::fragment_row; exl2_bulk reads a lane's 8
// values of a unit as one 16-byte load). Launched as a programmatic dependent (pdl.cuh).
void exl2_gather_activations(Context& ctx, const Exl2MultiParams& p, int64_t t0, int n, Exl2Batch& b, bool split,
                             bool frag = false);
// b.count, b.w, b.y (from token t0) and b.col_end for p's layers, in column blocks of `strips`
// strips each; returns all the layers' column blocks (exl2_tc.cu).
int64_t exl2_batch_layers(const Exl2MultiParams& p, int64_t t0, int strips, Exl2Batch& b);
// b.partial for the layers with k-splits (b.splits set): [splits][n][padded_out] fp32 rows each, in
// scratch kExl2 (exl2_tc.cu).
void exl2_assign_partials(Context& ctx, const Exl2MultiParams& p, int64_t n, Exl2Batch& b);
// The EXL2 kernels on the tiled layout, and which serves a call (exl2.cu; crossovers measured on
// the H100, bench/RESULTS.md):
//  * exl2_stream (exl2_stream.cu): 1..kExl2StreamTokens tokens a launch, both modes (exact: split
//    activations, fp32-accurate). Fast mode sends it up to kExl2StreamFastTokens tokens.
//  * exl2_tc (exl2_tc.cu): fast mode, kExl2StreamFastTokens + 1 .. kExl2FastMaxTokens tokens, in
//    launches of up to kExl2TcTokens (each reads the weights once: two launches of 32 tokens still
//    beat reconstructing the layer, which costs about a float16 copy of it per call).
//  * Above kExl2FastMaxTokens (fast) or kExl2ExactMaxTokens (exact, in launches of exl2_stream): the
//    layer reconstructed into float16 and cuBLAS.
void exl2_stream(Context& ctx, const Exl2MultiParams& p, int64_t t0, int64_t n);  // tokens [t0, t0 + n) of every layer
void exl2_tc(Context& ctx, const Exl2MultiParams& p, int64_t t0, int64_t n);
//  * exl2_direct (exl2_direct.cu): fast mode, 1..kExl2DirectTokens tokens: weights straight into
//    registers, no shared-memory ring.
void exl2_direct(Context& ctx, const Exl2MultiParams& p, int64_t t0, int64_t n);
inline constexpr int64_t kExl2DirectTokens = 16;
//  * exl2_bulk (exl2_bulk.cu): fast mode, 1..kExl2BulkTokens tokens, compute capability 9+: stream-K
//    over the call's bytes, bulk copies into per-warp rings, one block an SM so the next matmul's
//    weights stream while this one runs.
void exl2_bulk(Context& ctx, const Exl2MultiParams& p, int64_t t0, int64_t n);
inline constexpr int64_t kExl2BulkTokens = 8;
// The value after KEY (e.g. "ring=") in LATHE_EXL2_TUNE, at least `least`; `fallback` when it is not
// there. The decode kernels' tuning knobs (a measuring aid): keys are found by name, any separator.
int exl2_tune(const char* key, int fallback, int least);
// The default decode kernel and up to how many tokens it serves (Context::exl2_decode).
inline constexpr Context::Exl2Decode kExl2DefaultDecode = Context::Exl2Decode::kRing;
inline constexpr int64_t kExl2DefaultDecodeTokens = 0;
inline constexpr int64_t kExl2StreamTokens = 16;
inline constexpr int64_t kExl2StreamFastTokens = 8;
inline constexpr int64_t kExl2TcTokens = 32;
inline constexpr int64_t kExl2FastMaxTokens = 64;
inline constexpr int64_t kExl2ExactMaxTokens = 32;

// The cuBLAS path's pieces (matmul.cu), shared with the fused feed-forward (ffn.cu).
// x [n, k] rounded to the weight dtype (bf16/f16) in scratch; with split, also lo = x - hi rounded.
struct LowpX {
  const void* hi;
  const void* lo;  // null unless split
};
LowpX round_activations(Context& ctx, const float* x, int64_t n, int64_t k, DType wtype, bool split);
// y[n, m] = x_lowp @ w^T + beta * y; y is fp32, or the weight dtype when y_lowp.
void gemm_lowp(Context& ctx, const Weight& w, const void* x_lowp, void* y, bool y_lowp, int64_t n, float beta);
void ffn(Context& ctx, const FfnParams& p);  // fast mode, bf16/f16 weights, n > kGemvMaxTokens only
// Decode sizes with gate|up side by side: GEMV with the activation fused, then down. False (nothing
// done) when the call does not qualify.
bool ffn_gemv(Context& ctx, const FfnParams& p);
LtPlans* create_lt_plans();
void destroy_lt_plans(LtPlans* plans) noexcept;  // fast mode, bf16/f16 weights, n > kGemvMaxTokens only

// n <= this runs the custom GEMV (fp32 activations, every weight row streamed once); above it
// cuBLAS with activations rounded to the weight dtype (bf16/f16), or exact fp32 SGEMM for F32.
inline constexpr int64_t kGemvMaxTokens = 8;

}  // namespace lathe::ops::cuda
