// Chat templates: a Jinja2-subset engine that renders Hugging Face chat templates byte-identically
// to transformers' apply_chat_template (ImmutableSandboxedEnvironment with trim_blocks and
// lstrip_blocks on, loopcontrols, tojson as json.dumps(ensure_ascii=False), raise_exception and
// strftime_now globals).
//
// Key order: Python dicts keep insertion order and templates print them (`tool | tojson`).
// nlohmann::json sorts object keys; pass nlohmann::ordered_json to keep the caller's order.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

namespace lathe::tmpl {

struct Program;
class Template;

struct ChatTemplateSource {
  std::string source;
  std::string bos_token, eos_token;
  // The parsed source (compile_chat_template), shared and immutable: render_chat reuses it
  // instead of parsing the source again on every call (a server renders one per request).
  std::shared_ptr<const Template> compiled;
};

// Reads DIR/chat_template.jinja if present, else tokenizer_config.json "chat_template" (a string,
// or the list-of-named-templates form -> "default", or "tool_use" when want_tools and present),
// and bos_token/eos_token (strings or {"content": ...} objects) from tokenizer_config.json.
// Throws lathe::Error(kNotFound) when the folder has no template. With `template_file`, that Jinja
// file is the template (bos/eos still come from the folder), so a folder without one works too.
ChatTemplateSource load_chat_template(const std::filesystem::path& dir, bool want_tools = false,
                                      const std::filesystem::path& template_file = {});

struct TemplateOptions {
  bool trim_blocks = true;    // transformers' setting; Jinja's own default is false
  bool lstrip_blocks = true;  // likewise
};

class Template {
 public:
  // Throws lathe::Error(kFormat) "template syntax error at line L, column C: ...".
  static Template parse(std::string_view source, const TemplateOptions& options = {});
  // Every top-level key of `context` becomes a template variable. Runtime errors throw
  // lathe::Error(kFormat) "template error at line L: ..."; raise_exception() throws
  // lathe::Error(kInvalidArgument) with the template's message.
  std::string render(const nlohmann::json& context) const;
  std::string render(const nlohmann::ordered_json& context) const;

 private:
  std::shared_ptr<const Program> program_;
};

// Parses source.source into source.compiled (throws lathe::Error(kFormat) on a syntax error), so
// a bad template fails when it is loaded, not on the first request.
void compile_chat_template(ChatTemplateSource& source);

// Renders messages (+ optional tools, documents and extra variables) the way transformers'
// apply_chat_template does: tools/documents are None when absent, bos_token/eos_token come from
// the source, `extra` keys (e.g. enable_thinking) are added last and may override.
std::string render_chat(const ChatTemplateSource& source, const nlohmann::json& messages, bool add_generation_prompt,
                        const nlohmann::json& tools = nullptr, const nlohmann::json& extra = nullptr);
std::string render_chat(const ChatTemplateSource& source, const nlohmann::ordered_json& messages,
                        bool add_generation_prompt, const nlohmann::ordered_json& tools = nullptr,
                        const nlohmann::ordered_json& extra = nullptr);

}  // namespace lathe::tmpl
