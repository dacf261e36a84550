#include "engine/scoring.h"

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"

namespace lathe::engine {

double token_nll(std::span<const float> row, int32_t target) {
  float mx = row[0];
  for (float v : row) mx = std::max(mx, v);
  double sum = 0;
  for (float v : row) sum += double(std::exp(v - mx));
  return std::log(sum) + double(mx) - double(row[size_t(target)]);
}

ScoreResult score(const model::Runner& runner, std::span<const int32_t> ids) {
  if (ids.empty()) fail(ErrorKind::kInvalidArgument, "nothing to score: give at least one token id");
  const auto& c = runner.config();
  if (int64_t(ids.size()) > c.max_position_embeddings)
    fail(ErrorKind::kOutOfRange, "{} ids exceed the model's context of {} tokens", ids.size(), c.max_position_embeddings);
  model::KvCache cache(c, int64_t(ids.size()), runner.ops());
  model::Workspace ws(runner.ops());
  Tensor logits;
  runner.forward(ids, cache, ws, model::LogitsFor::kAll, &logits);
  const int64_t V = c.vocab_size, n = int64_t(ids.size());
  ScoreResult r;
  r.nll.resize(size_t(n - 1));
  parallel_for(n - 1, 8, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j)
      r.nll[size_t(j)] = token_nll(std::span<const float>(logits.as<float>() + j * V, size_t(V)), ids[size_t(j + 1)]);
  });
  r.last_logits.assign(logits.as<float>() + (n - 1) * V, logits.as<float>() + n * V);
  return r;
}

PerplexityResult perplexity(const model::Runner& runner, std::span<const int32_t> tokens,
                            const PerplexityOptions& opt) {
  const auto& c = runner.config();
  if (opt.ctx < 2) fail(ErrorKind::kInvalidArgument, "--ctx must be at least 2 (got {})", opt.ctx);
  if (opt.ctx > c.max_position_embeddings)
    fail(ErrorKind::kOutOfRange, "--ctx {} exceeds the model's context of {} tokens", opt.ctx, c.max_position_embeddings);
  int64_t windows = int64_t(tokens.size()) / opt.ctx;
  if (windows == 0)
    fail(ErrorKind::kInvalidArgument, "the text has {} tokens, fewer than one window of --ctx {}", tokens.size(), opt.ctx);
  if (opt.max_windows > 0) windows = std::min(windows, opt.max_windows);
  const auto t0 = std::chrono::steady_clock::now();
  model::KvCache cache(c, opt.ctx, runner.ops());
  model::Workspace ws(runner.ops());
  Tensor logits;
  const int64_t V = c.vocab_size;
  double total = 0;
  std::vector<double> row_nll(size_t(opt.ctx));
  for (int64_t w = 0; w < windows; ++w) {
    cache.clear();
    const auto win = tokens.subspan(size_t(w * opt.ctx), size_t(opt.ctx));
    runner.forward(win, cache, ws, model::LogitsFor::kAll, &logits);
    parallel_for(opt.ctx - 1, 8, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j)
        row_nll[size_t(j)] = token_nll(std::span<const float>(logits.as<float>() + j * V, size_t(V)), win[size_t(j + 1)]);
    });
    for (int64_t j = 0; j + 1 < opt.ctx; ++j) total += row_nll[size_t(j)];
    if (opt.progress) opt.progress(w + 1, windows);
  }
  PerplexityResult r;
  r.windows = windows;
  r.tokens = windows * (opt.ctx - 1);
  r.mean_nll = total / double(r.tokens);
  r.ppl = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace lathe::engine
