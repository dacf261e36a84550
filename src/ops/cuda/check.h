// Error checks for the CUDA backend. Every CUDA runtime and cuBLAS call, and every kernel launch, goes
// through one of these so a failure becomes a lathe::Error naming the call, its file and line.
//
// The messages are built with ostringstream rather than lathe::fail: nvcc 13's front end rejects
// fmt's consteval format-string check, so .cu files must not instantiate fmt formatting.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <sstream>
#include <string>

#include "core/error.h"

namespace lathe::ops::cuda {

template <typename... Parts>
[[noreturn]] void raise(ErrorKind kind, const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(kind, os.str());
}

inline double to_mib(size_t bytes) { return double(bytes) / (1024.0 * 1024.0); }

// Out-of-memory is a size limit (kOutOfRange, with what was asked and what is free); anything else
// from the runtime is a broken invariant or a dead device (kInternal).
[[noreturn]] inline void raise_cuda(cudaError_t err, const char* expr, const char* file, int line,
                                    size_t requested = 0) {
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it so the next call does not report it again
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    std::ostringstream os;
    os.setf(std::ios::fixed);
    os.precision(1);
    os << "CUDA out of memory: " << expr << " needs " << to_mib(requested) << " MiB, " << to_mib(free_b)
       << " MiB free of " << to_mib(total_b) << " MiB (" << file << ":" << line << ")";
    throw Error(ErrorKind::kOutOfRange, os.str());
  }
  raise(ErrorKind::kInternal, "CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in ", expr,
        " (", file, ":", line, ")");
}

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

[[noreturn]] inline void raise_cublas(cublasStatus_t s, const char* expr, const char* file, int line) {
  raise(s == CUBLAS_STATUS_ALLOC_FAILED ? ErrorKind::kOutOfRange : ErrorKind::kInternal, "cuBLAS error ",
        cublas_status_name(s), " (", int(s), ") in ", expr, " (", file, ":", line, ")");
}

}  // namespace lathe::ops::cuda

#define LATHE_CUDA_CHECK(expr)                                                            \
  do {                                                                                    \
    const cudaError_t lathe_err_ = (expr);                                                \
    if (lathe_err_ != cudaSuccess) ::lathe::ops::cuda::raise_cuda(lathe_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After every <<<>>> launch: catches bad configurations (grid, shared memory) at the launch site.
// Faults inside a kernel surface at the next synchronising call (copy_to_host, synchronize).
#define LATHE_CUDA_CHECK_LAUNCH(what)                                                     \
  do {                                                                                    \
    const cudaError_t lathe_err_ = cudaGetLastError();                                    \
    if (lathe_err_ != cudaSuccess) ::lathe::ops::cuda::raise_cuda(lathe_err_, what, __FILE__, __LINE__); \
  } while (0)

#define LATHE_CUBLAS_CHECK(expr)                                                          \
  do {                                                                                    \
    const cublasStatus_t lathe_st_ = (expr);                                              \
    if (lathe_st_ != CUBLAS_STATUS_SUCCESS) ::lathe::ops::cuda::raise_cublas(lathe_st_, #expr, __FILE__, __LINE__); \
  } while (0)
