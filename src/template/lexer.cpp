// Jinja-compatible tokenizer. The whitespace rules mirror jinja2/lexer.py: a `-` on a tag strips
// all whitespace on that side; trim_blocks eats one newline after `%}`/`#}`; lstrip_blocks eats
// spaces and tabs between a line start and `{%`/`{#` (not `{{`), unless the tag says `{%+`.
#include "template/lexer.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "template/value.h"

namespace lathe::tmpl {

void syntax_error(int line, int col, const std::string& what) {
  fail(ErrorKind::kFormat, "template syntax error at line {}, column {}: {}", line, col, what);
}

namespace {

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

class Lexer {
 public:
  Lexer(std::string_view source, const LexOptions& options) : opt_(options) {
    // Jinja normalizes every newline to \n and drops one trailing newline (keep_trailing_newline
    // is off in transformers).
    src_.reserve(source.size());
    for (size_t k = 0; k < source.size(); ++k) {
      if (source[k] == '\r') {
        src_ += '\n';
        if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
      } else {
        src_ += source[k];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    line_starts_.push_back(0);
    for (size_t k = 0; k < src_.size(); ++k)
      if (src_[k] == '\n') line_starts_.push_back(k + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // the previous token ended a line (or we are at the start)
    while (pos < src_.size()) {
      size_t tag = find_tag(pos);
      if (tag == std::string::npos) {
        emit_text(pos, src_.size(), pos);
        break;
      }
      char kind = src_[tag + 1];  // '{', '%' or '#'
      char marker = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      std::string text = src_.substr(pos, tag - pos);
      if (marker == '-') {
        while (!text.empty() && is_ws(text.back())) text.pop_back();
      } else if (opt_.lstrip_blocks && marker != '+' && kind != '{') {
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if (l_pos > 0 || line_starting) {
          bool blank = std::all_of(text.begin() + long(l_pos), text.end(),
                                   [](char c) { return c == ' ' || c == '\t'; });
          if (blank) text.resize(l_pos);
        }
      }
      if (!text.empty()) push(Token::Type::kText, text, pos);
      size_t body = tag + 2 + ((marker == '-' || marker == '+') ? 1 : 0);
      if (kind == '#') {
        pos = lex_comment(tag, body);
      } else if (kind == '%' && is_raw(body)) {
        pos = lex_raw(tag, body);
      } else {
        pos = lex_tag(tag, body, kind == '%');
      }
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    push(Token::Type::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t k = src_.find('{', from); k != std::string::npos; k = src_.find('{', k + 1)) {
      if (k + 1 < src_.size() && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#'))
        return k;
    }
    return std::string::npos;
  }

  void loc(size_t offset, int& line, int& col) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    line = int(it - line_starts_.begin());
    col = int(offset - line_starts_[size_t(line - 1)]) + 1;
  }

  [[noreturn]] void error_at(size_t offset, const std::string& what) const {
    int line, col;
    loc(offset, line, col);
    syntax_error(line, col, what);
  }

  Token& push(Token::Type type, std::string text, size_t offset) {
    Token t{type, std::move(text)};
    loc(offset, t.line, t.col);
    tokens_.push_back(std::move(t));
    return tokens_.back();
  }

  void emit_text(size_t begin, size_t end, size_t offset) {
    if (end > begin) push(Token::Type::kText, src_.substr(begin, end - begin), offset);
  }

  // After a closing `%}` / `#}`: `-` strips all following whitespace, else trim_blocks eats one
  // newline (a `+` before the closer turns that off).
  size_t after_close(size_t close_end, char marker, bool block) const {
    size_t p = close_end;
    if (marker == '-') {
      while (p < src_.size() && is_ws(src_[p])) ++p;
    } else if (block && opt_.trim_blocks && marker != '+' && p < src_.size() && src_[p] == '\n') {
      ++p;
    }
    return p;
  }

  size_t lex_comment(size_t tag, size_t body) {
    size_t end = src_.find("#}", body);
    if (end == std::string::npos) error_at(tag, "unterminated comment: missing '#}'");
    char marker = end > body && src_[end - 1] == '-' ? '-' : '\0';
    return after_close(end + 2, marker, true);
  }

  bool is_raw(size_t body) const {
    size_t p = body;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    if (p < src_.size() && src_[p] == '-') ++p;
    return src_.compare(p, 2, "%}") == 0;
  }

  size_t lex_raw(size_t tag, size_t body) {
    size_t close = src_.find("%}", body);
    // Jinja's raw-begin rule has no trim_blocks suffix: only `-%}` strips after it.
    char open_marker = src_[close - 1] == '-' ? '-' : '\0';
    size_t content = after_close(close + 2, open_marker, false);
    // Find `{%[-+]? endraw [-]?%}`.
    for (size_t k = src_.find("{%", content); k != std::string::npos; k = src_.find("{%", k + 2)) {
      size_t p = k + 2;
      char lead = (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ? src_[p++] : '\0';
      while (p < src_.size() && is_ws(src_[p])) ++p;
      if (src_.compare(p, 6, "endraw") != 0) continue;
      p += 6;
      while (p < src_.size() && is_ws(src_[p])) ++p;
      char trail = '\0';
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) trail = src_[p++];
      if (src_.compare(p, 2, "%}") != 0) continue;
      std::string text = src_.substr(content, k - content);
      if (lead == '-') {
        while (!text.empty() && is_ws(text.back())) text.pop_back();
      } else if (opt_.lstrip_blocks && lead != '+') {
        size_t l_pos = text.rfind('\n');
        if (l_pos != std::string::npos &&
            std::all_of(text.begin() + long(l_pos) + 1, text.end(), [](char c) { return c == ' ' || c == '\t'; }))
          text.resize(l_pos + 1);
      }
      if (!text.empty()) push(Token::Type::kText, text, content);
      return after_close(p + 2, trail, true);
    }
    error_at(tag, "unterminated raw block: missing '{% endraw %}'");
  }

  size_t lex_tag(size_t tag, size_t p, bool block) {
    push(block ? Token::Type::kBlockBegin : Token::Type::kVarBegin, "", tag);
    int depth = 0;  // brackets let `}}` appear inside a dict literal
    const char* closer = block ? "%}" : "}}";
    while (true) {
      while (p < src_.size() && is_ws(src_[p])) ++p;
      if (p >= src_.size())
        error_at(tag, std::string("unexpected end of template: missing '") + closer + "'");
      char c = src_[p];
      if (depth == 0) {
        char m = (c == '-' || c == '+') ? c : '\0';
        size_t q = p + (m ? 1 : 0);
        if (src_.compare(q, 2, closer) == 0 && (m != '+' || block)) {
          push(block ? Token::Type::kBlockEnd : Token::Type::kVarEnd, "", p);
          return after_close(q + 2, m, block);
        }
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = p;
        while (e < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        push(Token::Type::kName, src_.substr(p, e - p), p);
        p = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        p = lex_number(p);
      } else if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else {
        static const char* two[] = {"**", "//", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* t : two)
          if (src_.compare(p, 2, t) == 0) op = t;
        if (op.empty()) {
          if (std::string_view("+-*/%~<>=()[]{},.:|;").find(c) == std::string_view::npos)
            error_at(p, std::string("unexpected character '") + c + "' in tag");
          op = std::string(1, c);
        }
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        push(Token::Type::kOp, op, p);
        p += op.size();
      }
    }
  }

  size_t lex_number(size_t p) {
    size_t e = p;
    auto digits = [&] {
      while (e < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
    };
    digits();
    bool is_float = false;
    // `messages[0].content` must lex as 0 . content, so a dot only starts a fraction when a digit
    // follows, and never right after an attribute dot (`x.0.1`).
    bool after_dot = !tokens_.empty() && tokens_.back().type == Token::Type::kOp && tokens_.back().text == ".";
    if (!after_dot && e + 1 < src_.size() && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      is_float = true;
      ++e;
      digits();
    }
    if (!after_dot && e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t q = e + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) {
        is_float = true;
        e = q;
        digits();
      }
    }
    std::string text;
    for (size_t k = p; k < e; ++k)
      if (src_[k] != '_') text += src_[k];
    Token& t = push(is_float ? Token::Type::kFloat : Token::Type::kInt, text, p);
    if (is_float) t.float_value = std::stod(text);
    else t.int_value = std::stoll(text);
    return e;
  }

  size_t lex_string(size_t p) {
    char q = src_[p];
    std::string out;
    size_t k = p + 1;
    auto hex = [&](size_t at, int n) -> char32_t {
      if (at + size_t(n) > src_.size()) error_at(at, "truncated escape in string literal");
      return char32_t(std::stoul(src_.substr(at, size_t(n)), nullptr, 16));
    };
    while (true) {
      if (k >= src_.size()) error_at(p, "unterminated string literal");
      char c = src_[k];
      if (c == q) break;
      if (c != '\\') {
        out += c;
        ++k;
        continue;
      }
      char e = k + 1 < src_.size() ? src_[k + 1] : '\0';
      k += 2;
      // Python's unicode-escape rules, which Jinja applies to string literals.
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\n': break;  // backslash-newline continues the line
        case 'x': utf8_append(out, hex(k, 2)); k += 2; break;
        case 'u': utf8_append(out, hex(k, 4)); k += 4; break;
        case 'U': utf8_append(out, hex(k, 8)); k += 8; break;
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = char32_t(e - '0');
            for (int n = 0; n < 2 && k < src_.size() && src_[k] >= '0' && src_[k] <= '7'; ++n, ++k)
              v = v * 8 + char32_t(src_[k] - '0');
            utf8_append(out, v);
          } else {
            out += '\\';  // unknown escapes stay as written, like Python
            out += e;
          }
      }
    }
    push(Token::Type::kString, out, p);
    return k + 1;
  }

  LexOptions opt_;
  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(std::string_view source, const LexOptions& options) {
  return Lexer(source, options).run();
}

}  // namespace lathe::tmpl
