// End-to-end generation on the fixture llama model: greedy output equals the Hugging Face greedy
// ids, EOS and stop strings end generation, and a session reusing its KV cache gives the same tokens.
#include "engine/generator.h"

#include <gtest/gtest.h>


#include "core/error.h"
#include "engine/fixture_model.h"
#include "test_paths.h"

namespace lathe::engine {
namespace {

using Fixture = testing::FixtureModel;

std::unique_ptr<Fixture> load(const std::filesystem::path& dir) { return std::make_unique<Fixture>(dir); }

GenerateConfig greedy(int64_t n) {
  GenerateConfig g;
  g.max_new_tokens = n;
  g.sampler.temperature = 0;
  g.ignore_eos = true;
  return g;
}

TEST(Generator, GreedyEqualsTransformers) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto f = load(dir);
  Generator gen(f->runner, &f->tokenizer);
  for (const auto& cs : f->golden["cases"]) {
    const auto ids = cs["ids"].get<std::vector<int32_t>>();
    const auto want = cs["greedy_ids"].get<std::vector<int32_t>>();
    std::string streamed;
    const auto r = gen.generate(ids, greedy(int64_t(want.size())), [&](std::string_view p) { streamed += p; });
    EXPECT_EQ(r.ids, want);
    EXPECT_EQ(r.text, streamed);
    EXPECT_EQ(r.text, f->tokenizer.decode(r.ids, /*skip_special=*/true));
    EXPECT_EQ(r.finish, FinishReason::kLength);
  }
}

TEST(Generator, StopsAtEosUnlessIgnored) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto f = load(dir);
  Generator gen(f->runner, &f->tokenizer);
  const auto ids = f->golden["cases"][0]["ids"].get<std::vector<int32_t>>();
  const auto want = f->golden["cases"][0]["greedy_ids"].get<std::vector<int32_t>>();
  auto g = greedy(24);
  g.ignore_eos = false;
  g.eos_ids = {want[3]};  // pretend the 4th greedy token is EOS
  auto r = gen.generate(ids, g);
  EXPECT_EQ(r.finish, FinishReason::kEos);
  EXPECT_EQ(r.ids, std::vector<int32_t>(want.begin(), want.begin() + 4));
  g.ignore_eos = true;
  EXPECT_EQ(gen.generate(ids, g).ids.size(), 24u);
}

TEST(Generator, StopStringEndsAndIsNotPrinted) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto f = load(dir);
  Generator gen(f->runner, &f->tokenizer);
  const auto ids = f->golden["cases"][2]["ids"].get<std::vector<int32_t>>();
  const auto full = gen.generate(ids, greedy(24));
  ASSERT_GT(full.text.size(), 6u);
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  const size_t at = full.text.find(stop);
  auto g = greedy(24);
  g.stop = {stop};
  const auto r = gen.generate(ids, g);
  EXPECT_EQ(r.finish, FinishReason::kStop);
  EXPECT_EQ(r.text, full.text.substr(0, at));
}

TEST(Generator, SessionReuseGivesSameTokens) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/mistral");
  auto f = load(dir);
  Generator gen(f->runner, &f->tokenizer);
  const auto ids = f->golden["cases"][1]["ids"].get<std::vector<int32_t>>();
  Session session(f->runner, 256);
  const auto first = gen.generate(ids, greedy(10), nullptr, &session);
  EXPECT_EQ(session.tokens.size(), ids.size() + 9);
  // Second turn: the previous prompt + reply + more tokens; only the new part is prefilled.
  std::vector<int32_t> turn2 = ids;
  turn2.insert(turn2.end(), first.ids.begin(), first.ids.end());
  turn2.insert(turn2.end(), {5, 6, 7});
  const auto reused = gen.generate(turn2, greedy(10), nullptr, &session);
  EXPECT_EQ(reused.reused_tokens, int64_t(ids.size() + 9));
  const auto fresh = gen.generate(turn2, greedy(10));
  EXPECT_EQ(reused.ids, fresh.ids);
  EXPECT_EQ(fresh.reused_tokens, 0);
}

TEST(Generator, PromptLongerThanContextIsAnError) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto f = load(dir);
  Generator gen(f->runner, &f->tokenizer);
  std::vector<int32_t> ids(size_t(f->model->config().max_position_embeddings + 1), 5);
  try {
    gen.generate(ids, greedy(4));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfRange);
  }
  EXPECT_THROW(gen.generate(std::vector<int32_t>{}, greedy(4)), Error);
}

}  // namespace
}  // namespace lathe::engine
