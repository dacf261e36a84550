// `lathe template`: render conversations through a model folder's chat template, one JSON line in,
// one {"rendered": ...} line out, the way transformers' apply_chat_template(tokenize=False) would.
#include <fstream>
#include <iostream>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "template/chat_template.h"

namespace lathe::cli {

namespace {

struct TemplateArgs {
  std::string model_dir;
  std::string input = "-";
  std::string template_file;
};

void run_template(const TemplateArgs& args) {
  using ordered = nlohmann::ordered_json;
  // Templates are parsed per line; loading happens once per variant (default / tool_use).
  std::optional<tmpl::ChatTemplateSource> plain, with_tools;
  auto source_for = [&](bool tools) -> const tmpl::ChatTemplateSource& {
    auto& slot = tools ? with_tools : plain;
    if (!slot) {
      slot = tmpl::load_chat_template(args.model_dir, tools, args.template_file);
    }
    return *slot;
  };

  source_for(false);  // a folder without a template fails here, before any input is read
  const std::string label = args.input == "-" ? "stdin" : args.input;
  std::ifstream file;
  std::istream* in = &std::cin;
  if (args.input != "-") {
    file.open(args.input, std::ios::binary);
    if (!file) fail(ErrorKind::kIo, "cannot open input {}", args.input);
    in = &file;
  }
  std::string line;
  size_t lineno = 0;
  while (std::getline(*in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ordered req;
    try {
      req = ordered::parse(line);
    } catch (const ordered::parse_error& e) {
      fail(ErrorKind::kInvalidArgument, "{} line {}: invalid JSON: {}", label, lineno, e.what());
    }
    if (!req.is_object() || !req.contains("messages") || !req["messages"].is_array())
      fail(ErrorKind::kInvalidArgument, "{} line {}: expected an object with a \"messages\" array", label, lineno);
    ordered tools = req.contains("tools") ? req["tools"] : ordered(nullptr);
    tmpl::ChatTemplateSource src = source_for(!tools.is_null());
    if (req.contains("bos_token") && req["bos_token"].is_string()) src.bos_token = req["bos_token"].get<std::string>();
    if (req.contains("eos_token") && req["eos_token"].is_string()) src.eos_token = req["eos_token"].get<std::string>();
    bool add_generation_prompt = req.value("add_generation_prompt", false);
    ordered extra = req.contains("chat_template_kwargs") ? req["chat_template_kwargs"] : ordered(nullptr);
    std::string rendered;
    try {
      rendered = tmpl::render_chat(src, req["messages"], add_generation_prompt, tools, extra);
    } catch (const Error& e) {
      throw Error(e.kind(), fmt::format("{} line {}: {}", label, lineno, e.what()));
    }
    ordered out = ordered::object();
    out["rendered"] = rendered;
    std::cout << out.dump() << '\n';
  }
  std::cout.flush();
}

}  // namespace

void add_template_command(CLI::App& app) {
  auto args = std::make_shared<TemplateArgs>();
  auto* cmd = app.add_subcommand(
      "template",
      "Render chat conversations with a model's chat template (like transformers' apply_chat_template).\n"
      "Input: JSON lines {\"messages\": [...], \"add_generation_prompt\": bool, optional \"tools\": [...],\n"
      "\"bos_token\"/\"eos_token\" (override the folder's), \"chat_template_kwargs\": {...} (extra template\n"
      "variables such as enable_thinking)}. Output: one {\"rendered\": \"...\"} line per input line.\n"
      "The template comes from DIR/chat_template.jinja or tokenizer_config.json's \"chat_template\".");
  cmd->add_option("-m,--model", args->model_dir, "model or tokenizer folder holding the chat template")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--input-jsonl", args->input, "JSON-lines file of conversations ('-' = stdin, the default)");
  cmd->add_option("--template", args->template_file, "use this Jinja file instead of the folder's template")
      ->check(CLI::ExistingFile);
  cmd->callback([args] { run_template(*args); });
}

}  // namespace lathe::cli
