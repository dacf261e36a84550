// The op contract: every op a transformer forward needs, as raw pointers plus a params struct.
// A backend (ops/ref: the scalar oracle; ops/cpu: threaded SIMD; later ops/cuda) implements the
// whole interface. Kernels never see a model; models only see this interface.
//
// Conventions: activations are float32, row-major; weights may be F32, F16 or BF16 and are
// widened to float32 inside the op (float32 math everywhere, so results match torch float32).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "core/dtype.h"

namespace lathe::ops {

// A row-major weight matrix [rows, cols] in any float dtype.
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
};

enum class Activation : uint8_t { kSilu, kGeluTanh, kGelu, kRelu };

// Lowp activations. A backend that rounds GEMM inputs to the weights' 16-bit dtype for n rows
// (Ops::lowp_activations) lets the op producing such an input also write the rounded copy
// (RmsNormParams::y_lowp, BatchAttentionParams::out_lowp) and the GEMM take it (x_lowp): one pass
// over the activations fewer. With the copy requested, the fp32 output may be null. A backend
// whose lowp_activations() is false never receives these fields set.
struct MatmulParams {
  const float* x = nullptr;     // [n, k]
  const void* x_lowp = nullptr; // x rounded to w.dtype (bf16/f16), or null
  Weight w;                     // [m, k]
  const float* bias = nullptr;  // [m] or null
  float* y = nullptr;           // [n, m] = x @ w^T (+ bias); overwritten
  int64_t n = 0;                // rows of x (tokens)
};

// Several matmuls sharing one input x (q/k/v, gate/up): y_i[n, m_i] = x @ w_i^T (+ bias_i).
// Every w_i has the same column count. A backend may run them as one launch.
struct MultiMatmulParams {
  static constexpr int kMax = 3;
  const float* x = nullptr;  // [n, k]
  const void* x_lowp = nullptr;  // x rounded to the weights' dtype, or null
  int64_t n = 0;
  int count = 0;
  Weight w[kMax];
  const float* bias[kMax] = {};
  float* y[kMax] = {};
};

struct RmsNormParams {
  const float* x = nullptr;  // [n, dim]
  Weight w;                  // [1, dim] (rows = 1, cols = dim)
  float* y = nullptr;        // [n, dim]; may alias x
  void* y_lowp = nullptr;    // also y rounded to lowp_dtype, or null (see MatmulParams)
  DType lowp_dtype = DType::kBF16;
  int64_t n = 0;
  int64_t dim = 0;
  float eps = 1e-6f;
  float weight_offset = 0.f;  // Gemma scales by (1 + w): offset 1
};

// Rotary embedding, "rotate_half" (GPT-NeoX) pairing: element i pairs with i + rot_dim/2.
// Only the first rot_dim elements of each head rotate (partial rotary); the rest pass through.
struct RopeParams {
  float* x = nullptr;          // [n, n_heads, head_dim], rotated in place
  const float* cos = nullptr;  // [n, rot_dim / 2], attention scaling already folded in
  const float* sin = nullptr;  // [n, rot_dim / 2]
  int64_t n = 0;
  int64_t n_heads = 0;
  int64_t head_dim = 0;
  int64_t rot_dim = 0;
};

// Causal self-attention of n new queries against a KV cache holding kv_len positions, the last n
// of which belong to the queries (query i sits at position kv_len - n + i).
// (What a quantized K/V cache stores: see below.)
enum class KvQuant : uint8_t { kNone, kQ8, kQ4 };

