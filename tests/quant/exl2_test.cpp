// EXL2 layers: a layer packed by lathe, written to safetensors and read back through the weight
// store is identical, and dequantizes exactly to the format's formula computed here independently
// (mixed bit widths, a random act-order permutation, padded columns, bias). Also the bits-per-weight
// accounting and clear errors for malformed layers.
#include "quant/exl2.h"
#include "support/exl2_case.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <random>

#include <unistd.h>

#include "core/dtype.h"
#include "core/error.h"

namespace lathe::quant {
namespace {

namespace fs = std::filesystem;

using Layer = lathe::testing::Exl2Case;
using lathe::testing::random_exl2;

// The format's weight, straight from the codes: W[n][perm[p]] = (q[p][n] - 2^(b-1)) * code^2 * max / 256.
std::vector<float> reference(const Layer& L) {
  std::vector<float> w(size_t(L.N * L.K), NAN);
  int64_t row = 0;
  for (size_t g = 0; g < L.groups.size(); ++g) {
    const float max = f16_to_f32(f32_to_f16(L.max[g]));
    for (int64_t r = row; r < row + L.groups[g].rows; ++r)
      for (int64_t n = 0; n < L.N; ++n) {
        const float c = float(L.codes[g * size_t(L.N) + size_t(n)]);
        w[size_t(n * L.K + L.perm[size_t(r)])] =
            float(int(L.q[size_t(r * L.N + n)]) - (1 << (L.groups[g].bits - 1))) * (c * c * max / 256.f);
      }
    row += L.groups[g].rows;
  }
  return w;
}

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("lathe_quant_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(Exl2, WriteReadDequantizeRoundTrip) {
  std::mt19937 rng(5);
  const std::vector<std::vector<Exl2Group>> layouts = {
      {{8, 32}, {6, 32}, {5, 32}, {4, 64}, {3, 64}, {2, 32}},  // every width, descending
      {{4, 128}, {4, 128}},                                    // uniform 4-bit g128
      {{6, 32}, {3, 96}, {2, 16}},                             // a 16-row 2-bit group
  };
  int case_id = 0;
  for (const auto& groups : layouts)
    for (int64_t N : {40, 64})
      for (bool bias : {false, true}) {
        const Layer L = random_exl2(rng, N, groups, bias);
        const Exl2Matrix m = exl2_pack(L.K, L.N, L.groups, L.perm, L.q.data(), L.codes.data(), L.max.data(),
                                       bias ? L.bias.data() : nullptr);
        const fs::path dir = temp_dir(std::to_string(case_id++));
        io::write_safetensors(dir / "model.safetensors", exl2_tensors(m, "model.layers.0.mlp.down_proj"));
        io::WeightStore store(dir);
        ASSERT_TRUE(exl2_present(store, "model.layers.0.mlp.down_proj"));
        const Exl2Matrix r = exl2_read(store, "model.layers.0.mlp.down_proj");
        EXPECT_EQ(r.q_weight, m.q_weight);
        EXPECT_EQ(r.q_scale, m.q_scale);
        EXPECT_EQ(r.q_scale_max, m.q_scale_max);
        EXPECT_EQ(r.q_groups, m.q_groups);
        EXPECT_EQ(r.q_invperm, m.q_invperm);
        EXPECT_EQ(r.bias, m.bias);
        ASSERT_EQ(r.groups.size(), m.groups.size());
        for (size_t g = 0; g < r.groups.size(); ++g) {
          EXPECT_EQ(r.groups[g].bits, m.groups[g].bits);
          EXPECT_EQ(r.groups[g].rows, m.groups[g].rows);
        }
        // Without a bias the format does not record N: the padded width comes back.
        EXPECT_EQ(r.out_features, bias ? N : m.padded_out());
        std::vector<float> w(size_t(N * L.K));
        exl2_dequantize(m, w.data());
        EXPECT_EQ(w, reference(L)) << "case " << case_id;
        std::vector<float> wr(size_t(r.out_features * L.K));
        exl2_dequantize(r, wr.data());
        EXPECT_TRUE(std::equal(w.begin(), w.end(), wr.begin())) << "reloaded layer dequantizes differently";
        for (size_t i = w.size(); i < wr.size(); ++i) ASSERT_EQ(wr[i], 0.f) << "padding column is not zero";
        fs::remove_all(dir);
      }
}

TEST(Exl2, BitsPerWeightAccounting) {
  // ExLlamaV2's own numbers: 4-bit g128 is 4.03-4.04 bpw, 4-bit g32 4.13, 8-bit g128 ~8.04.
  auto uniform = [](int bits, int64_t group, int64_t K) {
    return std::vector<Exl2Group>(size_t(K / group), Exl2Group{bits, group});
  };
  const double b4g128 = exl2_bits_per_weight(4096, 4096, uniform(4, 128, 4096), false);
  EXPECT_GT(b4g128, 4.03);
  EXPECT_LT(b4g128, 4.04);
  EXPECT_NEAR(exl2_bits_per_weight(4096, 4096, uniform(4, 32, 4096), false), 4.13, 0.01);
  EXPECT_NEAR(exl2_bits_per_weight(4096, 4096, uniform(8, 128, 4096), false), 8.04, 0.01);
}

TEST(Exl2, MalformedLayersAreClearErrors) {
  std::mt19937 rng(9);
  const Layer L = random_exl2(rng, 32, {{4, 64}, {2, 64}}, false);
  EXPECT_THROW(exl2_pack(L.K, L.N, {{2, 64}, {4, 64}}, L.perm, L.q.data(), L.codes.data(), L.max.data(), nullptr),
               Error);  // ascending widths
  EXPECT_THROW(exl2_pack(L.K, L.N, {{4, 64}, {3, 64}, {7, 0}}, L.perm, L.q.data(), L.codes.data(), L.max.data(), nullptr),
               Error);
  Exl2Matrix m = exl2_pack(L.K, L.N, L.groups, L.perm, L.q.data(), L.codes.data(), L.max.data(), nullptr);
  m.q_invperm[0] = m.q_invperm[1];  // not a permutation any more
  const fs::path dir = temp_dir("bad");
  io::write_safetensors(dir / "model.safetensors", exl2_tensors(m, "layer"));
  io::WeightStore store(dir);
  try {
    exl2_read(store, "layer");
    ADD_FAILURE() << "a broken permutation was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("layer.q_invperm"), std::string::npos) << e.what();
  }
  try {
    exl2_read(store, "other");
    ADD_FAILURE() << "a missing layer was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("other.q_weight"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lathe::quant
