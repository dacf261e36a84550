// The routes around generation: GET /v1/models, POST /tokenize and /detokenize (vLLM's shapes),
// GET /health and GET /metrics.
#include "server/metrics.h"
#include "server/openai_protocol.h"
#include "server/request_fields.h"
#include "server/server_context.h"

namespace lathe::server {

namespace {

nlohmann::json models(const ServedModel& m) {
  return {{"object", "list"},
          {"data", nlohmann::json::array({{{"id", m.name},
                                           {"object", "model"},
                                           {"created", m.created},
                                           {"owned_by", "lathe"},
                                           {"max_model_len", m.context}}})}};
}

// {"prompt": text[, "add_special_tokens": true]} or {"messages": [...][, "add_generation_prompt": true]}
// -> {"count", "max_model_len", "tokens"}.
nlohmann::json tokenize(const ServedModel& m, const nlohmann::json& body) {
  const RequestFields f(body);
  check_model_name(body, m);
  std::vector<int32_t> ids;
  if (const nlohmann::json* messages = f.get("messages")) {
    if (!m.chat_template) throw ApiError(400, "this model has no chat template; start the server with --template", "messages");
    const bool gen = f.boolean("add_generation_prompt").value_or(true);
    const std::string text = tmpl::render_chat(*m.chat_template, template_messages(messages), gen);
    ids = m.tokenizer->encode(text, f.boolean("add_special_tokens").value_or(false), /*parse_special=*/true);
  } else {
    const auto prompt = f.string("prompt");
    if (!prompt) bad_field("prompt", "'prompt' (a string) or 'messages' is required");
    ids = m.tokenizer->encode(*prompt, f.boolean("add_special_tokens").value_or(true), /*parse_special=*/true);
  }
  return {{"count", ids.size()}, {"max_model_len", m.context}, {"tokens", ids}};
}

nlohmann::json detokenize(const ServedModel& m, const nlohmann::json& body) {
  const RequestFields f(body);
  check_model_name(body, m);
  if (!f.get("tokens")) bad_field("tokens", "'tokens' (an array of token ids) is required");
  const std::vector<int32_t> ids = f.token_ids("tokens", m.vocab_size);
  return {{"prompt", m.tokenizer->decode(ids)}};
}

}  // namespace

void add_info_routes(httplib::Server& http, ServerContext& ctx) {
  http.Get("/v1/models", [&ctx](const httplib::Request&, httplib::Response& res) {
    guarded(res, [&] { send_json(res, 200, models(ctx.model)); });
  });
  http.Post("/tokenize", [&ctx](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { send_json(res, 200, tokenize(ctx.model, parse_body(req, ctx.options.max_json_depth))); });
  });
  http.Post("/detokenize", [&ctx](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { send_json(res, 200, detokenize(ctx.model, parse_body(req, ctx.options.max_json_depth))); });
  });
  http.Get("/health", [&ctx](const httplib::Request&, httplib::Response& res) {
    if (ctx.draining) send_error(res, ApiError(503, "the server is shutting down", "", "shutting_down"));
    else send_json(res, 200, {{"status", "ok"}});
  });
  http.Get("/metrics", [&ctx](const httplib::Request&, httplib::Response& res) {
    std::map<int, int64_t> counts;
    {
      std::lock_guard lk(ctx.counts_mu);
      counts = ctx.responses_by_status;
    }
    res.set_content(render_metrics(ctx.engine.stats(), counts), "text/plain; version=0.0.4");
  });
}

}  // namespace lathe::server
