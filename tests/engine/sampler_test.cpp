#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"

namespace lathe::engine {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};

TEST(Sampler, GreedyPicksFirstMaximum) {
  SamplerConfig c;
  c.temperature = 0;
  Sampler s(c);
  EXPECT_EQ(s.sample(kLogits, {}), 1);  // ties: the first index, like torch.argmax
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplerConfig c;
  c.top_k = 1;
  c.seed = 5;
  Sampler s(c);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(kLogits, {}), 1);
}

TEST(Sampler, SeedReproducesAndSeedsDiffer) {
  SamplerConfig c;
  c.seed = 42;
  Sampler a(c), b(c);
  c.seed = 43;
  Sampler d(c);
  std::vector<int> xa, xb, xd;
  for (int i = 0; i < 100; ++i) {
    xa.push_back(a.sample(kLogits, {}));
    xb.push_back(b.sample(kLogits, {}));
    xd.push_back(d.sample(kLogits, {}));
  }
  EXPECT_EQ(xa, xb);
  EXPECT_NE(xa, xd);
}

TEST(Sampler, FrequenciesFollowSoftmax) {
  SamplerConfig c;
  c.seed = 1;
  c.temperature = 1;
  Sampler s(c);
  const std::vector<float> l = {0.f, std::log(2.f), std::log(3.f), std::log(4.f)};  // p = 0.1 .. 0.4
  std::map<int, int> n;
  const int N = 40000;
  for (int i = 0; i < N; ++i) ++n[s.sample(l, {})];
  for (int k = 0; k < 4; ++k) EXPECT_NEAR(double(n[k]) / N, 0.1 * (k + 1), 0.01) << k;
}

TEST(Sampler, TopPAndMinPCutTheTail) {
  const std::vector<float> l = {0.f, std::log(2.f), std::log(3.f), std::log(4.f)};  // p = 0.1 .. 0.4
  SamplerConfig c;
  c.seed = 3;
  c.top_p = 0.65f;  // 0.4 + 0.3 = 0.7 >= 0.65: keeps ids 3 and 2
  Sampler s(c);
  for (int i = 0; i < 500; ++i) {
    int t = s.sample(l, {});
    EXPECT_TRUE(t == 3 || t == 2) << t;
  }
  c.top_p = 1;
  c.min_p = 0.6f;  // keep p >= 0.24: ids 3 (0.4) and 2 (0.3)
  Sampler m(c);
  for (int i = 0; i < 500; ++i) {
    int t = m.sample(l, {});
    EXPECT_TRUE(t == 3 || t == 2) << t;
  }
}

TEST(Sampler, PenaltiesChangeTheGreedyChoice) {
  SamplerConfig c;
  c.temperature = 0;
  c.repetition_penalty = 2.f;  // logit 3 -> 1.5 for seen id 1, id 3 keeps 3
  EXPECT_EQ(Sampler(c).sample(kLogits, std::vector<int32_t>{1}), 3);
  c.repetition_penalty = 1;
  c.presence_penalty = 1.5f;  // ids 1 and 3 seen: 1.5 each; id 2 wins with 2.0
  EXPECT_EQ(Sampler(c).sample(kLogits, std::vector<int32_t>{1, 3}), 2);
  c.presence_penalty = 0;
  c.frequency_penalty = 0.4f;  // id 1 seen 3x -> 1.8, id 3 once -> 2.6
  EXPECT_EQ(Sampler(c).sample(kLogits, std::vector<int32_t>{1, 1, 1, 3}), 3);
  c.penalty_last_n = 1;  // only the last token (3) counts: 3 -> 2.6, id 1 stays 3
  EXPECT_EQ(Sampler(c).sample(kLogits, std::vector<int32_t>{1, 1, 1, 3}), 1);
  // Negative logits are multiplied by the repetition penalty (more negative).
  c = SamplerConfig{};
  c.temperature = 0;
  c.repetition_penalty = 3.f;
  const std::vector<float> neg = {-1.f, -2.f};
  EXPECT_EQ(Sampler(c).sample(neg, std::vector<int32_t>{0}), 1);
}

TEST(Sampler, RejectsBadSettings) {
  SamplerConfig c;
  c.top_p = 0;
  EXPECT_THROW(Sampler{c}, Error);
  c = SamplerConfig{};
  c.temperature = -1;
  EXPECT_THROW(Sampler{c}, Error);
  c = SamplerConfig{};
  c.min_p = 2;
  EXPECT_THROW(Sampler{c}, Error);
}

}  // namespace
}  // namespace lathe::engine
