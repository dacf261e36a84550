// The CUDA backend: the Ops interface over the kernel families (matmul.cu, attention.cu,
// norm_rope.cu, elementwise.cu), plus device memory.
//
// Everything runs in order on one stream the backend owns; ops only enqueue. Host-visible results
// appear through copy_to_host (which waits for the stream) or synchronize. Device memory comes from
// cudaMalloc and is zero-filled on the stream, so it is ordered before any op that uses it.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <type_traits>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ops/cuda/check.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/cuda_internal.h"
#include "ops/ops.h"

namespace lathe::ops {
namespace cuda {

void* Context::scratch(Scratch slot, size_t bytes) {
  const int s = int(slot);
  if (scratch_bytes_[s] >= bytes) return scratch_[s];
  if (capturing)
    raise(ErrorKind::kInternal, "cuda: scratch must grow to ", bytes,
          " bytes while a graph is recorded; run the same step once without a graph first");
  // Kernels already enqueued may still read the old buffer: wait for them before freeing it.
  LATHE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (scratch_[s]) LATHE_CUDA_CHECK(cudaFree(scratch_[s]));
  scratch_[s] = nullptr;
  scratch_bytes_[s] = 0;
  ++scratch_epoch_;
  const size_t rounded = (bytes + (1u << 20) - 1) / (1u << 20) * (1u << 20);  // grow in MiB steps
  const cudaError_t err = cudaMalloc(&scratch_[s], rounded);
  if (err != cudaSuccess) raise_cuda(err, "cudaMalloc (scratch)", __FILE__, __LINE__, rounded);
  scratch_bytes_[s] = rounded;
  return scratch_[s];
}

void* Context::zeroed_scratch(Scratch slot, size_t bytes) {
  const int s = int(slot);
  if (scratch_bytes_[s] >= bytes) return scratch_[s];
  void* p = scratch(slot, bytes);
  LATHE_CUDA_CHECK(cudaMemsetAsync(p, 0, scratch_bytes_[s], stream));
  return p;
}

void Context::release_scratch() noexcept {
  for (int s = 0; s < int(Scratch::kCount); ++s) {
    if (scratch_[s]) cudaFree(scratch_[s]);
    scratch_[s] = nullptr;
    scratch_bytes_[s] = 0;
  }
}

namespace {

// cuBLAS wants a workspace on Hopper for its best kernels; 32 MiB is NVIDIA's recommendation.
constexpr size_t kBlasWorkspaceBytes = size_t(32) << 20;

struct StreamDeleter {
  void operator()(cudaStream_t s) const noexcept { cudaStreamDestroy(s); }
};
struct BlasDeleter {
  void operator()(cublasHandle_t h) const noexcept { cublasDestroy(h); }
};
struct DeviceDeleter {
  void operator()(void* p) const noexcept { cudaFree(p); }
};

// LATHE_CUDA_PROFILE=1: every op is bracketed by CUDA events (outside graph recording) and the
// time per op kind is summed as the stream is synchronised; the table goes to stderr when the
// backend is destroyed. For finding where a step's time goes without a profiler on the machine.
class OpProfile {
 public:
  OpProfile() {
    const char* e = std::getenv("LATHE_CUDA_PROFILE");
    enabled_ = e && std::string_view(e) == "1";
    // LATHE_CUDA_SKIP=op1,op2 (op names as in the profile table): those ops are not launched at all,
    // so a benchmark shows what they cost inside a recorded graph. Wrong results by design.
    if (const char* s = std::getenv("LATHE_CUDA_SKIP")) {
      std::string all(s);
      for (size_t at = 0; at <= all.size();) {
        size_t comma = all.find(',', at);
        if (comma == std::string::npos) comma = all.size();
        if (comma > at) skip_.insert(all.substr(at, comma - at));
        at = comma + 1;
      }
    }
  }
  bool skipped(const char* name) const { return !skip_.empty() && skip_.count(name) != 0; }
  ~OpProfile() {
    if (!enabled_) return;
    resolve();
    std::vector<std::pair<std::string, std::pair<double, long>>> rows(totals_.begin(), totals_.end());
    std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.first > b.second.first; });
    double all = 0;
    for (auto& r : rows) all += r.second.first;
    std::fprintf(stderr, "[cuda profile] %-28s %10s %6s %9s %9s\n", "op", "ms", "%", "calls", "avg us");
    for (auto& [name, v] : rows)
      std::fprintf(stderr, "[cuda profile] %-28s %10.2f %6.1f %9ld %9.1f\n", name.c_str(), v.first,
                   100.0 * v.first / (all > 0 ? all : 1), v.second, 1e3 * v.first / double(v.second));
    for (auto& e : free_) cudaEventDestroy(e);
  }
  bool enabled() const { return enabled_; }
  void begin(cudaStream_t s, cudaEvent_t& ev) {
    ev = take();
    cudaEventRecord(ev, s);
  }
  // Forget what was measured so far (first-use costs: module loading, cuBLAS heuristics).
  void reset() {
    resolve();
    totals_.clear();
  }
  void end(cudaStream_t s, const char* name, cudaEvent_t start) {
    cudaEvent_t stop = take();
    cudaEventRecord(stop, s);
    pending_.push_back({name, start, stop});
  }
  // After the stream is synchronised: every pending pair has completed.
  void resolve() {
    for (auto& p : pending_) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, p.start, p.stop) == cudaSuccess) {
        auto& t = totals_[p.name];
        t.first += ms;
        t.second += 1;
      }
      free_.push_back(p.start);
      free_.push_back(p.stop);
    }
    pending_.clear();
  }

 private:
  cudaEvent_t take() {
    if (free_.empty()) {
      cudaEvent_t e;
      cudaEventCreate(&e);
      return e;
    }
    cudaEvent_t e = free_.back();
    free_.pop_back();
    return e;
  }
  struct Pending {
    const char* name;
    cudaEvent_t start, stop;
  };
  bool enabled_ = false;
  std::set<std::string> skip_;
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> free_;
  std::map<std::string, std::pair<double, long>> totals_;
};