struct AttentionParams {
  const float* q = nullptr;  // [n, n_heads, head_dim]
  const float* k = nullptr;  // [>= kv_len, n_kv_heads, head_dim]  (position-major cache)
  const float* v = nullptr;  // [>= kv_len, n_kv_heads, head_dim]
  float* out = nullptr;      // [n, n_heads, head_dim]
  int64_t n = 0;
  int64_t kv_len = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;    // n_heads % n_kv_heads == 0 (GQA/MQA)
  int64_t head_dim = 0;
  float scale = 1.f;         // multiplies q.k
  float softcap = 0.f;       // > 0: score = softcap * tanh(score / softcap) (Gemma 2)
  int64_t window = 0;        // > 0: key j visible to query at p iff p - window < j <= p
  // A paged source (backends whose attention reads it: Ops::attention_reads_paged): key j is row
  // block_table[j / block_size] * block_size + j % block_size of the pool k / v point at (float),
  // or of k_codes / v_codes with their scales when kv_quant is set (see KvQuant), read a tile of
  // keys at a time, never the whole context at once.
  const int32_t* block_table = nullptr;
  int64_t block_size = 0;
  KvQuant kv_quant = KvQuant::kNone;
  const void* k_codes = nullptr;
  const void* v_codes = nullptr;
  const uint16_t* k_scale = nullptr;
  const uint16_t* v_scale = nullptr;
};

// Quantized K/V cache (Ops::kv_quant, --kv-cache q8|q4): each head's row of a position is cut into
// groups of kKvQuantGroup consecutive elements, stored as signed codes with one float16 scale per
// group (x ~= code * scale), so an 8-bit cache takes ~53% and a 4-bit one ~28% of bf16's bytes.
//  * q8: int8 codes in [-127, 127], scale = max |x| / 127.
//  * q4: codes in [-8, 7] kept as code + 8 in a nibble (element 2 i in the low nibble of byte i),
//    scale = m / -8 with m the group's element of largest magnitude, so m itself is exact.
// Codes: [rows, n_kv_heads, head_dim] elements of 1 or 1/2 byte; scales: [rows, n_kv_heads,
// head_dim / kKvQuantGroup] float16 bits. Attention reads codes and scales directly (ops/kv_quant.h
// has the host reference both sides follow).
inline constexpr int64_t kKvQuantGroup = 32;
const char* kv_quant_name(KvQuant q);  // "none", "q8", "q4"

// Attention for several sequences in one call (continuous batching), over a paged K/V pool.
// Sequence s owns query rows [cu_q[s], cu_q[s + 1]) of q/out and kv_len[s] keys, its own queries
// last (query i of s sits at position kv_len[s] - q_len + i). Key position j of sequence s lives in
// pool row block_table[s * table_stride + j / block_size] * block_size + j % block_size.
// cu_q, kv_len and block_table are backend memory (host memory for host backends).
struct BatchAttentionParams {
  const float* q = nullptr;       // [n, n_heads, head_dim]
  const void* k = nullptr;        // pool [rows, n_kv_heads, head_dim] of kv_dtype
  const void* v = nullptr;        // pool [rows, n_kv_heads, head_dim] of kv_dtype
  DType kv_dtype = DType::kF32;   // what Ops::kv_dtype() chose for the pool (kv_quant kNone)
  KvQuant kv_quant = KvQuant::kNone;  // else k/v hold codes and these their scales (see KvQuant)
  const uint16_t* k_scale = nullptr;
  const uint16_t* v_scale = nullptr;
  float* out = nullptr;           // [n, n_heads, head_dim]
  void* out_lowp = nullptr;       // also out rounded to lowp_dtype, or null (see MatmulParams)
  DType lowp_dtype = DType::kBF16;
  int64_t n = 0;                  // query rows of all sequences
  int64_t num_seqs = 0;
  const int32_t* cu_q = nullptr;         // [num_seqs + 1], cu_q[0] = 0, cu_q[num_seqs] = n
  const int32_t* kv_len = nullptr;       // [num_seqs]
  const int32_t* block_table = nullptr;  // [num_seqs, table_stride]
  int64_t block_size = 0;
  int64_t table_stride = 0;
  // Host-known bounds for launch shapes: every sequence has <= max_q queries and <= max_kv keys.
  // (A captured CUDA graph keeps the shape: pass the cache's capacity, not this step's length.)
  int64_t max_q = 0;
  int64_t max_kv = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  float scale = 1.f;
  float softcap = 0.f;
  int64_t window = 0;
};

