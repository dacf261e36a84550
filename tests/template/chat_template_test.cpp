// Real chat templates: the shared fixture conversations must render byte-identically to
// transformers; model fixture templates must render; tool-calling conversations must come out in
// the order the templates intend; load_chat_template must read every config shape.
#include <cstdlib>
#include <unistd.h>

#include <fstream>

#include "template_test_util.h"
#include "test_paths.h"

namespace lathe::tmpl::testing {
namespace {

namespace fs = std::filesystem;
using ordered = nlohmann::ordered_json;

// The npm tokenizer packages are fetched by scripts/fetch-tokenizers.sh into BUILD/tokenizers.
fs::path tokenizers_dir() {
  if (const char* env = std::getenv("LATHE_TOKENIZERS_DIR"); env && *env) return env;
  return lathe::testing::binary_dir() / "tokenizers";
}

#define REQUIRE_TOKENIZER(var, name)                                                                    \
  const fs::path var = tokenizers_dir() / (name);                                                       \
  if (!fs::exists(var / "tokenizer_config.json"))                                                       \
  GTEST_SKIP() << "tokenizer files missing: " << var / "tokenizer_config.json"                          \
               << " (run: bash scripts/fetch-tokenizers.sh " << tokenizers_dir().string()              \
               << ", or set LATHE_TOKENIZERS_DIR)"

// Asserts that `needles` occur in `text` in this order (each after the previous one).
void expect_in_order(const std::string& text, std::initializer_list<std::string> needles) {
  size_t at = 0;
  for (const auto& n : needles) {
    size_t found = text.find(n, at);
    ASSERT_NE(found, std::string::npos) << "missing (in order): " << n << "\nin:\n" << text;
    at = found + n.size();
  }
}

ordered weather_tools() {
  return ordered::parse(R"([{"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])");
}

ordered tool_conversation() {
  return ordered::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
      {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "assistant", "content": "It is 21C."}])");
}

TEST(ChatTemplateFixtures, RenderByteIdentical) {
  LATHE_REQUIRE_SHARED(jsonl, "fixtures/tokenizers/chat_templates.jsonl");
  std::ifstream in(jsonl);
  std::string line;
  int rendered = 0, skipped = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ordered c = ordered::parse(line);
    const std::string name = c["tokenizer"].get<std::string>();
    const fs::path dir = tokenizers_dir() / name;
    if (!fs::exists(dir / "tokenizer_config.json")) {
      ++skipped;
      continue;
    }
    SCOPED_TRACE("tokenizer " + name + ": " + c["messages"].dump());
    ChatTemplateSource src = load_chat_template(dir, c.contains("tools"));
    src.bos_token = c["bos_token"].get<std::string>();
    src.eos_token = c["eos_token"].get<std::string>();
    ordered tools = c.contains("tools") ? c["tools"] : ordered(nullptr);
    EXPECT_EQ(render_chat(src, c["messages"], c["add_generation_prompt"].get<bool>(), tools),
              c["rendered"].get<std::string>());
    compile_chat_template(src);  // the parsed-once program renders the same bytes
    EXPECT_EQ(render_chat(src, c["messages"], c["add_generation_prompt"].get<bool>(), tools),
              c["rendered"].get<std::string>());
    ++rendered;
  }
  if (rendered == 0)
    GTEST_SKIP() << "tokenizer files missing under " << tokenizers_dir()
                 << " (run: bash scripts/fetch-tokenizers.sh " << tokenizers_dir().string()
                 << ", or set LATHE_TOKENIZERS_DIR)";
  EXPECT_EQ(skipped, 0) << skipped << " fixture cases skipped: tokenizer folders missing under " << tokenizers_dir();
  EXPECT_GE(rendered, 15);
}

// A template parsed once renders like one parsed per call, and a syntax error surfaces when it is
// compiled (lathe serve compiles at start), not on the first request.
TEST(ChatTemplateCompiled, RendersLikeSourceAndFailsEarly) {
  ChatTemplateSource src;
  src.source = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
               "{% if add_generation_prompt %}<assistant>{% endif %}";
  src.bos_token = "<s>";
  const nlohmann::json messages = nlohmann::json::parse(R"([{"role": "user", "content": "hi"}])");
  const std::string want = render_chat(src, messages, true);
  EXPECT_EQ(want, "<s><user>hi<assistant>");
  compile_chat_template(src);
  ASSERT_TRUE(src.compiled);
  EXPECT_EQ(render_chat(src, messages, true), want);
  ChatTemplateSource bad;
  bad.source = "{% for m in messages %}{{ m.content }}";  // no endfor
  try {
    compile_chat_template(bad);
    FAIL() << "a template without endfor compiled";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  }
}

