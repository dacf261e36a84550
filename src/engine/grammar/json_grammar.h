// A JSON grammar compiled to a small graph of value nodes: what JsonMatcher runs as a pushdown
// automaton, byte by byte. Built from "any JSON object" (OpenAI response_format json_object) or from
// a JSON Schema subset (json_schema.cpp). Immutable once built, so one grammar serves every request
// that asks for the same format.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lathe::engine {

enum class NodeKind : uint8_t {
  kAny,      // any JSON value
  kObject,   // declared properties (in order), or a map of free keys, or only {}
  kArray,
  kString,   // a string of min..max code points
  kNumber,
  kInteger,  // a number without fraction or exponent
  kLiteral,  // exactly `text` (true/false/null, an enum/const value, a property key)
  kChoice,   // any one of `alternatives` (anyOf, oneOf, type lists, enum)
};

inline constexpr uint32_t kUnbounded = std::numeric_limits<uint32_t>::max();

struct Property {
  int32_t key = -1;    // a kLiteral node: the key's JSON escaping and its closing quote
  int32_t value = -1;  // the value's node
  bool required = false;
};

struct GrammarNode {
  NodeKind kind = NodeKind::kAny;
  std::vector<Property> properties;  // kObject, in the order they must appear
  int32_t last_required = -1;        // kObject: index of the last required property (-1: none)
  int32_t values = -1;               // kObject without properties: the node of every free key's value
                                     // (-1: no free keys); kArray: the items' node
  uint32_t min = 0, max = kUnbounded;  // kArray: items; kString: code points
  std::string text;                    // kLiteral
  std::vector<int32_t> alternatives;   // kChoice
};

struct GrammarOptions {
  // Longest run of whitespace between tokens: JSON allows any amount, but a model must not be able
  // to loop on spaces or newlines forever (8 covers pretty-printed output a few levels deep).
  uint32_t max_whitespace = 8;
  // Nesting depth of arrays and objects (a random or confused model could open brackets forever).
  uint32_t max_depth = 32;
};

class JsonGrammar {
 public:
  // Node ids every grammar has (the pieces of "any value").
  static constexpr int32_t kAnyValue = 0, kAnyObject = 1, kAnyArray = 2, kAnyString = 3, kAnyNumber = 4,
                           kTrue = 5, kFalse = 6, kNull = 7;

  // Any JSON object (RFC 8259 values inside).
  static std::shared_ptr<const JsonGrammar> any_object(const GrammarOptions& options = {});
  // A JSON Schema: the subset described in json_schema.cpp. Throws lathe::Error kInvalidArgument
  // naming the keyword or construct it cannot enforce (message fit for an HTTP 400). Properties are
  // generated in the schema's key order: an ordered_json keeps it, nlohmann::json sorts the keys.
  static std::shared_ptr<const JsonGrammar> from_schema(const nlohmann::ordered_json& schema,
                                                        const GrammarOptions& options = {});
  static std::shared_ptr<const JsonGrammar> from_schema(const nlohmann::json& schema, const GrammarOptions& options = {});

  const GrammarNode& node(int32_t id) const { return nodes_[size_t(id)]; }
  int32_t root() const { return root_; }
  const GrammarOptions& options() const { return options_; }

  // ---- Building (json_schema.cpp) ----
  explicit JsonGrammar(const GrammarOptions& options);  // with the built-in nodes, root = any value
  int32_t add(GrammarNode node);
  GrammarNode& mutable_node(int32_t id) { return nodes_[size_t(id)]; }
  int32_t literal(std::string text);
  void set_root(int32_t id) { root_ = id; }
  size_t size() const { return nodes_.size(); }

 private:
  std::vector<GrammarNode> nodes_;
  int32_t root_ = kAnyValue;
  GrammarOptions options_;
};

}  // namespace lathe::engine
