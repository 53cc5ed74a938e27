// JSON text from outside (a control frame, an HTTP body, a configuration
// file, a command's arguments), parsed in one way. nlohmann::json parses
// without recursion but copies and dumps with it: a document nested a million
// deep would overflow the stack of whoever copies it. So the text is measured
// before it is parsed, and refused beyond kMaxJsonDepth.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/base/result.h"

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

// The JSON value in text, or why there is none, worded to follow "is": "nested
// more than 256 deep", or "not JSON: parse error at line 1, column 2: syntax
// error ...". The library's "; last read: '...'" and all after it are left
// out: it quotes the text, which may be a peer's bytes and not even UTF-8,
// and may itself hold "'; expected " (the fuzzer found that), so where the
// quote ends cannot be told.
inline Result<nlohmann::json> parseJson(std::string_view text) {
  if (jsonDepth(text) > kMaxJsonDepth) return Error{"nested more than " + std::to_string(kMaxJsonDepth) + " deep"};
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 2: syntax
    // error while parsing value - invalid literal; last read: 'x'; expected ..."
    // or out_of_range.406 for a number no double holds.
    std::string what = e.what();
    if (auto at = what.find("] "); at != std::string::npos) what.erase(0, at + 2);
    if (auto from = what.find("; last read: '"); from != std::string::npos) what.erase(from);
    return Error{"not JSON: " + what};
  }
}

}  // namespace pefnos
