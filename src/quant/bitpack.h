// The bit packings of the EXL2 format (ExLlamaV2's pack_columns / pack_rows_4), byte-exact.
//
// Weights: every column (output feature) is packed on its own along K (input rows), little-endian:
// a unit of R rows of b bits fills W = R * b / 32 uint32 words, row i of the unit at bit b * i of
// the unit's bitstream (word i * b / 32), values may straddle two words (3, 5 and 6 bits). Word j of
// a unit for column n sits at [unit * W + j][n] of the row-major [rows * b / 32, n] int32 tensor.
//   bits:           2   3   4   5   6   8
//   rows per unit: 16  32   8  32  16   4
//   words per unit: 1   3   1   5   3   1
// Scales: 4-bit codes 1..16 stored as code - 1, 8 per int32 along the columns, column n at bits
// 4 * (n % 8) of word n / 8.
#pragma once

#include <cstdint>

namespace lathe::quant {

bool exl2_bits_supported(int bits);  // 2, 3, 4, 5, 6, 8
int rows_per_unit(int bits);
int words_per_unit(int bits);

// q: [rows, n] row-major codes < 2^bits; rows a multiple of rows_per_unit(bits).
// out: [rows * bits / 32, n] row-major words.
void pack_columns(const uint8_t* q, int64_t rows, int64_t n, int bits, uint32_t* out);
void unpack_columns(const uint32_t* packed, int64_t rows, int64_t n, int bits, uint8_t* q);

// codes: [groups, n] in 1..16; n a multiple of 8. out: [groups, n / 8].
void pack_scales(const uint8_t* codes, int64_t groups, int64_t n, uint32_t* out);
void unpack_scales(const uint32_t* packed, int64_t groups, int64_t n, uint8_t* codes);

}  // namespace lathe::quant
