// UTF-8 and Unicode helpers matching the Rust semantics the HF tokenizers library relies on
// (char::is_whitespace, is_alphanumeric, String::from_utf8_lossy) plus the GPT-2 byte<->char map.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace lathe::tok::detail {

// Decodes the code point at s[i] (s must be valid UTF-8) and advances i.
char32_t next_cp(std::string_view s, size_t& i);
// Byte length of the UTF-8 sequence starting with lead byte b (1 for invalid leads).
inline size_t cp_len(unsigned char b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }
void append_utf8(std::string& out, char32_t cp);
size_t count_chars(std::string_view s);

bool is_valid_utf8(std::string_view s);
// Rust String::from_utf8_lossy: one U+FFFD per maximal ill-formed subsequence.
std::string utf8_lossy(std::string_view bytes);
// Length of an incomplete (but so far valid) UTF-8 sequence at the end of s, else 0.
size_t incomplete_utf8_tail(std::string_view s);

// Rust char predicates (Unicode White_Space; Alphabetic approximated by L*/Nl; numeric N*).
bool is_whitespace(char32_t c);
bool is_alphanumeric(char32_t c);
bool is_numeric(char32_t c);
bool is_punctuation(char32_t c);  // ASCII punctuation or general category P*
bool is_nonspacing_mark(char32_t c);  // Mn
bool is_control_or_other(char32_t c);  // general category C*
bool is_space_separator(char32_t c);  // Zs

// GPT-2 bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 upwards.
const std::array<char32_t, 256>& byte_to_char();
// Inverse map; returns -1 for a char outside the table.
int char_to_byte(char32_t c);

// Unicode normalization forms via utf8proc.
enum class NormForm { kNFC, kNFD, kNFKC, kNFKD };
std::string unicode_normalize(std::string_view s, NormForm form);
std::string to_lower(std::string_view s);  // Rust str::to_lowercase (full mapping for U+0130)

}  // namespace lathe::tok::detail
