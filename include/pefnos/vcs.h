// Part of the plugin API: the interface a version-control plugin implements.
//
// All operations are asynchronous: they return at once and call done on the
// loop thread, exactly once (unless the Vcs object is destroyed first).
// Branch names, revisions and URLs reach programs as argv elements only.
#pragma once

#include <cstdint>
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

// ---- Mirroring: streams in git's fast-import format -------------------------
//
// A mirror run pipes the source plugin's fastExport into the target plugin's
// fastImport through the host, which reads every command line of the stream
// (never the data) to learn which mark is which revision. The host owns the
// marks: revisions both sides already share are numbered 1..K (ExportSpec.known
// and ImportSpec.known carry the same marks), new marks follow.
//
// What an exporter writes, for each new revision, parents before children:
//   [reset REF]                       only before a commit without parents
//   commit REF
//   mark :N
//   original-oid SOURCE-REVISION-ID  (the host removes it before the importer)
//   author NAME <EMAIL> SECONDS +HHMM
//   committer NAME <EMAIL> SECONDS +HHMM
//   data LEN\n MESSAGE
//   from :M                           the first parent, a known or earlier mark
//   merge :M                          each further parent (ghosts are left out)
//   M/D/deleteall file commands: the change against the first parent, or
//                                     the whole tree for a root commit
// The last commit of the stream is ExportSpec.revision. An exporter never
// buffers the stream: file contents are written as they are read, and the
// host stops reading (Running::pause) while the importer is behind.
struct ExportSpec {
  std::string branch;    // the source branch (Head::branch)
  std::string revision;  // export up to and including this revision
  std::string ref;       // every commit of the stream goes on this ref (the importer's choice)
  // Revisions the target already has, with their marks. The stream refers to
  // them as `from :M` / `merge :M` and never exports them or their ancestors.
  std::vector<std::pair<std::string, uint64_t>> known;
  uint64_t first_mark = 1;  // marks of the stream (commits, blobs) start here
};

struct ImportSpec {
  std::string branch;  // the target branch
  std::vector<std::pair<uint64_t, std::string>> known;  // mark -> target revision id
};

struct Imported {
  // Every commit mark of the stream -> the revision id it became in the target.
  std::vector<std::pair<uint64_t, std::string>> marks;
};

// A fast-import that is running and reads what the host writes.
class Import {
 public:
  virtual ~Import() = default;
  virtual const std::string& ref() const = 0;  // the ref the stream must use
  // Queues stream data; written runs once it is in the pipe (false: the
  // importer is gone). The host waits for it before writing more.
  virtual void write(std::string data, std::function<void(bool written)> written) = 0;
  virtual void finish() = 0;  // end of stream; done follows
  virtual void kill() = 0;    // abandon: done follows with an error, the target's branch untouched
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

  // ---- Mirroring (optional: the defaults say the VCS cannot do it) ----

  // Streams the revisions of spec.branch up to spec.revision that the target
  // lacks (see the stream contract above), read from the proxy. Known
  // revisions arrive on the process's stdin if the plugin wants them there.
  virtual std::shared_ptr<Running> fastExport(const Repo& repo, const ExportSpec& spec,
                                              std::function<void(std::string_view)> on_chunk,
                                              std::function<void(Status)> done) {
    (void)repo, (void)spec, (void)on_chunk;
    unsupported("fast-export", std::move(done));
    return nullptr;
  }

  // Starts a fast-import into the proxy of repo (the target): the imported
  // commits land on a ref of the proxy, never on the upstream (see publish).
  // done gets the marks of the stream's commits once the import has ended.
  virtual std::shared_ptr<Import> fastImport(const Repo& repo, const ImportSpec& spec,
                                             std::function<void(Result<Imported>)> done) {
    (void)repo, (void)spec;
    unsupported("fast-import", std::move(done));
    return nullptr;
  }

  // Makes `revision` (in the proxy, from fastImport) the upstream's `branch`,
  // only if the branch is still at `expected` ("": only if it does not exist
  // yet) and only forward (`expected` is an ancestor of `revision`): never
  // overwrites what someone else committed there. Already at `revision`: done. Credentials for
  // the upstream are the master's (its environment and configuration).
  virtual void publish(const Repo& repo, const std::string& branch, const std::string& revision,
                       const std::string& expected, std::function<void(Status)> done) {
    (void)repo, (void)branch, (void)revision, (void)expected;
    unsupported("publishing a mirrored branch", std::move(done));
  }

 protected:
  // For the defaults above: the error comes back through done, as always.
  // A plugin that overrides any of them has its Host; these defaults do not
  // need one, so they answer synchronously (the host tolerates that only here).
  template <typename Done>
  static void unsupported(const char* what, Done done) {
    done(Error{std::string(what) + " is not supported by this version-control plugin"});
  }
};

}  // namespace pefnos
