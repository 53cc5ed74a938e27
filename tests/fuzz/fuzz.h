// What every fuzz target shares: a check that aborts (so libFuzzer records
// the input as a crash) and a deterministic way of cutting an input into the
// chunks a stream reader would get, to prove that the cut does not matter.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

#define FUZZ_CHECK(condition)                                                          \
  do {                                                                                 \
    if (!(condition)) {                                                                \
      std::fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)

namespace pefnos::fuzz {

inline std::string_view asText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// The input cut at points drawn from its own hash: the same input always
// gives the same chunks, and chunks range from 1 byte to a few hundred.
inline std::vector<std::string_view> chunks(std::string_view data) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : data) h = (h ^ c) * 1099511628211ull;
  std::vector<std::string_view> out;
  while (!data.empty()) {
    h ^= h << 13, h ^= h >> 7, h ^= h << 17;  // xorshift64
    size_t n = (h & 3) == 0 ? 1 : 1 + static_cast<size_t>(h >> 40) % ((h & 1) ? 16 : 700);
    n = n < data.size() ? n : data.size();
    out.push_back(data.substr(0, n));
    data.remove_prefix(n);
  }
  return out;
}

}  // namespace pefnos::fuzz
