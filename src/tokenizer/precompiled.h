// The "Precompiled" normalizer: a SentencePiece normalization charsmap (a darts-clone double-array
// trie of source strings plus a blob of NUL-terminated replacements), applied per grapheme as HF
// does (whole grapheme first if shorter than 6 bytes, else char by char).
#pragma once

#include <memory>

#include "components.h"

namespace lathe::tok::detail {

std::unique_ptr<Normalizer> make_precompiled_normalizer(const json& j);

}  // namespace lathe::tok::detail
