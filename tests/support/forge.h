// An upstream repository of one VCS (git, bzr, svn), made and changed through
// that VCS's own command-line tools, as a user's forge would hold it. The
// tests written once for every VCS plugin (and the benchmarks) drive upstreams
// through this interface only; what differs between VCSs (branch names,
// whether merges have second parents, whether history can be rewritten) is
// asked of the Forge, never assumed by the test.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "pefnos/vcs.h"

namespace pefnos::test {

struct File {
  std::string path;
  std::string content;  // the symlink's target when symlink
  bool executable = false;
  bool symlink = false;
};

class Forge {
 public:
  // A new, empty upstream of that VCS in dir (created). Its main branch
  // exists with one first commit (a README), as on a real forge. Keeps the
  // machine's git configuration out of this process (and its children).
  static std::unique_ptr<Forge> make(const std::string& vcs, const std::string& dir);
  virtual ~Forge() = default;

  const std::string& vcs() const { return vcs_; }
  virtual std::string url() const = 0;  // what repository.url holds
  virtual std::string mainBranch() const = 0;
  // A side branch's name for leaf ("feature/leaf" or svn's "branches/leaf"),
  // and the glob that finds every side branch.
  virtual std::string sideBranch(const std::string& leaf) const = 0;
  virtual std::string sidePattern() const = 0;
  // The configuration that makes a plugin see the main branch and every side branch.
  std::vector<Repo::Branch> branchConfig() const {
    return {{mainBranch(), false}, {sidePattern(), true}};
  }

  // Creates branch name from from's head; returns the new branch's head.
  virtual std::string branch(const std::string& name, const std::string& from) = 0;
  // Writes files on branch and commits them; returns the new head revision.
  virtual std::string commit(const std::string& branch, const std::vector<File>& files,
                             const std::string& message) = 0;
  std::string commit(const std::string& branch, const std::string& path,
                     const std::string& message) {
    return commit(branch, {File{path, message + "\n"}}, message);
  }
  // Merges from into into with a merge commit; returns its revision.
  virtual std::string merge(const std::string& into, const std::string& from,
                            const std::string& message) = 0;
  // The branch's head revision as a plugin reports it.
  virtual std::string head(const std::string& branch) = 0;

  // What the VCS can express.
  virtual bool mergeParents() const { return true; }  // a merge commit has its second parent
  virtual bool canRewrite() const { return true; }    // a branch can move back
  virtual bool canFork() const { return true; }       // a fork shares the parent's history
  // Moves branch back by one commit (uncommit, reset); returns its new head.
  virtual std::string rewindOne(const std::string& branch) = 0;
  // A copy of this upstream with its history (a fork), in dir.
  virtual std::unique_ptr<Forge> fork(const std::string& dir) = 0;
  // A well-formed revision id that this upstream does not have.
  virtual std::string unknownRevision() const = 0;
  // The author as the plugin reports it for commits made here.
  virtual std::string author() const = 0;

 protected:
  explicit Forge(std::string vcs) : vcs_(std::move(vcs)) {}

 private:
  std::string vcs_;
};

}  // namespace pefnos::test
