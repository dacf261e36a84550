// Hugging Face tokenizer.json, byte-exact with the `tokenizers` library (0.2x): normalizer ->
// pre-tokenizer -> model (BPE, WordPiece, Unigram, WordLevel) -> post-processor on encode, and the
// decoder chain on decode. Added/special tokens are matched in the raw text first, as HF does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lathe::tok {

namespace detail {
struct TokenizerImpl;
}

class Tokenizer {
 public:
  // Loads DIR/tokenizer.json and, if present, DIR/tokenizer_config.json (bos/eos token names).
  static Tokenizer load(const std::filesystem::path& dir);
  // tokenizer_config_json may be empty.
  static Tokenizer from_json(const std::string& tokenizer_json,
                             const std::string& tokenizer_config_json = "");

  // add_special: apply the post-processor (e.g. prepend BOS), as HF encode(add_special_tokens).
  // parse_special: match special-token text in `text`; false treats it as plain text (for
  // untrusted input; non-special added tokens are still matched, as HF encode_special_tokens).
  // Invalid UTF-8 in `text` is replaced by U+FFFD first (HF only accepts valid strings).
  std::vector<int32_t> encode(std::string_view text, bool add_special = false,
                              bool parse_special = true) const;
  // Unknown ids are skipped, as HF does.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  int32_t vocab_size() const;  // max id + 1 over the model vocab and the added tokens
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // raw vocab string; throws for an unknown id
  bool is_special(int32_t id) const;
  // The exact bytes token `id` adds to decoded text after other tokens: a <0xAB> byte-fallback
  // token is its byte, a byte-level BPE token its bytes (possibly part of a UTF-8 sequence), a
  // SentencePiece "\u2581" a space (kept: only a sequence's first token loses it). Added and special
  // tokens give their content. nullopt for an unknown id. (Grammar-constrained sampling matches
  // these bytes against what may come next.)
  std::optional<std::string> token_bytes(int32_t id) const;
  // From tokenizer_config.json bos_token/eos_token; without it, bos falls back to the first
  // special token the post-processor prepends.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::string bos_token() const;  // "" if none
  std::string eos_token() const;
  // tokenizer_config.json add_bos_token / add_eos_token (HF transformers' flags; encode() itself
  // follows tokenizer.json's post-processor only, as the tokenizers library does).
  bool add_bos_token() const;
  bool add_eos_token() const;

  // Internal: the shared immutable state (copies of a Tokenizer share it).
  const detail::TokenizerImpl& impl() const { return *impl_; }

 private:
  explicit Tokenizer(std::shared_ptr<const detail::TokenizerImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const detail::TokenizerImpl> impl_;
};

// Incremental detokenizer: push ids one by one; each push returns only text that is final
// (valid UTF-8 that later ids cannot change). The concatenation of every push() result and
// flush() equals tokenizer.decode(all ids, skip_special).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true);
  std::string push(int32_t id);
  std::string flush();  // emits what is held back (possibly ending in U+FFFD) and resets

 private:
  bool safe_boundary_after(int32_t id) const;
  Tokenizer tok_;  // shares the immutable state, so the decoder may outlive the caller's copy
  bool skip_special_;
  bool byte_runs_;          // the decoder joins <0xXX> byte tokens across ids (ByteFallback)
  std::vector<int32_t> ids_;  // window: ids_[0..read_) were already emitted (as context)
  size_t read_ = 0;
  std::string prefix_text_;  // decode(ids_[0..read_))
};

}  // namespace lathe::tok
