// Runner's piecewise forward (embed, run_sublayer, final_norm) against the whole forward on every
// fixture architecture: the LM head on the last piece's output gives the forward's logits. Also:
// weights passed in stand in for the layer's own, and taps fire inside a sublayer run.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "model/model.h"
#include "support/golden.h"
#include "test_paths.h"

namespace lathe::model {
namespace {

// Logits [n, vocab] from the pieces, with `override_layer` (if >= 0) run with `weights`.
std::vector<float> piecewise_logits(const Runner& r, std::span<const int32_t> ids, int64_t override_layer = -1,
                                    const LayerWeights* weights = nullptr) {
  const ModelConfig& c = r.config();
  ops::Ops& ops = r.ops();
  const int64_t n = int64_t(ids.size()), H = c.hidden_size;
  Workspace ws(ops);
  KvCache scratch(c, n, ops);
  std::vector<float> x(size_t(n * H)), logits(size_t(n * c.vocab_size));
  r.embed(ids, x.data(), ws);
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (Sublayer part : {Sublayer::kAttention, Sublayer::kFeedForward})
      r.run_sublayer(l, part, x.data(), n, scratch, ws, l == override_layer ? weights : nullptr);
  r.final_norm(x.data(), x.data(), n);
  r.lm_head(x.data(), logits.data(), n);
  return logits;
}

class SublayerTest : public ::testing::TestWithParam<const char*> {};

TEST_P(SublayerTest, PiecesMatchTheForward) {
  LATHE_REQUIRE_SHARED(dir, std::string("fixtures/models/") + GetParam());
  auto model = Model::load(dir);
  auto ops = ops::make_cpu_ops();
  Runner runner(*model, *ops);
  const auto ids = lathe::testing::read_json(dir / "golden.json")["cases"][1]["ids"].get<std::vector<int32_t>>();
  KvCache cache(model->config(), int64_t(ids.size()), *ops);
  Workspace ws(*ops);
  Tensor want;
  runner.forward(ids, cache, ws, LogitsFor::kAll, &want);
  const std::vector<float> got = piecewise_logits(runner, ids);
  ASSERT_EQ(int64_t(got.size()), want.numel());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, double(std::fabs(got[i] - want.as<float>()[i])));
  EXPECT_LT(worst, 1e-4) << "largest logit difference";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SublayerTest,
                         ::testing::Values("llama", "llama3-rope", "mistral", "qwen2", "qwen3", "gemma2", "phi3",
                                           "mixtral"));

TEST(Sublayer, WeightsStandInAndTapsFire) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto model = Model::load(dir);
  auto ops = ops::make_cpu_ops();
  Runner runner(*model, *ops);
  const ModelConfig& c = model->config();
  const auto ids = lathe::testing::read_json(dir / "golden.json")["cases"][0]["ids"].get<std::vector<int32_t>>();
  const std::vector<float> base = piecewise_logits(runner, ids);
  // The layer's own weights passed in: the same logits.
  LayerWeights same = model->loader().weights().layers[1];
  EXPECT_EQ(piecewise_logits(runner, ids, 1, &same), base);
  // A zeroed down projection removes layer 1's feed-forward: different logits.
  LayerWeights changed = same;
  std::vector<float> zeros(size_t(changed.down.w.rows * changed.down.w.cols), 0.f);
  changed.down.w.data = zeros.data();
  changed.down.w.dtype = DType::kF32;
  EXPECT_NE(piecewise_logits(runner, ids, 1, &changed), base);
  // Taps see the sublayer's linear inputs with the layer's index.
  std::vector<std::pair<int64_t, TapPoint>> seen;
  runner.set_tap([&](int64_t layer, TapPoint p, const float*, int64_t rows, int64_t) {
    EXPECT_EQ(rows, int64_t(ids.size()));
    seen.push_back({layer, p});
  });
  Workspace ws(*ops);
  KvCache scratch(c, int64_t(ids.size()), *ops);
  std::vector<float> x(ids.size() * size_t(c.hidden_size));
  runner.embed(ids, x.data(), ws);
  runner.run_sublayer(1, Sublayer::kAttention, x.data(), int64_t(ids.size()), scratch, ws);
  runner.run_sublayer(1, Sublayer::kFeedForward, x.data(), int64_t(ids.size()), scratch, ws);
  const std::vector<std::pair<int64_t, TapPoint>> want = {
      {1, TapPoint::kAttnIn}, {1, TapPoint::kAttnOut}, {1, TapPoint::kFfnIn}, {1, TapPoint::kFfnMid}};
  EXPECT_EQ(seen, want);
  // A scratch cache too short for the tokens is a clear error.
  KvCache small(c, 2, *ops);
  EXPECT_THROW(runner.run_sublayer(0, Sublayer::kAttention, x.data(), int64_t(ids.size()), small, ws), Error);
}

}  // namespace
}  // namespace lathe::model
