#include "core/dtype.h"

#include "core/error.h"

namespace lathe {

namespace {
struct DTypeInfo {
  const char* name;
  size_t size;
};
constexpr DTypeInfo kInfo[] = {
    {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}, {"I8", 1},
    {"U8", 1},  {"I16", 2}, {"I32", 4},  {"I64", 8}, {"BOOL", 1},
};
static_assert(sizeof(kInfo) / sizeof(kInfo[0]) == size_t(DType::kCount));
}  // namespace

size_t dtype_size(DType t) { return kInfo[size_t(t)].size; }
const char* dtype_name(DType t) { return kInfo[size_t(t)].name; }

bool dtype_from_name(std::string_view name, DType* out) {
  for (size_t i = 0; i < size_t(DType::kCount); ++i) {
    if (name == kInfo[i].name) {
      *out = DType(i);
      return true;
    }
  }
  return false;
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // overflow (incl. rounding up) -> inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero): value / 2^-24, rounded to nearest even.
    const float v = std::bit_cast<float>(abs) * 16777216.0f;  // exact scaling by 2^24
    // nearbyint with ties-to-even on the default FP environment.
    float r = v;
    const float t = float(int32_t(v));
    const float frac = v - t;
    if (frac > 0.5f || (frac == 0.5f && (int32_t(t) & 1))) r = t + 1;
    else r = t;
    return uint16_t(sign | uint32_t(r));
  }
  uint32_t bits = abs + 0xc8000000u;  // rebias exponent: (e - 127 + 15) << 23
  bits += 0xfffu + ((bits >> 13) & 1u);
  return uint16_t(sign | (bits >> 13));
}

void convert_to_f32(const void* src, DType src_type, float* dst, size_t n) {
  switch (src_type) {
    case DType::kF32: std::memcpy(dst, src, n * 4); return;
    case DType::kF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::kBF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::kF64: {
      auto* s = static_cast<const double*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = float(s[i]);
      return;
    }
    default: fail(ErrorKind::kUnsupported, "cannot convert {} to F32", dtype_name(src_type));
  }
}

void convert_from_f32(const float* src, void* dst, DType dst_type, size_t n) {
  switch (dst_type) {
    case DType::kF32: std::memcpy(dst, src, n * 4); return;
    case DType::kF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::kBF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::kF64: {
      auto* d = static_cast<double*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = src[i];
      return;
    }
    default: fail(ErrorKind::kUnsupported, "cannot convert F32 to {}", dtype_name(dst_type));
  }
}

}  // namespace lathe
