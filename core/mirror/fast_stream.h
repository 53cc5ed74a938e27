// Reads a fast-import stream on its way from an exporter to an importer.
//
// The master never holds a stream: each chunk goes through feed() and on to
// the importer. feed() reads only the command lines (the data blocks pass
// untouched) to learn which mark is which source revision and which marks
// each commit builds on, checks that the stream keeps the contract of
// include/pefnos/vcs.h, and removes the `original-oid` lines that only the
// master needs. Pure logic, no I/O: unit-tested and fuzzed.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/result.h"

namespace pefnos::mirror {

class StreamFilter {
 public:
  struct Commit {
    uint64_t mark = 0;
    std::string source;             // the source revision id (original-oid)
    std::vector<uint64_t> parents;  // from, then merges
  };

  // Marks 1..known_max are revisions the target already has; every commit
  // must go on `ref`.
  StreamFilter(uint64_t known_max, std::string ref);

  // Appends what the importer must get to out. An Error means the stream is
  // broken: stop the run.
  Status feed(std::string_view chunk, std::string& out);
  // The exporter ended: anything left unfinished is an error.
  Status finish();

  const std::vector<Commit>& commits() const { return commits_; }
  // Marks below known_max+1 that new commits built on: the boundary between
  // what the target had and what the stream brings.
  const std::set<uint64_t>& knownParents() const { return known_parents_; }
  uint64_t bytes() const { return bytes_; }

  static constexpr size_t kMaxLine = 1 << 20;  // a command line longer than this is an error

 private:
  Status line(std::string_view l, std::string& out);
  Status parentMark(std::string_view value, std::string_view what);

  uint64_t known_max_;
  std::string ref_;
  std::string partial_;         // a command line not yet ended
  uint64_t data_left_ = 0;      // bytes of a data block still to pass
  bool in_commit_ = false;      // the last command was `commit`
  bool expect_mark_ = false;    // `mark` right after the `commit` line
  std::vector<Commit> commits_;
  std::set<uint64_t> commit_marks_;  // new commit marks seen so far
  std::set<uint64_t> known_parents_;
  uint64_t bytes_ = 0;
  bool failed_ = false;
};

}  // namespace pefnos::mirror
