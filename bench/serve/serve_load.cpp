// Load generator for `lathe serve` (issue: serving engine): streamed /v1/completions requests with a
// spread of prompt and output lengths, arriving as a Poisson process at each of several rates (or
// all at once), reporting throughput, time to first token (TTFT) and inter-token latency (ITL) at
// p50/p99; and a shared-prefix workload (a long system prompt, varied questions) comparing the cold
// TTFT with the cached one. Any OpenAI-compatible server works (vLLM, llama.cpp's server) for a
// side-by-side run on the same card.
//
//   serve_load --url http://127.0.0.1:8080 --text val.txt [--rates 1,4,16,inf] [--requests 64]
//              [--prompt-words 32:1024] [--output-tokens 16:256] [--concurrency 256]
//              [--prefix-words 1500 --prefix-requests 8] [--model NAME] [--api-key KEY] [--json]
#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Target {
  std::string host;
  int port = 8080;
  std::string model, api_key;
};

Target parse_url(const std::string& url) {
  Target t;
  std::string rest = url;
  if (rest.rfind("http://", 0) == 0) rest = rest.substr(7);
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) rest = rest.substr(0, slash);
  const size_t colon = rest.rfind(':');
  t.host = rest.substr(0, colon);
  if (colon != std::string::npos) t.port = std::stoi(rest.substr(colon + 1));
  return t;
}

// One streamed request's timeline.
struct Sample {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;
  std::vector<double> gaps;  // between chunks carrying text, after the first
  int64_t prompt_tokens = 0, output_tokens = 0;
};

Sample run_request(const Target& t, const std::string& prompt, int64_t max_tokens) {
  Sample s;
  httplib::Client cli(t.host, t.port);
  cli.set_read_timeout(600, 0);
  json body = {{"prompt", prompt},  {"max_tokens", max_tokens}, {"temperature", 0},
               {"ignore_eos", true}, {"stream", true},           {"stream_options", {{"include_usage", true}}}};
  if (!t.model.empty()) body["model"] = t.model;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  if (!t.api_key.empty()) req.set_header("Authorization", "Bearer " + t.api_key);
  std::string pending;
  const auto t0 = Clock::now();
  double last = -1;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    pending.append(data, n);
    for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
      const std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0) continue;
      const std::string payload = event.substr(6);
      if (payload == "[DONE]") continue;
      const json chunk = json::parse(payload, nullptr, false);
      if (chunk.is_discarded()) continue;
      if (chunk.contains("usage") && chunk["usage"].is_object()) {
        s.prompt_tokens = chunk["usage"].value("prompt_tokens", int64_t(0));
        s.output_tokens = chunk["usage"].value("completion_tokens", int64_t(0));
      }
      if (!chunk.contains("choices") || chunk["choices"].empty()) continue;
      const double now = seconds_since(t0);
      if (last < 0) s.ttft = now;
      else s.gaps.push_back(now - last);
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  if (!cli.send(req, res, err)) {
    s.error = httplib::to_string(err);
    return s;
  }
  if (res.status != 200) {
    s.error = "HTTP " + std::to_string(res.status) + " " + pending.substr(0, 300);
    return s;
  }
  s.e2e = seconds_since(t0);
  s.ok = last >= 0;
  if (!s.ok) s.error = "no tokens";
  return s;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const double at = p / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(at), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (at - double(lo));
}

// The text's words, for prompts of a given length (prompt lengths are in words: about 1.3 tokens each).
std::vector<std::string> read_words(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  if (words.size() < 100) throw std::runtime_error(path + " has too few words for prompts");
  return words;
}

std::string slice(const std::vector<std::string>& words, size_t start, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    if (i) out += ' ';
    out += words[(start + i) % words.size()];
  }
  return out;
}

std::pair<int64_t, int64_t> parse_range(const std::string& s) {
  const size_t colon = s.find(':');
  if (colon == std::string::npos) return {std::stoll(s), std::stoll(s)};
  return {std::stoll(s.substr(0, colon)), std::stoll(s.substr(colon + 1))};
}

