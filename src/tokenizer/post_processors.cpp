// Post-processors of tokenizer.json ("post_processor"), for single sequences: TemplateProcessing,
// BertProcessing, RobertaProcessing, ByteLevel (offsets only: ids unchanged), Sequence.
#include "core/error.h"
#include "components.h"

namespace lathe::tok::detail {

namespace {

// A fixed list of ids around the sequence: prefix + ids + suffix.
class WrapProcessor : public PostProcessor {
 public:
  WrapProcessor(std::vector<int32_t> prefix, std::vector<int32_t> suffix)
      : prefix_(std::move(prefix)), suffix_(std::move(suffix)) {}
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), prefix_.begin(), prefix_.end());
    ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  }
  std::vector<int32_t> prefix_ids() const override { return prefix_; }

 private:
  std::vector<int32_t> prefix_, suffix_;
};

class IdentityProcessor : public PostProcessor {
 public:
  void process(std::vector<int32_t>&) const override {}
};

class SequenceProcessor : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
  void process(std::vector<int32_t>& ids) const override {
    for (const auto& p : parts_) p->process(ids);
  }
  std::vector<int32_t> prefix_ids() const override {
    // Later processors wrap earlier ones, so the outermost prefix comes first.
    std::vector<int32_t> out;
    for (const auto& p : parts_) {
      auto pre = p->prefix_ids();
      out.insert(out.begin(), pre.begin(), pre.end());
    }
    return out;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

std::unique_ptr<PostProcessor> make_template(const json& j) {
  const json& single = require(j, "single", "TemplateProcessing");
  const json& specials = j.contains("special_tokens") ? j.at("special_tokens") : json::object();
  std::vector<int32_t> prefix, suffix;
  bool seen_sequence = false;
  for (const auto& item : single) {
    if (item.contains("Sequence")) {
      if (seen_sequence)
        fail(ErrorKind::kUnsupported, "tokenizer.json: TemplateProcessing 'single' uses the sequence twice");
      seen_sequence = true;
      continue;
    }
    if (!item.contains("SpecialToken"))
      fail(ErrorKind::kFormat, "tokenizer.json: TemplateProcessing item {} is neither Sequence nor SpecialToken",
           item.dump());
    std::string name = require(item.at("SpecialToken"), "id", "TemplateProcessing SpecialToken").get<std::string>();
    if (!specials.contains(name))
      fail(ErrorKind::kFormat, "tokenizer.json: TemplateProcessing uses special token '{}' missing from "
           "its special_tokens", name);
    auto& dst = seen_sequence ? suffix : prefix;
    for (const auto& id : require(specials.at(name), "ids", "TemplateProcessing special token"))
      dst.push_back(id.get<int32_t>());
  }
  return std::make_unique<WrapProcessor>(std::move(prefix), std::move(suffix));
}

int32_t pair_id(const json& j, const char* key, const char* where) {
  const json& p = require(j, key, where);
  if (!p.is_array() || p.size() != 2)
    fail(ErrorKind::kFormat, "tokenizer.json: {} '{}' must be [token, id]", where, key);
  return p[1].get<int32_t>();
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, "post_processor");
  if (t == "TemplateProcessing") return make_template(j);
  if (t == "ByteLevel") return std::make_unique<IdentityProcessor>();
  if (t == "BertProcessing" || t == "RobertaProcessing")
    return std::make_unique<WrapProcessor>(std::vector<int32_t>{pair_id(j, "cls", t.c_str())},
                                           std::vector<int32_t>{pair_id(j, "sep", t.c_str())});
  if (t == "Sequence") {
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (const auto& p : require(j, "processors", "Sequence post_processor"))
      if (auto q = make_post_processor(p)) parts.push_back(std::move(q));
    return std::make_unique<SequenceProcessor>(std::move(parts));
  }
  fail(ErrorKind::kUnsupported,
       "tokenizer.json: post_processor type '{}' is not supported (supported: TemplateProcessing, "
       "BertProcessing, RobertaProcessing, ByteLevel, Sequence)", t);
}

}  // namespace lathe::tok::detail
