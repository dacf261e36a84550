#include "model/config.h"

#include <cmath>

#include "core/error.h"
#include "io/json_file.h"
#include "model/arch.h"

namespace lathe::model {

using nlohmann::json;

const char* to_string(RopeType t) {
  switch (t) {
    case RopeType::kDefault: return "default";
    case RopeType::kLinear: return "linear";
    case RopeType::kDynamic: return "dynamic";
    case RopeType::kLlama3: return "llama3";
    case RopeType::kYarn: return "yarn";
    case RopeType::kLongRope: return "longrope";
  }
  return "?";
}

namespace {

// Present and not null.
bool has(const json& j, const char* key) { return j.is_object() && j.contains(key) && !j[key].is_null(); }

template <typename T>
T get_or(const json& j, const char* key, T fallback, const std::string& where) {
  if (!has(j, key)) return fallback;
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    fail(ErrorKind::kFormat, "{}: key '{}' has the wrong type ({})", where, key, j[key].dump());
  }
}

template <typename T>
T require(const json& j, const char* key, const std::string& where) {
  if (!has(j, key)) fail(ErrorKind::kFormat, "{}: missing required key '{}'", where, key);
  return get_or<T>(j, key, T{}, where);
}

std::optional<double> opt_double(const json& j, const char* key) {
  if (!has(j, key) || !j[key].is_number()) return std::nullopt;
  return j[key].get<double>();
}

std::vector<int32_t> token_ids(const json& v) {
  std::vector<int32_t> ids;
  if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
  if (v.is_array())
    for (auto& x : v)
      if (x.is_number_integer()) ids.push_back(x.get<int32_t>());
  return ids;
}

RopeType parse_rope_type(const std::string& name, const std::string& where) {
  if (name == "default" || name.empty()) return RopeType::kDefault;
  if (name == "linear") return RopeType::kLinear;
  if (name == "dynamic") return RopeType::kDynamic;
  if (name == "llama3") return RopeType::kLlama3;
  if (name == "yarn") return RopeType::kYarn;
  if (name == "longrope" || name == "su") return RopeType::kLongRope;  // "su" is Phi-3's early name
  fail(ErrorKind::kUnsupported, "{}: rope type '{}' is not supported (supported: default, linear, dynamic, llama3, yarn, longrope)",
       where, name);
}

RopeConfig parse_rope(const json& c, const std::string& where) {
  RopeConfig r;
  json p;  // the block holding type and scaling parameters, in either style
  if (has(c, "rope_parameters") && c["rope_parameters"].is_object()) {
    p = c["rope_parameters"];
    // transformers 5 may key the block by layer type; every layer of our architectures shares one.
    if (!p.contains("rope_type") && !p.contains("rope_theta") && p.contains("full_attention")) p = p["full_attention"];
  } else if (has(c, "rope_scaling") && c["rope_scaling"].is_object()) {
    p = c["rope_scaling"];
  } else {
    p = json::object();
  }
  r.theta = get_or<double>(p, "rope_theta", get_or<double>(c, "rope_theta", 10000.0, where), where);
  std::string type = get_or<std::string>(p, "rope_type", get_or<std::string>(p, "type", "default", where), where);
  r.type = parse_rope_type(type, where);
  r.factor = get_or<double>(p, "factor", 1.0, where);
  r.factor_given = has(p, "factor");
  r.partial_rotary_factor =
      get_or<double>(p, "partial_rotary_factor", get_or<double>(c, "partial_rotary_factor", 1.0, where), where);
  r.original_max_position_embeddings = get_or<int64_t>(
      p, "original_max_position_embeddings", get_or<int64_t>(c, "original_max_position_embeddings", 0, where), where);
  r.low_freq_factor = get_or<double>(p, "low_freq_factor", 1.0, where);
  r.high_freq_factor = get_or<double>(p, "high_freq_factor", 4.0, where);
  r.beta_fast = opt_double(p, "beta_fast");
  r.beta_slow = opt_double(p, "beta_slow");
  r.mscale = opt_double(p, "mscale");
  r.mscale_all_dim = opt_double(p, "mscale_all_dim");
  r.attention_factor = opt_double(p, "attention_factor");
  r.truncate = get_or<bool>(p, "truncate", true, where);
  r.short_factor = get_or<std::vector<double>>(p, "short_factor", {}, where);
  r.long_factor = get_or<std::vector<double>>(p, "long_factor", {}, where);
  if (r.type == RopeType::kLlama3 && r.original_max_position_embeddings <= 0)
    fail(ErrorKind::kFormat, "{}: llama3 rope needs original_max_position_embeddings", where);
  if (r.type == RopeType::kLongRope && (r.short_factor.empty() || r.long_factor.empty()))
    fail(ErrorKind::kFormat, "{}: longrope needs short_factor and long_factor lists", where);
  return r;
}

ops::Activation parse_activation(const std::string& name, const std::string& where) {
  if (name == "silu" || name == "swish") return ops::Activation::kSilu;
  if (name == "gelu_pytorch_tanh" || name == "gelu_new" || name == "gelu_fast") return ops::Activation::kGeluTanh;
  if (name == "gelu") return ops::Activation::kGelu;
  if (name == "relu") return ops::Activation::kRelu;
  fail(ErrorKind::kUnsupported, "{}: activation '{}' is not supported (silu, gelu, gelu_pytorch_tanh, relu)", where,
       name);
}

}  // namespace

