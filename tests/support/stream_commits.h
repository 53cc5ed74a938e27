// A fast-import stream's commits as a test reads them back: the command
// lines only (data blocks are skipped by their length). Shared by the tests
// of the VCS plugins' fastExport.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pefnos::test {

// A commit of a fast-import stream as the test reads it back (command lines only).
struct StreamCommit {
  uint64_t mark = 0;
  std::string original;              // original-oid
  std::vector<std::string> parents;  // from, then merge values (":M")
  bool reset_before = false;         // a `reset` of the same ref right before it
};

inline std::vector<StreamCommit> commitsOf(const std::string& stream) {
  std::vector<StreamCommit> commits;
  bool reset = false, in_commit = false;
  size_t at = 0;
  while (at < stream.size()) {
    size_t nl = stream.find('\n', at);
    if (nl == std::string::npos) nl = stream.size();
    std::string line = stream.substr(at, nl - at);
    at = nl + 1;
    if (line.rfind("data ", 0) == 0) {
      at += std::stoull(line.substr(5));
      continue;
    }
    if (line.rfind("reset ", 0) == 0) {
      reset = true;
      in_commit = false;
    } else if (line.rfind("commit ", 0) == 0) {
      commits.push_back({});
      commits.back().reset_before = reset;
      in_commit = true;
      reset = false;
    } else if (in_commit && line.rfind("mark :", 0) == 0 && commits.back().mark == 0) {
      commits.back().mark = std::stoull(line.substr(6));
    } else if (in_commit && line.rfind("original-oid ", 0) == 0) {
      commits.back().original = line.substr(13);
    } else if (in_commit && (line.rfind("from ", 0) == 0 || line.rfind("merge ", 0) == 0)) {
      commits.back().parents.push_back(line.substr(line.find(' ') + 1));
    } else if (line == "blob") {
      in_commit = false;
      reset = false;
    }
  }
  return commits;
}

}  // namespace pefnos::test