// The glue between the QKV projection and attention: rotary embedding on q (in place) and k, then
// the rotated k rows and the v rows stored into their cache slots: k_cache[slots[t]] = rope(k[t]),
// v_cache[slots[t]] = v[t]. k itself may be left rotated or not.
struct RopeStoreParams {
  float* q = nullptr;          // [n, n_heads, head_dim] rows q_stride floats apart
  float* k = nullptr;          // [n, n_kv_heads, head_dim] rows k_stride floats apart
  const float* v = nullptr;    // [n, n_kv_heads, head_dim] rows v_stride floats apart
  // Row strides (0: dense). A fused q|k|v projection leaves the three interleaved per token.
  int64_t q_stride = 0, k_stride = 0, v_stride = 0;
  float* q_out = nullptr;      // dense [n, n_heads, head_dim] rotated q; null: q is rotated in place
  const float* cos = nullptr;  // [n, rot_dim / 2]
  const float* sin = nullptr;
  void* k_cache = nullptr;     // [rows, n_kv_heads, head_dim] of kv_dtype
  void* v_cache = nullptr;
  DType kv_dtype = DType::kF32;
  KvQuant kv_quant = KvQuant::kNone;  // else the caches take codes and these their scales (KvQuant)
  uint16_t* k_scale = nullptr;
  uint16_t* v_scale = nullptr;
  const int32_t* slots = nullptr;  // [n] (backend memory), distinct
  int64_t n = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, rot_dim = 0;
};

// dst[idx[i]] = src[i] over rows of `dim` floats (K/V rows into their cache slots).
struct ScatterRowsParams {
  float* dst = nullptr;
  const int32_t* idx = nullptr;  // [n] (backend memory), distinct
  const float* src = nullptr;    // [n, dim]
  int64_t n = 0;
  int64_t dim = 0;
};

struct GluParams {
  const float* gate = nullptr;  // [n, dim]
  const float* up = nullptr;    // [n, dim]
  float* out = nullptr;         // [n, dim] = act(gate) * up; may alias gate or up
  int64_t n = 0;
  int64_t dim = 0;
  Activation act = Activation::kSilu;
};

// The gated feed-forward block: out = (act(x gate^T + gate_bias) * (x up^T + up_bias)) down^T + down_bias.
// gate_buf and up_buf are scratch the op may overwrite ([n, inter] floats each).
struct FfnParams {
  const float* x = nullptr;  // [n, hidden]
  const void* x_lowp = nullptr;  // x rounded to the weights' dtype, or null (see MatmulParams)
  Weight gate, up, down;     // [inter, hidden], [inter, hidden], [hidden, inter]
  const float* gate_bias = nullptr;
  const float* up_bias = nullptr;
  const float* down_bias = nullptr;
  float* gate_buf = nullptr;
  float* up_buf = nullptr;
  float* out = nullptr;      // [n, hidden]; must not alias x
  int64_t n = 0;
  Activation act = Activation::kSilu;
};

// A small batch's mixture-of-experts feed-forward with the routing in backend memory (no host
// round trip, so a decode step with it can be recorded as a graph). For each token t: the top_k
// experts by router logit (equal logits: lower index first), weights w_j = softmax over the
// selected logits, and out[t] += sum_j w_j * down_j(act(gate_j(x[t])) * up_j(x[t])), j in order.
struct MoeParams {
  const float* x = nullptr;       // [n, hidden]
  const float* logits = nullptr;  // [n, experts]
  float* out = nullptr;           // [n, hidden], accumulated into (the residual stream)
  // Per expert (backend memory, [experts] each): [inter, hidden] gate/up and [hidden, inter] down.
  const void* const* gate = nullptr;
  const void* const* up = nullptr;
  const void* const* down = nullptr;
  DType dtype = DType::kBF16;  // of every expert matrix
  int64_t n = 0, hidden = 0, inter = 0, experts = 0, top_k = 0;
  Activation act = Activation::kSilu;
};

