#include "model/config.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "model/arch.h"

namespace lathe::model {
namespace {

using nlohmann::json;

json base_config(const std::string& arch = "LlamaForCausalLM") {
  return json{{"architectures", {arch}}, {"vocab_size", 100},         {"hidden_size", 64},
              {"num_hidden_layers", 4},  {"num_attention_heads", 4},  {"num_key_value_heads", 2},
              {"intermediate_size", 128}, {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-5}};
}

TEST(Config, OldAndNewRopeStylesAgree) {
  json old_style = base_config();
  old_style["rope_theta"] = 500000.0;
  old_style["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                               {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  json new_style = base_config();
  new_style["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                                  {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                  {"original_max_position_embeddings", 64}};
  const auto a = parse_model_config(old_style, json());
  const auto b = parse_model_config(new_style, json());
  for (const auto* c : {&a, &b}) {
    EXPECT_EQ(c->rope.type, RopeType::kLlama3);
    EXPECT_EQ(c->rope.theta, 500000.0);
    EXPECT_EQ(c->rope.factor, 8.0);
    EXPECT_EQ(c->rope.original_max_position_embeddings, 64);
  }
  // rope_scaling with "rope_type" instead of "type", and a null rope_scaling.
  json c = base_config();
  c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(parse_model_config(c, json()).rope.type, RopeType::kLinear);
  c["rope_scaling"] = nullptr;
  EXPECT_EQ(parse_model_config(c, json()).rope.type, RopeType::kDefault);
  EXPECT_EQ(parse_model_config(c, json()).rope.theta, 10000.0);
}

TEST(Config, DerivedValues) {
  json c = base_config();
  c["head_dim"] = nullptr;  // null means "derive it"
  const auto m = parse_model_config(c, json());
  EXPECT_EQ(m.head_dim, 16);
  EXPECT_FLOAT_EQ(m.attention_scale, 0.25f);
  EXPECT_EQ(m.activation, ops::Activation::kSilu);
}

TEST(Config, GenerationConfigEosListAndDefaults) {
  json g = {{"eos_token_id", {7, 9}}, {"do_sample", true}, {"temperature", 0.6}, {"top_p", 0.9}};
  json c = base_config();
  c["eos_token_id"] = 3;
  const auto m = parse_model_config(c, g);
  EXPECT_EQ(m.eos_token_ids, (std::vector<int32_t>{7, 9}));
  EXPECT_TRUE(*m.generation.do_sample);
  EXPECT_DOUBLE_EQ(*m.generation.temperature, 0.6);
  EXPECT_FALSE(m.generation.top_k.has_value());
  EXPECT_EQ(parse_model_config(c, json()).eos_token_ids, (std::vector<int32_t>{3}));
}

TEST(Config, SlidingWindowRules) {
  json c = base_config("MistralForCausalLM");
  c["sliding_window"] = 32;
  EXPECT_EQ(parse_model_config(c, json()).layer_window, (std::vector<int64_t>{32, 32, 32, 32}));
  c["sliding_window"] = nullptr;
  EXPECT_EQ(parse_model_config(c, json()).layer_window, (std::vector<int64_t>{0, 0, 0, 0}));
  json g = base_config("Gemma2ForCausalLM");
  g["sliding_window"] = 8;
  EXPECT_EQ(parse_model_config(g, json()).layer_window, (std::vector<int64_t>{8, 0, 8, 0}));
  g["layer_types"] = {"full_attention", "sliding_attention", "full_attention", "sliding_attention"};
  EXPECT_EQ(parse_model_config(g, json()).layer_window, (std::vector<int64_t>{0, 8, 0, 8}));
  json q = base_config("Qwen2ForCausalLM");
  q["sliding_window"] = 16;
  q["use_sliding_window"] = false;
  EXPECT_EQ(parse_model_config(q, json()).layer_window, (std::vector<int64_t>{0, 0, 0, 0}));
  q["use_sliding_window"] = true;
  q["max_window_layers"] = 2;
  EXPECT_EQ(parse_model_config(q, json()).layer_window, (std::vector<int64_t>{0, 0, 16, 16}));
}

TEST(Config, MissingKeyNamesIt) {
  json c = base_config();
  c.erase("hidden_size");
  try {
    parse_model_config(c, json());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'hidden_size'"), std::string::npos) << e.what();
  }
}

TEST(Config, UnsupportedArchitectureListsSupported) {
  try {
    parse_model_config(base_config("GPT2LMHeadModel"), json());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    const std::string m = e.what();
    EXPECT_NE(m.find("GPT2LMHeadModel"), std::string::npos);
    for (auto a : {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                   "Gemma2ForCausalLM", "Phi3ForCausalLM", "MixtralForCausalLM"})
      EXPECT_NE(m.find(a), std::string::npos) << a;
  }
}

TEST(Config, BadValuesAreFormatErrors) {
  json c = base_config();
  c["num_key_value_heads"] = 3;  // 4 heads are not a multiple of 3
  EXPECT_THROW(parse_model_config(c, json()), Error);
  c = base_config();
  c["hidden_size"] = "big";
  EXPECT_THROW(parse_model_config(c, json()), Error);
  c = base_config();
  c["rope_scaling"] = {{"type", "mrope"}};
  EXPECT_THROW(parse_model_config(c, json()), Error);
}

}  // namespace
}  // namespace lathe::model
