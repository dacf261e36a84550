// The CUDA backend: the Ops interface over the kernel families (matmul.cu, attention.cu,
// norm_rope.cu, elementwise.cu), plus device memory.
//
// Everything runs in order on one stream the backend owns; ops only enqueue. Host-visible results
// appear through copy_to_host (which waits for the stream) or synchronize. Device memory comes from
// cudaMalloc and is zero-filled on the stream, so it is ordered before any op that uses it.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <memory>
#include <type_traits>

#include <algorithm>
#include <unordered_map>

#include "ops/cuda/check.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/cuda_internal.h"
#include "ops/ops.h"

namespace lathe::ops {
namespace cuda {

void* Context::scratch(Scratch slot, size_t bytes) {
  const int s = int(slot);
  if (scratch_bytes_[s] >= bytes) return scratch_[s];
  // Kernels already enqueued may still read the old buffer: wait for them before freeing it.
  LATHE_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (scratch_[s]) LATHE_CUDA_CHECK(cudaFree(scratch_[s]));
  scratch_[s] = nullptr;
  scratch_bytes_[s] = 0;
  const size_t rounded = (bytes + (1u << 20) - 1) / (1u << 20) * (1u << 20);  // grow in MiB steps
  const cudaError_t err = cudaMalloc(&scratch_[s], rounded);
  if (err != cudaSuccess) raise_cuda(err, "cudaMalloc (scratch)", __FILE__, __LINE__, rounded);
  scratch_bytes_[s] = rounded;
  return scratch_[s];
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

class CudaOps final : public Ops {
 public:
  CudaOps() {
    LATHE_CUDA_CHECK(cudaGetDevice(&ctx_.device));
    cudaDeviceProp prop{};
    LATHE_CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx_.device));
    ctx_.sm_count = prop.multiProcessorCount;
    ctx_.smem_optin = prop.sharedMemPerBlockOptin;

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
  }

  ~CudaOps() override {
    if (ctx_.stream) cudaStreamSynchronize(ctx_.stream);
    ctx_.release_scratch();
    // blas_, workspace_ and stream_ are released by their holders.
  }

  const char* name() const override { return "cuda"; }
  cudaStream_t stream() const { return ctx_.stream; }
  cuda::Context& context() { return ctx_; }

  // ---- memory ------------------------------------------------------------------------------
  bool host_memory() const override { return false; }

  void* alloc(size_t bytes) override {
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
    if (bytes) LATHE_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
    LATHE_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  }

  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes) LATHE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx_.stream));
  }

  void synchronize() override {
    LATHE_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    LATHE_CUDA_CHECK(cudaGetLastError());
  }

  // ---- ops ---------------------------------------------------------------------------------
  void matmul(const MatmulParams& p) override { cuda::matmul(ctx_, p); }
  void matmul_multi(const MultiMatmulParams& p) override { cuda::matmul_multi(ctx_, p); }
  void rms_norm(const RmsNormParams& p) override { cuda::rms_norm(ctx_, p); }
  void add_rms_norm(float* x, const float* delta, const RmsNormParams& p) override {
    cuda::add_rms_norm(ctx_, x, delta, p);
  }
  void rope(const RopeParams& p) override { cuda::rope(ctx_, p); }
  void attention(const AttentionParams& p) override { cuda::attention(ctx_, p); }
  void glu(const GluParams& p) override { cuda::glu(ctx_, p); }
  void embedding(const EmbeddingParams& p) override { cuda::embedding(ctx_, p); }
  void add(float* y, const float* x, int64_t n) override { cuda::add(ctx_, y, x, n); }
  void softcap(float* x, int64_t n, float cap) override { cuda::softcap(ctx_, x, n, cap); }
  void gather_rows(const GatherRowsParams& p) override { cuda::gather_rows(ctx_, p); }
  void scatter_add_rows(const ScatterAddRowsParams& p) override { cuda::scatter_add_rows(ctx_, p); }

 private:
  // Members are destroyed in reverse order: the cuBLAS handle, then its workspace, then the stream.
  std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDeleter> stream_;
  std::unique_ptr<void, DeviceDeleter> workspace_;
  std::unique_ptr<std::remove_pointer_t<cublasHandle_t>, BlasDeleter> blas_;
  cuda::Context ctx_;
  std::unordered_map<void*, size_t> sizes_;  // live alloc() buffers, for memory_stats()
  size_t in_use_ = 0, peak_ = 0;
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
    return ops;
  } catch (const Error& e) {
    // Callers treat null as "no usable GPU" and may fall back to the CPU; say why.
    std::fprintf(stderr, "[cuda] error: the CUDA backend failed to start: %s\n", e.what());
    return nullptr;
  }
}

}  // namespace lathe::ops