// An EXL2-quantized linear layer in backend memory, read by kernels as it is packed (quant/exl2.h
// has the format): q_weight [qrows, padded_out] column bitstreams, 4-bit scale codes [groups,
// padded_out / 8] (stored code c means (c + 1)^2 / 256 of the group's float16 scale_max), act-order
// rows cut into groups of descending width. Build it with quant::exl2_upload-style code from a
// quant::Exl2Matrix; the group table and perm are precomputed for the kernels.
// The tiled layout's units (rows x columns) and its largest group: the producer (quant/exl2_tiled)
// and the kernels that read it (ops/cuda) share these.
inline constexpr int kExl2TiledUnitRows = 32;
inline constexpr int kExl2TiledStripCols = 32;
inline constexpr int kExl2TiledMaxGroupRows = 128;

struct Exl2View {
  const uint32_t* q_weight = nullptr;
  const uint32_t* q_scale = nullptr;
  const uint16_t* q_scale_max = nullptr;  // [groups] float16 bits
  const int32_t* perm = nullptr;          // [in_features]: act-order row p reads input channel perm[p]
  const int32_t* groups = nullptr;        // [groups, 4]: bits, rows, first q_weight row, first act-order row
  const uint16_t* bias = nullptr;         // [out_features] float16 bits, or null
  int64_t in_features = 0, out_features = 0, num_groups = 0;
  // The CUDA kernels' layout of the same layer (quant/exl2_tiled.h, shape constants below), made at
  // upload for backends whose wants_exl2_tiled() is true; those read only these (q_weight,
  // q_scale, perm and groups may be null).
  const uint32_t* tiled = nullptr;
  const uint32_t* tiled_scale = nullptr;  // [groups, padded_out / 32, 4]
  const int32_t* tiled_groups = nullptr;  // [groups, 8]
  const int32_t* tiled_perm = nullptr;    // [tiled_rows]: input channel of each padded row, -1: none
  int64_t tiled_rows = 0;                 // padded rows of all groups
  int64_t tiled_num_groups = 0;           // stored groups above kExl2TiledMaxGroupRows rows are cut
  int64_t max_tiled_rows = 0;             // the largest tiled group's padded rows
  int64_t max_tiled_qrows = 0;            // the largest tiled group's padded rows * bits / 32
  int64_t tiled_qrows = 0;                // all tiled groups' padded rows * bits / 32 (a strip's words / 32)
  int64_t padded_out() const { return (out_features + 31) / 32 * 32; }
};

// y[n, out] = x[n, in] W^T (+ bias) with W dequantized on the fly, never stored.
struct Exl2MatmulParams {
  const float* x = nullptr;  // [n, in_features]
  Exl2View w;
  float* y = nullptr;        // [n, out_features]
  int64_t n = 0;
  // Optional: the layer's input is act(x) * glu_up elementwise (both [n, in_features]): a GLU
  // feed-forward's gate and up go straight into its down projection, without a glu op between
  // (the CUDA backend applies it where a decode kernel loads its activations; host backends run
  // glu into a temporary). Same values as glu then matmul_exl2.
  const float* glu_up = nullptr;
  Activation glu_act = Activation::kSilu;
};

// A quantizer's input Hessian: h [dim, dim] += x^T x for x [rows, dim] fp32, accumulated in double
// (both in backend memory; h symmetric, both triangles written).
struct GramParams {
  double* h = nullptr;
  const float* x = nullptr;
  int64_t rows = 0;
  int64_t dim = 0;
};

// GPTQ for EXL2 layers (Frantar et al.; ExLlamaV2's converter), as two backend ops so the heavy
// linear algebra runs where the Hessian and the weights are. Input channels are taken in act-order
// `perm` (descending Hessian diagonal; the caller sorts); a channel that never fired (diagonal <= 0)
// carries no information and is quantized as zero.
//
// gptq_factor: u [k, k] fp32 (row-major, lower triangle zero) = the upper Cholesky factor of the
// inverse of Hp + damp I, Hp = h[perm][perm] with dead channels' diagonal set to 1. h [k, k] double.
// Returns false (u undefined) when that matrix is not positive definite: retry with more damping.
struct GptqFactorParams {
  const double* h = nullptr;
  const int32_t* perm = nullptr;
  int64_t k = 0;
  double damp = 0;  // absolute, added to the diagonal
  float* u = nullptr;
};

