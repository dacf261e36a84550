// Scoring a sequence (per-token negative log-likelihood) and perplexity over a long token stream
// with the protocol of shared/models/ref-llama-14m/reference.json: non-overlapping windows of ctx
// tokens, tail dropped, every window scored from its second token on, exp(mean NLL).
#pragma once

#include <functional>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "model/model.h"
#include "ops/ops.h"

namespace lathe::engine {

// -log softmax(row)[target], in double for the reduction.
double token_nll(std::span<const float> row, int32_t target);

struct ScoreResult {
  std::vector<double> nll;        // [n - 1]: -log p(ids[j+1] | ids[..j])
  std::vector<float> last_logits; // [vocab], after the last id
};

ScoreResult score(const model::Runner& runner, std::span<const int32_t> ids);

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;
  int64_t tokens = 0;   // tokens scored
  int64_t windows = 0;
  double seconds = 0;
};

struct PerplexityOptions {
  int64_t ctx = 512;
  int64_t max_windows = 0;  // 0: all
  // Called after each window with (done, total).
  std::function<void(int64_t, int64_t)> progress;
};

PerplexityResult perplexity(const model::Runner& runner, std::span<const int32_t> tokens,
                            const PerplexityOptions& options);

// A model against a base model on the same windows (the perplexity protocol): both perplexities,
// the mean KL divergence KL(base || model) of the next-token distributions, and how often their
// top-1 tokens agree. The two models must share the tokenizer's vocabulary. The base always runs
// with the backend's unquantized K/V cache, the model with its Ops::kv_quant (--kv-cache q8|q4), so
// a model against itself measures the quantized cache.
struct CompareResult {
  double ppl_base = 0, ppl = 0;
  double kld = 0;           // mean over scored positions, nats
  double top1_agree = 0;    // fraction of positions with the same argmax
  int64_t tokens = 0, windows = 0;
  double seconds = 0;
};

CompareResult compare(const model::Runner& base, const model::Runner& other, std::span<const int32_t> tokens,
                      const PerplexityOptions& options);

}  // namespace lathe::engine
