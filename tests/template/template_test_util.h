// Helpers shared by the template tests: render a snippet with a JSON context, and run tables of
// (template, context, expected) cases so each failure names its template.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

#include "core/error.h"
#include "template/chat_template.h"

namespace lathe::tmpl::testing {

inline std::string render(std::string_view tpl, const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
  return Template::parse(tpl).render(ctx);
}

struct Case {
  const char* tpl;
  const char* expected;
  const char* ctx = "{}";  // JSON text; ordered so dict printing follows insertion order
};

inline void run_cases(std::initializer_list<Case> cases) {
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string("template: ") + c.tpl);
    try {
      EXPECT_EQ(render(c.tpl, nlohmann::ordered_json::parse(c.ctx)), c.expected);
    } catch (const Error& e) {
      ADD_FAILURE() << "threw: " << e.what();
    }
  }
}

// The message of the lathe::Error the render throws ("" if none), and its kind.
inline std::string render_error(std::string_view tpl, ErrorKind* kind = nullptr,
                                const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
  try {
    render(tpl, ctx);
  } catch (const Error& e) {
    if (kind) *kind = e.kind();
    return e.what();
  }
  return "";
}

}  // namespace lathe::tmpl::testing
