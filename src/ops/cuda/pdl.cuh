// Programmatic dependent launch (Hopper, compute capability 9+): how decode-sized kernels overlap
// their start with the end of the kernel before them. A decode step is ~400 small kernels; without
// it each one's launch, ramp-up and first memory round trip sit on the critical path (measured:
// everything but the EXL2 matmuls took 0.78 ms a token on the 8B shape, bench/RESULTS.md).
//  * A kernel launched by launch_pdl may be scheduled while the kernel before it still runs, as soon
//    as every block of that one has called pdl_trigger (or exited).
//  * So every kernel launched by launch_pdl must call pdl_wait before it reads anything an earlier
//    kernel wrote, and before it writes anything an earlier kernel may still read. Work on constant
//    data (weights, tables) may go before the wait: that is the point.
//  * pdl_wait returns once the previous kernel has completed and its writes are visible. A kernel
//    completes only after each of its waiting threads passed its wait, so the chain is transitive:
//    a kernel two launches later also sees the first one's writes.
//  * Kernels call pdl_trigger early (at their top): the next kernel's blocks then take the SM room
//    this one leaves and start their constant-data work (an EXL2 matmul's first weight copies).
// Everything is a no-op before sm_90 and when Context::pdl is off (LATHE_PDL=0, a diagnostic).
#pragma once

#include <cuda_runtime.h>

#include "ops/cuda/check.h"
#include "ops/cuda/cuda_internal.h"

namespace lathe::ops::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// The usual top of a kernel in the chain: let the next one start, then wait for the previous one.
__device__ __forceinline__ void pdl_enter() {
  pdl_trigger();
  pdl_wait();
}

// kernel<<<grid, block, smem, ctx.stream>>>(args...), as a programmatic dependent where ctx.pdl.
template <typename... Params, typename... Args>
void launch_pdl(const Context& ctx, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = ctx.stream;
  cfg.attrs = &attr;
  cfg.numAttrs = ctx.pdl ? 1 : 0;
  LATHE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(std::forward<Args>(args))...));
}

}  // namespace lathe::ops::cuda
