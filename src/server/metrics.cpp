#include "server/metrics.h"

#include <fmt/format.h>

namespace lathe::server {

namespace {
void metric(std::string& out, const char* name, const char* type, const char* help, double value) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
}
}  // namespace

std::string render_metrics(const EngineStats& s, const std::map<int, int64_t>& responses) {
  std::string out;
  metric(out, "lathe_requests_waiting", "gauge", "Sequences queued, not yet running.", double(s.waiting));
  metric(out, "lathe_requests_running", "gauge", "Sequences in the running batch.", double(s.running));
  metric(out, "lathe_requests_in_flight", "gauge", "Sequences accepted and not finished.", double(s.in_flight));
  metric(out, "lathe_kv_blocks_used", "gauge", "KV-cache blocks referenced by a sequence.", double(s.kv_blocks_used));
  metric(out, "lathe_kv_blocks_total", "gauge", "KV-cache blocks in the pool.", double(s.kv_blocks_total));
  metric(out, "lathe_kv_usage_ratio", "gauge", "Share of the KV-cache blocks in use.",
         s.kv_blocks_total ? double(s.kv_blocks_used) / double(s.kv_blocks_total) : 0.0);
  metric(out, "lathe_prefix_cache_queries_total", "counter", "KV blocks looked up in the prefix cache.",
         double(s.prefix_queried));
  metric(out, "lathe_prefix_cache_hits_total", "counter", "KV blocks found in the prefix cache.", double(s.prefix_hits));
  metric(out, "lathe_prefix_cache_hit_rate", "gauge", "Prefix-cache hits over lookups since start.",
         s.prefix_queried ? double(s.prefix_hits) / double(s.prefix_queried) : 0.0);
  metric(out, "lathe_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", double(s.prompt_tokens_total));
  metric(out, "lathe_generation_tokens_total", "counter", "Tokens generated.", double(s.generation_tokens_total));
  metric(out, "lathe_generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
         s.tokens_per_second);
  metric(out, "lathe_sequences_finished_total", "counter", "Sequences that ran to their end.",
         double(s.requests_finished_total));
  metric(out, "lathe_requests_cancelled_total", "counter", "Requests cancelled because their client went away.",
         double(s.requests_cancelled_total));
  metric(out, "lathe_engine_steps_total", "counter", "Forward passes (engine steps) run.", double(s.steps.steps));
  metric(out, "lathe_engine_step_seconds_total", "counter",
         "Time from one step's results to the next's, over steps that followed another without a pause.",
         s.steps.seconds);
  metric(out, "lathe_engine_step_host_seconds_total", "counter",
         "Part of that time with no step queued on the device (sampling, planning, launching; the device idles).",
         s.steps.host_seconds);
  metric(out, "lathe_engine_step_host_ratio", "gauge", "Host share of the engine steps' time since start.",
         s.steps.seconds > 0 ? s.steps.host_seconds / s.steps.seconds : 0.0);
  metric(out, "lathe_engine_decode_steps_total", "counter", "Engine steps that decoded one token for every request.",
         double(s.decode_steps.steps));
  metric(out, "lathe_engine_decode_step_seconds_total", "counter", "Time of the decode-only steps (as above).",
         s.decode_steps.seconds);
  metric(out, "lathe_engine_decode_step_host_ratio", "gauge",
         "Host share of the decode-only steps' time since start: the part the device had no step queued.",
         s.decode_steps.seconds > 0 ? s.decode_steps.host_seconds / s.decode_steps.seconds : 0.0);
  metric(out, "lathe_preemptions_total", "counter", "Sequences preempted (KV blocks ran out) and recomputed.",
         double(s.preemptions_total));
  out += "# HELP lathe_http_responses_total HTTP responses by status code.\n# TYPE lathe_http_responses_total counter\n";
  for (const auto& [status, count] : responses)
    out += fmt::format("lathe_http_responses_total{{code=\"{}\"}} {}\n", status, count);
  return out;
}

}  // namespace lathe::server
