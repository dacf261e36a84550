#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <random>

#include "core/error.h"
#include "ops/ops.h"

namespace lathe::engine {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};

TEST(Sampler, GreedyPicksFirstMaximum) {
  SamplerConfig c;
  c.temperature = 0;
  Sampler s(c);
  EXPECT_EQ(s.sample(kLogits, {}), 1);  // ties: the first index, like torch.argmax
}

// logit_bias is added before the penalties: +100 forces a token, -100 bans one (greedy and
// sampled), ids outside the row are ignored.
TEST(Sampler, LogitBiasForcesAndBans) {
  const std::vector<float> logits = {1.f, 3.f, 2.f, 0.5f};
  SamplerConfig c;
  c.temperature = 0;
  c.logit_bias = {{1, -100.f}};
  EXPECT_EQ(Sampler(c).sample(logits, {}), 2);
  c.logit_bias = {{0, 100.f}, {99, 5.f}};
  EXPECT_EQ(Sampler(c).sample(logits, {}), 0);
  c.temperature = 1;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    c.seed = seed;
    c.logit_bias = {{3, 100.f}};
    EXPECT_EQ(Sampler(c).sample(logits, {}), 3);
  }
  c.temperature = 0;
  c.logit_bias = {{2, 1.5f}};  // 3.5 beats 3, then a presence penalty on token 2 takes it back below
  EXPECT_EQ(Sampler(c).sample(logits, {}), 2);
  c.presence_penalty = 1.f;
  const std::vector<int32_t> history = {2};
  EXPECT_EQ(Sampler(c).sample(logits, history), 1);
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

// choose() on the backend's top-k (here the host default of ops::Ops) must pick exactly what
// sample() picks on the full logits, draw for draw, for every mix of settings, with the fallback to
// the full row when the candidates cannot decide.
TEST(Sampler, ChooseFromCandidatesEqualsFullSample) {
  auto ops = ops::make_ref_ops();
  std::mt19937 rng(99);
  const int64_t V = 3000;
  int fallbacks = 0, draws = 0;
  struct Case {
    float t, top_p, min_p, rep, pres, freq;
    int64_t top_k;
  };
  const Case cases[] = {{0.f, 1.f, 0.f, 1.f, 0.f, 0.f, 0},    {0.f, 1.f, 0.f, 1.3f, 0.5f, 0.1f, 0},
                        {1.f, 1.f, 0.f, 1.f, 0.f, 0.f, 0},    {0.7f, 0.9f, 0.f, 1.f, 0.f, 0.f, 0},
                        {1.f, 1.f, 0.05f, 1.f, 0.f, 0.f, 0},  {0.8f, 0.95f, 0.02f, 1.1f, 0.2f, 0.f, 40},
                        {1.2f, 1.f, 0.f, 1.f, 0.f, 0.3f, 5},  {0.3f, 0.5f, 0.f, 1.f, 0.f, 0.f, 0},
                        {2.f, 1.f, 0.f, 1.f, 0.f, 0.f, 0}};
  for (const Case& cs : cases)
    for (uint64_t seed : {1u, 2u}) {
      SamplerConfig c;
      c.temperature = cs.t;
      c.top_p = cs.top_p;
      c.min_p = cs.min_p;
      c.repetition_penalty = cs.rep;
      c.presence_penalty = cs.pres;
      c.frequency_penalty = cs.freq;
      c.top_k = cs.top_k;
      c.seed = seed;
      Sampler full(c), cand(c);
      std::vector<int32_t> history{5, 7, 5, 2999, 11};
      for (int step = 0; step < 40; ++step) {
        // Peaked logits with a long tail and some exact ties.
        std::vector<float> logits(static_cast<size_t>(V));
        std::normal_distribution<float> nd(0.f, 2.f);
        for (auto& l : logits) l = std::round(nd(rng) * 8.f) / 8.f;
        logits[size_t(step * 37 % V)] += 6.f;
        const int32_t want = full.sample(logits, history);

        std::vector<float> work = logits;
        const auto pairs = cand.penalty_counts(history);
        std::vector<int32_t> off{0, int32_t(pairs.size())}, ids, counts;
        for (auto [id, n] : pairs) ids.push_back(id), counts.push_back(n);
        const float rep = cs.rep, pres = cs.pres, freq = cs.freq, inv_t = cs.t > 0 ? 1.f / cs.t : 0.f;
        ops::PenaltyParams pp;
        pp.logits = work.data();
        pp.rows = 1;
        pp.vocab = V;
        pp.offsets = off.data();
        pp.ids = ids.data();
        pp.counts = counts.data();
        pp.repetition = &rep;
        pp.presence = &pres;
        pp.frequency = &freq;
        ops->apply_penalties(pp);
        const int64_t k = cand.candidates_wanted(V, 64);
        std::vector<int32_t> top(static_cast<size_t>(k));
        std::vector<float> vals(static_cast<size_t>(k));
        float sum = 0;
        ops::TopKParams tk;
        tk.logits = work.data();
        tk.rows = 1;
        tk.vocab = V;
        tk.k = k;
        tk.inv_temperature = &inv_t;
        tk.ids = top.data();
        tk.values = vals.data();
        tk.sums = &sum;
        ops->top_k(tk);
        int32_t got = cand.choose(top, vals, sum, V);
        if (got < 0) {
          ++fallbacks;
          got = cand.choose_full(work);
        }
        ++draws;
        ASSERT_EQ(got, want) << "case t=" << cs.t << " top_p=" << cs.top_p << " min_p=" << cs.min_p
                             << " top_k=" << cs.top_k << " seed " << seed << " step " << step;
        history.push_back(want);
      }
    }
  std::printf("[ sampler ] %d draws from candidates, %d fell back to the full row\n", draws, fallbacks);
  EXPECT_GT(fallbacks, 0);          // the fallback path ran
  EXPECT_LT(fallbacks, draws / 2);  // and the candidates usually decide
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
