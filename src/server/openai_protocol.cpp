#include "server/openai_protocol.h"

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "server/api_error.h"
#include "server/request_fields.h"

namespace lathe::server {

namespace {

constexpr size_t kMaxStops = 16;
constexpr int64_t kMaxN = 128;
constexpr int64_t kMaxTopLogprobs = 20;
constexpr size_t kMaxPrompts = 64;

// Sampling settings: the request's, else the model's generation_config, else OpenAI's defaults
// (temperature 1, no truncation), the way vLLM resolves them.
engine::SamplerConfig read_sampling(const RequestFields& f, const model::GenerationDefaults& d) {
  engine::SamplerConfig s;
  s.temperature = float(f.number("temperature", 0, 2).value_or(d.temperature.value_or(1.0)));
  s.top_p = float(f.number("top_p", 0, 1).value_or(d.top_p.value_or(1.0)));
  if (s.top_p <= 0) bad_field("top_p", "'top_p' must be greater than 0 (1 keeps every token)");
  // vLLM's top_k: -1 (and 0) mean off.
  const int64_t k = f.integer("top_k", -1, int64_t(1) << 31).value_or(d.top_k.value_or(0));
  s.top_k = k < 0 ? 0 : k;
  s.min_p = float(f.number("min_p", 0, 1).value_or(d.min_p.value_or(0.0)));
  s.presence_penalty = float(f.number("presence_penalty", -2, 2).value_or(0));
  s.frequency_penalty = float(f.number("frequency_penalty", -2, 2).value_or(0));
  s.repetition_penalty = float(f.number("repetition_penalty", 0, 100).value_or(d.repetition_penalty.value_or(1.0)));
  if (s.repetition_penalty <= 0) bad_field("repetition_penalty", "'repetition_penalty' must be greater than 0 (1 is off)");
  const auto seed = f.integer("seed", INT64_MIN, INT64_MAX);
  s.seed = seed ? uint64_t(*seed) : std::random_device{}() * 0x100000000ull + std::random_device{}();
  return s;
}

// Fields lathe does not implement: refused rather than silently ignored, so a client does not get
// output it did not ask for.
void refuse_unsupported(const RequestFields& f) {
  if (const auto* t = f.get("tools"); t && !(t->is_array() && t->empty()))
    throw ApiError(400, "'tools' (function calling) is not supported yet", "tools", "unsupported");
  if (const auto* s = f.get("suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
    throw ApiError(400, "'suffix' is not supported", "suffix", "unsupported");
  if (const auto bo = f.integer("best_of", 1, kMaxN); bo && *bo != f.integer("n", 1, kMaxN).value_or(1))
    throw ApiError(400, "'best_of' other than n is not supported", "best_of", "unsupported");
}

// OpenAI's logit_bias: {"token id": bias in [-100, 100], ...}, at most one entry per vocabulary token.
std::vector<std::pair<int32_t, float>> read_logit_bias(const RequestFields& f, int64_t vocab) {
  std::vector<std::pair<int32_t, float>> out;
  const nlohmann::json* b = f.get("logit_bias");
  if (!b || b->is_null()) return out;
  if (!b->is_object()) bad_field("logit_bias", "'logit_bias' must be an object of token ids (as strings) to numbers");
  if (int64_t(b->size()) > vocab) bad_field("logit_bias", "'logit_bias' has more entries than the vocabulary has tokens");
  for (auto it = b->begin(); it != b->end(); ++it) {
    const std::string& key = it.key();
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(key, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != key.size() || key.empty() || id < 0 || id >= vocab)
      bad_field("logit_bias", "'logit_bias' key \"{}\" is not a token id in [0, {})", key.substr(0, 40), vocab);
    if (!it.value().is_number() || !(it.value().get<double>() >= -100 && it.value().get<double>() <= 100))
      bad_field("logit_bias", "'logit_bias' value for token {} must be a number in [-100, 100]", id);
    out.emplace_back(int32_t(id), it.value().get<float>());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Fields both endpoints share; the prompt is set and checked by the caller.
void read_common(const RequestFields& f, const ServedModel& m, GenerationJob& job) {
  refuse_unsupported(f);
  job.request.sampler = read_sampling(f, m.generation);
  job.request.sampler.logit_bias = read_logit_bias(f, m.vocab_size);
  job.n = f.integer("n", 1, kMaxN).value_or(1);
  job.stream = f.boolean("stream").value_or(false);
  if (const nlohmann::json* so = f.get("stream_options")) {
    if (!job.stream) bad_field("stream_options", "'stream_options' is only allowed with \"stream\": true");
    const RequestFields opts(*so);
    job.include_usage = opts.boolean("include_usage").value_or(false);
  }
  job.request.stop = f.strings("stop", kMaxStops);
  for (const std::string& s : job.request.stop)
    if (s.empty()) bad_field("stop", "'stop' holds an empty string");
  job.request.ignore_eos = f.boolean("ignore_eos").value_or(false);  // vLLM's extension (benchmarks)
  job.request.eos_ids = m.eos_ids;
}

// Each prompt against the context, and the token limit: explicit, or whatever room the longest
// prompt leaves (at most default_max).
void set_limits(GenerationJob& job, std::optional<int64_t> max_tokens, const std::string& prompt_field,
                const std::string& max_field, const ServedModel& m, int64_t default_max) {
  // The smaller of the model's context and the whole KV cache (a request must fit in it alone).
  const int64_t limit = std::min(m.context, m.kv_positions);
  const std::string what = m.kv_positions < m.context
                               ? fmt::format("This server's KV cache holds {} tokens (the model's context is {})",
                                             limit, m.context)
                               : fmt::format("This model's maximum context length is {} tokens", limit);
  int64_t room = default_max;
  for (const GenerationJob::Prompt& p : job.prompts) {
    const int64_t len = int64_t(p.ids.size());
    if (len == 0) bad_field(prompt_field, "the prompt is empty");
    if (len >= limit)
      throw ApiError(400,
                     fmt::format("{}; the prompt has {} tokens, which leaves no room for the reply. Shorten the prompt.",
                                 what, len),
                     prompt_field, "context_length_exceeded");
    if (max_tokens && len + *max_tokens > limit)
      throw ApiError(400,
                     fmt::format("{}; the prompt has {} tokens and {} asks for {} more. Shorten the prompt or lower {}.",
                                 what, len, max_field, *max_tokens, max_field),
                     max_field, "context_length_exceeded");
    room = std::min(room, limit - len);
  }
  job.request.max_new_tokens = max_tokens ? *max_tokens : room;
}

// A prompt string (tokenized with the model's special tokens, BOS included) or token ids.
GenerationJob::Prompt text_prompt(const nlohmann::json& v, const ServedModel& m) {
  GenerationJob::Prompt p{{}, v.get<std::string>()};
  if (p.text.empty()) bad_field("prompt", "the prompt is empty");
  p.ids = m.tokenizer->encode(p.text, /*add_special=*/true, /*parse_special=*/true);
  return p;
}
GenerationJob::Prompt id_prompt(const nlohmann::json& v, const ServedModel& m) {
  GenerationJob::Prompt p;
  p.ids = RequestFields(nlohmann::json{{"prompt", v}}).token_ids("prompt", m.vocab_size);
  if (p.ids.empty()) bad_field("prompt", "the prompt is empty");
  p.text = m.tokenizer->decode(p.ids);
  return p;
}

// OpenAI's prompt forms: a string, token ids, or a batch of either (strings or id arrays).
std::vector<GenerationJob::Prompt> read_prompts(const nlohmann::json* prompt, const ServedModel& m) {
  if (!prompt) bad_field("prompt", "'prompt' is required");
  if (prompt->is_string()) return {text_prompt(*prompt, m)};
  const char* shape = "'prompt' must be a string, an array of token ids, or an array of either";
  if (!prompt->is_array() || prompt->empty()) bad_field("prompt", "{}", shape);
  if (prompt->front().is_number()) return {id_prompt(*prompt, m)};
  if (prompt->size() > kMaxPrompts)
    bad_field("prompt", "'prompt' holds {} prompts; send at most {} per request", prompt->size(), kMaxPrompts);
  std::vector<GenerationJob::Prompt> out;
  for (const auto& p : *prompt) {
    if (p.is_string()) out.push_back(text_prompt(p, m));
    else if (p.is_array()) out.push_back(id_prompt(p, m));
    else bad_field("prompt", "{}", shape);
  }
  return out;
}

std::string content_text(const nlohmann::json& content, const std::string& where) {
  if (content.is_null()) return {};
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad_field(where, "'{}' must be a string or an array of content parts", where);
  std::string text;
  for (const auto& part : content) {
    if (!part.is_object()) bad_field(where, "'{}' parts must be objects", where);
    const auto type = part.find("type");
    if (type == part.end() || !type->is_string() || type->get<std::string>() != "text")
      bad_field(where, "'{}' parts must be of type \"text\" (images and audio are not supported)", where);
    const auto t = part.find("text");
    if (t == part.end() || !t->is_string()) bad_field(where, "'{}' text parts need a string 'text'", where);
    text += t->get<std::string>();
  }
  return text;
}

}  // namespace

engine::BatchRequest GenerationJob::request_for(size_t prompt) const {
  engine::BatchRequest r = request;
  r.prompt = prompts.at(prompt).ids;
  return r;
}

int64_t GenerationJob::prompt_tokens() const {
  int64_t n = 0;
  for (const Prompt& p : prompts) n += int64_t(p.ids.size());
  return n;
}

void check_model_name(const nlohmann::json& body, const ServedModel& model) {
  const RequestFields f(body);
  const auto name = f.string("model");
  if (name && *name != model.name)
    throw ApiError(404, fmt::format("The model '{}' does not exist; this server serves '{}'", *name, model.name), "model",
                   "model_not_found");
}

nlohmann::ordered_json template_messages(const nlohmann::json* messages) {
  if (!messages) bad_field("messages", "'messages' is required");
  if (!messages->is_array() || messages->empty()) bad_field("messages", "'messages' must be a non-empty array");
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const auto& msg = (*messages)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!msg.is_object()) bad_field(where, "'{}' must be an object", where);
    const auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) bad_field(where + ".role", "'{}.role' must be a string", where);
    const std::string r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant" && r != "tool" && r != "developer")
      bad_field(where + ".role", "'{}.role' is \"{}\"; use system, developer, user, assistant or tool", where, r);
    const auto content = msg.find("content");
    if (content == msg.end() && r != "assistant") bad_field(where + ".content", "'{}.content' is required", where);
    nlohmann::ordered_json m;
    m["role"] = r == "developer" ? "system" : r;  // templates know system; developer is OpenAI's new name for it
    m["content"] = content == msg.end() ? std::string() : content_text(*content, where + ".content");
    out.push_back(std::move(m));
  }
  return out;
}

GenerationJob parse_chat_request(const nlohmann::json& body, const ServedModel& m) {
  const RequestFields f(body);
  check_model_name(body, m);
  GenerationJob job;
  job.endpoint = Endpoint::kChat;
  const auto messages = template_messages(f.get("messages"));
  read_common(f, m, job);
  job.logprobs = f.boolean("logprobs").value_or(false);
  if (const auto top = f.integer("top_logprobs", 0, kMaxTopLogprobs)) {
    if (!job.logprobs) bad_field("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
    job.top_logprobs = *top;
  }
  if (job.logprobs) job.request.logprobs = job.top_logprobs;
  apply_response_format(f.get("response_format"), job.request, *m.tokenizer);
  if (!m.chat_template)
    throw ApiError(400, "this model has no chat template; start the server with --template FILE.jinja, or use /v1/completions",
                   "messages");
  const bool add_generation_prompt = f.boolean("add_generation_prompt").value_or(true);
  const std::string text = tmpl::render_chat(*m.chat_template, messages, add_generation_prompt);
  // The rendered template holds BOS and the turn markers itself: no special tokens are added.
  job.prompts = {{m.tokenizer->encode(text, /*add_special=*/false, /*parse_special=*/true), text}};
  auto max_tokens = f.integer("max_completion_tokens", 1, INT32_MAX);
  if (!max_tokens) max_tokens = f.integer("max_tokens", 1, INT32_MAX);
  set_limits(job, max_tokens, "messages", f.get("max_completion_tokens") ? "max_completion_tokens" : "max_tokens", m,
             INT64_MAX);
  return job;
}

GenerationJob parse_completion_request(const nlohmann::json& body, const ServedModel& m) {
  const RequestFields f(body);
  check_model_name(body, m);
  GenerationJob job;
  job.endpoint = Endpoint::kCompletion;
  job.prompts = read_prompts(f.get("prompt"), m);
  read_common(f, m, job);
  job.echo = f.boolean("echo").value_or(false);
  if (const auto lp = f.integer("logprobs", 0, kMaxTopLogprobs)) {
    job.logprobs = true;
    job.top_logprobs = *lp;
    job.request.logprobs = *lp;
    if (job.echo) job.request.prompt_logprobs = *lp;
  }
  // OpenAI's completions default to 16 tokens.
  set_limits(job, f.integer("max_tokens", 1, INT32_MAX), "prompt", "max_tokens", m, 16);
  return job;
}

}  // namespace lathe::server
