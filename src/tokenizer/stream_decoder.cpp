// StreamDecoder: text is emitted as the difference between decoding a window of ids and decoding
// its already-emitted prefix. Both decodes start at the same id, so decoder effects tied to the
// first token (Metaspace, Strip, WordPiece's "##") cancel out, and the concatenation of emitted
// pieces equals the full decode. Text is held back while it ends in U+FFFD (an incomplete UTF-8
// sequence may still complete) and, for decoders that fuse <0xAB> byte runs, while the last id is
// a byte token (a later byte can turn the whole run into U+FFFDs, as HF's ByteFallback does).
#include "tokenizer.h"
#include "tokenizer_impl.h"

namespace lathe::tok {

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && std::string_view(s).substr(s.size() - 3) == kReplacement;
}
// The part of `text` after `prefix`; if a decoder broke the prefix property (it should not),
// the part after their common prefix, so nothing already emitted repeats.
std::string after_prefix(const std::string& text, const std::string& prefix) {
  size_t n = 0;
  while (n < text.size() && n < prefix.size() && text[n] == prefix[n]) ++n;
  return text.substr(n);
}
}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tok_(tokenizer), skip_special_(skip_special) {
  const auto& impl = tok_.impl();
  byte_runs_ = impl.decoder && impl.decoder->joins_byte_tokens();
}

bool StreamDecoder::safe_boundary_after(int32_t id) const {
  if (!byte_runs_) return true;
  const std::string* s = tok_.impl().token_of(id);
  return !s || detail::parse_byte_token(*s) < 0;
}

std::string StreamDecoder::push(int32_t id) {
  const auto& impl = tok_.impl();
  // decode() drops unknown ids and (when skipping) special ones; dropping them here keeps the
  // window identical to what decode() sees.
  if (!impl.token_of(id)) return {};
  if (skip_special_ && impl.is_special(id)) return {};
  ids_.push_back(id);
  if (!safe_boundary_after(id)) return {};
  std::string text = tok_.decode(ids_, false);
  if (ends_with_replacement(text)) return {};
  std::string out = after_prefix(text, prefix_text_);
  // Slide the window: keep the ids emitted before this step as context for the next one.
  ids_.erase(ids_.begin(), ids_.begin() + long(read_));
  read_ = ids_.size();
  prefix_text_ = tok_.decode(ids_, false);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = ids_.empty() ? std::string() : after_prefix(tok_.decode(ids_, false), prefix_text_);
  ids_.clear();
  read_ = 0;
  prefix_text_.clear();
  return out;
}

}  // namespace lathe::tok
