// Part of the plugin API: the interface a version-control plugin implements.
//
// All operations are asynchronous: they return at once and call done on the
// loop thread, exactly once (unless the Vcs object is destroyed first).
// Branch names, revisions and URLs reach programs as argv elements only.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pefnos/host.h"
#include "pefnos/result.h"

namespace pefnos {

// One repository as the host sees it.
struct Repo {
  int id = 0;
  std::string url;  // the upstream
  // The local proxy, chosen by the host. Every repository of one fork network
  // (a repository, its forks, their forks) gets the same proxy, so that forks
  // share storage; each keeps its branches under its own ref_prefix.
  std::string proxy;
  std::string ref_prefix;  // e.g. "refs/pefnos/7/": this repository's namespace in the proxy
  // The branches the configuration names for this repository: exact names and
  // globs (pattern). A VCS that cannot list every branch cheaply (Subversion,
  // where a branch is any directory) looks only where these point.
  struct Branch {
    std::string name;
    bool pattern = false;
  };
  std::vector<Branch> branches;
};

struct Head {
  std::string branch;    // "main", "feature/x"
  std::string revision;  // a revision id (never a revision number)
};

struct CommitInfo {
  std::string revision;
  std::vector<std::string> parents;  // merge parents included, in order
  std::string author, author_date;        // "Name <email>", ISO 8601 with offset
  std::string committer, committer_date;
  std::string message;
  std::vector<std::string> files;  // changed paths (against the first parent)
};

class Vcs {
 public:
  virtual ~Vcs() = default;

  // Every branch head of the upstream, in one call per repository.
  virtual void listHeads(const Repo& repo, std::function<void(Result<std::vector<Head>>)> done) = 0;

  // Brings the named branches from the upstream into the proxy (created on
  // first use), under repo.ref_prefix; objects already in the proxy (from a
  // parent or sibling fork) are not fetched again.
  virtual void updateProxy(const Repo& repo, const std::vector<std::string>& branches,
                           std::function<void(Status)> done) = 0;

  // Commits reachable from `to` but from none of `exclude`, oldest first,
  // at most `limit` of them (the newest ones), read from the proxy.
  virtual void listCommits(const Repo& repo, const std::string& to,
                           const std::vector<std::string>& exclude, size_t limit,
                           std::function<void(Result<std::vector<CommitInfo>>)> done) = 0;

  // The tree of a revision as a tar stream, from the proxy.
  virtual std::shared_ptr<Running> exportTree(const Repo& repo, const std::string& revision,
                                              std::function<void(std::string_view)> on_chunk,
                                              std::function<void(Status)> done) = 0;

  // The tree digest: git's tree id of the revision's content, whatever the VCS.
  virtual void treeDigest(const Repo& repo, const std::string& revision,
                          std::function<void(Result<std::string>)> done) = 0;

  // Drops the repository's refs from the shared proxy (a fork that is gone);
  // never removes objects that its siblings may still need.
  virtual void forget(const Repo& repo, std::function<void(Status)> done) = 0;
};

}  // namespace pefnos
