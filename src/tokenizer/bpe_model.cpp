#include "bpe_model.h"

#include <algorithm>

#include "core/error.h"
#include "unicode.h"

namespace lathe::tok::detail {

namespace {
std::string opt_string(const json& j, const char* key) {
  return j.contains(key) && j.at(key).is_string() ? j.at(key).get<std::string>() : std::string();
}
bool opt_bool(const json& j, const char* key) {
  return j.contains(key) && j.at(key).is_boolean() && j.at(key).get<bool>();
}
}  // namespace

BpeModel::BpeModel(const json& j) : cache_(std::make_unique<Cache>()) {
  set_vocab(parse_object_vocab(j, "BPE model"));

  prefix_ = opt_string(j, "continuing_subword_prefix");
  suffix_ = opt_string(j, "end_of_word_suffix");
  fuse_unk_ = opt_bool(j, "fuse_unk");
  byte_fallback_ = opt_bool(j, "byte_fallback");
  ignore_merges_ = opt_bool(j, "ignore_merges");
  if (std::string unk = opt_string(j, "unk_token"); !unk.empty()) unk_id_ = token_to_id(unk);
  for (int b = 0; b < 256; ++b) {
    auto id = token_to_id(fmt::format("<0x{:02X}>", b));
    byte_ids_[size_t(b)] = id ? *id : -1;
  }

  // Merges come as "a b" strings (older files) or [a, b] pairs. The merged token drops b's
  // continuing_subword_prefix. A repeated pair keeps its last rank, as HF's map insert does.
  const json& merges = require(j, "merges", "BPE model");
  if (!merges.is_array())
    fail(ErrorKind::kFormat, "tokenizer.json: BPE merges must be an array, got {}", merges.dump().substr(0, 200));
  std::unordered_map<uint64_t, Merge> merge_map;
  merge_map.reserve(merges.size());
  int32_t rank = 0;
  for (const auto& m : merges) {
    std::string a, b;
    if (m.is_string()) {
      const auto& s = m.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        fail(ErrorKind::kFormat, "tokenizer.json: BPE merge '{}' is not two tokens separated by a space", s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      fail(ErrorKind::kFormat, "tokenizer.json: BPE merge {} is neither \"a b\" nor [a, b]", m.dump());
    }
    int32_t ia = require_id(a, "merge token");
    int32_t ib = require_id(b, "merge token");
    std::string merged = a + (prefix_.size() <= b.size() && b.compare(0, prefix_.size(), prefix_) == 0
                                  ? b.substr(prefix_.size())
                                  : b);
    merge_map[key(ia, ib)] = Merge{rank++, require_id(merged, "merged token")};
  }
  merges_.build(merge_map);
}

void BpeModel::MergeTable::build(const std::unordered_map<uint64_t, Merge>& merges) {
  size_t cap = 2;
  int bits = 1;
  while (cap < merges.size() * 2 + 2) cap <<= 1, ++bits;
  entries_.assign(cap, Entry{});
  mask_ = cap - 1;
  shift_ = 64 - bits;
  for (const auto& [k, m] : merges) {
    size_t i = slot(k);
    while (entries_[i].key != kEmpty) i = (i + 1) & mask_;
    entries_[i] = Entry{k, m};
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = token_to_id(word)) {
      out.push_back(*id);
      return;
    }
  }
  bool cacheable = word.size() <= kCacheMaxWord;
  if (cacheable) {
    std::lock_guard lock(cache_->mu);
    if (auto it = cache_->map.find(word); it != cache_->map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard lock(cache_->mu);
    if (cache_->map.size() >= kCacheCapacity) cache_->map.clear();
    cache_->map.emplace(std::string(word), std::vector<int32_t>(out.begin() + long(first), out.end()));
  }
}

namespace {

// Min-queue of packed merge candidates. In a trained merge list a pair involving a new token
// ranks after the merge that made it, so keys mostly arrive in increasing order: a radix heap
// (append-only buckets, cache friendly on million-entry queues) takes those, and a binary heap
// takes the rare key below the radix heap's floor, so any merge list stays exact.
class CandidateQueue {
 public:
  bool empty() const { return radix_size_ == 0 && low_.empty(); }
  void push(uint64_t x) {
    if (x >= last_) {
      buckets_[bucket_of(x)].push_back(x);
      ++radix_size_;
    } else {
      low_.push_back(x);
      std::push_heap(low_.begin(), low_.end(), std::greater<>());
    }
  }
  uint64_t pop() {
    if (!low_.empty() && (radix_size_ == 0 || low_.front() < peek_radix())) {
      std::pop_heap(low_.begin(), low_.end(), std::greater<>());
      uint64_t x = low_.back();
      low_.pop_back();
      return x;
    }
    peek_radix();
    buckets_[0].pop_back();
    --radix_size_;
    return last_;
  }

 private:
  int bucket_of(uint64_t x) const { return x == last_ ? 0 : 64 - __builtin_clzll(x ^ last_); }
  // Makes bucket 0 (keys equal to last_) non-empty and returns the radix minimum.
  uint64_t peek_radix() {
    if (buckets_[0].empty()) {
      int i = 1;
      while (buckets_[i].empty()) ++i;
      last_ = *std::min_element(buckets_[i].begin(), buckets_[i].end());
      for (uint64_t x : buckets_[i]) buckets_[bucket_of(x)].push_back(x);
      buckets_[i].clear();
    }
    return last_;
  }
  std::array<std::vector<uint64_t>, 65> buckets_;
  size_t radix_size_ = 0;
  uint64_t last_ = 0;
  std::vector<uint64_t> low_;  // min-heap of keys below last_
};

}  // namespace

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  // Symbols as a doubly linked list over an array; id -1 marks a symbol merged into its left.
  struct Sym {
    int32_t id, prev, next;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  auto add = [&](int32_t id) {
    int32_t n = int32_t(syms.size());
    syms.push_back({id, n - 1, -1});
    if (n > 0) syms[size_t(n - 1)].next = n;
  };
  int32_t pending_unk = -1;  // fuse_unk joins runs of unknown chars into one <unk>
  std::string buf;
  for (size_t i = 0; i < word.size();) {
    size_t start = i;
    i += cp_len(static_cast<unsigned char>(word[i]));
    std::string_view ch = word.substr(start, i - start);
    std::optional<int32_t> id;
    if (prefix_.empty() && suffix_.empty()) {
      id = token_to_id(ch);
    } else {
      buf.clear();
      if (start != 0) buf += prefix_;
      buf += ch;
      if (i >= word.size()) buf += suffix_;
      id = token_to_id(buf);
    }
    if (id) {
      if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
      add(*id);
      continue;
    }
    if (byte_fallback_) {
      bool all = std::all_of(ch.begin(), ch.end(), [&](char c) { return byte_ids_[uint8_t(c)] >= 0; });
      if (all) {
        if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
        for (char c : ch) add(byte_ids_[uint8_t(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = *unk_id_;
    }
    // Without an unk token HF drops the character.
  }
  if (pending_unk >= 0) add(pending_unk);

  // Candidates are packed as rank << 32 | pos, so one integer compare orders them by rank and
  // then leftmost position; new_id is re-read from the table when popped (the stale check).
  CandidateQueue queue;
  auto pack = [](int32_t rank, int32_t pos) { return uint64_t(uint32_t(rank)) << 32 | uint32_t(pos); };
  for (size_t p = 0; p + 1 < syms.size(); ++p)
    if (const Merge* m = merges_.find(key(syms[p].id, syms[p + 1].id))) queue.push(pack(m->rank, int32_t(p)));
  auto push_pair = [&](int32_t left) {
    if (left < 0) return;
    int32_t right = syms[size_t(left)].next;
    if (right < 0) return;
    if (const Merge* m = merges_.find(key(syms[size_t(left)].id, syms[size_t(right)].id)))
      queue.push(pack(m->rank, left));
  };
  while (!queue.empty()) {
    uint64_t top = queue.pop();
    int32_t rank = int32_t(top >> 32), pos = int32_t(uint32_t(top));
    Sym& s = syms[size_t(pos)];
    if (s.id < 0 || s.next < 0) continue;
    // Stale check: the pair now at this position must still be the one queued. A rank names one
    // pair, so comparing ranks is HF's new_id comparison made exact.
    const Merge* m = merges_.find(key(s.id, syms[size_t(s.next)].id));
    if (!m || m->rank != rank) continue;
    int32_t right = s.next;
    s.id = m->new_id;
    s.next = syms[size_t(right)].next;
    if (s.next >= 0) syms[size_t(s.next)].prev = pos;
    syms[size_t(right)].id = -1;
    push_pair(s.prev);
    push_pair(pos);
  }
  for (int32_t p = syms.empty() ? -1 : 0; p >= 0; p = syms[size_t(p)].next) out.push_back(syms[size_t(p)].id);
}

}  // namespace lathe::tok::detail
