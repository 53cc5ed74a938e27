// The Subversion plugin's pure half: what it accepts as branch paths and
// revision ids, how it builds URLs, how it searches for branches, and how it
// reads svn's XML output and walks a branch's history. No processes and no
// I/O here, so that tests can feed it hostile input directly.
//
// Terms: a branch is a directory path relative to the repository URL
// ("trunk", "branches/x"); a revision id is "PATH@REV", REV being the
// revision in which PATH last changed. A repository path ("/proj/trunk") is
// what svn log prints: absolute within the repository, not URL-encoded.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pefnos/result.h"
#include "pefnos/vcs.h"

namespace pefnos::svn {

using Revnum = int64_t;

// A relative path svn may see: non-empty components separated by single
// slashes, none of them "." or "..", no leading '-' (an option), no control
// characters, valid UTF-8 is left to svn. Branch names, branch globs and the
// path half of revision ids must pass this before reaching argv.
bool isValidBranchPath(std::string_view path);

struct RevisionId {
  std::string path;  // relative to the repository URL
  Revnum revision = 0;
};
// "PATH@REV", split at the last '@' (the path may hold '@'); nullopt when the
// path is invalid or REV is not a plain decimal number.
std::optional<RevisionId> parseRevisionId(std::string_view id);
std::string revisionId(std::string_view path, Revnum revision);

// Percent-encodes a path for a URL: everything but unreserved characters and
// '/'. svn would decode a '%' in a name, so names are always encoded by us.
std::string encodePath(std::string_view path);
std::string decodePercent(std::string_view s);
// base (an svn URL, used as given) + "/" + encoded path; either side may be empty.
std::string joinUrl(std::string_view base, std::string_view relative_path);
// The local path of a file:// URL (decoded), nullopt for other URLs or hosts.
std::optional<std::string> localPathOfUrl(std::string_view url);
// A URL without its trailing slashes (svn treats "x/" and "x" alike; our keys should too).
std::string withoutTrailingSlash(std::string_view url);

// The youngest revision from an FSFS repository's db/current ("N\n", or
// "N node-id copy-id\n" for old formats).
std::optional<Revnum> parseYoungest(std::string_view db_current);

// Finds branches level by level: each round names the directories to list
// (one svn list process for all of them), and feed() takes their listings.
// Literal path components are followed without listing; a directory is only
// listed to match a glob component or to learn the revision of the last one.
class BranchSearch {
 public:
  struct Entry {
    std::string name;
    bool directory = false;
    Revnum last_changed = 0;  // <commit revision=…>
  };
  // A listed directory's entries; empty too when it does not exist (a layout
  // without tags/ simply has no tags).
  using Listing = std::vector<Entry>;

  // Fails on an invalid branch name or glob.
  static Result<BranchSearch> make(const std::vector<Repo::Branch>& branches);

  bool finished() const { return pending_.empty(); }
  // The directories (relative to the URL, "" being the URL itself) to list in
  // this round; the first round always includes "" so that the URL's own
  // existence is known.
  std::vector<std::string> targets() const;
  // listings[i] belongs to targets()[i].
  void feed(const std::vector<Listing>& listings);
  // The branches found so far, by name.
  std::vector<Head> heads() const;
  // Directories a glob matched whose paths fail isValidBranchPath (never reported).
  const std::vector<std::string>& refused() const { return refused_; }

 private:
  struct Pending {
    std::string prefix;                   // the directory to list, relative to the URL
    std::vector<std::string> components;  // still to match; components[0] against its entries
    bool glob = false;
  };
  void enqueue(Pending p);
  std::vector<Pending> pending_;
  std::map<std::string, Revnum> found_;
  std::vector<std::string> refused_;
  bool first_round_ = true;
};

// `svn list --xml` output: one listing per target, in target order. A
// missing target has an empty <list>, like an empty directory (svn's exit
// status and onlyMissingTargets() tell them apart, for all targets at once).
Result<std::vector<std::vector<BranchSearch::Entry>>> parseLists(std::string_view xml);

// True when svn failed only because some targets do not exist (E200009 and
// warnings): the listing of the others is complete.
bool onlyMissingTargets(std::string_view svn_stderr);

struct LogPath {
  std::string path;   // repository path
  char action = 'M';  // A, D, M, R
  bool directory = false;
  std::string copyfrom_path;  // empty unless copied
  Revnum copyfrom_revision = 0;
};
struct LogEntry {
  Revnum revision = 0;
  std::string author, date, message;
  std::vector<LogPath> paths;
};
// `svn log --xml -v` output, newest first as svn prints it.
Result<std::vector<LogEntry>> parseLog(std::string_view xml);

// svn's "2024-01-02T03:04:05.678901Z" as ISO 8601 "2024-01-02T03:04:05+00:00".
std::string isoDate(std::string_view svn_date);

// Walks the log of a branch (newest first, as svn log prints it following
// copies) into commits, oldest first. branch_path is the branch's repository
// path at the log's newest entry; root is the repository path of the URL
// ("" for a repository root, "/proj" for a subdirectory). Each commit's id is
// the branch's path at that revision (relative to root) @ revision; its
// parent is the next older entry. Stops before an entry covered by an
// exclusion (Q@M covers Q@K, K ≤ M) and keeps the newest `limit`.
std::vector<CommitInfo> branchHistory(const std::vector<LogEntry>& log, std::string branch_path,
                                      const std::string& root,
                                      const std::vector<RevisionId>& exclude, size_t limit);

}  // namespace pefnos::svn
