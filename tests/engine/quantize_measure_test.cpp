// The quantizer's measurement and optimizer: the measurement file is saved after every sublayer
// and reused (a second target costs only the final pass), a file of another model or calibration
// is refused, an interrupted measurement keeps its finished sublayers, and the optimizer meets the
// bit budget with the least summed error.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "core/error.h"
#include "engine/quantize.h"
#include "engine/quantize_measure.h"
#include "support/golden.h"
#include "test_paths.h"

namespace lathe::engine {
namespace {

namespace fs = std::filesystem;

struct Fixture {
  std::unique_ptr<model::Model> model;
  std::unique_ptr<tok::Tokenizer> tokenizer;
  QuantizeOptions options;
  fs::path base;
};

// The llama fixture with a small calibration, and a fresh folder for the outputs.
Fixture make(const fs::path& dir, const fs::path& calib, const std::string& name) {
  Fixture f;
  f.model = model::Model::load(dir);
  f.tokenizer = std::make_unique<tok::Tokenizer>(tok::Tokenizer::load(dir));
  f.base = fs::temp_directory_path() / name;
  fs::remove_all(f.base);
  fs::create_directories(f.base);
  f.options.bpw = 4.0;
  f.options.calib = calib;
  f.options.calib_rows = 2;
  f.options.calib_length = 64;
  f.options.measurement = f.base / "measurement.json";
  return f;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(QuantizeMeasure, SavedAndReusedForAnotherTarget) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  LATHE_REQUIRE_SHARED(calib, "data/text/calib.txt");
  Fixture f = make(dir, calib, "lathe_quantize_measure_reuse");
  const int64_t L = f.model->config().num_layers;
  const auto r1 = quantize_exl2(*f.model, *f.tokenizer, f.base / "a", f.options);
  EXPECT_EQ(r1.measured, 2 * L);
  const auto meas = lathe::testing::read_json(f.options.measurement);
  ASSERT_EQ(meas["sublayers"].size(), size_t(2 * L));
  for (const auto& [name, sub] : meas["sublayers"].items()) {
    EXPECT_EQ(sub["candidates"].size(), qz::candidates(name.ends_with("mlp") ? model::Sublayer::kFeedForward
                                                                              : model::Sublayer::kAttention)
                                            .size())
        << name;
    EXPECT_GT(sub["probe"]["kl"].get<double>(), 0) << name;
  }
  // The same target again: nothing measured, the same model written.
  const auto r2 = quantize_exl2(*f.model, *f.tokenizer, f.base / "b", f.options);
  EXPECT_EQ(r2.measured, 0);
  EXPECT_EQ(file_bytes(f.base / "a" / "output.safetensors"), file_bytes(f.base / "b" / "output.safetensors"));
  // Another target from the same file: nothing measured, fewer bits.
  f.options.bpw = 3.0;
  const auto r3 = quantize_exl2(*f.model, *f.tokenizer, f.base / "c", f.options);
  EXPECT_EQ(r3.measured, 0);
  EXPECT_LE(r3.bpw, 3.0 + 1e-9);
  EXPECT_LT(r3.bpw, r1.bpw);
  // More calibration windows for the final pass, the measurement's windows unchanged: still reused.
  f.options.calib_rows = 3;
  f.options.measure_rows = 2;
  EXPECT_EQ(quantize_exl2(*f.model, *f.tokenizer, f.base / "e", f.options).measured, 0);
  // Without --measurement the file goes to the output folder.
  f.options.measurement.clear();
  quantize_exl2(*f.model, *f.tokenizer, f.base / "d", f.options);
  EXPECT_TRUE(fs::exists(f.base / "d" / "measurement.json"));
  fs::remove_all(f.base);
}

TEST(QuantizeMeasure, AnotherModelsOrCalibrationsFileIsRefused) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  LATHE_REQUIRE_SHARED(other, "fixtures/models/mistral");
  LATHE_REQUIRE_SHARED(calib, "data/text/calib.txt");
  Fixture f = make(dir, calib, "lathe_quantize_measure_mismatch");
  quantize_exl2(*f.model, *f.tokenizer, f.base / "a", f.options);
  const std::string saved = file_bytes(f.options.measurement);
  auto refused = [&](const model::Model& m, const QuantizeOptions& o, const std::string& what) {
    try {
      quantize_exl2(m, *f.tokenizer, f.base / "b", o);
      ADD_FAILURE() << "a measurement of another " << what << " was used";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("was measured with another " + what), std::string::npos) << msg;
      EXPECT_NE(msg.find(f.options.measurement.string()), std::string::npos) << msg;
    }
    EXPECT_EQ(file_bytes(f.options.measurement), saved) << "a refused file was changed";
  };
  QuantizeOptions o = f.options;
  o.calib_length = 32;  // other windows
  refused(*f.model, o, "calibration");
  o = f.options;
  o.damp = 0.05;
  refused(*f.model, o, "setting");
  auto mistral = model::Model::load(other);
  refused(*mistral, f.options, "model");
  // Not a measurement at all.
  std::ofstream(f.options.measurement) << "{\"hello\": 1}";
  EXPECT_THROW(quantize_exl2(*f.model, *f.tokenizer, f.base / "c", f.options), Error);
  fs::remove_all(f.base);
}