struct GptqGroup {
  int bits = 4;      // 2, 3, 4, 5, 6 or 8
  int64_t rows = 0;  // consecutive act-order rows
};

// gptq_exl2: quantizes w [n, k] (rows = output features; f32, bf16 or f16) in act-order, group by
// group: per group the EXL2 scales (a 4-bit code per column under the group's fp16 maximum: see
// gptq_find_scales), then row by row the nearest level, its error divided by u's diagonal spread
// over the later rows through u (error feedback). u null: round to nearest (no feedback; then h and
// dead-channel handling are off too). Outputs (all backend memory): q [k, n] the stored values
// 0..2^bits-1 in act-order rows; codes [groups, n] 1..16; maxes [groups] (fp16-representable); and,
// if wq is set, the dequantized weight [n, k] as float16 bits in the original channel order.
struct GptqExl2Params {
  Weight w;
  const int32_t* perm = nullptr;  // [k]
  const double* h = nullptr;      // [k, k] (its diagonal marks dead channels), or null
  const float* u = nullptr;       // [k, k] from gptq_factor, or null
  const GptqGroup* groups = nullptr;  // host memory
  int64_t num_groups = 0;
  uint8_t* q = nullptr;
  uint8_t* codes = nullptr;
  float* maxes = nullptr;
  uint16_t* wq = nullptr;  // optional
};

// The EXL2 scale search for `rows` rows of w (row-major, n columns, host memory) at `bits`: each
// column's code is its max |w| relative to the group's, in the sqrt domain; the group maximum is the
// largest column maximum times the best of 97 multipliers in [0.70, 1.20] (least sum |err|^3.5),
// rounded to fp16. The reference every backend's gptq_exl2 follows.
void gptq_find_scales(const float* w, int64_t rows, int64_t n, int bits, uint8_t* codes, float* scale_max);
inline float exl2_scale(int code, float scale_max) { return float(code * code) * scale_max / 256.f; }
// gptq_exl2's parameter checks, shared by every backend: inputs and outputs set, EXL2 widths,
// groups covering the layer's input rows exactly. Throws kInvalidArgument.
void check_gptq_exl2(const GptqExl2Params& p);

// Several EXL2 layers on one input (q, k, v; gate, up): y[i] [n, w[i].out_features] = x w[i]^T.
// Backends may run them in one launch (the CUDA one does: a small layer alone is mostly fixed cost).
struct Exl2MultiParams {
  const float* x = nullptr;  // [n, in_features], the same for every layer
  int64_t n = 0;
  int count = 0;  // <= 3
  Exl2View w[3];
  float* y[3] = {};
  const float* glu_up = nullptr;  // as in Exl2MatmulParams, for the shared input
  Activation glu_act = Activation::kSilu;
  Exl2MatmulParams layer(int i) const { return {x, w[i], y[i], n, glu_up, glu_act}; }
};

struct EmbeddingParams {
  Weight table;                    // [vocab, dim]
  const int32_t* ids = nullptr;    // [n], each in [0, vocab)
  float* out = nullptr;            // [n, dim]
  int64_t n = 0;
  float scale = 1.f;               // Gemma multiplies by sqrt(hidden)
};

// Gather/scatter of rows for sparse (MoE) routing.
struct GatherRowsParams {
  const float* src = nullptr;    // [>= max(idx) + 1, dim]
  const int32_t* idx = nullptr;  // [n] row indices into src (backend memory)
  float* dst = nullptr;          // [n, dim] = src[idx[i]]
  int64_t n = 0;
  int64_t dim = 0;
};

