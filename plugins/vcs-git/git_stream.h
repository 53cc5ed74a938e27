// The git plugin's view of the fast-import streams it mirrors: command lines
// are read, data blocks pass untouched, chunk by chunk (a stream is never
// held). Pure logic, no processes and no I/O, so that tests can feed it
// hostile input and every way of cutting it into chunks.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "pefnos/result.h"

namespace pefnos::git {

// Splits a stream into command lines and data blocks (`data N` then N bytes).
class StreamLines {
 public:
  // Called with each whole command line (without its LF); it appends what
  // goes on (usually the line and a LF) to out, or returns an Error.
  using LineHandler = std::function<Status(std::string_view line, std::string& out)>;

  // Data blocks are appended to out as they come; command lines go to line.
  Status feed(std::string_view chunk, std::string& out, const LineHandler& line);
  // The stream ended: inside a data block or a line is an error.
  Status finish() const;

  static constexpr size_t kMaxLine = 1 << 20;  // longer command lines are an error

 private:
  Status dispatch(std::string_view l, std::string& out, const LineHandler& line);

  std::string partial_;
  uint64_t data_left_ = 0;
  bool failed_ = false;
};

// git fast-export's output on its way to the host. `--show-original-ids`
// labels blobs too, and the stream contract has original-oid on commits only:
// those of blobs are dropped. Remembers each commit's original-oid.
//
// git 2.39 orders a commit's changes deepest path first, so a file that
// becomes a directory comes out as `M x/y` then `D x`, and fast-import, whose
// `M x/y` has already turned the file x into a directory, deletes the new
// directory. Such a `D x` (x a directory an earlier M of the commit made) is
// dropped. (A directory that becomes a file, `D x/y` then `M x`, is right.)
class ExportFilter {
 public:
  Status feed(std::string_view chunk, std::string& out);
  Status finish() const { return lines_.finish(); }

  size_t commits() const { return commits_; }
  const std::string& lastOriginal() const { return last_original_; }  // of the last commit

 private:
  Status line(std::string_view l, std::string& out);

  StreamLines lines_;
  bool in_blob_ = false;        // since a `blob` command, until another command
  std::set<std::string> dirs_;  // directories the current commit's M lines wrote into
  size_t commits_ = 0;
  std::string last_original_;
};

// The host's stream on its way into git fast-import, which must only build
// commits on ref. Known marks (the target's commits the stream builds on)
// become object ids in `from`/`merge`, so fast-import needs no marks file.
// Refused: anything that writes another ref (another commit or reset ref,
// tags), reads back (cat-blob, ls, get-mark), updates refs before the end
// (checkpoint), or changes fast-import's options (option, feature other
// than done and raw dates); `done` is dropped (the plugin ends the stream).
class ImportFilter {
 public:
  ImportFilter(std::string ref, std::map<uint64_t, std::string> known);

  Status feed(std::string_view chunk, std::string& out);
  Status finish() const;

  // The marks of the stream's commits, in stream order.
  const std::vector<uint64_t>& commitMarks() const { return commit_marks_; }

 private:
  Status line(std::string_view l, std::string& out);
  Status parent(std::string_view command, std::string_view value, std::string& out);

  std::string ref_;
  std::map<uint64_t, std::string> known_;
  StreamLines lines_;
  bool after_commit_ = false;  // the previous command line was `commit`
  std::vector<uint64_t> commit_marks_;
  std::set<uint64_t> new_marks_;
};

// `git rev-list --boundary --format=%m %H %T` output, line by line: new
// commits ('>'), and the excluded parents of new commits ('-').
struct RevListEntry {
  bool boundary = false;
  std::string commit, tree;
};
Result<RevListEntry> parseRevListLine(std::string_view line);

// What fast-import printed for the `get-mark` commands the plugin added,
// in order (`progress` lines of the stream are skipped): one object id each.
Result<std::vector<std::string>> parseGetMarks(std::string_view out, size_t expected);

}  // namespace pefnos::git
