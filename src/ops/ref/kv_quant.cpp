#include "ops/kv_quant.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"

namespace lathe::ops {

const char* kv_quant_name(KvQuant q) {
  switch (q) {
    case KvQuant::kNone: return "none";
    case KvQuant::kQ8: return "q8";
    case KvQuant::kQ4: return "q4";
  }
  return "?";
}

uint16_t kv_group_scale(KvQuant q, const float* x) {
  // q8: the largest magnitude maps to 127. q4: the element of largest magnitude (first of equals)
  // maps to -8 exactly, so the 16 levels span [-8, 7] x |scale| with no level unused.
  float amax = 0.f, m = 0.f;
  for (int64_t i = 0; i < kKvQuantGroup; ++i) {
    const float a = std::fabs(x[i]);
    if (a > amax) amax = a, m = x[i];
  }
  // Rounded away from zero to float16, so the largest value's code stays in range (rounding to
  // nearest could leave amax / scale above 127 (or 8) and clamp it: with tiny groups, whose scales
  // are float16 subnormals, by several steps).
  const float want = q == KvQuant::kQ8 ? amax / 127.f : amax > 0.f ? m / -8.f : 0.f;
  uint16_t h = f32_to_f16(want);
  if (std::fabs(f16_to_f32(h)) < std::fabs(want)) ++h;  // sign-magnitude: one ulp up in magnitude
  return h;
}

int kv_code(KvQuant q, float x, float scale) {
  if (scale == 0.f || !std::isfinite(scale) || std::isnan(x)) return 0;  // (a NaN is not an amax: see kv_group_scale)
  const float r = std::rint(x / scale);
  return q == KvQuant::kQ8 ? int(std::clamp(r, -127.f, 127.f)) : int(std::clamp(r, -8.f, 7.f));
}

void kv_quantize(KvQuant q, const float* x, int64_t elems, void* codes, uint16_t* scales) {
  if (q == KvQuant::kNone || elems % kKvQuantGroup != 0)
    fail(ErrorKind::kInternal, "kv_quantize: {} elements of {}", elems, kv_quant_name(q));
  auto* c8 = static_cast<int8_t*>(codes);
  auto* c4 = static_cast<uint8_t*>(codes);
  for (int64_t g = 0; g < elems / kKvQuantGroup; ++g) {
    const float* xg = x + g * kKvQuantGroup;
    scales[g] = kv_group_scale(q, xg);
    const float s = f16_to_f32(scales[g]);
    for (int64_t i = 0; i < kKvQuantGroup; ++i) {
      const int64_t e = g * kKvQuantGroup + i;
      const int c = kv_code(q, xg[i], s);
      if (q == KvQuant::kQ8) {
        c8[e] = int8_t(c);
      } else if (e % 2 == 0) {
        c4[e / 2] = uint8_t(c + 8);
      } else {
        c4[e / 2] = uint8_t(c4[e / 2] | (c + 8) << 4);
      }
    }
  }
}

void kv_dequantize(KvQuant q, const void* codes, const uint16_t* scales, int64_t elems, float* out) {
  if (q == KvQuant::kNone || elems % kKvQuantGroup != 0)
    fail(ErrorKind::kInternal, "kv_dequantize: {} elements of {}", elems, kv_quant_name(q));
  const auto* c8 = static_cast<const int8_t*>(codes);
  const auto* c4 = static_cast<const uint8_t*>(codes);
  for (int64_t e = 0; e < elems; ++e) {
    const float s = f16_to_f32(scales[e / kKvQuantGroup]);
    const int c = q == KvQuant::kQ8 ? int(c8[e]) : int((c4[e / 2] >> (4 * (e % 2))) & 15) - 8;
    out[e] = float(c) * s;
  }
}

}  // namespace lathe::ops
