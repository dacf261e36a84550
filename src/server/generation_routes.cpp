// POST /v1/chat/completions and /v1/completions: parse and validate, submit to the engine thread,
// then either wait for every choice to end (one JSON response) or stream SSE chunks as events
// arrive. Both paths watch the client's socket while they wait: a client that goes away has its
// request cancelled, which frees its KV blocks before the engine's next step.
#include <memory>

#include "server/connection_probe.h"
#include "server/openai_protocol.h"
#include "server/openai_response.h"
#include "server/server_context.h"
#include "server/sse.h"

namespace lathe::server {

namespace {

// A submitted request (one engine request per prompt) and the handler's view of it; cancels what
// is unfinished when dropped.
struct Generation {
  Generation(ServerContext& ctx, GenerationJob job_in, const httplib::Request& req)
      : ctx(ctx),
        active(ctx),
        job(std::move(job_in)),
        builder(job, ctx.model),
        probe(req.remote_addr, req.remote_port, req.local_port) {}
  ~Generation() {
    for (const auto& c : channels) {
      c->unwatch();  // the connection may close once this returns
      if (!c->done()) ctx.engine.cancel(c);
    }
  }
  ServerContext& ctx;
  ActiveGeneration active;
  GenerationJob job;
  ResponseBuilder builder;
  ConnectionProbe probe;
  std::vector<std::shared_ptr<RequestChannel>> channels;  // one per prompt
  std::vector<SequenceUpdate> updates;

  void submit() {
    for (size_t p = 0; p < job.prompts.size(); ++p) {
      channels.push_back(ctx.engine.submit(job.request_for(p), job.n));  // a 429 here cancels the others
      channels.back()->watch(&probe);
    }
  }
  bool done() const {
    for (const auto& c : channels)
      if (!c->done()) return false;
    return true;
  }
  std::optional<ApiError> error() const {
    for (const auto& c : channels)
      if (auto e = c->error()) return e;
    return std::nullopt;
  }
  // Waits until the engine thread took every prompt in; false when the client left meanwhile.
  bool wait_accepted() {
    for (const auto& c : channels)
      for (;;) {
        const auto state = c->wait_accepted(ctx.options.poll_interval);
        if (state == RequestChannel::State::kFailed) throw *c->error();
        if (state == RequestChannel::State::kAccepted) break;
        if (probe.closed()) return false;
      }
    return true;
  }
  // The updates that arrived (waiting up to one poll interval for some), applied; the chunks they make.
  std::vector<nlohmann::json> pump() {
    updates.clear();
    for (size_t p = 0; p < channels.size(); ++p) {
      const size_t before = updates.size();
      channels[p]->take(updates, std::chrono::milliseconds(0));
      for (size_t k = before; k < updates.size(); ++k) updates[k].index += int64_t(p) * job.n;  // choice numbering
    }
    if (updates.empty())
      for (size_t p = 0; p < channels.size(); ++p)
        if (!channels[p]->done()) {
          channels[p]->take(updates, ctx.options.poll_interval);
          for (SequenceUpdate& u : updates) u.index += int64_t(p) * job.n;
          break;
        }
    std::vector<nlohmann::json> chunks;
    for (const SequenceUpdate& u : updates)
      for (nlohmann::json& c : builder.apply(u)) chunks.push_back(std::move(c));
    return chunks;
  }
};

void answer_whole(Generation& g, httplib::Response& res) {
  while (!g.done()) {
    g.pump();
    if (auto e = g.error()) throw *e;
    if (g.updates.empty() && g.probe.closed()) return;  // nobody to answer; ~Generation cancels
  }
  send_json(res, 200, g.builder.whole());
}

// One call of httplib's chunked content provider: write what arrived. False ends the response
// (the client is gone; the releaser's Generation destructor cancels the request).
bool stream_step(Generation& g, bool& opened, httplib::DataSink& sink) {
  if (g.probe.closed()) return false;
  std::string out;
  if (!opened) {
    for (const auto& c : g.builder.opening_chunks()) out += sse_event(c);
    opened = true;
  }
  for (const auto& c : g.pump()) out += sse_event(c);
  bool end = false;
  if (auto e = g.error()) {  // the engine failed mid-stream: say so in the stream's own shape
    nlohmann::json body = nlohmann::json::parse(e->body());
    out += sse_event(body);
    end = true;
  } else if (g.done()) {
    for (const auto& c : g.builder.closing_chunks()) out += sse_event(c);
    end = true;
  }
  if (end) out += kSseDone;
  if (!out.empty() && !sink.write(out.data(), out.size())) return false;
  if (end) sink.done();
  return true;
}

void generate(ServerContext& ctx, const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
  if (ctx.draining) throw ApiError(503, "the server is shutting down", "", "shutting_down");
  const nlohmann::json body = parse_body(req, ctx.options.max_json_depth);
  GenerationJob job = endpoint == Endpoint::kChat ? parse_chat_request(body, ctx.model)
                                                  : parse_completion_request(body, ctx.model);
  auto g = std::make_shared<Generation>(ctx, std::move(job), req);
  g->submit();
  if (!g->wait_accepted()) return;
  if (!g->job.stream) {
    answer_whole(*g, res);
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // proxies: pass chunks through as they come
  auto opened = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      "text/event-stream",
      [g, opened](size_t, httplib::DataSink& sink) {
        try {
          return stream_step(*g, *opened, sink);
        } catch (const std::exception&) {
          return false;
        }
      },
      [g](bool) mutable { g.reset(); });  // the last reference: cancels an unfinished request
}

}  // namespace

void add_generation_routes(httplib::Server& http, ServerContext& ctx) {
  http.Post("/v1/chat/completions", [&ctx](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { generate(ctx, req, res, Endpoint::kChat); });
  });
  http.Post("/v1/completions", [&ctx](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] { generate(ctx, req, res, Endpoint::kCompletion); });
  });
}

}  // namespace lathe::server
