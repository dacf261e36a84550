#include "engine/scoring.h"

#include <chrono>
#include <algorithm>
#include <cmath>
#include <vector>

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

namespace {
// log-sum-exp of a row (float exps, double sum: enough for KL divergence and NLL).
double row_lse(const float* row, int64_t V) {
  float mx = row[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, row[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += double(std::exp(row[i] - mx));
  return std::log(sum) + double(mx);
}
}  // namespace

CompareResult compare(const model::Runner& base, const model::Runner& other, std::span<const int32_t> tokens,
                      const PerplexityOptions& opt) {
  const auto& c = base.config();
  if (other.config().vocab_size != c.vocab_size)
    fail(ErrorKind::kInvalidArgument, "the models have different vocabularies ({} and {} tokens)", c.vocab_size,
         other.config().vocab_size);
  const int64_t ctx_limit = std::min(c.max_position_embeddings, other.config().max_position_embeddings);
  if (opt.ctx < 2 || opt.ctx > ctx_limit)
    fail(ErrorKind::kInvalidArgument, "--ctx {} must be within 2..{} for both models", opt.ctx, ctx_limit);
  int64_t windows = int64_t(tokens.size()) / opt.ctx;
  if (windows == 0)
    fail(ErrorKind::kInvalidArgument, "the text has {} tokens, fewer than one window of --ctx {}", tokens.size(), opt.ctx);
  if (opt.max_windows > 0) windows = std::min(windows, opt.max_windows);
  const auto t0 = std::chrono::steady_clock::now();
  // The base keeps the unquantized cache, so the same model against itself with a quantized
  // backend cache measures what that cache costs.
  model::KvCache ca(c, opt.ctx, base.ops(), ops::KvQuant::kNone), cb(other.config(), opt.ctx, other.ops());
  model::Workspace wa(base.ops()), wb(other.ops());
  Tensor la, lb;
  const int64_t V = c.vocab_size, rows = opt.ctx - 1;
  std::vector<double> nll_a(static_cast<size_t>(rows)), nll_b(static_cast<size_t>(rows)), kld(static_cast<size_t>(rows));
  std::vector<char> agree(static_cast<size_t>(rows));
  double sum_a = 0, sum_b = 0, sum_kld = 0;
  int64_t n_agree = 0;
  for (int64_t w = 0; w < windows; ++w) {
    ca.clear();
    cb.clear();
    const auto win = tokens.subspan(size_t(w * opt.ctx), size_t(opt.ctx));
    base.forward(win, ca, wa, model::LogitsFor::kAll, &la);
    other.forward(win, cb, wb, model::LogitsFor::kAll, &lb);
    parallel_for(rows, 8, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        const float* ra = la.as<float>() + j * V;
        const float* rb = lb.as<float>() + j * V;
        const double lse_a = row_lse(ra, V), lse_b = row_lse(rb, V);
        const float la_f = float(lse_a), d_lse = float(lse_b - lse_a);
        double k = 0;
        int64_t arg_a = 0, arg_b = 0;
        for (int64_t i = 0; i < V; ++i) {
          // p_a(i) * (log p_a(i) - log p_b(i)), log p_a - log p_b = (ra - rb) + (lse_b - lse_a)
          k += double(std::exp(ra[i] - la_f) * ((ra[i] - rb[i]) + d_lse));
          if (ra[i] > ra[arg_a]) arg_a = i;
          if (rb[i] > rb[arg_b]) arg_b = i;
        }
        const int32_t next = win[size_t(j + 1)];
        nll_a[size_t(j)] = lse_a - double(ra[next]);
        nll_b[size_t(j)] = lse_b - double(rb[next]);
        kld[size_t(j)] = std::max(0.0, k);
        agree[size_t(j)] = arg_a == arg_b;
      }
    });
    for (int64_t j = 0; j < rows; ++j) {
      sum_a += nll_a[size_t(j)];
      sum_b += nll_b[size_t(j)];
      sum_kld += kld[size_t(j)];
      n_agree += agree[size_t(j)];
    }
    if (opt.progress) opt.progress(w + 1, windows);
  }
  CompareResult r;
  r.windows = windows;
  r.tokens = windows * rows;
  r.ppl_base = std::exp(sum_a / double(r.tokens));
  r.ppl = std::exp(sum_b / double(r.tokens));
  r.kld = sum_kld / double(r.tokens);
  r.top1_agree = double(n_agree) / double(r.tokens);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace lathe::engine
