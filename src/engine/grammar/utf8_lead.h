// RFC 3629 UTF-8 as JSON strings need it: what a lead byte promises. Shared by the matcher's string
// rules and the vocabulary's per-token string scan, which must agree byte for byte.
#pragma once

#include <cstdint>

namespace lathe::engine {

struct Utf8Lead {
  uint8_t left = 0;            // continuation bytes that must follow (0: not a valid lead byte)
  uint8_t lo = 0x80, hi = 0xBF;  // the first continuation byte's range (no overlong forms, no
                                 // surrogates, nothing past U+10FFFF); later ones are 80..BF
};

inline Utf8Lead utf8_lead(uint8_t c) {
  if (c >= 0xC2 && c <= 0xDF) return {1};
  if (c == 0xE0) return {2, 0xA0};
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return {2};
  if (c == 0xED) return {2, 0x80, 0x9F};
  if (c == 0xF0) return {3, 0x90};
  if (c >= 0xF1 && c <= 0xF3) return {3};
  if (c == 0xF4) return {3, 0x80, 0x8F};
  return {0};
}

}  // namespace lathe::engine