struct ScatterAddRowsParams {
  float* dst = nullptr;            // [>= max(idx) + 1, dim]; dst[idx[i]] += weight[i] * src[i]
  const int32_t* idx = nullptr;    // [n] (backend memory); an index may repeat only across calls
  const float* weight = nullptr;   // [n] (backend memory)
  const float* src = nullptr;      // [n, dim]
  int64_t n = 0;
  int64_t dim = 0;
};

// A recorded sequence of ops (a CUDA graph) that replays with the same pointers and shapes; the
// data in those buffers may change between replays.
class Graph {
 public:
  virtual ~Graph() = default;
  virtual void replay() = 0;
  // False once a buffer the recording points at is gone (a backend's scratch reallocated since):
  // record again instead of replaying.
  virtual bool valid() const { return true; }
};

// Sampling penalties applied to logits rows in place, the rule of engine::Sampler: for each (id,
// count) of a row's history, logit = logit > 0 ? logit / repetition : logit * repetition, then
// logit -= presence + frequency * count.
struct PenaltyParams {
  float* logits = nullptr;          // [rows, vocab]
  int64_t rows = 0, vocab = 0;
  const int32_t* offsets = nullptr;  // [rows + 1]: row r's pairs are [offsets[r], offsets[r + 1])
  const int32_t* ids = nullptr;      // each in [0, vocab), distinct within a row
  const int32_t* counts = nullptr;
  const float* repetition = nullptr;  // [rows]
  const float* presence = nullptr;    // [rows]
  const float* frequency = nullptr;   // [rows]
};

// The k largest logits of each row, sorted descending (equal logits: lower id first), plus the
// row's softmax denominator at its temperature: sum_j exp((logit_j - max) * inv_temperature[r]).
// k == 1 is argmax (first index of the maximum, like torch.argmax). All pointers backend memory.
struct TopKParams {
  const float* logits = nullptr;        // [rows, vocab]
  int64_t rows = 0, vocab = 0, k = 1;   // 1 <= k <= min(vocab, kMaxK)
  const float* inv_temperature = nullptr;  // [rows], or null: no sums
  int32_t* ids = nullptr;                  // [rows, k]
  float* values = nullptr;                 // [rows, k]
  float* sums = nullptr;                   // [rows] (when inv_temperature is given)
  static constexpr int64_t kMaxK = 1024;
};

struct MemoryStats {
  size_t in_use = 0;        // bytes of live alloc() buffers
  size_t peak = 0;          // most bytes live at once since the backend started
  size_t device_used = 0;   // device backends: what the whole device reports in use (0: host)
  size_t device_total = 0;
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual const char* name() const = 0;

