// Tokenizer: loading tokenizer.json (+ tokenizer_config.json) and the encode/decode pipelines.
#include "tokenizer.h"

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/json_file.h"
#include "tokenizer_impl.h"
#include "unicode.h"

namespace lathe::tok {

using detail::json;

namespace detail {

const std::string* TokenizerImpl::token_of(int32_t id) const {
  if (auto it = added_by_id.find(id); it != added_by_id.end()) return &added[it->second].content;
  return model->id_to_token(id);
}

bool TokenizerImpl::is_special(int32_t id) const {
  auto it = added_by_id.find(id);
  return it != added_by_id.end() && added[it->second].special;
}

namespace {

json parse_json(const std::string& text, const char* what) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail(ErrorKind::kFormat, "{} is not valid JSON: {} (re-download the tokenizer files)", what, e.what());
  }
}

// tokenizer_config.json writes special tokens as a string or as {"content": ...}.
std::string config_token(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return "";
  const json& v = cfg.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return v.at("content").get<std::string>();
  return "";
}

// Builds one stage, naming it when its JSON has a value of the wrong type somewhere inside (the
// library's own message says which type was expected and which was found).
template <typename Fn>
auto stage(const char* name, Fn&& fn) {
  try {
    return fn();
  } catch (const json::exception& e) {
    fail(ErrorKind::kFormat, "tokenizer.json: \"{}\" has a value of the wrong type: {}", name, e.what());
  }
}

AddedToken parse_added_token(const json& a, size_t k) {
  auto field = [&](const char* key) -> const json* {
    return a.is_object() && a.contains(key) ? &a.at(key) : nullptr;
  };
  auto bad = [&](const char* key, const char* want) {
    fail(ErrorKind::kFormat, "tokenizer.json: added_tokens[{}] field \"{}\" must be {}, got {}", k, key, want,
         field(key) ? field(key)->dump() : std::string("nothing"));
  };
  if (!a.is_object()) fail(ErrorKind::kFormat, "tokenizer.json: added_tokens[{}] must be an object, got {}", k, a.dump());
  AddedToken tok;
  if (!field("content") || !field("content")->is_string()) bad("content", "a string");
  tok.content = field("content")->get<std::string>();
  // Ids stay below INT32_MAX so that vocab_size() = max id + 1 fits.
  const json* id = field("id");
  if (!id || !id->is_number_integer() || id->get<int64_t>() < 0 || id->get<int64_t>() >= INT32_MAX)
    bad("id", "an integer in [0, 2^31 - 1)");
  tok.id = id->get<int32_t>();
  auto flag = [&](const char* key, bool dflt) {
    const json* f = field(key);
    if (!f || f->is_null()) return dflt;
    if (!f->is_boolean()) bad(key, "true or false");
    return f->get<bool>();
  };
  tok.single_word = flag("single_word", false);
  tok.lstrip = flag("lstrip", false);
  tok.rstrip = flag("rstrip", false);
  tok.special = flag("special", false);
  tok.normalized = flag("normalized", !tok.special);
  return tok;
}

void build(TokenizerImpl& t, const json& j, const json& cfg) {
  if (!j.is_object()) fail(ErrorKind::kFormat, "tokenizer.json must hold a JSON object");
  t.model = stage("model", [&] { return make_model(require(j, "model", "tokenizer.json")); });
  t.normalizer = stage("normalizer", [&] { return make_normalizer(j.value("normalizer", json())); });
  t.pre_tokenizer = stage("pre_tokenizer", [&] { return make_pre_tokenizer(j.value("pre_tokenizer", json())); });
  t.post_processor = stage("post_processor", [&] { return make_post_processor(j.value("post_processor", json())); });
  t.decoder = stage("decoder", [&] { return make_decoder(j.value("decoder", json())); });

  int32_t max_id = t.model->id_bound() - 1;
  if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
    const json& list = j.at("added_tokens");
    if (!list.is_array())
      fail(ErrorKind::kFormat, "tokenizer.json: added_tokens must be an array of token objects, got {}",
           list.dump().substr(0, 200));
    for (size_t k = 0; k < list.size(); ++k) t.added.push_back(parse_added_token(list[k], k));
  }
  for (size_t k = 0; k < t.added.size(); ++k) {
    const AddedToken& tok = t.added[k];
    t.added_by_id[tok.id] = k;
    t.added_by_content[tok.content] = tok.id;
    max_id = std::max(max_id, tok.id);
    if (tok.normalized) {
      std::string pattern = tok.content;
      if (t.normalizer) t.normalizer->normalize(pattern);
      t.normalized_matcher.add(std::move(pattern), &tok);
    } else {
      t.raw_matcher.add(tok.content, &tok);
    }
  }
  t.vocab_size = max_id + 1;