TEST(ChatTemplateFixtures, LoadsTokensFromConfig) {
  REQUIRE_TOKENIZER(dir, "deepseek_v3");
  // deepseek's tokenizer_config stores bos/eos as AddedToken objects {"content": ...}.
  ChatTemplateSource src = load_chat_template(dir);
  EXPECT_EQ(src.bos_token, "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>");
  EXPECT_EQ(src.eos_token, "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>");
  EXPECT_FALSE(src.source.empty());
}

TEST(ChatTemplateFixtures, ModelFolderTemplatesRender) {
  LATHE_REQUIRE_SHARED(models, "fixtures/models");
  ordered messages = ordered::parse(R"([{"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  Hello there  "}, {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Bye"}])");
  int count = 0;
  for (const auto& entry : fs::directory_iterator(models)) {
    if (!fs::exists(entry.path() / "chat_template.jinja")) continue;
    SCOPED_TRACE(entry.path().string());
    ChatTemplateSource src = load_chat_template(entry.path());
    std::string out = render_chat(src, messages, true);
    EXPECT_EQ(out.rfind(src.bos_token, 0), 0u) << out;
    expect_in_order(out, {"You are terse.", "Hello there", "Hi.", "Bye"});
    EXPECT_EQ(out.find("  Hello there  "), std::string::npos) << "content should be trimmed: " << out;
    EXPECT_NE(out.find("<|im_start|>assistant\n", out.size() - 30), std::string::npos) << out;
    ++count;
  }
  EXPECT_GT(count, 0) << "no chat_template.jinja under " << models;
}

