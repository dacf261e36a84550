// The WordPiece, Unigram and WordLevel models, and make_model (BPE lives in bpe_model.cpp).
#include <limits>

#include "bpe_model.h"
#include "core/error.h"
#include "unicode.h"

namespace lathe::tok::detail {

namespace {

Vocab object_vocab(const json& j, const char* where) { return parse_object_vocab(j, where); }

// Greedy longest-match-first; any unmatched remainder makes the whole word <unk> (HF WordPiece).
class WordPieceModel : public Model {
 public:
  explicit WordPieceModel(const json& j) {
    set_vocab(object_vocab(j, "WordPiece model"));
    unk_id_ = require_id(require(j, "unk_token", "WordPiece model").get<std::string>(), "unk_token");
    prefix_ = j.value("continuing_subword_prefix", std::string("##"));
    max_chars_ = 100;
    if (j.contains("max_input_chars_per_word") && !j.at("max_input_chars_per_word").is_null()) {
      const json& m = j.at("max_input_chars_per_word");
      if (!m.is_number_unsigned())
        fail(ErrorKind::kFormat, "tokenizer.json: WordPiece max_input_chars_per_word must be a non-negative "
             "integer, got {}", m.dump());
      max_chars_ = m.get<size_t>();
    }
  }
  void tokenize(std::string_view word, std::vector<int32_t>& out) const override {
    if (word.empty()) return;
    if (count_chars(word) > max_chars_) {
      out.push_back(unk_id_);
      return;
    }
    std::vector<int32_t> pieces;
    std::string buf;
    size_t start = 0;
    while (start < word.size()) {
      size_t end = word.size();
      std::optional<int32_t> found;
      while (start < end) {
        buf.clear();
        if (start > 0) buf += prefix_;
        buf += word.substr(start, end - start);
        if ((found = token_to_id(buf))) break;
        do --end; while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
      }
      if (!found) {
        out.push_back(unk_id_);
        return;
      }
      pieces.push_back(*found);
      start = end;
    }
    out.insert(out.end(), pieces.begin(), pieces.end());
  }

 private:
  int32_t unk_id_;
  std::string prefix_;
  size_t max_chars_;
};

class WordLevelModel : public Model {
 public:
  explicit WordLevelModel(const json& j) {
    set_vocab(object_vocab(j, "WordLevel model"));
    unk_id_ = require_id(require(j, "unk_token", "WordLevel model").get<std::string>(), "unk_token");
  }
  void tokenize(std::string_view word, std::vector<int32_t>& out) const override {
    if (word.empty()) return;
    auto id = token_to_id(word);
    out.push_back(id ? *id : unk_id_);
  }

 private:
  int32_t unk_id_;
};

// SentencePiece unigram: Viterbi over the vocab log-probabilities. A char no piece starts with
// costs (min score - 10) as <unk>; consecutive <unk>s fuse; with byte_fallback an unknown piece
// becomes its <0xAB> bytes. Mirrors HF Unigram::encode_optimized.
class UnigramModel : public Model {
 public:
  explicit UnigramModel(const json& j) {
    const json& vocab = require(j, "vocab", "Unigram model");
    if (!vocab.is_array()) fail(ErrorKind::kFormat, "tokenizer.json: Unigram vocab must be [[piece, score], ...]");
    Vocab v;
    scores_.reserve(vocab.size());
    min_score_ = std::numeric_limits<double>::infinity();
    nodes_.push_back(TrieNode{});
    for (size_t id = 0; id < vocab.size(); ++id) {
      const json& e = vocab[id];
      if (!e.is_array() || e.size() != 2)
        fail(ErrorKind::kFormat, "tokenizer.json: Unigram vocab entry {} is not [piece, score]", id);
      std::string piece = e[0].get<std::string>();
      double score = e[1].get<double>();
      scores_.push_back(score);
      min_score_ = std::min(min_score_, score);
      v.emplace(piece, int32_t(id));
      insert(piece, int32_t(id));
    }
    set_vocab(std::move(v));
    if (j.contains("unk_id") && j.at("unk_id").is_number_integer()) unk_id_ = j.at("unk_id").get<int32_t>();
    byte_fallback_ = j.value("byte_fallback", false);
    for (int b = 0; b < 256; ++b) {
      auto id = token_to_id(fmt::format("<0x{:02X}>", b));
      byte_ids_[size_t(b)] = id ? *id : -1;
    }
  }

