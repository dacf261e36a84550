// lathe quantize --synthetic: the random EXL2 folder loads like any model (packed views, the layout
// of the target bpw), runs a forward with finite logits, differs by seed; unsupported architectures
// and bad requests are clear errors.
#include "engine/synthetic_exl2.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "model/model.h"
#include "quant/exl2.h"
#include "test_paths.h"

namespace lathe::engine {
namespace {

namespace fs = std::filesystem;

TEST(SyntheticExl2, WritesALoadableModelAtTheTargetBpw) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  const fs::path out = fs::temp_directory_path() / "lathe-synthetic-test";
  fs::remove_all(out);
  SyntheticExl2Options o;
  o.bpw = 4.0;
  EXPECT_GT(write_synthetic_exl2(dir, out, o), size_t(0));
  auto m = model::Model::load(out);
  EXPECT_EQ(m->config().quant.method, "exl2");
  const auto& L = m->loader().weights().layers[0];
  ASSERT_NE(L.q.exl2, nullptr);
  ASSERT_NE(m->loader().weights().lm_head_exl2, nullptr);
  // The decoder's storage per weight is the layout's for 4.0 bpw (format overhead included).
  double bits = 0, weights = 0;
  for (const auto& layer : m->loader().weights().layers)
    for (const model::Linear* l : {&layer.q, &layer.k, &layer.v, &layer.o, &layer.gate, &layer.up, &layer.down}) {
      const auto* v = l->exl2;
      ASSERT_NE(v, nullptr);
      std::vector<quant::Exl2Group> groups;
      for (int64_t g = 0; g < v->num_groups; ++g) groups.push_back({v->groups[g * 4], v->groups[g * 4 + 1]});
      bits += quant::exl2_bits_per_weight(v->in_features, v->out_features, groups, false) * double(l->w.rows * l->w.cols);
      weights += double(l->w.rows * l->w.cols);
    }
  EXPECT_NEAR(bits / weights, 4.0, 0.25);
  // A forward on the CPU gives finite logits.
  auto ops = ops::make_cpu_ops();
  model::Runner runner(*m, *ops);
  model::KvCache cache(m->config(), 16, *ops);
  model::Workspace ws(*ops);
  Tensor logits;
  const std::vector<int32_t> ids = {1, 2, 3, 4};
  runner.forward(ids, cache, ws, model::LogitsFor::kLast, &logits);
  for (int64_t i = 0; i < m->config().vocab_size; ++i) ASSERT_TRUE(std::isfinite(logits.as<float>()[i]));
  // Another seed gives other weights.
  const fs::path out2 = out.string() + "-2";
  o.seed = 2;
  write_synthetic_exl2(dir, out2, o);
  auto m2 = model::Model::load(out2);
  EXPECT_NE(m2->loader().weights().layers[0].q.exl2->q_weight[0], L.q.exl2->q_weight[0]);
  fs::remove_all(out);
  fs::remove_all(out2);
}

TEST(SyntheticExl2, BadRequestsAreClearErrors) {
  LATHE_REQUIRE_SHARED(llama, "fixtures/models/llama");
  LATHE_REQUIRE_SHARED(mixtral, "fixtures/models/mixtral");
  const fs::path out = fs::temp_directory_path() / "lathe-synthetic-bad";
  SyntheticExl2Options o;
  o.bpw = 9.0;
  EXPECT_THROW(write_synthetic_exl2(llama, out, o), Error);
  o.bpw = 4.0;
  o.head_bits = 7;
  EXPECT_THROW(write_synthetic_exl2(llama, out, o), Error);
  o.head_bits = 6;
  try {
    write_synthetic_exl2(mixtral, out, o);
    ADD_FAILURE() << "a MoE model was written";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("Llama-style"), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_synthetic_exl2(out / "missing", out, o), Error);
  fs::remove_all(out);
}

}  // namespace
}  // namespace lathe::engine
