#include "engine/grammar/json_grammar.h"

#include "core/error.h"

namespace lathe::engine {

JsonGrammar::JsonGrammar(const GrammarOptions& options) : options_(options) {
  if (options.max_depth < 1) fail(ErrorKind::kInvalidArgument, "grammar max_depth must be >= 1");
  // The built-in nodes, at the ids the constants name (JsonMatcher dispatches "any value" to them).
  add({.kind = NodeKind::kAny});
  add({.kind = NodeKind::kObject, .values = kAnyValue});
  add({.kind = NodeKind::kArray, .values = kAnyValue});
  add({.kind = NodeKind::kString});
  add({.kind = NodeKind::kNumber});
  literal("true");
  literal("false");
  literal("null");
  LATHE_CHECK(size() == size_t(kNull) + 1);
}

int32_t JsonGrammar::add(GrammarNode node) {
  nodes_.push_back(std::move(node));
  return int32_t(nodes_.size() - 1);
}

int32_t JsonGrammar::literal(std::string text) {
  LATHE_CHECK(!text.empty());  // an empty literal would complete without consuming a byte
  return add({.kind = NodeKind::kLiteral, .text = std::move(text)});
}

std::shared_ptr<const JsonGrammar> JsonGrammar::any_object(const GrammarOptions& options) {
  auto g = std::make_shared<JsonGrammar>(options);
  g->set_root(kAnyObject);
  return g;
}

}  // namespace lathe::engine