  void tokenize(std::string_view s, std::vector<int32_t>& out) const override {
    if (s.empty()) return;
    struct Best {
      double score = 0;
      int64_t start = -1;
      int32_t id = -1;
    };
    std::vector<Best> best(s.size() + 1);
    const double unk_score = min_score_ - 10.0;
    for (size_t pos = 0; pos < s.size();) {
      size_t mblen = cp_len(static_cast<unsigned char>(s[pos]));
      double base = best[pos].score;
      bool single = false;
      int32_t node = 0;
      for (size_t k = pos; k < s.size(); ++k) {
        node = child(node, static_cast<unsigned char>(s[k]));
        if (node < 0) break;
        int32_t id = nodes_[size_t(node)].id;
        if (id < 0) continue;
        Best& t = best[k + 1];
        double cand = base + scores_[size_t(id)];
        if (t.start < 0 || cand > t.score) t = {cand, int64_t(pos), id};
        if (k + 1 - pos == mblen) single = true;
      }
      if (!single) {
        if (!unk_id_)
          fail(ErrorKind::kFormat, "tokenizer.json: Unigram model needs an unk_id to encode '{}'",
               s.substr(pos, mblen));
        Best& t = best[pos + mblen];
        double cand = base + unk_score;
        if (t.start < 0 || cand > t.score) t = {cand, int64_t(pos), *unk_id_};
      }
      pos += mblen;
    }
    // Backtrack into pieces (reverse order), then walk forward fusing runs of <unk>.
    struct Span {
      size_t b, e;
      bool unk;
    };
    std::vector<Span> spans;
    for (size_t end = s.size(); end > 0;) {
      const Best& b = best[end];
      size_t start = size_t(b.start);
      spans.push_back({start, end, unk_id_ && b.id == *unk_id_});
      end = start;
    }
    std::vector<std::pair<std::string_view, bool>> fused;
    for (size_t k = spans.size(); k-- > 0;) {
      const Span& sp = spans[k];
      if (sp.unk && !fused.empty() && fused.back().second) {
        auto& prev = fused.back().first;
        prev = std::string_view(prev.data(), prev.size() + (sp.e - sp.b));
      } else {
        fused.emplace_back(s.substr(sp.b, sp.e - sp.b), sp.unk);
      }
    }
    for (const auto& [piece, unk] : fused) {
      if (auto id = token_to_id(piece)) {
        out.push_back(*id);
        continue;
      }
      if (byte_fallback_ &&
          std::all_of(piece.begin(), piece.end(), [&](char c) { return byte_ids_[uint8_t(c)] >= 0; })) {
        for (char c : piece) out.push_back(byte_ids_[uint8_t(c)]);
        continue;
      }
      out.push_back(*unk_id_);
    }
  }

 private:
  struct TrieNode {
    int32_t first_child = -1, next_sibling = -1, id = -1;
    uint8_t byte = 0;
  };
  int32_t child(int32_t node, uint8_t b) const {
    for (int32_t c = nodes_[size_t(node)].first_child; c >= 0; c = nodes_[size_t(c)].next_sibling)
      if (nodes_[size_t(c)].byte == b) return c;
    return -1;
  }
  void insert(std::string_view piece, int32_t id) {
    int32_t node = 0;
    for (unsigned char b : piece) {
      int32_t c = child(node, b);
      if (c < 0) {
        c = int32_t(nodes_.size());
        TrieNode n;
        n.byte = b;
        n.next_sibling = nodes_[size_t(node)].first_child;
        nodes_.push_back(n);
        nodes_[size_t(node)].first_child = c;
      }
      node = c;
    }
    if (nodes_[size_t(node)].id < 0) nodes_[size_t(node)].id = id;
  }

  std::vector<TrieNode> nodes_;
  std::vector<double> scores_;
  double min_score_ = 0;
  std::optional<int32_t> unk_id_;
  bool byte_fallback_ = false;
  std::array<int32_t, 256> byte_ids_{};
};

}  // namespace

std::unique_ptr<Model> make_model(const json& j) {
  if (!j.is_object()) fail(ErrorKind::kFormat, "tokenizer.json: \"model\" must be an object");
  std::string t;
  if (j.contains("type") && j.at("type").is_string()) {
    t = j.at("type").get<std::string>();
  } else if (j.contains("merges")) {
    t = "BPE";  // very old files omit the type
  } else if (j.contains("vocab") && j.at("vocab").is_array()) {
    t = "Unigram";
  } else if (j.contains("max_input_chars_per_word")) {
    t = "WordPiece";
  } else {
    t = "WordLevel";
  }
  if (t == "BPE") return std::make_unique<BpeModel>(j);
  if (t == "WordPiece") return std::make_unique<WordPieceModel>(j);
  if (t == "Unigram") return std::make_unique<UnigramModel>(j);
  if (t == "WordLevel") return std::make_unique<WordLevelModel>(j);
  fail(ErrorKind::kUnsupported,
       "tokenizer.json: model type '{}' is not supported (supported: BPE, WordPiece, Unigram, WordLevel)", t);
}

}  // namespace lathe::tok::detail
