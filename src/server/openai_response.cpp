#include "server/openai_response.h"

#include <chrono>
#include <random>

#include <fmt/format.h>

namespace lathe::server {

namespace {
std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), uint32_t(rng()));
}
nlohmann::json bytes_of(const std::string& s) {
  nlohmann::json b = nlohmann::json::array();
  for (unsigned char ch : s) b.push_back(int(ch));
  return b;
}
}  // namespace

const char* finish_reason_name(engine::FinishReason r) {
  switch (r) {
    case engine::FinishReason::kEos:
    case engine::FinishReason::kStop: return "stop";
    default: return "length";
  }
}

ResponseBuilder::ResponseBuilder(const GenerationJob& job, const ServedModel& model)
    : job_(job),
      model_(model),
      id_(random_id(job.endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-")),
      created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()),
      choices_(job.prompts.size() * size_t(job.n)),
      prompt_lp_(job.prompts.size()) {
  if (job_.endpoint == Endpoint::kCompletion && job_.logprobs)
    for (Choice& c : choices_) c.tokens_lp = empty_completion_lp();
}

nlohmann::json ResponseBuilder::empty_completion_lp() const {
  return {{"tokens", nlohmann::json::array()}, {"token_logprobs", nlohmann::json::array()},
          {"top_logprobs", nlohmann::json::array()}, {"text_offset", nlohmann::json::array()}};
}

std::string ResponseBuilder::token_text(int32_t token) const {
  const int32_t one[1] = {token};
  return model_.tokenizer->decode(one, /*skip_special=*/false);
}

nlohmann::json ResponseBuilder::chat_entry(int32_t token, float logprob,
                                           const std::vector<std::pair<int32_t, float>>& top) const {
  const std::string t = token_text(token);
  nlohmann::json alts = nlohmann::json::array();
  for (const auto& [id, lp] : top) {
    const std::string s = token_text(id);
    alts.push_back({{"token", s}, {"logprob", lp}, {"bytes", bytes_of(s)}});
  }
  return {{"token", t}, {"logprob", logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", std::move(alts)}};
}

void ResponseBuilder::add_completion_token(Choice& c, int32_t token, std::optional<float> logprob,
                                           const std::vector<std::pair<int32_t, float>>* top) const {
  const std::string t = token_text(token);
  nlohmann::json& lp = c.tokens_lp;
  lp["tokens"].push_back(t);
  lp["token_logprobs"].push_back(logprob ? nlohmann::json(*logprob) : nlohmann::json());
  if (top) {
    nlohmann::json alts = nlohmann::json::object();
    for (const auto& [id, v] : *top) alts[token_text(id)] = v;
    lp["top_logprobs"].push_back(std::move(alts));
  } else {
    lp["top_logprobs"].push_back(nullptr);
  }
  lp["text_offset"].push_back(c.offset);
  c.offset += int64_t(t.size());
}

void ResponseBuilder::echo_prompt(Choice& c, size_t p, std::string* text_out) {
  const GenerationJob::Prompt& in = job_.prompts[p];
  *text_out += in.text;
  c.text += in.text;
  if (!job_.logprobs) {
    c.offset += int64_t(in.text.size());
    return;
  }
  const auto& prompt = in.ids;
  const auto& lp = prompt_lp_[p];
  add_completion_token(c, prompt[0], std::nullopt, nullptr);  // the first token has no context
  for (size_t j = 1; j < prompt.size(); ++j) {
    const engine::TokenLogprob* t = j - 1 < lp.size() ? &lp[j - 1] : nullptr;
    add_completion_token(c, prompt[j], t ? std::optional<float>(t->logprob) : std::nullopt, t ? &t->top : nullptr);
  }
}

nlohmann::json ResponseBuilder::chunk(nlohmann::json choices) const {
  nlohmann::json j = {{"id", id_},
                      {"object", job_.endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion"},
                      {"created", created_},
                      {"model", model_.name},
                      {"choices", std::move(choices)}};
  if (job_.include_usage) j["usage"] = nullptr;  // every chunk but the last, as OpenAI sends them
  return j;
}

std::vector<nlohmann::json> ResponseBuilder::opening_chunks() const {
  std::vector<nlohmann::json> out;
  if (job_.endpoint != Endpoint::kChat) return out;
  for (size_t i = 0; i < choices_.size(); ++i)
    out.push_back(chunk(nlohmann::json::array({{{"index", i},
                                                {"delta", {{"role", "assistant"}, {"content", ""}}},
                                                {"logprobs", nullptr},
                                                {"finish_reason", nullptr}}})));
  return out;
}

std::vector<nlohmann::json> ResponseBuilder::apply(const SequenceUpdate& u) {
  Choice& c = choices_.at(size_t(u.index));
  const engine::BatchEvent& e = u.event;
  if (u.cached_tokens >= 0) c.cached = u.cached_tokens;
  const size_t prompt = size_t(u.index / job_.n);
  if (!e.prompt_logprobs.empty() && prompt_lp_[prompt].empty()) prompt_lp_[prompt] = e.prompt_logprobs;
  std::string text;
  const size_t lp_before = job_.endpoint == Endpoint::kChat ? c.chat_lp.size()
                           : job_.logprobs                  ? c.tokens_lp["tokens"].size()
                                                            : 0;
  if (!c.started) {
    c.started = true;
    if (job_.echo) echo_prompt(c, prompt, &text);
  }
  if (e.token >= 0) ++c.tokens;
  // An EOS that ended the sequence is counted but not shown (it has no text).
  const bool shown = e.token >= 0 && !(e.finished && e.reason == engine::FinishReason::kEos);
  if (shown && job_.logprobs) {
    if (job_.endpoint == Endpoint::kChat) c.chat_lp.push_back(chat_entry(e.token, e.logprob, e.top));
    else add_completion_token(c, e.token, e.logprob, &e.top);
  }
  text += e.text;
  c.text += e.text;
  if (e.finished) c.finish_reason = finish_reason_name(e.reason);

  const size_t lp_after = job_.endpoint == Endpoint::kChat ? c.chat_lp.size()
                          : job_.logprobs                  ? c.tokens_lp["tokens"].size()
                                                           : 0;
  if (text.empty() && lp_after == lp_before && !e.finished) return {};
  nlohmann::json logprobs;  // null unless asked
  if (job_.logprobs) {
    if (job_.endpoint == Endpoint::kChat) {
      logprobs = {{"content", nlohmann::json::array()}};
      for (size_t k = lp_before; k < lp_after; ++k) logprobs["content"].push_back(c.chat_lp[k]);
    } else {
      logprobs = empty_completion_lp();
      for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
        for (size_t k = lp_before; k < lp_after; ++k) logprobs[key].push_back(c.tokens_lp[key][k]);
    }
  }
  nlohmann::json choice = {{"index", u.index}, {"logprobs", std::move(logprobs)}, {"finish_reason", nullptr}};
  if (c.finish_reason) choice["finish_reason"] = *c.finish_reason;
  if (job_.endpoint == Endpoint::kChat) {
    choice["delta"] = text.empty() ? nlohmann::json::object() : nlohmann::json{{"content", text}};
  } else {
    choice["text"] = text;
  }
  return {chunk(nlohmann::json::array({std::move(choice)}))};
}

std::vector<nlohmann::json> ResponseBuilder::closing_chunks() const {
  if (!job_.include_usage) return {};
  nlohmann::json j = chunk(nlohmann::json::array());
  j["usage"] = usage();
  return {std::move(j)};
}

nlohmann::json ResponseBuilder::usage() const {
  int64_t completion = 0, cached = 0;
  for (size_t i = 0; i < choices_.size(); ++i) {
    completion += choices_[i].tokens;
    // A prompt counts once, as its first sequence computed it (the others follow on its blocks).
    if (int64_t(i) % job_.n == 0) cached += choices_[i].cached;
  }
  const int64_t prompt = job_.prompt_tokens();
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

bool ResponseBuilder::finished() const {
  for (const Choice& c : choices_)
    if (!c.finish_reason) return false;
  return true;
}

nlohmann::json ResponseBuilder::whole() const {
  nlohmann::json choices = nlohmann::json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = choices_[i];
    nlohmann::json choice = {{"index", i}, {"logprobs", nullptr}, {"finish_reason", c.finish_reason.value_or("length")}};
    if (job_.endpoint == Endpoint::kChat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      if (job_.logprobs) choice["logprobs"] = {{"content", c.chat_lp}};
    } else {
      choice["text"] = c.text;
      if (job_.logprobs) choice["logprobs"] = c.tokens_lp;
    }
    choices.push_back(std::move(choice));
  }
  return {{"id", id_},
          {"object", job_.endpoint == Endpoint::kChat ? "chat.completion" : "text_completion"},
          {"created", created_},
          {"model", model_.name},
          {"choices", std::move(choices)},
          {"usage", usage()}};
}

}  // namespace lathe::server
