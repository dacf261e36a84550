#include "engine/grammar/response_format.h"

#include <algorithm>
#include <cmath>
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
  int32_t t = draw(sampler, history);
  // A draw that lands on a masked token (top-k wider than the allowed set, rounding at the tail)
  // takes the best allowed one instead.
  if (!mask_[size_t(t)]) t = argmax(masked_);
  if (std::find(eos.begin(), eos.end(), t) == eos.end() && !matcher_.feed(format_->vocab->bytes(t))) stuck_ = true;
  return t;
}

// sampler.sample(masked_, history) without sorting the whole row (its cost at 128k tokens is ~15 ms):
// the k best penalized candidates and the softmax denominator go to Sampler::choose, which picks
// exactly what sample() would, or asks for the full row when its draw reaches past them.
int32_t TokenConstraint::draw(Sampler& sampler, std::span<const int32_t> history) {
  const SamplerConfig& c = sampler.config();
  if (c.temperature == 0.f) return sampler.sample(masked_, history);
  sampler.penalize(masked_, history);
  const int64_t vocab = int64_t(masked_.size());
  const size_t k = size_t(sampler.candidates_wanted(vocab));
  order_.resize(masked_.size());
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = int32_t(i);
  auto better = [&](int32_t a, int32_t b) {
    return masked_[size_t(a)] > masked_[size_t(b)] || (masked_[size_t(a)] == masked_[size_t(b)] && a < b);
  };
  std::partial_sort(order_.begin(), order_.begin() + ptrdiff_t(k), order_.end(), better);
  order_.resize(k);
  values_.resize(k);
  for (size_t i = 0; i < k; ++i) values_[i] = masked_[size_t(order_[i])];
  const double mx = values_[0], inv_t = 1.0 / double(c.temperature);
  double sum = 0;
  for (size_t i = 0; i < masked_.size(); ++i)  // masked tokens add exp(-inf) = 0
    if (mask_[i]) sum += std::exp((double(masked_[i]) - mx) * inv_t);
  const int32_t t = sampler.choose(order_, values_, sum, vocab);
  return t >= 0 ? t : sampler.choose_full(masked_);
}

bool TokenConstraint::accept(int32_t token) {
  const std::string_view b = format_->vocab->bytes(token);
  return !b.empty() && matcher_.feed(b);
}

}  // namespace lathe::engine
