// User stop strings over streamed text. Text that could still be the start of a stop string is
// held back until it cannot, so a stop string split across tokens is caught and never printed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lathe::engine {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Feeds new text; returns the text now safe to emit. After a stop string is seen, stopped()
  // is true and the returned text ends right before it.
  std::string push(std::string_view text);
  // End of generation: releases whatever is held back.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace lathe::engine