TEST(ChatTemplateTools, Qwen3ToolCallsRenderInOrder) {
  REQUIRE_TOKENIZER(dir, "qwen3");
  ChatTemplateSource src = load_chat_template(dir, true);
  std::string out = render_chat(src, tool_conversation(), false, weather_tools());
  // The exact bytes transformers produces (Jinja2 3.1 with transformers' environment).
  EXPECT_EQ(out,
            "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
            "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Get the weather\", "
            "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": "
            "[\"city\"]}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
            "<args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
            "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 21C.<|im_end|>\n");

  // Several calls (string and object arguments), consecutive tool results grouped in one user turn,
  // reasoning split out of the content, and the generation prompt with thinking disabled.
  ordered msgs = ordered::parse(R"([
    {"role": "user", "content": "Weather in Oslo and Rome?"},
    {"role": "assistant", "content": "<think>\nTwo cities.\n</think>\n\nChecking both.", "tool_calls": [
      {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
      {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
    {"role": "tool", "content": "cold"}, {"role": "tool", "content": "warm"}])");
  out = render_chat(src, msgs, true, weather_tools(), ordered{{"enable_thinking", false}});
  expect_in_order(out, {"<tools>\n{\"type\": \"function\"", "</tools>", "<|im_start|>user\nWeather in Oslo and Rome?",
                        "<|im_start|>assistant\n<think>\nTwo cities.\n</think>\n\nChecking both.",
                        "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
                        "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>",
                        "<|im_end|>\n<|im_start|>user\n<tool_response>\ncold\n</tool_response>\n<tool_response>\nwarm\n"
                        "</tool_response><|im_end|>\n",
                        "<|im_start|>assistant\n<think>\n\n</think>\n\n"});
  EXPECT_TRUE(out.ends_with("</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")) << out;
}

TEST(ChatTemplateTools, Llama31ToolMessagesRenderInOrder) {
  REQUIRE_TOKENIZER(dir, "llama3_1");
  // The npm package's Llama 3.1 template is the plain one: it renders every message as a header
  // block (tool results under a "tool" header) and does not print the tool list or tool_calls.
  ChatTemplateSource src = load_chat_template(dir, true);
  std::string out = render_chat(src, tool_conversation(), true, weather_tools());
  EXPECT_EQ(out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>"
            "<|start_header_id|>tool<|end_header_id|>\n\n{\"temp\": 21}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 21C.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// A Llama-3.1-style tool template written for this test (tools listed as JSON in the first user
// turn, calls as {"name", "parameters"}, results under the ipython role) to exercise the constructs
// such templates use: tojson(indent=4), strftime_now defaults, messages[1:] and raise_exception.
constexpr const char* kLlamaStyleToolTemplate = R"TPL({{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools is not none %}
    {%- if messages | length == 0 %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {%- set first_user_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, respond with a JSON function call.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>" }}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls | length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable and message.content is not string %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)TPL";

TEST(ChatTemplateTools, LlamaStyleToolTemplate) {
  ChatTemplateSource src{kLlamaStyleToolTemplate, "<|begin_of_text|>", "<|eot_id|>"};
  std::string out = render_chat(src, tool_conversation(), true, weather_tools());
  EXPECT_EQ(out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
            "Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Given the following functions, respond with a JSON function call.\n\n"
            "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n"
            "        \"description\": \"Get the weather\",\n        \"parameters\": {\n"
            "            \"type\": \"object\",\n            \"properties\": {\n                \"city\": {\n"
            "                    \"type\": \"string\"\n                }\n            },\n"
            "            \"required\": [\n                \"city\"\n            ]\n        }\n    }\n}\n\n"
            "Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"
            "<|start_header_id|>ipython<|end_header_id|>\n\n{\"temp\": 21}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 21C.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Extra variables override the template's defaults.
  out = render_chat(src, tool_conversation(), false, weather_tools(), ordered{{"date_string", "01 Jan 2025"}});
  EXPECT_NE(out.find("Today Date: 01 Jan 2025"), std::string::npos);
}

TEST(ChatTemplateTools, Gemma3AndDeepseek) {
  REQUIRE_TOKENIZER(gemma, "gemma3");
  ChatTemplateSource g = load_chat_template(gemma);
  ordered msgs = ordered::parse(R"([{"role": "system", "content": "S"}, {"role": "user", "content": [
      {"type": "image"}, {"type": "text", "text": " Describe "}]}, {"role": "assistant", "content": "A cat."}])");
  EXPECT_EQ(render_chat(g, msgs, false),
            "<bos><start_of_turn>user\nS\n\n<start_of_image>Describe<end_of_turn>\n<start_of_turn>model\nA cat.<end_of_turn>\n");
  ordered bad = ordered::parse(R"([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])");
  try {
    render_chat(g, bad, true);
    ADD_FAILURE() << "expected raise_exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_STREQ(e.what(), "Conversation roles must alternate user/assistant/user/assistant/...");
  }

  REQUIRE_TOKENIZER(ds, "deepseek_v3");
  ChatTemplateSource d = load_chat_template(ds);
  ordered calls = ordered::parse(R"([{"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": null, "tool_calls": [
      {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "content": "cold"}, {"role": "assistant", "content": "Cold."}])");
  std::string out = render_chat(d, calls, true);
  expect_in_order(out, {d.bos_token, "<\xEF\xBD\x9CUser\xEF\xBD\x9C>Weather?", "get_weather\n```json\n{\"city\": \"Oslo\"}\n```",
                        "<\xEF\xBD\x9Ctool\xE2\x96\x81output\xE2\x96\x81" "begin\xEF\xBD\x9C>cold", "Cold." + d.eos_token});
}

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("lathe_tmpl_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path_ / name) << text; }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

TEST(LoadChatTemplate, ConfigShapes) {
  TempDir t;
  t.write("tokenizer_config.json", R"({"bos_token": {"content": "<B>", "lstrip": false}, "eos_token": "<E>",
    "chat_template": [{"name": "default", "template": "D{{ bos_token }}"}, {"name": "tool_use", "template": "T"}]})");
  ChatTemplateSource plain = load_chat_template(t.path());
  EXPECT_EQ(plain.source, "D{{ bos_token }}");
  EXPECT_EQ(plain.bos_token, "<B>");
  EXPECT_EQ(plain.eos_token, "<E>");
  EXPECT_EQ(load_chat_template(t.path(), true).source, "T");
  EXPECT_EQ(render_chat(plain, nlohmann::json::array(), false), "D<B>");

  // chat_template.jinja wins over the config's template; tokens still come from the config.
  t.write("chat_template.jinja", "J{{ eos_token }}");
  ChatTemplateSource jinja = load_chat_template(t.path(), true);
  EXPECT_EQ(jinja.source, "J{{ eos_token }}");
  EXPECT_EQ(jinja.eos_token, "<E>");
}

TEST(LoadChatTemplate, MissingTemplateIsAClearError) {
  TempDir t;
  t.write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  try {
    load_chat_template(t.path());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("no chat template"), std::string::npos) << e.what();
  }
  TempDir empty;
  EXPECT_THROW(load_chat_template(empty.path()), Error);
}

TEST(RenderChat, ContextLikeApplyChatTemplate) {
  // tools and documents are defined-but-None when not given, as in transformers.
  ChatTemplateSource src{"{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}|{{ messages | length }}", "", ""};
  EXPECT_EQ(render_chat(src, nlohmann::json::array({{{"role", "user"}, {"content", "x"}}}), true), "True|True|True|1");
}

}  // namespace
}  // namespace lathe::tmpl::testing
