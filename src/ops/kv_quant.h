// Host reference of the quantized K/V cache formats (ops.h KvQuant): what rope_store_kv writes and
// what attention reads, on every backend. The CUDA kernels follow the same arithmetic (a float
// division rounded to nearest, ties to even), so a cache written on either side holds the same codes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/ops.h"

namespace lathe::ops {

// Bytes of codes for `elems` elements (elems a multiple of kKvQuantGroup).
inline size_t kv_code_bytes(KvQuant q, int64_t elems) { return size_t(q == KvQuant::kQ4 ? elems / 2 : elems); }
// Bytes of scales for `elems` elements.
inline size_t kv_scale_bytes(int64_t elems) { return size_t(elems / kKvQuantGroup) * sizeof(uint16_t); }

// One group's scale (float16 bits) and the code of x under it, for kQ8 and kQ4 (code in [-127, 127]
// or [-8, 7]). The scale is chosen first and rounded to float16 away from zero; codes are computed
// against the rounded scale, so what is stored is what dequantizes and no code clamps (except q4's
// +8, which does not exist: a value opposite in sign to the group's largest and as large).
uint16_t kv_group_scale(KvQuant q, const float* x);
int kv_code(KvQuant q, float x, float scale);

// x[elems] (elems a multiple of kKvQuantGroup) into codes (starting at element 0's byte) and
// elems / kKvQuantGroup scales.
void kv_quantize(KvQuant q, const float* x, int64_t elems, void* codes, uint16_t* scales);
// The inverse: out[elems] = code * scale.
void kv_dequantize(KvQuant q, const void* codes, const uint16_t* scales, int64_t elems, float* out);

}  // namespace lathe::ops
