// lathe quantize on a fixture model: the EXL2 folder it writes loads, meets its bit budget, and
// stays close to the original (closer at 6 bpw than at 4); bad requests are clear errors. The
// measurement file and the optimizer are tested in quantize_measure_test.cpp.
#include "engine/quantize.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "core/error.h"
#include "engine/scoring.h"
#include "quant/exl2.h"
#include "support/golden.h"
#include "support/gptq_twin.h"
#include "test_paths.h"

namespace lathe::engine {
namespace {

namespace fs = std::filesystem;

double mean_abs_nll_change(const model::Model& a, const model::Model& b, std::span<const int32_t> ids) {
  auto ops = ops::make_cpu_ops();
  model::Runner ra(a, *ops), rb(b, *ops);
  const auto sa = score(ra, ids), sb = score(rb, ids);
  double d = 0;
  for (size_t i = 0; i < sa.nll.size(); ++i) d += std::fabs(sa.nll[i] - sb.nll[i]);
  return d / double(sa.nll.size());
}

TEST(Quantize, FixtureModelToExl2) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  LATHE_REQUIRE_SHARED(calib, "data/text/calib.txt");
  auto model = model::Model::load(dir);
  auto tokenizer = tok::Tokenizer::load(dir);
  const auto ids = lathe::testing::read_json(dir / "golden.json")["cases"][2]["ids"].get<std::vector<int32_t>>();
  double change[2] = {0, 0};
  int i = 0;
  for (double bpw : {4.0, 6.0}) {
    const fs::path out = fs::temp_directory_path() / ("lathe_quantize_test_" + std::to_string(int(bpw)));
    fs::remove_all(out);
    QuantizeOptions o;
    o.bpw = bpw;
    o.calib = calib;
    o.calib_rows = 4;
    o.calib_length = 128;
    // The stages in order: calibration, every sublayer measured, then quantized one after another
    // (each on the states the quantized ones before it made), the head last.
    std::vector<std::string> stages;
    o.progress = [&](const std::string& stage, int64_t done, int64_t total) {
      stages.push_back(fmt::format("{} {}/{}", stage, done, total));
    };
    const QuantizeReport r = quantize_exl2(*model, tokenizer, out, o);
    const int64_t L = model->config().num_layers;
    std::vector<std::string> want;
    for (int64_t i = 1; i <= 2 * L; ++i) want.push_back(fmt::format("measure {}/{}", i, 2 * L));
    want.push_back("calibrate 4/4");
    for (int64_t i = 1; i <= 2 * L + 1; ++i) want.push_back(fmt::format("quantize {}/{}", i, 2 * L + 1));
    EXPECT_EQ(stages, want);
    EXPECT_EQ(r.calib_tokens, 4 * 128);
    EXPECT_EQ(r.measured, 2 * L);
    EXPECT_LE(r.bpw, bpw + 1e-9) << "the measured layouts stay within the budget";
    EXPECT_GT(r.bpw, bpw - 0.25) << "decoder layers' bpw";
    EXPECT_EQ(r.layers.size(), size_t(7 * model->config().num_layers + 1));
    auto q = model::Model::load(out);
    EXPECT_EQ(q->config().quant.method, "exl2");
    EXPECT_TRUE(quant::exl2_present(q->loader().store(), "model.layers.0.mlp.down_proj"));
    EXPECT_TRUE(quant::exl2_present(q->loader().store(), "lm_head"));
    change[i++] = mean_abs_nll_change(*model, *q, ids);
    std::printf("[ quantize ] %.1f bpw -> %.3f bpw, mean |nll change| %.4f, %zu bytes, %.1f s\n", bpw, r.bpw,
                change[i - 1], r.bytes, r.seconds);
    // An already quantized model is refused.
    try {
      quantize_exl2(*q, tokenizer, out / "again", o);
      ADD_FAILURE() << "a quantized model was quantized again";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("already quantized"), std::string::npos) << e.what();
    }
    fs::remove_all(out);
  }
  // (The fixture is a tiny random model, so its predictions move more than a trained model's: the
  // trained reference model's perplexity is checked in tests/tools/cli_test.cpp.)
  EXPECT_LT(change[1], change[0]) << "6 bpw should stay closer to the original than 4 bpw";
}

