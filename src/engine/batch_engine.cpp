#include "engine/batch_engine.h"

#include <algorithm>

#include "core/error.h"
#include "core/tensor.h"

namespace lathe::engine {

BatchEngine::BatchEngine(const model::Runner& runner, const BatchEngineOptions& options, const tok::Tokenizer* tokenizer)
    : runner_(runner),
      tokenizer_(tokenizer),
      pool_(options.num_blocks),
      kv_(runner.config(), options.num_blocks, options.scheduler.block_size, runner.ops()),
      ws_(runner.ops()),
      scheduler_(pool_, options.scheduler) {}

RequestId BatchEngine::add(BatchRequest r) {
  const model::ModelConfig& c = runner_.config();
  if (r.prompt.empty()) fail(ErrorKind::kInvalidArgument, "the prompt is empty");
  for (int32_t id : r.prompt)
    if (id < 0 || id >= c.vocab_size)
      fail(ErrorKind::kInvalidArgument, "token id {} is outside the vocabulary (0..{})", id, c.vocab_size - 1);
  if (c.max_position_embeddings > 0) {
    if (int64_t(r.prompt.size()) >= c.max_position_embeddings)
      fail(ErrorKind::kOutOfRange, "the prompt has {} tokens; the model's context is {} (leave room for the reply)",
           r.prompt.size(), c.max_position_embeddings);
    r.max_new_tokens = std::min(r.max_new_tokens, c.max_position_embeddings - int64_t(r.prompt.size()));
  }
  if (!r.stop.empty() && !tokenizer_)
    fail(ErrorKind::kInvalidArgument, "stop strings need the model's tokenizer (tokenizer.json)");
  for (const std::string& s : r.stop)
    if (s.empty()) fail(ErrorKind::kInvalidArgument, "a stop string is empty");
  const RequestId id = scheduler_.add(std::move(r.prompt), r.max_new_tokens, r.adapter);
  Live L{Sampler(r.sampler), r.ignore_eos ? std::vector<int32_t>{} : r.eos_ids.empty() ? c.eos_token_ids : r.eos_ids,
         StopMatcher(r.stop), std::nullopt};
  if (tokenizer_) L.decoder.emplace(*tokenizer_, /*skip_special=*/true);
  live_.emplace(id, std::move(L));
  return id;
}

bool BatchEngine::cancel(RequestId id) {
  live_.erase(id);
  return scheduler_.finish(id);
}

std::vector<BatchEvent> BatchEngine::step() {
  const StepPlan plan = scheduler_.plan();
  if (plan.empty()) return {};
  std::vector<model::SeqKv> kvs(plan.items.size());
  std::vector<model::SeqInput> seqs;
  seqs.reserve(plan.items.size());
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const StepItem& it = plan.items[i];
    kvs[i].blocks = scheduler_.blocks(it.id);
    kvs[i].length = it.start;
    seqs.push_back({scheduler_.tokens(it.id).subspan(size_t(it.start), size_t(it.count)), &kvs[i],
                    it.samples ? model::LogitsFor::kLast : model::LogitsFor::kNone});
  }
  Tensor logits;
  runner_.forward_batch(seqs, kv_, ws_, &logits);
  const int64_t vocab = runner_.config().vocab_size;
  std::vector<int32_t> sampled(plan.items.size(), -1);
  int64_t row = 0;
  for (size_t i = 0; i < plan.items.size(); ++i) {
    if (!plan.items[i].samples) continue;
    const std::span<const float> l(logits.as<float>() + row++ * vocab, size_t(vocab));
    sampled[i] = live_.at(plan.items[i].id).sampler.sample(l, scheduler_.tokens(plan.items[i].id));
  }
  scheduler_.complete(plan, sampled);

  std::vector<BatchEvent> events;
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const StepItem& it = plan.items[i];
    if (!it.samples) continue;
    BatchEvent e{it.id, sampled[i], {}, false, FinishReason::kLength};
    Live& L = live_.at(it.id);
    const bool eos = std::find(L.eos.begin(), L.eos.end(), e.token) != L.eos.end();
    if (!eos) e.text = text_of(L, e.token);
    if (eos) {
      scheduler_.finish(it.id);
      e.finished = true;
      e.reason = FinishReason::kEos;
    } else if (L.stops.stopped()) {
      scheduler_.finish(it.id);
      e.finished = true;
      e.reason = FinishReason::kStop;
    } else if (scheduler_.state(it.id) == RequestState::kFinished) {
      e.finished = true;
      const int64_t ctx = runner_.config().max_position_embeddings;
      e.reason = ctx > 0 && int64_t(scheduler_.tokens(it.id).size()) >= ctx ? FinishReason::kContext : FinishReason::kLength;
    }
    if (e.finished) {
      // Whatever the decoder and the stop matcher still hold is final now (none after a stop).
      if (e.reason != FinishReason::kStop && L.decoder) e.text += L.stops.push(L.decoder->flush()) + L.stops.flush();
      live_.erase(it.id);
    }
    events.push_back(e);
  }
  return events;
}

std::string BatchEngine::text_of(Live& L, int32_t token) {
  if (!L.decoder) return {};
  return L.stops.push(L.decoder->push(token));
}

std::vector<int32_t> BatchEngine::generated(RequestId id) const {
  const auto t = scheduler_.tokens(id);
  return {t.begin() + scheduler_.prompt_length(id), t.end()};
}

bool BatchEngine::forget(RequestId id) { return scheduler_.forget(id); }

}  // namespace lathe::engine