// Log-uniform in [lo, hi]: many short requests, a tail of long ones.
int64_t draw(std::mt19937_64& rng, std::pair<int64_t, int64_t> r) {
  if (r.first >= r.second) return r.first;
  std::uniform_real_distribution<double> u(std::log(double(r.first)), std::log(double(r.second) + 1));
  return std::clamp<int64_t>(int64_t(std::exp(u(rng))), r.first, r.second);
}

struct RateResult {
  std::string rate;
  int64_t requests = 0, failed = 0;
  double wall = 0, req_s = 0, out_tok_s = 0, total_tok_s = 0;
  double ttft_p50 = 0, ttft_p99 = 0, itl_p50 = 0, itl_p99 = 0, e2e_p50 = 0;
  std::string first_error;
};

RateResult run_rate(const Target& t, const std::vector<std::pair<std::string, int64_t>>& work, const std::string& label,
                    double rate, int64_t concurrency, uint64_t seed) {
  RateResult r;
  r.rate = label;
  std::vector<Sample> samples(work.size());
  std::mutex mu;
  std::condition_variable cv;
  int64_t in_flight = 0;
  std::vector<std::thread> threads;
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(std::isinf(rate) ? 1.0 : rate);
  const auto t0 = Clock::now();
  double next = 0;
  for (size_t i = 0; i < work.size(); ++i) {
    if (!std::isinf(rate)) {
      std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(next)));
      next += gap(rng);
    }
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return in_flight < concurrency; });
      ++in_flight;
    }
    threads.emplace_back([&, i] {
      samples[i] = run_request(t, work[i].first, work[i].second);
      std::lock_guard lock(mu);
      --in_flight;
      cv.notify_all();
    });
  }
  for (auto& th : threads) th.join();
  r.wall = seconds_since(t0);
  std::vector<double> ttft, itl, e2e;
  int64_t out = 0, total = 0;
  for (const Sample& s : samples) {
    ++r.requests;
    if (!s.ok) {
      ++r.failed;
      if (r.first_error.empty()) r.first_error = s.error;
      continue;
    }
    ttft.push_back(s.ttft);
    e2e.push_back(s.e2e);
    itl.insert(itl.end(), s.gaps.begin(), s.gaps.end());
    out += s.output_tokens;
    total += s.output_tokens + s.prompt_tokens;
  }
  r.req_s = double(r.requests - r.failed) / r.wall;
  r.out_tok_s = double(out) / r.wall;
  r.total_tok_s = double(total) / r.wall;
  r.ttft_p50 = percentile(ttft, 50), r.ttft_p99 = percentile(ttft, 99);
  r.itl_p50 = percentile(itl, 50), r.itl_p99 = percentile(itl, 99);
  r.e2e_p50 = percentile(e2e, 50);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("serve_load: throughput, TTFT and inter-token latency of an OpenAI-compatible server");
  std::string url = "http://127.0.0.1:8080", text, rates = "1,4,16,inf", prompt_words = "32:1024", output_tokens = "16:256";
  Target t;
  int64_t requests = 64, concurrency = 256, prefix_words = 0, prefix_requests = 8;
  uint64_t seed = 1;
  bool as_json = false;
  app.add_option("--url", url, "server address")->capture_default_str();
  app.add_option("--text", text, "text file the prompts are cut from")->required();
  app.add_option("--rates", rates, "request rates per second, comma-separated ('inf': all at once)")->capture_default_str();
  app.add_option("--requests", requests, "requests per rate")->capture_default_str();
  app.add_option("--prompt-words", prompt_words, "prompt length range in words (log-uniform)")->capture_default_str();
  app.add_option("--output-tokens", output_tokens, "max_tokens range (log-uniform; EOS ignored)")->capture_default_str();
  app.add_option("--concurrency", concurrency, "most requests in flight")->capture_default_str();
  app.add_option("--prefix-words", prefix_words, "shared-prefix workload: system prompt length in words (0: skip)");
  app.add_option("--prefix-requests", prefix_requests, "questions after the shared prefix")->capture_default_str();
  app.add_option("--model", t.model, "model name to send");
  app.add_option("--api-key", t.api_key, "bearer key");
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  app.add_flag("--json", as_json, "print JSON");
  CLI11_PARSE(app, argc, argv);
  try {
    const Target parsed = parse_url(url);
    t.host = parsed.host;
    t.port = parsed.port;
    const auto words = read_words(text);
    const auto pw = parse_range(prompt_words), ot = parse_range(output_tokens);
    json report = {{"url", url}, {"rates", json::array()}};
    std::stringstream rate_list(rates);
    for (std::string item; std::getline(rate_list, item, ',');) {
      const double rate = item == "inf" ? INFINITY : std::stod(item);
      std::mt19937_64 rng(seed);
      std::vector<std::pair<std::string, int64_t>> work;
      for (int64_t i = 0; i < requests; ++i) {
        const size_t start = size_t(rng() % words.size());
        work.push_back({slice(words, start, size_t(draw(rng, pw))), draw(rng, ot)});
      }
      const RateResult r = run_rate(t, work, item, rate, concurrency, seed);
      report["rates"].push_back({{"rate", r.rate},           {"requests", r.requests},    {"failed", r.failed},
                                 {"wall_s", r.wall},          {"req_s", r.req_s},          {"out_tok_s", r.out_tok_s},
                                 {"total_tok_s", r.total_tok_s}, {"ttft_p50_s", r.ttft_p50}, {"ttft_p99_s", r.ttft_p99},
                                 {"itl_p50_s", r.itl_p50},    {"itl_p99_s", r.itl_p99},    {"e2e_p50_s", r.e2e_p50},
                                 {"first_error", r.first_error}});
      if (!as_json)
        std::printf("rate %-6s %3lld req (%lld failed) in %6.1f s: %6.2f req/s, %8.1f out tok/s, TTFT p50/p99 %7.1f/%7.1f ms, "
                    "ITL p50/p99 %6.1f/%6.1f ms%s%s\n",
                    r.rate.c_str(), (long long)r.requests, (long long)r.failed, r.wall, r.req_s, r.out_tok_s,
                    r.ttft_p50 * 1e3, r.ttft_p99 * 1e3, r.itl_p50 * 1e3, r.itl_p99 * 1e3,
                    r.first_error.empty() ? "" : ", first error: ", r.first_error.c_str());
    }
    if (prefix_words > 0) {
      // One system prompt, then questions after it one at a time: the first pays the prefill; the
      // others should find it in the prefix cache. A fresh prefix each run (seeded offset), so an
      // earlier run's cache does not make the cold request warm.
      std::mt19937_64 rng(seed + 7);
      const std::string prefix = slice(words, size_t(rng() % words.size()), size_t(prefix_words));
      std::vector<double> warm;
      double cold = 0;
      for (int64_t i = 0; i <= prefix_requests; ++i) {
        const std::string q = prefix + "\n\nQuestion " + std::to_string(i) + ": " + slice(words, size_t(rng() % words.size()), 12);
        const Sample s = run_request(t, q, 8);
        if (!s.ok) throw std::runtime_error("shared-prefix request failed: " + s.error);
        if (i == 0) cold = s.ttft;
        else warm.push_back(s.ttft);
      }
      const double w = percentile(warm, 50);
      report["shared_prefix"] = {{"prefix_words", prefix_words}, {"cold_ttft_s", cold}, {"cached_ttft_p50_s", w},
                                 {"ratio", w / cold}};
      if (!as_json)
        std::printf("shared prefix (%lld words): cold TTFT %.1f ms, cached TTFT p50 %.1f ms (%.1f%% of cold)\n",
                    (long long)prefix_words, cold * 1e3, w * 1e3, 100 * w / cold);
    }
    if (as_json) std::printf("%s\n", report.dump(1).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serve_load: %s\n", e.what());
    return 1;
  }
  return 0;
}
