// Splits template source into text and tag tokens, applying Jinja's whitespace rules (`-` markers,
// trim_blocks, lstrip_blocks) at this stage exactly as Jinja's own lexer does, so the parser never
// sees whitespace decisions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lathe::tmpl {

struct LexOptions {
  bool trim_blocks = true;    // drop the first newline after a block or comment tag
  bool lstrip_blocks = true;  // drop spaces/tabs before a block or comment tag at line start
};

struct Token {
  enum class Type { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };
  Type type;
  std::string text;  // text, name, operator, or the unescaped string literal
  long long int_value = 0;
  double float_value = 0;
  int line = 1, col = 1;
};

// Throws lathe::Error(kFormat) with line and column on an unterminated tag, string or comment.
std::vector<Token> tokenize(std::string_view source, const LexOptions& options);

// "template syntax error at line L, column C: <what>"
[[noreturn]] void syntax_error(int line, int col, const std::string& what);

}  // namespace lathe::tmpl