  auto lookup = [&](const std::string& s) -> std::optional<int32_t> {
    if (s.empty()) return std::nullopt;
    if (auto it = t.added_by_content.find(s); it != t.added_by_content.end()) return it->second;
    return t.model->token_to_id(s);
  };
  t.bos_token = config_token(cfg, "bos_token");
  t.eos_token = config_token(cfg, "eos_token");
  t.bos_id = lookup(t.bos_token);
  t.eos_id = lookup(t.eos_token);
  if (t.bos_token.empty() && t.post_processor) {
    // No config: the first special token the post-processor prepends is the BOS.
    auto pre = t.post_processor->prefix_ids();
    if (!pre.empty()) {
      t.bos_id = pre.front();
      if (const auto* s = t.token_of(pre.front())) t.bos_token = *s;
    }
  }
  if (cfg.is_object()) {
    t.add_bos = cfg.value("add_bos_token", false);
    t.add_eos = cfg.value("add_eos_token", false);
  }
}

}  // namespace
}  // namespace detail

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json, const std::string& config_json) {
  auto impl = std::make_shared<detail::TokenizerImpl>();
  json j = detail::parse_json(tokenizer_json, "tokenizer.json");
  json cfg = config_json.empty() ? json() : detail::parse_json(config_json, "tokenizer_config.json");
  try {
    detail::build(*impl, j, cfg);
  } catch (const json::exception& e) {
    fail(ErrorKind::kFormat, "tokenizer.json has an unexpected structure: {}", e.what());
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const std::filesystem::path& dir) {
  auto tj = dir / "tokenizer.json";
  if (!std::filesystem::exists(tj))
    fail(ErrorKind::kNotFound, "no tokenizer.json in {}: point at a Hugging Face model folder that "
         "holds one (older sentencepiece-only models need converting with transformers first)",
         dir.string());
  auto cj = dir / "tokenizer_config.json";
  std::string cfg = std::filesystem::exists(cj) ? io::read_text_file(cj) : std::string();
  try {
    return from_json(io::read_text_file(tj), cfg);
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("{} ({})", e.what(), dir.string()));
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special, bool parse_special) const {
  const auto& t = *impl_;
  std::string lossy;
  if (!detail::is_valid_utf8(input)) {
    lossy = detail::utf8_lossy(input);
    input = lossy;
  }
  std::vector<int32_t> ids;
  std::vector<detail::Piece> pieces;
  auto model_pieces = [&](std::string text, bool at_start) {
    pieces.clear();
    pieces.push_back({std::move(text), at_start});
    if (t.pre_tokenizer) t.pre_tokenizer->pre_tokenize(pieces);
    for (const auto& p : pieces) t.model->tokenize(p.text, ids);
  };
  for (const auto& seg : t.raw_matcher.split(input, !parse_special)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    std::string text(input.substr(seg.b, seg.e - seg.b));
    bool at_start = seg.b == 0;
    if (t.normalizer) t.normalizer->normalize(text);
    if (t.normalized_matcher.empty()) {
      if (!text.empty()) model_pieces(std::move(text), at_start);
      continue;
    }
    for (const auto& sub : t.normalized_matcher.split(text, !parse_special)) {
      if (sub.id >= 0) ids.push_back(sub.id);
      else model_pieces(text.substr(sub.b, sub.e - sub.b), at_start && sub.b == 0);
    }
  }
  if (add_special && t.post_processor) t.post_processor->process(ids);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const auto& t = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* s = t.token_of(id);
    if (!s) continue;  // HF skips ids it does not know
    if (skip_special && t.is_special(id)) continue;
    tokens.push_back(*s);
  }
  if (!t.decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) {
      if (k) out += ' ';
      out += tokens[k];
    }
    return out;
  }
  t.decoder->decode_chain(tokens);
  std::string out;
  for (const auto& s : tokens) out += s;
  return out;
}

std::optional<std::string> Tokenizer::token_bytes(int32_t id) const {
  const auto& t = *impl_;
  const std::string* s = t.token_of(id);
  if (!s) return std::nullopt;
  // The chain run on [token, token] minus the chain on [token]: what the second copy adds is the
  // token in mid-sequence position, free of first-token effects (Metaspace / Strip drop a leading
  // space, WordPiece's "##" only counts after a first word).
  auto chain = [&](size_t copies) {
    std::vector<std::string> tokens(copies, *s);
    std::string out;
    if (!t.decoder) {
      for (size_t k = 0; k < copies; ++k) out += (k ? " " : "") + *s;
      return out;
    }
    t.decoder->decode_chain_raw(tokens);
    for (const auto& piece : tokens) out += piece;
    return out;
  };
  const std::string one = chain(1), two = chain(2);
  if (two.size() > one.size() && two.compare(0, one.size(), one) == 0) return two.substr(one.size());
  return one;  // the second copy vanished (CTC collapses repeats) or the output is not prefix-stable
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) return it->second;
  return impl_->model->token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  const std::string* s = impl_->token_of(id);
  if (!s) fail(ErrorKind::kInvalidArgument, "token id {} is not in the vocabulary (size {})", id, vocab_size());
  return *s;
}

bool Tokenizer::is_special(int32_t id) const { return impl_->is_special(id); }
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos_id; }
std::string Tokenizer::bos_token() const { return impl_->bos_id ? impl_->bos_token : std::string(); }
std::string Tokenizer::eos_token() const { return impl_->eos_id ? impl_->eos_token : std::string(); }
bool Tokenizer::add_bos_token() const { return impl_->add_bos; }
bool Tokenizer::add_eos_token() const { return impl_->add_eos; }

}  // namespace lathe::tok
