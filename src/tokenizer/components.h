// Internal pipeline stages of a tokenizer.json, each built from its JSON node. Strings flow
// without offset tracking: lathe needs ids and text, never character alignments.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lathe::tok::detail {

using json = nlohmann::json;

// Hash map keyed by std::string that accepts string_view lookups without allocating.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// A pre-tokenization split. at_start: it begins at offset 0 of the original input (what HF's
// Metaspace prepend_scheme "first" tests through offsets).
struct Piece {
  std::string text;
  bool at_start = false;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const json& j);  // null -> nullptr

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Rewrites `pieces` in place; empty pieces are dropped, as HF does.
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j);

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of one pre-tokenized word.
  virtual void tokenize(std::string_view word, std::vector<int32_t>& out) const = 0;
  std::optional<int32_t> token_to_id(std::string_view token) const {
    auto it = vocab_.find(token);
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }
  const std::string* id_to_token(int32_t id) const {
    return id >= 0 && size_t(id) < id_to_token_.size() && has_id_[size_t(id)] ? &id_to_token_[size_t(id)]
                                                                               : nullptr;
  }
  int32_t id_bound() const { return int32_t(id_to_token_.size()); }

 protected:
  void set_vocab(Vocab vocab);
  int32_t require_id(std::string_view token, const char* what) const;
  Vocab vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
};
std::unique_ptr<Model> make_model(const json& j);

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Applied only when special tokens are requested (HF add_special_tokens=true).
  virtual void process(std::vector<int32_t>& ids) const = 0;
  // Ids this processor prepends (for bos_id's fallback).
  virtual std::vector<int32_t> prefix_ids() const { return {}; }
};
std::unique_ptr<PostProcessor> make_post_processor(const json& j);

class Decoder {
 public:
  virtual ~Decoder() = default;
  // HF decode_chain: tokens in, tokens out; the caller concatenates the result.
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  // The same chain without the lossy UTF-8 steps (byte-level chars and <0xAB> runs stay raw bytes,
  // even an incomplete sequence): what Tokenizer::token_bytes needs to know each token's bytes.
  virtual void decode_chain_raw(std::vector<std::string>& tokens) const { decode_chain(tokens); }
  // True if this decoder joins <0xXX> byte tokens across token boundaries (ByteFallback).
  virtual bool joins_byte_tokens() const { return false; }
};
std::unique_ptr<Decoder> make_decoder(const json& j);

// Helpers shared by the stage files.
const json& require(const json& j, const char* key, const char* where);
// j["vocab"] as {token: id}, each id an integer in [0, 2^31 - 1); errors name the token.
Vocab parse_object_vocab(const json& j, const char* where);
std::string type_of(const json& j, const char* where);
// A {"String": s} or {"Regex": r} pattern object.
struct PatternSpec {
  std::string text;
  bool is_regex = false;
};
PatternSpec parse_pattern(const json& j, const char* where);
// Parses "<0xAB>" into its byte, or -1.
int parse_byte_token(std::string_view token);

}  // namespace lathe::tok::detail
