// Plugin files as a user puts them into a plugin directory, good and bad,
// and the lines of `pefnos plugins list` that report them.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace pefnos::test {

// A file written whole.
inline void writeFile(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

// A copy of a plugin file (at most max_bytes of it), mode 0755 as installed.
inline void copyPlugin(const std::string& from, const std::string& to,
                       std::streamsize max_bytes = std::numeric_limits<std::streamsize>::max()) {
  std::ifstream in(from, std::ios::binary);
  ASSERT_TRUE(in) << "cannot read " << from;
  std::string content;
  content.resize(static_cast<size_t>(std::min<std::streamsize>(max_bytes, std::filesystem::file_size(from))));
  in.read(content.data(), static_cast<std::streamsize>(content.size()));
  writeFile(to, content);
  ASSERT_EQ(chmod(to.c_str(), 0755), 0) << to;
}

// A real shared library that is no pefnos plugin.
inline std::string plainSharedLibrary() {
  for (const char* path :
       {"/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1", "/usr/lib/aarch64-linux-gnu/libz.so.1",
        "/lib64/libz.so.1", "/usr/lib/libz.so.1"}) {
    if (std::filesystem::exists(path)) return path;
  }
  return "";
}

// The line of `pefnos plugins list` that reports path ("" if none).
inline std::string listedLine(const std::string& listing, const std::string& state,
                              const std::string& path) {
  std::istringstream lines(listing);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(state, 0) == 0 && line.find(path) != std::string::npos) return line;
  }
  return "";
}

}  // namespace pefnos::test
