// Private interface of the ops/cpu backend: one entry point per op family (each implemented with
// Highway dynamic dispatch in its own file) plus the per-thread scratch they share. Not installed;
// only cpu_ops.cpp and the family files include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "ops/ops.h"

namespace lathe::ops::cpu {

void matmul(const MatmulParams& p);
void attention(const AttentionParams& p);
void rms_norm(const RmsNormParams& p);
void add_rms_norm(float* x, const float* delta, const RmsNormParams& p);
void rope(const RopeParams& p);
void glu(const GluParams& p);
void embedding(const EmbeddingParams& p);
void add(float* y, const float* x, int64_t n);
void softcap(float* x, int64_t n, float cap);
void matmul_exl2(const Exl2MatmulParams& p);

// Below this many tokens matmul runs as a GEMV that streams each weight row once (decode);
// above it W is packed to float32 panels and a register-tiled kernel runs (prefill).
inline constexpr int64_t kGemvMaxTokens = 8;

// Per-thread growable scratch, 64-byte aligned so packed panels start on a cache line. `slot`
// separates buffers a kernel needs at the same time: slots 0-2 belong to code running inside a
// parallel region, 3-5 to the calling thread for buffers it shares with the workers (the caller is
// also worker 0, so the two ranges must not overlap), 6-7 to code inside a parallel region again.
// Memory is kept between calls (the OpenMP pool is persistent), so steady-state decode and prefill
// allocate nothing.
inline constexpr int kScratchSlots = 8;
inline float* thread_scratch(int slot, size_t floats) {
  struct Buffer {
    std::unique_ptr<float, decltype(&std::free)> data{nullptr, &std::free};
    size_t size = 0;
  };
  static thread_local Buffer buffers[kScratchSlots];
  Buffer& b = buffers[slot];
  if (b.size < floats) {
    const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    b.data.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!b.data) throw std::bad_alloc();
    b.size = floats;
  }
  return b.data.get();
}

}  // namespace lathe::ops::cpu
