#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.h"
#include "engine/stop_matcher.h"

namespace lathe::engine {

const char* to_string(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return "length";
    case FinishReason::kEos: return "eos";
    case FinishReason::kStop: return "stop";
    case FinishReason::kContext: return "context";
  }
  return "?";
}

Generator::Generator(const model::Runner& runner, const tok::Tokenizer* tokenizer)
    : runner_(runner), tokenizer_(tokenizer) {}

GenerateResult Generator::generate(std::span<const int32_t> prompt, const GenerateConfig& cfg,
                                   const std::function<void(std::string_view)>& on_text, Session* session) {
  using clock = std::chrono::steady_clock;
  const auto& c = runner_.config();
  if (prompt.empty()) fail(ErrorKind::kInvalidArgument, "the prompt is empty: give at least one token");
  if (cfg.max_new_tokens < 0) fail(ErrorKind::kInvalidArgument, "the number of tokens to generate must be >= 0");
  if (!cfg.stop.empty() && !tokenizer_)
    fail(ErrorKind::kInvalidArgument, "stop strings need a tokenizer, and {} has none", runner_.model().dir().string());
  const int64_t max_ctx = c.max_position_embeddings;
  if (int64_t(prompt.size()) > max_ctx)
    fail(ErrorKind::kOutOfRange, "the prompt has {} tokens but the model's context is {} tokens; shorten it",
         prompt.size(), max_ctx);
  const int64_t capacity = std::min<int64_t>(max_ctx, int64_t(prompt.size()) + std::max<int64_t>(cfg.max_new_tokens, 1));

  std::optional<Session> own;
  if (!session) own.emplace(runner_, capacity);
  Session& s = session ? *session : *own;
  model::KvCache& cache = s.cache;
  if (int64_t(prompt.size()) > cache.capacity())
    fail(ErrorKind::kOutOfRange, "the prompt has {} tokens but the session holds {}; start a new one or raise --ctx",
         prompt.size(), cache.capacity());
  // Reuse the cached prefix; at least one prompt token is always run to get fresh logits.
  size_t reuse = 0;
  while (reuse < s.tokens.size() && reuse < prompt.size() && s.tokens[reuse] == prompt[reuse]) ++reuse;
  if (reuse == prompt.size()) --reuse;
  cache.truncate(int64_t(reuse));
  s.tokens.resize(reuse);
  model::Workspace ws(runner_.ops());
  Sampler sampler(cfg.sampler);
  StopMatcher stops(cfg.stop);
  std::optional<tok::StreamDecoder> decoder;
  if (tokenizer_) decoder.emplace(*tokenizer_, /*skip_special=*/true);
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  GenerateResult res;
  res.prompt_tokens = int64_t(prompt.size());
  res.reused_tokens = int64_t(reuse);

  auto emit = [&](const std::string& piece) {
    if (piece.empty()) return;
    res.text += piece;
    if (on_text) on_text(piece);
  };

  // Each forward ends with token selection on the backend: penalties applied where the logits
  // are, then only the best candidates come back (the whole row only when they cannot decide).
  const int64_t V = c.vocab_size;
  model::Selection sel;
  std::vector<float> full_row;
  auto forward = [&](std::span<const int32_t> ids) {
    model::SelectRow row;
    row.temperature = cfg.sampler.temperature;
    row.repetition = cfg.sampler.repetition_penalty;
    row.presence = cfg.sampler.presence_penalty;
    row.frequency = cfg.sampler.frequency_penalty;
    for (auto [id, count] : sampler.penalty_counts(history))
      if (id < V) row.penalized.push_back({id, count});
    model::SeqInput in;
    in.ids = ids;
    in.kv = &cache.seq();
    runner_.forward_select(std::span<const model::SeqInput>(&in, 1), cache.pool(), ws,
                           std::span<const model::SelectRow>(&row, 1), sampler.candidates_wanted(V), &sel);
  };
  auto next_token = [&] {
    const int32_t t = sampler.choose(sel.ids, sel.values, sel.sums[0], V);
    if (t >= 0) return t;
    full_row.resize(size_t(V));
    runner_.selected_logits_row(ws, 0, full_row);
    return sampler.choose_full(full_row);
  };

  const auto t0 = clock::now();
  forward(prompt.subspan(reuse));
  s.tokens.assign(prompt.begin(), prompt.end());
  const auto t1 = clock::now();
  res.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  auto t_first = t1;

  for (int64_t step = 0; step < cfg.max_new_tokens; ++step) {
    const int32_t next = next_token();
    if (step == 0) t_first = clock::now();
    res.ids.push_back(next);
    history.push_back(next);
    const bool is_eos = std::find(cfg.eos_ids.begin(), cfg.eos_ids.end(), next) != cfg.eos_ids.end();
    if (is_eos && !cfg.ignore_eos) {
      res.finish = FinishReason::kEos;
      break;
    }
    if (decoder) {
      emit(stops.push(decoder->push(next)));
      if (stops.stopped()) {
        res.finish = FinishReason::kStop;
        break;
      }
    }
    if (step + 1 == cfg.max_new_tokens) break;
    if (cache.length() >= cache.capacity()) {
      res.finish = FinishReason::kContext;
      break;
    }
    forward(std::span<const int32_t>(&history.back(), 1));
    s.tokens.push_back(history.back());
  }
  if (decoder && !stops.stopped()) {
    emit(stops.push(decoder->flush()));
    if (stops.stopped()) res.finish = FinishReason::kStop;
    else emit(stops.flush());
  }
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
  return res;
}

}  // namespace lathe::engine
