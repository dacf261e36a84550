// The op contract: every op a transformer forward needs, as raw pointers plus a params struct.
// A backend (ops/ref: the scalar oracle; ops/cpu: threaded SIMD; later ops/cuda) implements the
// whole interface. Kernels never see a model; models only see this interface.
//
// Conventions: activations are float32, row-major; weights may be F32, F16 or BF16 and are
// widened to float32 inside the op (float32 math everywhere, so results match torch float32).
#pragma once

#include <cstdint>
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

struct MatmulParams {
  const float* x = nullptr;     // [n, k]
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
};

struct GluParams {
  const float* gate = nullptr;  // [n, dim]
  const float* up = nullptr;    // [n, dim]
  float* out = nullptr;         // [n, dim] = act(gate) * up; may alias gate or up
  int64_t n = 0;
  int64_t dim = 0;
  Activation act = Activation::kSilu;
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
  virtual void* alloc(size_t bytes);  // zero-filled; throws on failure
  virtual void free(void* p) noexcept;
  virtual void copy_to_backend(void* dst, const void* host_src, size_t bytes);
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes);
  virtual void copy(void* dst, const void* src, size_t bytes);  // within backend memory
  virtual void synchronize() {}
  virtual MemoryStats memory_stats() const { return {}; }

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
struct BackendOptions {
  // true: matmuls keep float32 activations (bf16/f16 weights meet x split into hi + lo halves,
  //   two tensor-core GEMMs: ~fp32 accuracy at twice the GEMM cost; for scoring/evaluation).
  // false: x is rounded to the weight dtype before the GEMM (the usual bf16 engine numerics,
  //   fastest prefill; decode GEMVs stay float32 either way).
  bool exact_matmul = true;
};

// The CUDA backend when lathe was built with it and a GPU is present, else null.
std::unique_ptr<Ops> make_cuda_ops(const BackendOptions& options = {});
bool cuda_available();

}  // namespace lathe::ops