  // ---- Memory the ops of this backend read and write -------------------------------------
  // Host backends (ref, cpu) use 64-byte aligned host memory and plain copies: the defaults.
  // A device backend overrides all of these; then every pointer passed to an op (weights
  // included) must come from alloc() or point into such memory.
  virtual bool host_memory() const { return true; }
  // Element type of the K/V cache for a model with this head_dim: F32 everywhere except where a
  // backend's attention kernels read a narrower cache directly (CUDA fast mode: BF16).
  virtual DType kv_dtype(int64_t head_dim) const {
    (void)head_dim;
    return DType::kF32;
  }
  // The quantized K/V format new caches take (KvQuant; kNone: kv_dtype()). Set once after the
  // backend is made (the CLI's --kv-cache); every backend reads such caches in its attention.
  void set_kv_quant(KvQuant q) { kv_quant_ = q; }
  KvQuant kv_quant() const { return kv_quant_; }
  // Whether this backend's attention reads a quantized cache of this head_dim (host backends: any
  // multiple of kKvQuantGroup; CUDA: 64, 128, 256, the head sizes of its attention kernels).
  virtual bool supports_kv_quant(int64_t head_dim) const { return head_dim > 0 && head_dim % kKvQuantGroup == 0; }
  // Whether a GEMM over n rows with weights of this dtype rounds its input to that dtype, so its
  // producer may hand over a lowp copy instead (see MatmulParams).
  virtual bool lowp_activations(int64_t n, DType weight_dtype) const {
    (void)n;
    (void)weight_dtype;
    return false;
  }
  virtual void* alloc(size_t bytes);  // zero-filled; throws on failure
  virtual void free(void* p) noexcept;
  virtual void copy_to_backend(void* dst, const void* host_src, size_t bytes);
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes);
  virtual void copy(void* dst, const void* src, size_t bytes);  // within backend memory
  // `count` elements of elem_bytes each, stride_bytes apart from src in backend memory, to
  // consecutive host memory (a matrix's diagonal or column) in one transfer; returns when done.
  // Default: one copy_to_host per element.
  virtual void copy_to_host_strided(void* host_dst, const void* src, size_t elem_bytes, int64_t count,
                                    size_t stride_bytes);
  virtual void synchronize() {}
  // Seconds the calling threads have spent blocked on this backend's device work so far
  // (synchronize, copies to the host): a step's wall time less this is the host's share of it.
  // Host backends compute in the calling thread: 0.
  virtual double device_wait_seconds() const { return 0.0; }
  // Page-locked host memory for staging copies (device backends: DMA without a bounce buffer).
  // copy_to_backend_async from it returns at once; the source must stay unchanged until the next
  // synchronize() or copy_to_host(). Host backends: plain memory and a plain copy.
  virtual void* alloc_pinned(size_t bytes) { return alloc(bytes); }
  virtual void free_pinned(void* p) noexcept { free(p); }
  virtual void copy_to_backend_async(void* dst, const void* pinned_src, size_t bytes) {
    copy_to_backend(dst, pinned_src, bytes);
  }
  // The other way: queued behind the work before it and returns at once (device backends); the
  // pinned destination holds the bytes after the next synchronize(). Host backends: a plain copy.
  virtual void copy_to_host_async(void* pinned_dst, const void* src, size_t bytes) {
    copy_to_host(pinned_dst, src, bytes);
  }
  // Records the ops `enqueue` issues into a replayable graph, or returns null (host backends, or
  // a device that cannot capture). While recording, ops must not allocate, copy to the host or
  // synchronise; nothing is executed until replay().
  virtual std::unique_ptr<Graph> capture(const std::function<void()>& enqueue) {
    (void)enqueue;
    return nullptr;
  }
  virtual MemoryStats memory_stats() const { return {}; }
  // Starts diagnostic counters (e.g. LATHE_CUDA_PROFILE's per-op times) afresh, after a warm-up.
  virtual void reset_counters() {}

  virtual void matmul(const MatmulParams& p) = 0;
  virtual void rms_norm(const RmsNormParams& p) = 0;
  virtual void rope(const RopeParams& p) = 0;
  virtual void attention(const AttentionParams& p) = 0;
  virtual void glu(const GluParams& p) = 0;
  virtual void embedding(const EmbeddingParams& p) = 0;
  // y[i] += x[i]
  virtual void add(float* y, const float* x, int64_t n) = 0;
  // x[i] = cap * tanh(x[i] / cap)
  virtual void softcap(float* x, int64_t n, float cap) = 0;
  // Default: one matmul per output.
  virtual void matmul_multi(const MultiMatmulParams& p);
  // Residual add fused with the norm that follows it: x[i] += delta[i] over [p.n, p.dim], then
  // p.y = rms_norm(x) (p.x is ignored; x is used). Default: add then rms_norm.
  virtual void add_rms_norm(float* x, const float* delta, const RmsNormParams& p);
  // Row gather / weighted scatter-add (MoE token routing). Defaults are host loops.
  virtual void gather_rows(const GatherRowsParams& p);
  virtual void scatter_add_rows(const ScatterAddRowsParams& p);
  virtual void scatter_rows(const ScatterRowsParams& p);
  // Default: matmul_multi(gate, up), glu, matmul(down). A device backend may keep the
  // intermediates in the weight dtype (fast mode), as bf16 engines do.
  virtual void ffn(const FfnParams& p);
  // Default: rope(q), rope(k), scatter_rows(k), scatter_rows(v).
  virtual void rope_store_kv(const RopeStoreParams& p);
  // Default: a scalar host loop over the packed weights (host memory only): the reference.
  virtual void matmul_exl2(const Exl2MatmulParams& p);
  virtual void matmul_exl2_multi(const Exl2MultiParams& p);  // default: matmul_exl2 per layer
  // Default: Eigen on host memory (threaded when Eigen is); device backends override.
  virtual void accumulate_gram(const GramParams& p);
  virtual bool gptq_factor(const GptqFactorParams& p);
  virtual void gptq_exl2(const GptqExl2Params& p);
  // Whether matmul_exl2 reads Exl2View::tiled (the loader then uploads that layout instead).
  virtual bool wants_exl2_tiled() const { return false; }
  // Returns false (nothing done) where the backend has no such path for these sizes/dtypes; the
  // caller then routes on the host. Default: false.
  virtual bool moe_small_batch(const MoeParams& p) {
    (void)p;
    return false;
  }
  // Token selection (engine sampling) where the logits are. Defaults: host loops.
  virtual void apply_penalties(const PenaltyParams& p);
  virtual void top_k(const TopKParams& p);
  // Default (host backends): one attention() per sequence, over its K/V rows in place when its
  // blocks are consecutive (and not quantized); else, where attention_reads_paged(), through the
  // block table a tile at a time (AttentionParams' paged source), and otherwise gathered and
  // widened into a contiguous float copy first (the reference backend's way).
  virtual void attention_batch(const BatchAttentionParams& p);
  virtual bool attention_reads_paged() const { return false; }

 protected:
  // For host-memory backends' matmul_exl2: a call with glu_up runs as glu into a temporary, then
  // matmul_exl2 on it (returns true); false when p has no glu_up.
  bool matmul_exl2_glu_unfused(const Exl2MatmulParams& p);

 private:
  KvQuant kv_quant_ = KvQuant::kNone;
};

