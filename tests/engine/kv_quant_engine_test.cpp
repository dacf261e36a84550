// The quantized K/V cache (--kv-cache q8|q4) through the engine on the CPU backend: a prefix-cache
// hit reads the same codes a cold run wrote (same tokens), and the reference model's next-token
// distributions stay close to those of the float32 cache (KL divergence and top-1 agreement over
// val.txt windows; numbers in bench/RESULTS.md).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "engine/batch_engine.h"
#include "engine/fixture_model.h"
#include "engine/scoring.h"
#include "model/kv_cache.h"
#include "test_paths.h"

namespace lathe::engine {
namespace {

using testing::greedy;

TEST(KvQuantEngine, PrefixHitsGiveTheColdRunsTokens) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/qwen3");  // head_dim 32: whole groups
  for (ops::KvQuant q : {ops::KvQuant::kQ8, ops::KvQuant::kQ4}) {
    auto f = std::make_unique<testing::FixtureModel>(dir);
    f->ops->set_kv_quant(q);
    const auto& cs = f->golden["cases"].back();
    const auto prompt = cs["ids"].get<std::vector<int32_t>>();
    const int64_t n = int64_t(cs["greedy_ids"].size());
    BatchEngine e(f->runner, {.num_blocks = 256, .scheduler = {.block_size = 4, .token_budget = 4096}});
    const RequestId a = e.add(greedy(prompt, n));
    while (!e.idle()) e.step();
    const RequestId b = e.add(greedy(prompt, n));
    while (!e.idle()) e.step();
    EXPECT_EQ(e.cached_tokens(a), 0);
    EXPECT_GT(e.cached_tokens(b), 0);
    EXPECT_EQ(e.generated(b), e.generated(a)) << ops::kv_quant_name(q);
    EXPECT_EQ(int64_t(e.generated(a).size()), n);
    EXPECT_EQ(e.blocks().num_free(), e.blocks().num_blocks());
  }
}

TEST(KvQuantEngine, PoolTakesAQuarterToAHalfOfTheBytes) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/qwen3");  // head_dim 32: whole groups
  testing::FixtureModel f(dir);
  const auto& c = f.model->config();
  const size_t full = model::KvPool::block_bytes(c, 64, DType::kBF16);
  const size_t q8 = model::KvPool::block_bytes(c, 64, DType::kBF16, ops::KvQuant::kQ8);
  const size_t q4 = model::KvPool::block_bytes(c, 64, DType::kBF16, ops::KvQuant::kQ4);
  EXPECT_EQ(q8 * 32, full * 17);  // 1 byte + 2/32 of scale vs 2 bytes
  EXPECT_EQ(q4 * 32, full * 9);   // 1/2 byte + 2/32
  f.ops->set_kv_quant(ops::KvQuant::kQ4);
  model::KvPool pool(c, 3, 64, *f.ops);
  EXPECT_EQ(pool.quant(), ops::KvQuant::kQ4);
  // (and the scratch row: model::KvPool::scratch_slot)
  EXPECT_EQ(pool.bytes(), 3 * q4 + model::KvPool::block_bytes(c, 1, DType::kBF16, ops::KvQuant::kQ4));
  EXPECT_NE(pool.k_scale(0), nullptr);
}

// KL(f32 cache || quantized cache) on the trained reference model, 4 windows of 512 tokens.
TEST(KvQuantEngine, ReferenceModelStaysCloseToTheFullCache) {
  LATHE_REQUIRE_SHARED(dir, "models/ref-llama-14m");
  LATHE_REQUIRE_SHARED(val, "data/text/val.txt");
  auto model = model::Model::load(dir);
  const auto tokenizer = tok::Tokenizer::load(dir);
  std::ifstream in(val);
  std::stringstream text;
  text << in.rdbuf();
  const auto tokens = tokenizer.encode(text.str());
  auto base_ops = ops::make_cpu_ops();
  model::Runner base(*model, *base_ops);
  PerplexityOptions po;
  po.ctx = 512;
  po.max_windows = 4;
  struct Bound {
    ops::KvQuant q;
    double kld, top1, ppl_rel;
  };
  for (const Bound& b : {Bound{ops::KvQuant::kQ8, 2e-3, 0.98, 0.005}, Bound{ops::KvQuant::kQ4, 3e-2, 0.92, 0.02}}) {
    auto ops = ops::make_cpu_ops();
    ops->set_kv_quant(b.q);
    model::Runner other(*model, *ops);
    const CompareResult r = compare(base, other, tokens, po);
    std::printf("kv %s: ppl %.4f vs %.4f (%+.3f%%), KLD %.5f, top-1 agreement %.4f over %lld tokens\n",
                ops::kv_quant_name(b.q), r.ppl, r.ppl_base, 100.0 * (r.ppl / r.ppl_base - 1.0), r.kld, r.top1_agree,
                (long long)r.tokens);
    EXPECT_GT(r.tokens, 1000);
    EXPECT_LT(r.kld, b.kld) << ops::kv_quant_name(b.q);
    EXPECT_GT(r.top1_agree, b.top1) << ops::kv_quant_name(b.q);
    EXPECT_LT(std::abs(r.ppl / r.ppl_base - 1.0), b.ppl_rel) << ops::kv_quant_name(b.q);
    EXPECT_GT(r.kld, 0.0);  // the cache really was quantized
  }
}

}  // namespace
}  // namespace lathe::engine