// GPTQ-to-EXL2 conversion, on the trained reference model (a random fixture's predictions move too
// much under any requantization to tell good from bad): a 4-bit GPTQ checkpoint written by the test
// (documented packing) converted to 6 bpw keeps the GPTQ model's perplexity within 1%, and the
// output holds no GPTQ tensors.
TEST(Quantize, GptqCheckpointConvertsToExl2) {
  LATHE_REQUIRE_SHARED(dir, "models/ref-llama-14m");
  LATHE_REQUIRE_SHARED(val, "data/text/val.txt");
  const fs::path gptq = fs::temp_directory_path() / "lathe_quantize_test_gptq_in";
  const fs::path out = fs::temp_directory_path() / "lathe_quantize_test_gptq_out";
  fs::remove_all(out);
  ASSERT_GT(lathe::testing::write_gptq_twin(dir, gptq, {}, 5), 0);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    if (fs::exists(dir / f)) fs::copy_file(dir / f, gptq / f, fs::copy_options::overwrite_existing);
  auto in = model::Model::load(gptq);
  ASSERT_EQ(in->config().quant.method, "gptq");
  auto tokenizer = tok::Tokenizer::load(dir);
  QuantizeOptions o;
  o.bpw = 6.0;
  o.uniform = true;  // one layout everywhere: the conversion is what is tested here
  o.calib_rows = 4;
  o.calib_length = 256;
  const QuantizeReport r = quantize_exl2(*in, tokenizer, out, o);
  EXPECT_NEAR(r.bpw, 6.0, 0.25);
  auto q = model::Model::load(out);
  EXPECT_EQ(q->config().quant.method, "exl2");
  for (const std::string& name : q->loader().store().names())
    EXPECT_TRUE(name.find("qweight") == std::string::npos && name.find("qzeros") == std::string::npos &&
                name.find("g_idx") == std::string::npos)
        << name << " (a GPTQ tensor) was carried into the EXL2 output";
  std::ifstream f(val);
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto tokens = tokenizer.encode(text.substr(0, 60000), false);
  auto ops = ops::make_cpu_ops();
  model::Runner rg(*in, *ops), rq(*q, *ops);
  PerplexityOptions po;
  po.max_windows = 8;
  const double p_gptq = perplexity(rg, tokens, po).ppl, p_exl2 = perplexity(rq, tokens, po).ppl;
  std::printf("[ quantize ] GPTQ 4-bit (ppl %.4f) -> EXL2 %.3f bpw (ppl %.4f), 8 windows of val.txt\n", p_gptq, r.bpw,
              p_exl2);
  EXPECT_LT(std::fabs(p_exl2 / p_gptq - 1), 0.01);
  fs::remove_all(gptq);
  fs::remove_all(out);
}

// --advise: more memory never gives fewer bits; the answer's footprint fits; too little memory says so.
TEST(Quantize, AdviseBpwFitsTheMemory) {
  LATHE_REQUIRE_SHARED(dir, "models/ref-llama-14m");
  auto model = model::Model::load(dir);
  const size_t MiB = size_t(1) << 20;
  const auto none = advise_bpw(*model, 100 * MiB, 2048);
  EXPECT_FALSE(none.fits);
  EXPECT_GT(none.total(), 100 * MiB);
  const size_t floor = none.total();  // what 2.5 bpw needs
  EXPECT_FALSE(advise_bpw(*model, floor - 1, 2048).fits);
  double last = 0;
  for (size_t mem : {floor, floor + 2 * MiB, floor + 4 * MiB, floor + 1024 * MiB}) {
    const auto a = advise_bpw(*model, mem, 2048);
    ASSERT_TRUE(a.fits) << mem / MiB << " MiB";
    EXPECT_LE(a.total(), mem);
    EXPECT_GE(a.bpw, last);
    last = a.bpw;
  }
  EXPECT_DOUBLE_EQ(advise_bpw(*model, floor, 2048).bpw, 2.5);
  EXPECT_DOUBLE_EQ(last, 8.0);
  // A longer context leaves less room for weights.
  EXPECT_LT(advise_bpw(*model, floor + 4 * MiB, 2048 + 512).bpw, advise_bpw(*model, floor + 4 * MiB, 2048).bpw);
  // A quantized K/V cache counts its own bytes (9/32 of bf16's for q4) and leaves more for weights.
  const auto bf16 = advise_bpw(*model, floor + 4 * MiB, 2048);
  const auto q4 = advise_bpw(*model, floor + 4 * MiB, 2048, 6, ops::KvQuant::kQ4);
  EXPECT_EQ(q4.kv_bytes * 32, bf16.kv_bytes * 9);
  EXPECT_GT(q4.bpw, bf16.bpw);
}

TEST(Quantize, BadRequestsAreClearErrors) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto model = model::Model::load(dir);
  auto tokenizer = tok::Tokenizer::load(dir);
  const fs::path out = fs::temp_directory_path() / "lathe_quantize_test_bad";
  QuantizeOptions o;
  o.calib = "/nonexistent/calib.txt";
  try {
    quantize_exl2(*model, tokenizer, out, o);
    ADD_FAILURE() << "a missing calibration file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/calib.txt"), std::string::npos) << e.what();
  }
  o.bpw = 1.0;
  EXPECT_THROW(quantize_exl2(*model, tokenizer, out, o), Error);
  o.bpw = 4.0;
  o.head_bits = 7;
  EXPECT_THROW(quantize_exl2(*model, tokenizer, out, o), Error);
  o.head_bits = 6;
  o.objective = "loss";
  EXPECT_THROW(quantize_exl2(*model, tokenizer, out, o), Error);
  o.objective = "output";
  o.damp = 0;
  EXPECT_THROW(quantize_exl2(*model, tokenizer, out, o), Error);
  o.damp = 0.12;
  // No calibration file: the built-in text calibrates.
  o.calib.clear();
  o.calib_rows = 2;
  o.calib_length = 128;
  const auto r = quantize_exl2(*model, tokenizer, out, o);
  EXPECT_EQ(r.calib_tokens, 2 * 128);
  EXPECT_EQ(lathe::testing::read_json(out / "config.json")["quantization_config"]["calibration"]["dataset"],
            "(built-in)");
  fs::remove_all(out);
}

}  // namespace
}  // namespace lathe::engine
