// `lathe tokenize`: encode/decode text with a model folder's tokenizer.json, one text (-p) or a
// JSONL file of {"text": ...} lines, plus a throughput bench. Thin: all logic is in lathe::tok.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace lathe::cli {

namespace {

struct TokenizeOptions {
  std::string model;
  std::string prompt;
  std::string input_jsonl;
  std::string bench_file;
  bool json = false;
  bool plain_special = false;
  int bench_repeats = 3;
};

// -m may name the folder or the tokenizer.json inside it.
tok::Tokenizer load_tokenizer(const std::string& path) {
  std::filesystem::path p(path);
  if (std::filesystem::is_regular_file(p)) p = p.parent_path();
  return tok::Tokenizer::load(p);
}

nlohmann::ordered_json result_json(const tok::Tokenizer& t, const std::string& text, bool parse_special) {
  auto ids = t.encode(text, false, parse_special);
  auto with_special = t.encode(text, true, parse_special);
  return {{"ids", ids},
          {"ids_with_special", with_special},
          {"decode", t.decode(ids, false)},
          {"decode_skip_special", t.decode(with_special, true)}};
}

template <typename J>
std::string dump(const J& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void run_jsonl(const tok::Tokenizer& t, const TokenizeOptions& o) {
  std::ifstream in(o.input_jsonl, std::ios::binary);
  if (!in) fail(ErrorKind::kNotFound, "cannot open --input-jsonl file {}", o.input_jsonl);
  std::string line;
  for (size_t lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail(ErrorKind::kFormat, "{}:{}: not a JSON object ({}); each line must be {{\"text\": \"...\"}}",
           o.input_jsonl, lineno, e.what());
    }
    if (!j.is_object() || !j.contains("text") || !j.at("text").is_string())
      fail(ErrorKind::kFormat, "{}:{}: missing string field \"text\"; each line must be {{\"text\": \"...\"}}",
           o.input_jsonl, lineno);
    std::printf("%s\n", dump(result_json(t, j.at("text").get<std::string>(), !o.plain_special)).c_str());
  }
}

void run_prompt(const tok::Tokenizer& t, const TokenizeOptions& o) {
  if (o.json) {
    std::printf("%s\n", dump(result_json(t, o.prompt, !o.plain_special)).c_str());
    return;
  }
  auto ids = t.encode(o.prompt, false, !o.plain_special);
  auto with_special = t.encode(o.prompt, true, !o.plain_special);
  std::printf("%zu tokens (%zu with special tokens)\n", ids.size(), with_special.size());
  for (int32_t id : with_special) {
    std::string piece = nlohmann::json(t.id_to_token(id)).dump(-1, ' ', false,
                                                                nlohmann::json::error_handler_t::replace);
    std::printf("%8d  %s%s\n", id, piece.c_str(), t.is_special(id) ? "  (special)" : "");
  }
  std::printf("decode: %s\n", dump(nlohmann::json(t.decode(ids))).c_str());
}

void run_bench(const tok::Tokenizer& t, const TokenizeOptions& o) {
  std::ifstream in(o.bench_file, std::ios::binary);
  if (!in) fail(ErrorKind::kNotFound, "cannot open --bench file {}", o.bench_file);
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  double best = 1e30;
  size_t n = 0;
  for (int r = 0; r < std::max(1, o.bench_repeats); ++r) {
    auto t0 = std::chrono::steady_clock::now();
    n = t.encode(text, false).size();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("encode %s (%.2f MB) in one call: %zu tokens, best of %d: %.3f s, %.2f MB/s, %.0f tokens/s\n",
              o.bench_file.c_str(), text.size() / 1e6, n, std::max(1, o.bench_repeats), best,
              text.size() / 1e6 / best, n / best);
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto opts = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand(
      "tokenize",
      "Encode and decode text with a Hugging Face tokenizer.json (byte-exact with HF tokenizers).\n"
      "  lathe tokenize -m MODEL_DIR -p 'Hello world'           ids and token strings\n"
      "  lathe tokenize -m MODEL_DIR --input-jsonl in.jsonl      one JSON line per {\"text\": ...} line:\n"
      "      {\"ids\", \"ids_with_special\", \"decode\", \"decode_skip_special\"}\n"
      "  lathe tokenize -m MODEL_DIR --bench big.txt             encode throughput (whole file, one call)");
  cmd->add_option("-m,--model", opts->model,
                  "model folder holding tokenizer.json (and optionally tokenizer_config.json), or the "
                  "tokenizer.json file itself")
      ->required();
  auto* p = cmd->add_option("-p,--prompt", opts->prompt, "text to tokenize");
  auto* in = cmd->add_option("--input-jsonl", opts->input_jsonl,
                             "file of {\"text\": ...} lines; prints one JSON result line per input line");
  auto* b = cmd->add_option("--bench", opts->bench_file, "time encoding this whole file in one call; prints MB/s");
  cmd->add_option("--bench-repeats", opts->bench_repeats, "timed repetitions for --bench (best is shown)")
      ->capture_default_str();
  cmd->add_flag("--json", opts->json, "with -p: print the JSON result line instead of a table");
  cmd->add_flag("--no-parse-special", opts->plain_special,
                "treat special-token text in the input as plain text (for untrusted input)");
  p->excludes(in)->excludes(b);
  in->excludes(b);
  cmd->callback([opts, p] {
    // -p "" is a valid (empty) text, so ask CLI11 whether -p was given at all.
    if (p->count() == 0 && opts->input_jsonl.empty() && opts->bench_file.empty())
      fail(ErrorKind::kInvalidArgument, "lathe tokenize: give -p TEXT, --input-jsonl FILE or --bench FILE");
    tok::Tokenizer t = load_tokenizer(opts->model);
    if (!opts->input_jsonl.empty()) run_jsonl(t, *opts);
    else if (!opts->bench_file.empty()) run_bench(t, *opts);
    else run_prompt(t, *opts);
  });
}

}  // namespace lathe::cli