// Backend memory with an owner: freed through the backend that allocated it.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Ops& ops, size_t bytes) : ops_(&ops), data_(ops.alloc(bytes)), bytes_(bytes) {}
  ~Buffer() { reset(); }
  Buffer(Buffer&& o) noexcept : ops_(o.ops_), data_(o.data_), bytes_(o.bytes_) { o.data_ = nullptr; o.bytes_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      ops_ = o.ops_;
      data_ = o.data_;
      bytes_ = o.bytes_;
      o.data_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void reset() noexcept {
    if (data_) ops_->free(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data() const { return data_; }
  float* f32() const { return static_cast<float*>(data_); }
  size_t bytes() const { return bytes_; }

 private:
  Ops* ops_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

std::unique_ptr<Ops> make_ref_ops();
std::unique_ptr<Ops> make_cpu_ops();
// Choices a device backend offers; host backends always compute in full float32.
// The K/V cache type a GPU backend keeps in fast precision for this head_dim: bf16 where its
// attention kernels read bf16 directly (64/128/256), else float32. One rule for the CUDA backend's
// Ops::kv_dtype and for memory estimates made without a backend (quantize --advise).
inline DType fast_kv_dtype(int64_t head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256 ? DType::kBF16 : DType::kF32;
}

struct BackendOptions {
  // true: matmuls keep float32 activations (bf16/f16 weights meet x split into hi + lo halves,
  //   two tensor-core GEMMs: ~fp32 accuracy at twice the GEMM cost; for scoring/evaluation).
  // false: x is rounded to the weight dtype before the GEMM (the usual bf16 engine numerics,
  //   fastest prefill; decode GEMVs stay float32 either way).
  bool exact_matmul = true;
  // Fast mode keeps the K/V cache in bf16 where its attention kernels allow (half the memory and
  // bandwidth); true keeps float32 K/V in every mode.
  bool kv_f32 = false;
};

// The CUDA backend when lathe was built with it and a GPU is present, else null.
std::unique_ptr<Ops> make_cuda_ops(const BackendOptions& options = {});
bool cuda_available();

}  // namespace lathe::ops
