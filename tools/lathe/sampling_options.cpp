#include "sampling_options.h"

#include <random>

namespace lathe::cli {

void SamplingOptions::add_to(CLI::App* cmd) {
  cmd->add_option("--temperature,--temp", temperature, "sampling temperature; 0 = greedy (default: the model's generation_config, else greedy)");
  cmd->add_option("--top-k", top_k, "keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", top_p, "nucleus sampling mass (1 = off)");
  cmd->add_option("--min-p", min_p, "drop tokens below min-p x the top probability (0 = off)");
  cmd->add_option("--repetition-penalty,--repeat-penalty", repetition_penalty, "CTRL-style penalty on seen tokens (1 = off)");
  cmd->add_option("--presence-penalty", presence_penalty, "subtract this from the logit of every seen token");
  cmd->add_option("--frequency-penalty", frequency_penalty, "subtract this x the count of every seen token");
  cmd->add_option("--penalty-last-n", penalty_last_n, "penalties look at the last n tokens (0 = all)");
  cmd->add_option("--seed", seed, "random seed (default: random)");
}

engine::SamplerConfig SamplingOptions::resolve(const model::GenerationDefaults& d) const {
  engine::SamplerConfig s;
  const bool model_samples = d.do_sample.value_or(false);
  s.temperature = temperature ? *temperature : (model_samples ? float(d.temperature.value_or(1.0)) : 0.f);
  s.top_k = top_k ? *top_k : (model_samples ? d.top_k.value_or(0) : 0);
  s.top_p = top_p ? *top_p : (model_samples ? float(d.top_p.value_or(1.0)) : 1.f);
  s.min_p = min_p ? *min_p : (model_samples ? float(d.min_p.value_or(0.0)) : 0.f);
  s.repetition_penalty = repetition_penalty ? *repetition_penalty : float(d.repetition_penalty.value_or(1.0));
  s.presence_penalty = presence_penalty;
  s.frequency_penalty = frequency_penalty;
  s.penalty_last_n = penalty_last_n;
  s.seed = seed ? *seed : std::random_device{}();
  return s;
}

}  // namespace lathe::cli