ModelConfig parse_model_config(const json& c, const json& g, const std::string& where) {
  if (!c.is_object()) fail(ErrorKind::kFormat, "{}: expected a JSON object", where);
  ModelConfig m;
  if (!has(c, "architectures") || !c["architectures"].is_array() || c["architectures"].empty())
    fail(ErrorKind::kFormat, "{}: missing required key 'architectures'", where);
  m.architecture = c["architectures"][0].get<std::string>();
  const ArchSpec* arch = find_arch(m.architecture);
  if (!arch)
    fail(ErrorKind::kUnsupported, "architecture '{}' is not supported; supported: {}", m.architecture,
         supported_architectures());
  m.model_type = get_or<std::string>(c, "model_type", "", where);
  m.vocab_size = require<int64_t>(c, "vocab_size", where);
  m.hidden_size = require<int64_t>(c, "hidden_size", where);
  m.num_layers = require<int64_t>(c, "num_hidden_layers", where);
  m.num_heads = require<int64_t>(c, "num_attention_heads", where);
  m.num_kv_heads = get_or<int64_t>(c, "num_key_value_heads", m.num_heads, where);
  m.intermediate_size = require<int64_t>(c, "intermediate_size", where);
  m.head_dim = get_or<int64_t>(c, "head_dim", m.num_heads > 0 ? m.hidden_size / m.num_heads : 0, where);
  m.max_position_embeddings = get_or<int64_t>(c, "max_position_embeddings", 2048, where);
  m.rms_norm_eps = get_or<double>(c, "rms_norm_eps", 1e-6, where);
  m.tie_word_embeddings = get_or<bool>(c, "tie_word_embeddings", false, where);
  m.attention_bias = get_or<bool>(c, "attention_bias", false, where);
  m.mlp_bias = get_or<bool>(c, "mlp_bias", false, where);
  const std::string act = get_or<std::string>(
      c, "hidden_activation", get_or<std::string>(c, "hidden_act", std::string(arch->default_activation), where), where);
  m.activation = parse_activation(act, where);

  for (auto [v, name] : {std::pair{m.vocab_size, "vocab_size"}, {m.hidden_size, "hidden_size"},
                         {m.num_layers, "num_hidden_layers"}, {m.num_heads, "num_attention_heads"},
                         {m.num_kv_heads, "num_key_value_heads"}, {m.head_dim, "head_dim"},
                         {m.intermediate_size, "intermediate_size"}})
    if (v <= 0) fail(ErrorKind::kFormat, "{}: '{}' must be positive (got {})", where, name, v);
  if (m.num_heads % m.num_kv_heads != 0)
    fail(ErrorKind::kFormat, "{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", where,
         m.num_heads, m.num_kv_heads);

  m.rope = parse_rope(c, where);
  const int64_t rot = int64_t(double(m.head_dim) * m.rope.partial_rotary_factor);
  if (rot <= 0 || rot > m.head_dim || rot % 2)
    fail(ErrorKind::kFormat, "{}: partial_rotary_factor {} gives an invalid rotary dimension {}", where,
         m.rope.partial_rotary_factor, rot);

  // Sliding windows: layer_types when given, else the architecture's rule.
  const int64_t window = get_or<int64_t>(c, "sliding_window", 0, where);
  m.layer_window.assign(size_t(m.num_layers), 0);
  if (has(c, "layer_types") && c["layer_types"].is_array()) {
    const auto& types = c["layer_types"];
    if (int64_t(types.size()) != m.num_layers)
      fail(ErrorKind::kFormat, "{}: layer_types has {} entries for {} layers", where, types.size(), m.num_layers);
    for (int64_t i = 0; i < m.num_layers; ++i) {
      const std::string t = types[size_t(i)].get<std::string>();
      if (t == "sliding_attention") m.layer_window[size_t(i)] = window;
      else if (t != "full_attention")
        fail(ErrorKind::kUnsupported, "{}: layer type '{}' is not supported", where, t);
    }
  } else if (window > 0) {
    for (int64_t i = 0; i < m.num_layers; ++i) {
      bool slide = false;
      switch (arch->window_rule) {
        case WindowRule::kNone: break;
        case WindowRule::kAllLayers: slide = true; break;
        case WindowRule::kFromMaxWindowLayer:
          slide = get_or<bool>(c, "use_sliding_window", false, where) &&
                  i >= get_or<int64_t>(c, "max_window_layers", 0, where);
          break;
        case WindowRule::kEvenLayers: slide = i % 2 == 0; break;
      }
      if (slide) m.layer_window[size_t(i)] = window;
    }
  }
  if (arch->window_rule == WindowRule::kFromMaxWindowLayer && !get_or<bool>(c, "use_sliding_window", false, where))
    m.layer_window.assign(size_t(m.num_layers), 0);

  if (has(c, "quantization_config") && c["quantization_config"].is_object()) {
    const json& q = c["quantization_config"];
    const std::string w = where + ": quantization_config";
    m.quant.method = get_or<std::string>(q, "quant_method", "", w);
    if (m.quant.method == "exl2") {
      m.quant.bits = get_or<double>(q, "bits", 0.0, w);
      m.quant.head_bits = get_or<int64_t>(q, "head_bits", 0, w);
    } else if (m.quant.method == "gptq") {
      m.quant.bits = double(get_or<int64_t>(q, "bits", 4, w));
      m.quant.group_size = get_or<int64_t>(q, "group_size", 0, w);
      m.quant.gptq_v2 = get_or<std::string>(q, "checkpoint_format", "gptq", w) == "gptq_v2";
    } else {
      fail(ErrorKind::kUnsupported, "{}: quant_method '{}' is not supported (exl2 and gptq are)", w, m.quant.method);
    }
  }

  m.attn_logit_softcap = float(get_or<double>(c, "attn_logit_softcapping", 0.0, where));
  m.final_logit_softcap = float(get_or<double>(c, "final_logit_softcapping", 0.0, where));
  if (has(c, "query_pre_attn_scalar"))
    m.attention_scale = float(1.0 / std::sqrt(get_or<double>(c, "query_pre_attn_scalar", 1.0, where)));
  else
    m.attention_scale = float(1.0 / std::sqrt(double(m.head_dim)));

  if (arch->moe) {
    m.num_experts = get_or<int64_t>(c, "num_local_experts", get_or<int64_t>(c, "num_experts", 0, where), where);
    m.num_experts_per_tok = require<int64_t>(c, "num_experts_per_tok", where);
    if (m.num_experts <= 0 || m.num_experts_per_tok <= 0 || m.num_experts_per_tok > m.num_experts)
      fail(ErrorKind::kFormat, "{}: invalid expert counts ({} experts, {} per token)", where, m.num_experts,
           m.num_experts_per_tok);
  }

  if (has(c, "bos_token_id") && c["bos_token_id"].is_number_integer()) m.bos_token_id = c["bos_token_id"].get<int32_t>();
  m.eos_token_ids = token_ids(has(c, "eos_token_id") ? c["eos_token_id"] : json());
  if (g.is_object()) {
    if (has(g, "eos_token_id")) m.eos_token_ids = token_ids(g["eos_token_id"]);
    if (has(g, "bos_token_id") && g["bos_token_id"].is_number_integer()) m.bos_token_id = g["bos_token_id"].get<int32_t>();
    auto& d = m.generation;
    if (has(g, "do_sample")) d.do_sample = g["do_sample"].get<bool>();
    d.temperature = opt_double(g, "temperature");
    d.top_p = opt_double(g, "top_p");
    d.min_p = opt_double(g, "min_p");
    d.repetition_penalty = opt_double(g, "repetition_penalty");
    if (has(g, "top_k") && g["top_k"].is_number_integer()) d.top_k = g["top_k"].get<int64_t>();
    if (has(g, "max_new_tokens") && g["max_new_tokens"].is_number_integer())
      d.max_new_tokens = g["max_new_tokens"].get<int64_t>();
  }
  return m;
}

ModelConfig load_model_config(const std::filesystem::path& dir) {
  const auto cfg_path = dir / "config.json";
  if (!std::filesystem::is_directory(dir))
    fail(ErrorKind::kNotFound, "model folder not found: {} (pass a Hugging Face model folder with -m)", dir.string());
  if (!std::filesystem::exists(cfg_path))
    fail(ErrorKind::kNotFound, "{} has no config.json: is it a Hugging Face model folder?", dir.string());
  const json c = io::read_json_file(cfg_path);
  json g;
  if (std::filesystem::exists(dir / "generation_config.json")) g = io::read_json_file(dir / "generation_config.json");
  return parse_model_config(c, g, cfg_path.string());
}

}  // namespace lathe::model
