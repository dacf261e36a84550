// What the CUDA backend offers beyond the Ops contract, for code that already knows it runs on CUDA
// (benchmarks timing with CUDA events, tests). Model code never needs this.
#pragma once

#include <cuda_runtime.h>

#include "ops/ops.h"

namespace lathe::ops {

// The stream every op of `ops` is enqueued on, or null when `ops` is not the CUDA backend.
cudaStream_t cuda_stream(Ops& ops);

}  // namespace lathe::ops
