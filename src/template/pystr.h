// Python str semantics on UTF-8 text: the pieces of str's API that chat templates call, shared by
// the string methods (`s.strip()`) and the Jinja filters (`s|trim`) that wrap them.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lathe::tmpl::py {

enum class Side { kBoth, kLeft, kRight };
// str.strip(chars): chars unset strips Python whitespace.
std::string strip(std::string_view s, const std::optional<std::string>& chars, Side side = Side::kBoth);
// str.split(sep, maxsplit): sep unset splits on whitespace runs and drops empty ends.
std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep, long long maxsplit = -1);
std::vector<std::string> rsplit(std::string_view s, const std::optional<std::string>& sep, long long maxsplit = -1);
std::vector<std::string> splitlines(std::string_view s, bool keepends = false);
std::string replace(std::string_view s, std::string_view old, std::string_view repl, long long count = -1);
std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string title(std::string_view s);       // str.title()
std::string capitalize(std::string_view s);  // str.capitalize()
std::string swapcase(std::string_view s);
long long count(std::string_view s, std::string_view sub);
// find/rfind in code points (Python indexes by code point), -1 when absent.
long long find(std::string_view s, std::string_view sub, bool reverse = false);

enum class CharClass { kDigit, kAlpha, kAlnum, kSpace, kLower, kUpper, kDecimal, kNumeric, kTitle };
bool is_class(std::string_view s, CharClass c);

}  // namespace lathe::tmpl::py
