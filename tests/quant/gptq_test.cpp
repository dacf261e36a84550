// GPTQ checkpoints built here with the documented packing (4 and 8 bit, symmetric and asymmetric
// zeros, the v1 zero offset and gptq_v2, sequential groups and act-order g_idx) load and
// dequantize exactly to scale * (q - zero).
#include "quant/gptq.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "core/dtype.h"
#include "core/error.h"

namespace lathe::quant {
namespace {

namespace fs = std::filesystem;

TEST(Gptq, PackWriteReadDequantize) {
  std::mt19937 rng(21);
  const int64_t K = 256, N = 64;
  int case_id = 0;
  for (int bits : {4, 8})
    for (bool symmetric : {true, false})
      for (bool v2 : {false, true})
        for (bool act_order : {false, true})
          for (int64_t gs : {32, 128}) {
            const int64_t G = K / gs;
            std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
            std::vector<uint8_t> q(size_t(K * N)), zeros(size_t(G * N));
            for (auto& x : q) x = uint8_t(code(rng));
            // v1 stores zero - 1, so a zero of 0 cannot be written there; real v1 files never have one.
            std::uniform_int_distribution<int> zd(v2 ? 0 : 1, (1 << bits) - 1);
            for (auto& z : zeros) z = symmetric ? uint8_t(1 << (bits - 1)) : uint8_t(zd(rng));
            std::vector<float> scales(size_t(G * N));
            std::uniform_real_distribution<float> sd(0.001f, 0.05f);
            for (auto& s : scales) s = f16_to_f32(f32_to_f16(sd(rng)));  // stored as float16
            std::vector<int32_t> g_idx;
            if (act_order) {
              for (int64_t k = 0; k < K; ++k) g_idx.push_back(int32_t(k / gs));
              std::shuffle(g_idx.begin(), g_idx.end(), rng);
            }
            const GptqMatrix m = gptq_pack(bits, K, N, gs, v2, q.data(), zeros.data(), scales.data(), g_idx);
            const fs::path dir = fs::temp_directory_path() / ("lathe_gptq_test_" + std::to_string(case_id++));
            fs::remove_all(dir);
            fs::create_directories(dir);
            std::vector<uint16_t> storage;
            io::write_safetensors(dir / "model.safetensors", gptq_tensors(m, "model.layers.0.self_attn.q_proj", &storage));
            io::WeightStore store(dir);
            ASSERT_TRUE(gptq_present(store, "model.layers.0.self_attn.q_proj"));
            // Group size from the config, and inferred (0) from the number of groups.
            for (int64_t given : {gs, int64_t(0)}) {
              const GptqMatrix r = gptq_read(store, "model.layers.0.self_attn.q_proj", bits, given, v2);
              EXPECT_EQ(r.group_size, gs);
              std::vector<float> w(size_t(N * K));
              gptq_dequantize(r, w.data());
              for (int64_t k = 0; k < K; ++k) {
                const int64_t g = act_order ? g_idx[size_t(k)] : k / gs;
                for (int64_t n = 0; n < N; ++n) {
                  const float want = scales[size_t(g * N + n)] * float(int(q[size_t(k * N + n)]) - int(zeros[size_t(g * N + n)]));
                  ASSERT_EQ(w[size_t(n * K + k)], want) << bits << "-bit sym=" << symmetric << " v2=" << v2
                                                       << " act_order=" << act_order << " gs=" << gs << " at " << k
                                                       << "," << n;
                }
              }
            }
            fs::remove_all(dir);
          }
}

TEST(Gptq, UnsupportedWidthAndBadShapes) {
  std::vector<uint8_t> q(64 * 32, 1), z(2 * 32, 2);
  std::vector<float> s(2 * 32, 0.1f);
  try {
    gptq_pack(3, 64, 32, 32, false, q.data(), z.data(), s.data(), {});
    ADD_FAILURE() << "3-bit GPTQ was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
  }
  const GptqMatrix m = gptq_pack(4, 64, 32, 32, false, q.data(), z.data(), s.data(), {});
  const fs::path dir = fs::temp_directory_path() / "lathe_gptq_test_bad";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<uint16_t> storage;
  io::write_safetensors(dir / "model.safetensors", gptq_tensors(m, "w", &storage));
  io::WeightStore store(dir);
  EXPECT_THROW(gptq_read(store, "w", 8, 32, false), Error);   // wrong width for these shapes
  EXPECT_THROW(gptq_read(store, "w", 4, 16, false), Error);   // 2 groups cannot be 16-row groups of 64
  EXPECT_THROW(gptq_read(store, "missing", 4, 32, false), Error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lathe::quant
