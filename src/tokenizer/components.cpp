// JSON helpers shared by the pipeline stage files, and the Model vocab bookkeeping.
#include "components.h"

#include "core/error.h"

namespace lathe::tok::detail {

const json& require(const json& j, const char* key, const char* where) {
  if (!j.is_object() || !j.contains(key))
    fail(ErrorKind::kFormat, "tokenizer.json: {} lacks the \"{}\" field", where, key);
  return j.at(key);
}

std::string type_of(const json& j, const char* where) {
  if (!j.is_object() || !j.contains("type") || !j.at("type").is_string())
    fail(ErrorKind::kFormat, "tokenizer.json: {} has no \"type\" string", where);
  return j.at("type").get<std::string>();
}

PatternSpec parse_pattern(const json& j, const char* where) {
  if (j.is_string()) return {j.get<std::string>(), false};
  if (j.is_object() && j.contains("String")) return {j.at("String").get<std::string>(), false};
  if (j.is_object() && j.contains("Regex")) return {j.at("Regex").get<std::string>(), true};
  fail(ErrorKind::kFormat, "tokenizer.json: {} pattern must be {{\"String\": ...}} or "
       "{{\"Regex\": ...}}, got {}", where, j.dump());
}

int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

Vocab parse_object_vocab(const json& j, const char* where) {
  const json& vocab = require(j, "vocab", where);
  if (!vocab.is_object()) fail(ErrorKind::kFormat, "tokenizer.json: {} vocab must be an object", where);
  Vocab v;
  v.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer())
      fail(ErrorKind::kFormat, "tokenizer.json: {} vocab token '{}' has id {}, not an integer", where, it.key(),
           it.value().dump());
    int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= INT32_MAX)
      fail(ErrorKind::kFormat, "tokenizer.json: {} vocab token '{}' has id {} outside [0, 2^31 - 1)", where,
           it.key(), id);
    v.emplace(it.key(), int32_t(id));
  }
  return v;
}

void Model::set_vocab(Vocab vocab) {
  vocab_ = std::move(vocab);
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) {
    if (id < 0) fail(ErrorKind::kFormat, "tokenizer.json: vocab token '{}' has negative id {}", tok, id);
    max_id = std::max(max_id, id);
  }
  // Ids index a dense table: a stray huge id would make it gigabytes. Real vocabs are dense.
  if (size_t(max_id) >= 2 * vocab_.size() + 1024) {
    for (const auto& [tok, id] : vocab_)
      if (id == max_id)
        fail(ErrorKind::kFormat, "tokenizer.json: vocab token '{}' has id {}, far beyond the vocab's {} tokens "
             "(ids must be dense)", tok, id, vocab_.size());
  }
  id_to_token_.assign(size_t(max_id + 1), std::string());
  has_id_.assign(size_t(max_id + 1), false);
  for (const auto& [tok, id] : vocab_) {
    id_to_token_[size_t(id)] = tok;
    has_id_[size_t(id)] = true;
  }
}

int32_t Model::require_id(std::string_view token, const char* what) const {
  auto id = token_to_id(token);
  if (!id)
    fail(ErrorKind::kFormat, "tokenizer.json: the model's {} '{}' is not in its vocab", what, token);
  return *id;
}

}  // namespace lathe::tok::detail