TEST(QuantizeMeasure, InterruptionKeepsFinishedSublayers) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  LATHE_REQUIRE_SHARED(calib, "data/text/calib.txt");
  Fixture f = make(dir, calib, "lathe_quantize_measure_interrupt");
  const int64_t L = f.model->config().num_layers;
  ASSERT_GE(L, 2);
  f.options.progress = [](const std::string& stage, int64_t done, int64_t) {
    if (stage == "measure" && done == 3) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(quantize_exl2(*f.model, *f.tokenizer, f.base / "a", f.options), std::runtime_error);
  EXPECT_EQ(lathe::testing::read_json(f.options.measurement)["sublayers"].size(), 3u);
  EXPECT_FALSE(fs::exists(f.options.measurement.string() + ".tmp"));
  // The rerun measures only what is missing, and writes what an uninterrupted run writes.
  f.options.progress = nullptr;
  const auto r = quantize_exl2(*f.model, *f.tokenizer, f.base / "a", f.options);
  EXPECT_EQ(r.measured, 2 * L - 3);
  QuantizeOptions fresh = f.options;
  fresh.measurement = f.base / "fresh.json";
  quantize_exl2(*f.model, *f.tokenizer, f.base / "b", fresh);
  EXPECT_EQ(file_bytes(f.base / "a" / "output.safetensors"), file_bytes(f.base / "b" / "output.safetensors"));
  fs::remove_all(f.base);
}

// Synthetic measurements (random bits and errors per candidate) for the fixture's sublayers: the
// optimizer's choice is within the budget and as good as the best of every combination.
TEST(QuantizeMeasure, OptimizerMeetsTheBudgetWithTheLeastError) {
  LATHE_REQUIRE_SHARED(dir, "fixtures/models/llama");
  auto model = model::Model::load(dir);
  const int64_t L = model->config().num_layers;
  double weights = 0;
  for (const auto& Ly : model->loader().weights().layers)
    for (model::Sublayer part : {model::Sublayer::kAttention, model::Sublayer::kFeedForward})
      for (const qz::Proj& p : qz::projections(part)) weights += double((Ly.*p.member).w.rows * (Ly.*p.member).w.cols);
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0, 1);
  const int kOptions = 5;
  nlohmann::json meas;
  std::vector<std::vector<std::pair<double, double>>> slots;  // (bits, err)
  for (int64_t l = 0; l < L; ++l)
    for (model::Sublayer part : {model::Sublayer::kAttention, model::Sublayer::kFeedForward}) {
      nlohmann::json cands = nlohmann::json::array();
      slots.emplace_back();
      for (int j = 0; j < kOptions; ++j) {
        const double bpw = 2.2 + 6 * u(rng), bits = bpw * weights / double(2 * L), err = std::exp(-bpw) * u(rng);
        cands.push_back({{"layouts", {{bpw, 128}}}, {"bits", bits}, {"sse", err}, {"ref", 1.0}, {"delta", 1.0},
                         {"rfn", std::sqrt(err)}});
        slots.back().push_back({bits, err});
      }
      meas["sublayers"][qz::sublayer_name(l, part)] = {{"candidates", cands}, {"probe", {{"candidate", 0}, {"kl", 1.0}}}};
    }
  for (double bpw : {3.0, 4.0, 5.0, 6.5}) {
    // Brute force over every combination.
    double best = INFINITY;
    const size_t S = slots.size();
    size_t combos = 1;
    for (size_t s = 0; s < S; ++s) combos *= kOptions;
    for (size_t c = 0; c < combos; ++c) {
      double bits = 0, err = 0;
      for (size_t s = 0, k = c; s < S; ++s, k /= kOptions) bits += slots[s][k % kOptions].first, err += slots[s][k % kOptions].second;
      if (bits <= bpw * weights) best = std::min(best, err);
    }
    if (!(best < INFINITY)) {
      EXPECT_THROW(qz::optimize(meas, *model, bpw, qz::Objective::kStream), Error) << bpw;
      continue;
    }
    const auto choice = qz::optimize(meas, *model, bpw, qz::Objective::kStream);
    ASSERT_EQ(choice.size(), S);
    double bits = 0, err = 0;
    for (const auto& c : choice) bits += c.bits, err += c.err;
    EXPECT_LE(bits, bpw * weights) << bpw;
    // Bits are rounded up to 1/100000 of the budget, so the optimum may differ by a hair.
    EXPECT_LE(err, best * (1 + 1e-9) + 1e-12) << bpw;
  }
  EXPECT_THROW(qz::optimize(meas, *model, 1.0, qz::Objective::kStream), Error) << "below every candidate";
}

}  // namespace
}  // namespace lathe::engine
