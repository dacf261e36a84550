// Loading chat templates from a model folder, and the apply_chat_template-style entry point.
#include "template/chat_template.h"

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/json_file.h"
#include "template/ast.h"
#include "template/eval.h"
#include "template/lexer.h"

namespace lathe::tmpl {

namespace {

// Special tokens appear as plain strings or as AddedToken objects {"content": "...", ...}.
std::string token_text(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return "";
}

template <typename J>
FramePtr make_globals(const J& context) {
  auto frame = std::make_shared<Frame>();
  install_globals(*frame);
  if (!context.is_null()) {
    if (!context.is_object()) fail(ErrorKind::kInvalidArgument, "template context must be a JSON object");
    for (auto it = context.begin(); it != context.end(); ++it) frame->vars[it.key()] = Value::from_json(it.value());
  }
  return frame;
}

template <typename J>
std::string render_chat_impl(const ChatTemplateSource& source, const J& messages, bool add_generation_prompt,
                             const J& tools, const J& extra) {
  if (!messages.is_array()) fail(ErrorKind::kInvalidArgument, "messages must be a JSON array");
  J context = J::object();
  context["messages"] = messages;
  context["tools"] = tools;
  context["documents"] = nullptr;
  context["add_generation_prompt"] = add_generation_prompt;
  context["bos_token"] = source.bos_token;
  context["eos_token"] = source.eos_token;
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) context[it.key()] = it.value();
  return source.compiled ? source.compiled->render(context) : Template::parse(source.source).render(context);
}

}  // namespace

ChatTemplateSource load_chat_template(const std::filesystem::path& dir, bool want_tools,
                                      const std::filesystem::path& template_file) {
  ChatTemplateSource out;
  const auto config_path = dir / "tokenizer_config.json";
  nlohmann::json config;
  if (std::filesystem::exists(config_path)) {
    try {
      config = nlohmann::json::parse(io::read_text_file(config_path));
    } catch (const nlohmann::json::parse_error& e) {
      fail(ErrorKind::kFormat, "{}: invalid JSON: {}", config_path.string(), e.what());
    }
    out.bos_token = token_text(config, "bos_token");
    out.eos_token = token_text(config, "eos_token");
  }
  if (!template_file.empty()) {
    if (!std::filesystem::exists(template_file))
      fail(ErrorKind::kNotFound, "template file not found: {}", template_file.string());
    out.source = io::read_text_file(template_file);
    return out;
  }
  const auto jinja_path = dir / "chat_template.jinja";
  if (std::filesystem::exists(jinja_path)) {
    out.source = io::read_text_file(jinja_path);
    return out;
  }
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null())
    fail(ErrorKind::kNotFound, "no chat template in {}: expected chat_template.jinja or a \"chat_template\" in "
         "tokenizer_config.json (or pass one with --template FILE)", dir.string());
  if (it->is_string()) {
    out.source = it->get<std::string>();
  } else if (it->is_array()) {
    // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
    std::string wanted = want_tools ? "tool_use" : "default";
    const nlohmann::json* pick = nullptr;
    const nlohmann::json* fallback = nullptr;
    for (const auto& entry : *it) {
      if (!entry.is_object() || !entry.contains("name") || !entry.contains("template")) continue;
      if (entry["name"] == wanted) pick = &entry;
      if (entry["name"] == "default") fallback = &entry;
    }
    if (!pick) pick = fallback;
    if (!pick) fail(ErrorKind::kNotFound, "{}: chat_template list has no \"{}\" or \"default\" entry", config_path.string(), wanted);
    out.source = (*pick)["template"].get<std::string>();
  } else {
    fail(ErrorKind::kFormat, "{}: \"chat_template\" must be a string or a list of named templates", config_path.string());
  }
  return out;
}

Template Template::parse(std::string_view source, const TemplateOptions& options) {
  Template t;
  t.program_ = parse_program(source, LexOptions{options.trim_blocks, options.lstrip_blocks});
  return t;
}

std::string Template::render(const nlohmann::json& context) const {
  return Evaluator::render(*program_, make_globals(context));
}

std::string Template::render(const nlohmann::ordered_json& context) const {
  return Evaluator::render(*program_, make_globals(context));
}

void compile_chat_template(ChatTemplateSource& source) {
  source.compiled = std::make_shared<const Template>(Template::parse(source.source));
}

std::string render_chat(const ChatTemplateSource& source, const nlohmann::json& messages, bool add_generation_prompt,
                        const nlohmann::json& tools, const nlohmann::json& extra) {
  return render_chat_impl(source, messages, add_generation_prompt, tools, extra);
}

std::string render_chat(const ChatTemplateSource& source, const nlohmann::ordered_json& messages,
                        bool add_generation_prompt, const nlohmann::ordered_json& tools,
                        const nlohmann::ordered_json& extra) {
  return render_chat_impl(source, messages, add_generation_prompt, tools, extra);
}

}  // namespace lathe::tmpl
