// Typed reads of a JSON request's fields, each failure a 400 that names the field: wrong type,
// out of range, not finite. A field that is absent or null reads as "not given" (OpenAI clients
// send null for unset options); fields nobody reads are ignored, as OpenAI's API does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lathe::server {

class RequestFields {
 public:
  // The body must be a JSON object (else 400).
  explicit RequestFields(const nlohmann::json& body);

  const nlohmann::json* get(const std::string& name) const;  // null when absent or null
  std::optional<bool> boolean(const std::string& name) const;
  std::optional<int64_t> integer(const std::string& name, int64_t min, int64_t max) const;
  std::optional<double> number(const std::string& name, double min, double max) const;
  std::optional<std::string> string(const std::string& name) const;
  // A string, or an array of up to max_items strings (OpenAI's stop).
  std::vector<std::string> strings(const std::string& name, size_t max_items) const;
  // An array of token ids in [0, vocab).
  std::vector<int32_t> token_ids(const std::string& name, int64_t vocab) const;

 private:
  const nlohmann::json& body_;
};

// The same checks on a value that is not a top-level field (an array element, a nested object).
int64_t integer_value(const nlohmann::json& v, const std::string& name, int64_t min, int64_t max);

}  // namespace lathe::server
