// How deeply JSON text nests. nlohmann::json parses without recursion but
// copies and dumps with it: a document nested a million deep (a 1 MiB body,
// a control frame, a configuration file) would overflow the stack of whoever
// copies it. So text from outside is measured before it is parsed, and
// refused beyond kMaxJsonDepth.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string_view>

namespace pefnos {

inline constexpr size_t kMaxJsonDepth = 256;

// The deepest nesting of arrays and objects in text (brackets inside strings
// do not count); the scan stops once it passes limit.
inline size_t jsonDepth(std::string_view text, size_t limit = kMaxJsonDepth) {
  size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) break;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

}  // namespace pefnos
