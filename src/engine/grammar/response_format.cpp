#include "engine/grammar/response_format.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace lathe::engine {

std::shared_ptr<const ResponseFormat> make_response_format(const nlohmann::ordered_json& rf,
                                                           const tok::Tokenizer& tokenizer,
                                                           const GrammarOptions& options) {
  if (!rf.is_object() || !rf.contains("type") || !rf["type"].is_string())
    fail(ErrorKind::kInvalidArgument, "response_format must be an object with a string 'type'");
  const std::string type = rf["type"].get<std::string>();
  std::shared_ptr<const JsonGrammar> grammar;
  if (type == "text") return nullptr;
  if (type == "json_object") {
    grammar = JsonGrammar::any_object(options);
  } else if (type == "json_schema") {
    if (!rf.contains("json_schema") || !rf["json_schema"].is_object())
      fail(ErrorKind::kInvalidArgument, "response_format json_schema needs a 'json_schema' object");
    const auto& js = rf["json_schema"];
    if (!js.contains("schema"))
      fail(ErrorKind::kInvalidArgument, "response_format json_schema needs 'json_schema.schema'");
    grammar = JsonGrammar::from_schema(js["schema"], options);
  } else {
    fail(ErrorKind::kInvalidArgument, "response_format type '{}' is not supported (text, json_object, json_schema)", type);
  }
  return std::make_shared<const ResponseFormat>(ResponseFormat{std::move(grammar), TokenVocab::of(tokenizer)});
}

std::shared_ptr<const ResponseFormat> make_response_format(const nlohmann::json& rf, const tok::Tokenizer& tokenizer,
                                                           const GrammarOptions& options) {
  return make_response_format(nlohmann::ordered_json::parse(rf.dump()), tokenizer, options);
}

TokenConstraint::TokenConstraint(std::shared_ptr<const ResponseFormat> format)
    : format_(std::move(format)), matcher_(format_->grammar) {}

int32_t TokenConstraint::sample(Sampler& sampler, std::span<const float> logits, std::span<const int32_t> history,
                                std::span<const int32_t> eos) {
  mask_.resize(logits.size());
  matcher_.allowed_tokens(*format_->vocab, mask_);
  bool any = std::find(mask_.begin(), mask_.end(), uint8_t(1)) != mask_.end();
  const bool complete = matcher_.accepting();
  for (int32_t e : eos)
    if (size_t(e) < mask_.size() && (complete || !any)) mask_[size_t(e)] = 1;  // stuck: end rather than break the text
  any = std::find(mask_.begin(), mask_.end(), uint8_t(1)) != mask_.end();
  if (!any) {
    stuck_ = true;
    return argmax(logits);
  }
  masked_.assign(logits.begin(), logits.end());
  for (size_t i = 0; i < masked_.size(); ++i)
    if (!mask_[i]) masked_[i] = -std::numeric_limits<float>::infinity();
  int32_t t = sampler.sample(masked_, history);
  // A draw that lands on a masked token (top-k wider than the allowed set, rounding at the tail)
  // takes the best allowed one instead.
  if (!mask_[size_t(t)]) t = argmax(masked_);
  if (std::find(eos.begin(), eos.end(), t) == eos.end() && !matcher_.feed(format_->vocab->bytes(t))) stuck_ = true;
  return t;
}

bool TokenConstraint::accept(int32_t token) {
  const std::string_view b = format_->vocab->bytes(token);
  return !b.empty() && matcher_.feed(b);
}

}  // namespace lathe::engine
