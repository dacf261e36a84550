#include "engine/stop_matcher.h"

#include <gtest/gtest.h>

namespace lathe::engine {
namespace {

std::string run(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::string out;
  for (auto& p : pieces) {
    out += m.push(p);
    if (m.stopped()) return out;
  }
  return out + m.flush();
}

TEST(StopMatcher, StopAcrossPieces) {
  StopMatcher m({"</end>"});
  EXPECT_EQ(run(m, {"hello </", "en", "d> more"}), "hello ");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcher, HeldBackTextIsReleasedWhenItCannotMatch) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.push("abc ST"), "abc ");
  EXPECT_EQ(m.push("AR"), "STAR");
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, EarliestOfSeveral) {
  StopMatcher m({"world", "lo w"});
  EXPECT_EQ(run(m, {"hello world"}), "hel");
}

TEST(StopMatcher, FlushReleasesPartialPrefix) {
  StopMatcher m({"\n\n"});
  EXPECT_EQ(run(m, {"line\n"}), "line\n");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, NoStops) {
  StopMatcher m({});
  EXPECT_EQ(run(m, {"a", "b"}), "ab");
}

}  // namespace
}  // namespace lathe::engine
