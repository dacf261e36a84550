#include "quant/bitpack.h"

#include "core/error.h"

namespace lathe::quant {

bool exl2_bits_supported(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
}

int rows_per_unit(int bits) {
  if (!exl2_bits_supported(bits)) fail(ErrorKind::kUnsupported, "EXL2 has no {}-bit packing (2, 3, 4, 5, 6, 8)", bits);
  // The fewest rows whose bits fill whole 32-bit words.
  int r = 1;
  while ((r * bits) % 32 != 0) ++r;
  return r;
}

int words_per_unit(int bits) { return rows_per_unit(bits) * bits / 32; }

namespace {
void check_rows(int64_t rows, int bits) {
  if (rows % rows_per_unit(bits) != 0)
    fail(ErrorKind::kInvalidArgument, "{} rows cannot be packed at {} bits: the count must be a multiple of {}", rows,
         bits, rows_per_unit(bits));
}
}  // namespace

void pack_columns(const uint8_t* q, int64_t rows, int64_t n, int bits, uint32_t* out) {
  check_rows(rows, bits);
  const int R = rows_per_unit(bits), W = words_per_unit(bits);
  const uint32_t mask = (1u << bits) - 1u;
  for (int64_t u = 0; u < rows / R; ++u) {
    uint32_t* words = out + u * W * n;
    for (int64_t j = 0; j < W * n; ++j) words[j] = 0;
    for (int i = 0; i < R; ++i) {
      const int bit = i * bits, w = bit / 32, off = bit % 32;
      const uint8_t* row = q + (u * R + i) * n;
      for (int64_t c = 0; c < n; ++c) {
        const uint64_t v = uint64_t(row[c] & mask) << off;  // may straddle words w and w + 1
        words[w * n + c] |= uint32_t(v);
        if (off + bits > 32) words[(w + 1) * n + c] |= uint32_t(v >> 32);
      }
    }
  }
}

void unpack_columns(const uint32_t* packed, int64_t rows, int64_t n, int bits, uint8_t* q) {
  check_rows(rows, bits);
  const int R = rows_per_unit(bits), W = words_per_unit(bits);
  const uint32_t mask = (1u << bits) - 1u;
  for (int64_t u = 0; u < rows / R; ++u) {
    const uint32_t* words = packed + u * W * n;
    for (int i = 0; i < R; ++i) {
      const int bit = i * bits, w = bit / 32, off = bit % 32;
      uint8_t* row = q + (u * R + i) * n;
      for (int64_t c = 0; c < n; ++c) {
        uint64_t v = words[w * n + c] >> off;
        if (off + bits > 32) v |= uint64_t(words[(w + 1) * n + c]) << (32 - off);
        row[c] = uint8_t(v & mask);
      }
    }
  }
}

void pack_scales(const uint8_t* codes, int64_t groups, int64_t n, uint32_t* out) {
  if (n % 8 != 0) fail(ErrorKind::kInvalidArgument, "scale codes need a multiple of 8 columns (got {})", n);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t w = 0; w < n / 8; ++w) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) {
        const uint8_t c = codes[g * n + w * 8 + i];
        if (c < 1 || c > 16) fail(ErrorKind::kInvalidArgument, "scale code {} is outside 1..16", int(c));
        word |= uint32_t(c - 1) << (4 * i);
      }
      out[g * (n / 8) + w] = word;
    }
}

void unpack_scales(const uint32_t* packed, int64_t groups, int64_t n, uint8_t* codes) {
  if (n % 8 != 0) fail(ErrorKind::kInvalidArgument, "scale codes need a multiple of 8 columns (got {})", n);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t c = 0; c < n; ++c) codes[g * n + c] = uint8_t(((packed[g * (n / 8) + c / 8] >> (4 * (c % 8))) & 15u) + 1);
}

}  // namespace lathe::quant