class CudaGraph final : public Graph {
 public:
  CudaGraph(cudaGraphExec_t exec, const cuda::Context& ctx) : exec_(exec), ctx_(ctx), epoch_(ctx.scratch_epoch()) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  void replay() override { LATHE_CUDA_CHECK(cudaGraphLaunch(exec_, ctx_.stream)); }
  bool valid() const override { return ctx_.scratch_epoch() == epoch_; }

 private:
  cudaGraphExec_t exec_;
  const cuda::Context& ctx_;
  uint64_t epoch_;  // the context's scratch epoch when recorded
};

class CudaOps final : public Ops {
 public:
  CudaOps() {
    LATHE_CUDA_CHECK(cudaGetDevice(&ctx_.device));
    cudaDeviceProp prop{};
    LATHE_CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx_.device));
    ctx_.sm_count = prop.multiProcessorCount;
    ctx_.cc_major = prop.major;
    // Programmatic dependent launch (pdl.cuh) on Hopper and later; LATHE_PDL=0 turns it off (a
    // diagnostic: the kernels then run strictly one after another).
    const char* pdl = std::getenv("LATHE_PDL");
    ctx_.pdl = prop.major >= 9 && !(pdl && std::string_view(pdl) == "0");
    ctx_.smem_optin = prop.sharedMemPerBlockOptin;
    // LATHE_EXL2_DECODE=ring|direct|bulk|direct:N|bulk:N: which kernel serves fast-mode EXL2 decode
    // sizes (Context::exl2_decode; for comparing them). Bulk copies need Hopper: elsewhere, ring.
    ctx_.exl2_decode = cuda::kExl2DefaultDecode;
    ctx_.exl2_decode_tokens = cuda::kExl2DefaultDecodeTokens;
    if (const char* e = std::getenv("LATHE_EXL2_DECODE")) {
      const std::string_view v(e);
      using D = cuda::Context::Exl2Decode;
      const auto pick = [&](D d, int64_t most, size_t name) {
        ctx_.exl2_decode = d;
        ctx_.exl2_decode_tokens = v.size() > name && v[name] == ':' ? std::clamp<int64_t>(std::atoi(e + name + 1), 0, most) : most;
      };
      if (v == "ring") ctx_.exl2_decode_tokens = 0;
      else if (v.starts_with("direct")) pick(D::kDirect, cuda::kExl2DirectTokens, 6);
      else if (v.starts_with("bulk")) pick(D::kBulk, cuda::kExl2BulkTokens, 4);
    }
    if (ctx_.exl2_decode == cuda::Context::Exl2Decode::kBulk && prop.major < 9) ctx_.exl2_decode_tokens = 0;

    cudaStream_t stream = nullptr;
    LATHE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    stream_.reset(stream);
    ctx_.stream = stream;

    cublasHandle_t blas = nullptr;
    LATHE_CUBLAS_CHECK(cublasCreate(&blas));
    blas_.reset(blas);
    ctx_.blas = blas;
    LATHE_CUBLAS_CHECK(cublasSetStream(blas, stream));
    // Default math: no TF32 for the fp32 SGEMM path, which must stay an fp32 GEMM.
    LATHE_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
    void* ws = nullptr;
    const cudaError_t err = cudaMalloc(&ws, kBlasWorkspaceBytes);
    if (err != cudaSuccess) cuda::raise_cuda(err, "cudaMalloc (cuBLAS workspace)", __FILE__, __LINE__, kBlasWorkspaceBytes);
    workspace_.reset(ws);
    LATHE_CUBLAS_CHECK(cublasSetWorkspace(blas, ws, kBlasWorkspaceBytes));
    ctx_.blas_workspace = ws;
    ctx_.blas_workspace_bytes = kBlasWorkspaceBytes;
    // cuBLASLt picks better prefill GEMM kernels than cublasGemmEx's default (measured ~5-15% on
    // the 8B shapes); without it the backend still works through cublasGemmEx.
    cublasLtHandle_t lt = nullptr;
    if (cublasLtCreate(&lt) == CUBLAS_STATUS_SUCCESS) {
      ctx_.lt = lt;
      ctx_.lt_plans = cuda::create_lt_plans();
    }
  }

  ~CudaOps() override {
    if (ctx_.stream) cudaStreamSynchronize(ctx_.stream);
    ctx_.release_scratch();
    cuda::destroy_lt_plans(ctx_.lt_plans);
    if (ctx_.lt) cublasLtDestroy(ctx_.lt);
    // blas_, workspace_ and stream_ are released by their holders.
  }

  const char* name() const override { return "cuda"; }
  cudaStream_t stream() const { return ctx_.stream; }
  cuda::Context& context() { return ctx_; }
  void set_kv_f32(bool on) { kv_f32_ = on; }

  // ---- memory ------------------------------------------------------------------------------
  bool host_memory() const override { return false; }
  // Fast mode keeps K/V in bf16 where the tensor-core prefill kernel and the decode kernel cover
  // every attention call (head_dim 64/128/256); exact mode, and any other head_dim, keep fp32.
  bool supports_kv_quant(int64_t head_dim) const override {
    return head_dim == 64 || head_dim == 128 || head_dim == 256;  // the decode and tensor-core kernels' sizes
  }
  DType kv_dtype(int64_t head_dim) const override {
    return ctx_.exact_matmul || kv_f32_ ? DType::kF32 : fast_kv_dtype(head_dim);
  }

  bool lowp_activations(int64_t n, DType weight_dtype) const override {
    return !ctx_.exact_matmul && n > cuda::kGemvMaxTokens && (weight_dtype == DType::kBF16 || weight_dtype == DType::kF16);
  }

  void* alloc(size_t bytes) override {
    no_capture("alloc");
    const size_t size = bytes == 0 ? 256 : bytes;  // a real pointer even for empty buffers
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, size);
    if (err != cudaSuccess) cuda::raise_cuda(err, "cudaMalloc", __FILE__, __LINE__, size);
    const cudaError_t err2 = cudaMemsetAsync(p, 0, size, ctx_.stream);
    if (err2 != cudaSuccess) {
      cudaFree(p);
      cuda::raise_cuda(err2, "cudaMemsetAsync", __FILE__, __LINE__);
    }
    sizes_[p] = size;
    in_use_ += size;
    peak_ = std::max(peak_, in_use_);
    return p;
  }

  void reset_counters() override {
    synchronize();
    profile_.reset();
  }

  MemoryStats memory_stats() const override {
    MemoryStats m;
    m.in_use = in_use_;
    m.peak = peak_;
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      m.device_used = total_b - free_b;
      m.device_total = total_b;
    }
    return m;
  }

  void free(void* p) noexcept override {
    if (!p) return;
    if (ctx_.capturing) {  // cannot throw here; a free while recording is a programming error
      std::fprintf(stderr, "[cuda] fatal: free() while a graph is being recorded\n");
      std::abort();
    }
    if (auto it = sizes_.find(p); it != sizes_.end()) {
      in_use_ -= it->second;
      sizes_.erase(it);
    }
    // Ops enqueued earlier may still use the memory; cudaFree itself does not wait for our stream.
    cudaStreamSynchronize(ctx_.stream);
    cudaFree(p);
  }

  // The source may be pageable (an mmap'd file): the runtime stages it, and the call returns once
  // the host buffer has been consumed, so the caller may reuse it right away.
  void copy_to_backend(void* dst, const void* host_src, size_t bytes) override {
    if (bytes) LATHE_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx_.stream));
  }

  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    no_capture("copy_to_host");
    wait_for_stream([&] {
      if (bytes) LATHE_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
    });
    if (profile_.enabled()) profile_.resolve();
  }

  void copy_to_host_strided(void* host_dst, const void* src, size_t elem_bytes, int64_t count,
                            size_t stride_bytes) override {
    no_capture("copy_to_host_strided");
    wait_for_stream([&] {
      if (count > 0 && elem_bytes > 0)  // rows of one element: the pitch walks the stride
        LATHE_CUDA_CHECK(cudaMemcpy2DAsync(host_dst, elem_bytes, src, stride_bytes, elem_bytes, size_t(count),
                                           cudaMemcpyDeviceToHost, ctx_.stream));
    });
  }

  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes) LATHE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx_.stream));
  }

  void* alloc_pinned(size_t bytes) override {
    no_capture("alloc_pinned");
    void* p = nullptr;
    const size_t size = bytes == 0 ? 256 : bytes;
    const cudaError_t err = cudaHostAlloc(&p, size, cudaHostAllocDefault);
    if (err != cudaSuccess) cuda::raise_cuda(err, "cudaHostAlloc", __FILE__, __LINE__, size);
    return p;
  }

  void free_pinned(void* p) noexcept override {
    if (!p) return;
    cudaStreamSynchronize(ctx_.stream);  // a copy from it may still be queued
    cudaFreeHost(p);
  }

  void copy_to_backend_async(void* dst, const void* pinned_src, size_t bytes) override {
    if (bytes) LATHE_CUDA_CHECK(cudaMemcpyAsync(dst, pinned_src, bytes, cudaMemcpyHostToDevice, ctx_.stream));
  }

  void copy_to_host_async(void* pinned_dst, const void* src, size_t bytes) override {
    no_capture("copy_to_host_async");
    if (bytes) LATHE_CUDA_CHECK(cudaMemcpyAsync(pinned_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
  }

  // Records on our stream (thread-local mode: other threads' CUDA calls are not affected). Ops that
  // would allocate or synchronise throw while recording; the partial graph is discarded then.
  std::unique_ptr<Graph> capture(const std::function<void()>& enqueue) override {
    synchronize();
    LATHE_CUDA_CHECK(cudaStreamBeginCapture(ctx_.stream, cudaStreamCaptureModeThreadLocal));
    ctx_.capturing = true;
    try {
      enqueue();
    } catch (...) {
      ctx_.capturing = false;
      cudaGraph_t partial = nullptr;
      cudaStreamEndCapture(ctx_.stream, &partial);
      if (partial) cudaGraphDestroy(partial);
      cudaGetLastError();
      throw;
    }
    ctx_.capturing = false;
    cudaGraph_t graph = nullptr;
    LATHE_CUDA_CHECK(cudaStreamEndCapture(ctx_.stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) cuda::raise_cuda(err, "cudaGraphInstantiate", __FILE__, __LINE__);
    return std::make_unique<CudaGraph>(exec, ctx_);
  }

  void synchronize() override {
    no_capture("synchronize");
    wait_for_stream([] {});
    if (profile_.enabled()) profile_.resolve();
    LATHE_CUDA_CHECK(cudaGetLastError());
  }

  double device_wait_seconds() const override { return wait_seconds_; }

  // ---- ops ---------------------------------------------------------------------------------
  void matmul(const MatmulParams& p) override {
    Timed t(*this, p.n > kGemvMaxTokens ? "matmul (cublas)" : "matmul (gemv)");
    if (t.skipped) return;
    cuda::matmul(ctx_, p);
  }
  void matmul_multi(const MultiMatmulParams& p) override {
    Timed t(*this, p.n > kGemvMaxTokens ? "matmul_multi (cublas)" : "matmul_multi (gemv)");
    if (t.skipped) return;
    cuda::matmul_multi(ctx_, p);
  }
  void rms_norm(const RmsNormParams& p) override {
    Timed t(*this, "rms_norm");
    if (t.skipped) return;
    cuda::rms_norm(ctx_, p);
  }
  void add_rms_norm(float* x, const float* delta, const RmsNormParams& p) override {
    Timed t(*this, "add_rms_norm");
    if (t.skipped) return;
    cuda::add_rms_norm(ctx_, x, delta, p);
  }
  void rope(const RopeParams& p) override {
    Timed t(*this, "rope");
    if (t.skipped) return;
    cuda::rope(ctx_, p);
  }
  void rope_store_kv(const RopeStoreParams& p) override {
    Timed t(*this, "rope_store_kv");
    if (t.skipped) return;
    cuda::rope_store_kv(ctx_, p);
  }
  void attention(const AttentionParams& p) override {
    Timed t(*this, "attention");
    if (t.skipped) return;
    cuda::attention(ctx_, p);
  }
  void attention_batch(const BatchAttentionParams& p) override {
    Timed t(*this, "attention_batch");
    if (t.skipped) return;
    cuda::attention_batch(ctx_, p);
  }
  void scatter_rows(const ScatterRowsParams& p) override {
    Timed t(*this, "scatter_rows");
    if (t.skipped) return;
    cuda::scatter_rows(ctx_, p);
  }
  void apply_penalties(const PenaltyParams& p) override {
    Timed t(*this, "apply_penalties");
    if (t.skipped) return;
    cuda::apply_penalties(ctx_, p);
  }
  void matmul_exl2(const Exl2MatmulParams& p) override {
    Timed t(*this, "matmul_exl2");
    if (t.skipped) return;
    cuda::matmul_exl2(ctx_, p);
  }
  void matmul_exl2_multi(const Exl2MultiParams& p) override {
    Timed t(*this, "matmul_exl2");
    if (t.skipped) return;
    cuda::matmul_exl2_multi(ctx_, p);
  }
  void accumulate_gram(const GramParams& p) override {
    Timed t(*this, "accumulate_gram");
    if (t.skipped) return;
    cuda::accumulate_gram(ctx_, p);
  }
  bool gptq_factor(const GptqFactorParams& p) override {
    Timed t(*this, "gptq_factor");
    if (t.skipped) return true;
    return cuda::gptq_factor(ctx_, p);
  }
  void gptq_exl2(const GptqExl2Params& p) override {
    Timed t(*this, "gptq_exl2");
    if (t.skipped) return;
    cuda::gptq_exl2(ctx_, p);
  }
  bool wants_exl2_tiled() const override { return true; }
  bool moe_small_batch(const MoeParams& p) override {
    Timed t(*this, "moe_small_batch");
    if (t.skipped) return true;
    return cuda::moe_small_batch(ctx_, p);
  }
  void top_k(const TopKParams& p) override {
    Timed t(*this, "top_k");
    if (t.skipped) return;
    cuda::top_k(ctx_, p);
  }
  void glu(const GluParams& p) override {
    Timed t(*this, "glu");
    if (t.skipped) return;
    cuda::glu(ctx_, p);
  }
  void ffn(const FfnParams& p) override {
    const DType t = p.gate.dtype;
    const bool fused = !ctx_.exact_matmul && p.n > kGemvMaxTokens && (t == DType::kBF16 || t == DType::kF16) &&
                       p.up.dtype == t && p.down.dtype == t && !p.gate_bias && !p.up_bias && !p.down_bias &&
                       p.up.rows == p.gate.rows && p.up.cols == p.gate.cols && p.down.cols == p.gate.rows &&
                       p.down.rows == p.gate.cols && p.out != p.x;
    if (fused) {
      Timed t(*this, "ffn (fused bf16)");
    if (t.skipped) return;
      return cuda::ffn(ctx_, p);
    }
    {
      Timed t(*this, "ffn (gemv + glu)");
      if (t.skipped) return;
      if (cuda::ffn_gemv(ctx_, p)) return;
    }
    Ops::ffn(p);
  }
  void embedding(const EmbeddingParams& p) override {
    Timed t(*this, "embedding");
    if (t.skipped) return;
    cuda::embedding(ctx_, p);
  }
  void add(float* y, const float* x, int64_t n) override {
    Timed t(*this, "add");
    if (t.skipped) return;
    cuda::add(ctx_, y, x, n);
  }
  void softcap(float* x, int64_t n, float cap) override {
    Timed t(*this, "softcap");
    if (t.skipped) return;
    cuda::softcap(ctx_, x, n, cap);
  }
  void gather_rows(const GatherRowsParams& p) override {
    Timed t(*this, "gather_rows");
    if (t.skipped) return;
    cuda::gather_rows(ctx_, p);
  }
  void scatter_add_rows(const ScatterAddRowsParams& p) override {
    Timed t(*this, "scatter_add_rows");
    if (t.skipped) return;
    cuda::scatter_add_rows(ctx_, p);
  }

 private:
  // Brackets one op with profiling events (when LATHE_CUDA_PROFILE=1 and not recording a graph).
  struct Timed {
    Timed(CudaOps& o, const char* name) : ops(o), what(name) {
      skipped = o.profile_.skipped(name);
      on = !skipped && o.profile_.enabled() && !o.ctx_.capturing;
      if (on) o.profile_.begin(o.ctx_.stream, start);
    }
    ~Timed() {
      if (on) ops.profile_.end(ops.ctx_.stream, what, start);
    }
    CudaOps& ops;
    const char* what;
    bool on = false;
    bool skipped = false;  // LATHE_CUDA_SKIP names this op: a timing diagnostic, results are garbage
    cudaEvent_t start = nullptr;
  };

  // Enqueues `then` (a copy to the host, or nothing) and blocks until the stream's work is done,
  // counting the time for device_wait_seconds(): both calls, since a copy into pageable memory
  // itself waits for the work before it.
  template <typename F>
  void wait_for_stream(F&& then) {
    const auto t0 = std::chrono::steady_clock::now();
    then();
    LATHE_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  void no_capture(const char* what) const {
    if (ctx_.capturing)
      raise(ErrorKind::kInternal, "cuda: ", what, " is not allowed while a graph is being recorded");
  }

  // Members are destroyed in reverse order: the cuBLAS handle, then its workspace, then the stream.
  std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDeleter> stream_;
  std::unique_ptr<void, DeviceDeleter> workspace_;
  std::unique_ptr<std::remove_pointer_t<cublasHandle_t>, BlasDeleter> blas_;
  cuda::Context ctx_;
  OpProfile profile_;
  bool kv_f32_ = false;  // BackendOptions::kv_f32
  std::unordered_map<void*, size_t> sizes_;  // live alloc() buffers, for memory_stats()
  size_t in_use_ = 0, peak_ = 0;
  double wait_seconds_ = 0;  // device_wait_seconds()
};

}  // namespace
}  // namespace cuda

bool cuda_available() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: not an error for callers that fall back to the CPU
    return false;
  }
  return count > 0;
}

cudaStream_t cuda_stream(Ops& ops) {
  auto* c = dynamic_cast<cuda::CudaOps*>(&ops);
  return c ? c->stream() : nullptr;
}

std::unique_ptr<Ops> make_cuda_ops(const BackendOptions& options) {
  if (!cuda_available()) return nullptr;
  try {
    auto ops = std::make_unique<cuda::CudaOps>();
    ops->context().exact_matmul = options.exact_matmul;
    ops->set_kv_f32(options.kv_f32);
    return ops;
  } catch (const Error& e) {
    // Callers treat null as "no usable GPU" and may fall back to the CPU; say why.
    std::fprintf(stderr, "[cuda] error: the CUDA backend failed to start: %s\n", e.what());
    return nullptr;
  }
}

}  // namespace lathe::ops
