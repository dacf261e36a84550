// EXL2 bit packing: round trips for every width, and the exact bit layout against an independent
// bit-by-bit construction of ExLlamaV2's per-column little-endian bitstream.
#include "quant/bitpack.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/error.h"

namespace lathe::quant {
namespace {

const int kBits[] = {2, 3, 4, 5, 6, 8};

std::vector<uint8_t> random_codes(std::mt19937& rng, size_t n, int bits) {
  std::uniform_int_distribution<int> d(0, (1 << bits) - 1);
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = uint8_t(d(rng));
  return v;
}

TEST(BitPack, UnitSizesMatchTheFormat) {
  const int rows[] = {16, 32, 8, 32, 16, 4}, words[] = {1, 3, 1, 5, 3, 1};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(rows_per_unit(kBits[i]), rows[i]) << kBits[i] << " bits";
    EXPECT_EQ(words_per_unit(kBits[i]), words[i]) << kBits[i] << " bits";
  }
  EXPECT_THROW(rows_per_unit(7), Error);
  EXPECT_FALSE(exl2_bits_supported(1));
}

TEST(BitPack, RoundTripEveryWidth) {
  std::mt19937 rng(3);
  for (int bits : kBits)
    for (int units : {1, 3, 8})
      for (int64_t n : {1, 7, 32, 40}) {
        const int64_t rows = int64_t(units) * rows_per_unit(bits);
        const auto q = random_codes(rng, size_t(rows * n), bits);
        std::vector<uint32_t> packed(size_t(rows * bits / 32 * n));
        pack_columns(q.data(), rows, n, bits, packed.data());
        std::vector<uint8_t> back(q.size());
        unpack_columns(packed.data(), rows, n, bits, back.data());
        EXPECT_EQ(back, q) << bits << " bits, " << rows << " rows, " << n << " columns";
      }
}

// Row i of a unit at bit bits * i of the column's bitstream, word w = bits [32 w, 32 w + 32).
TEST(BitPack, LayoutIsTheColumnBitstream) {
  std::mt19937 rng(11);
  for (int bits : kBits) {
    const int64_t n = 5, rows = 2 * rows_per_unit(bits), W = words_per_unit(bits);
    const auto q = random_codes(rng, size_t(rows * n), bits);
    std::vector<uint32_t> packed(size_t(rows * bits / 32 * n));
    pack_columns(q.data(), rows, n, bits, packed.data());
    for (int64_t u = 0; u < rows / rows_per_unit(bits); ++u)
      for (int64_t c = 0; c < n; ++c) {
        std::vector<int> stream(size_t(32 * W), 0);
        for (int i = 0; i < rows_per_unit(bits); ++i)
          for (int b = 0; b < bits; ++b)
            stream[size_t(i * bits + b)] = (q[size_t((u * rows_per_unit(bits) + i) * n + c)] >> b) & 1;
        for (int64_t w = 0; w < W; ++w) {
          uint32_t want = 0;
          for (int t = 0; t < 32; ++t) want |= uint32_t(stream[size_t(32 * w + t)]) << t;
          EXPECT_EQ(packed[size_t((u * W + w) * n + c)], want) << bits << " bits, unit " << u << ", word " << w;
        }
      }
  }
  // A hand-checked case: 4-bit rows 0..7 of one column = 1..8 -> 0x87654321.
  std::vector<uint8_t> q{1, 2, 3, 4, 5, 6, 7, 8};
  uint32_t word = 0;
  pack_columns(q.data(), 8, 1, 4, &word);
  EXPECT_EQ(word, 0x87654321u);
}

TEST(BitPack, ScaleCodes) {
  std::vector<uint8_t> codes{1, 2, 3, 4, 5, 6, 7, 8, 16, 16, 16, 16, 16, 16, 16, 1};
  std::vector<uint32_t> packed(2);
  pack_scales(codes.data(), 1, 16, packed.data());
  EXPECT_EQ(packed[0], 0x76543210u);  // stored as code - 1, column n at bits 4 (n % 8)
  EXPECT_EQ(packed[1], 0x0fffffffu);
  std::vector<uint8_t> back(codes.size());
  unpack_scales(packed.data(), 1, 16, back.data());
  EXPECT_EQ(back, codes);
  codes[3] = 0;
  EXPECT_THROW(pack_scales(codes.data(), 1, 16, packed.data()), Error);
  EXPECT_THROW(pack_scales(codes.data(), 1, 12, packed.data()), Error);
}

TEST(BitPack, RowsMustFillUnits) {
  std::vector<uint8_t> q(40);
  std::vector<uint32_t> out(8);
  EXPECT_THROW(pack_columns(q.data(), 20, 1, 3, out.data()), Error);  // 3-bit units are 32 rows
  EXPECT_NO_THROW(pack_columns(q.data(), 16, 1, 2, out.data()));
}

}  // namespace
}  // namespace lathe::quant
