// Byte-pair-encoding model (GPT-2 byte-level and SentencePiece-style with byte fallback).
// Merging uses a min-heap of merge candidates over a linked list of symbols with stale-entry
// checks, so one huge word (a pre-tokenizer-less 1 MB file) costs O(n log n), and always applies
// the lowest-rank merge first, leftmost on ties, exactly as HF tokenizers does.
#pragma once

#include <array>
#include <memory>
#include <mutex>

#include "components.h"

namespace lathe::tok::detail {

class BpeModel : public Model {
 public:
  explicit BpeModel(const json& j);
  void tokenize(std::string_view word, std::vector<int32_t>& out) const override;

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  // Open-addressing table of merges keyed by (left id, right id): the merge loop's hot lookup,
  // kept flat so it stays in cache.
  class MergeTable {
   public:
    void build(const std::unordered_map<uint64_t, Merge>& merges);
    const Merge* find(uint64_t k) const {
      for (size_t i = slot(k);; i = (i + 1) & mask_) {
        const Entry& e = entries_[i];
        if (e.key == k) return &e.merge;
        if (e.key == kEmpty) return nullptr;
      }
    }

   private:
    static constexpr uint64_t kEmpty = ~uint64_t(0);
    struct Entry {
      uint64_t key = kEmpty;
      Merge merge{};
    };
    size_t slot(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ull) >> shift_); }
    std::vector<Entry> entries_{Entry{}};
    size_t mask_ = 0;
    int shift_ = 63;
  };
  MergeTable merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string prefix_;  // continuing_subword_prefix
  std::string suffix_;  // end_of_word_suffix
  std::array<int32_t, 256> byte_ids_{};  // <0xAB> token ids, -1 where missing

  // Cache of short words (pre-tokenized text repeats them a lot). Guarded: encode is const and
  // may run on several threads.
  static constexpr size_t kCacheCapacity = 10000;
  static constexpr size_t kCacheMaxWord = 256;
  struct Cache {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map;
  };
  std::unique_ptr<Cache> cache_;
};

}  // namespace lathe::tok::detail
