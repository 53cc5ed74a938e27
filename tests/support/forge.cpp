#include "tests/support/forge.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "tests/support/child.h"

namespace pefnos::test {
namespace {
namespace fs = std::filesystem;

const char* const kAuthorName = "Alice Example";
const char* const kAuthorEmail = "alice@example.org";

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

// Runs a tool for the forge; a failure fails the test with its output.
std::string tool(std::vector<std::string> argv) {
  auto [code, out] = run(argv);
  if (code != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += a + " ";
    ADD_FAILURE() << cmd << "exited with " << code << ": " << out;
    throw std::runtime_error("forge: " + argv[0] + " failed");
  }
  return trimmed(out);
}

std::string readFile(const fs::path& path) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text;
}

// Writes files under root (a work tree), replacing what was there.
void writeFiles(const fs::path& root, const std::vector<File>& files) {
  for (const auto& f : files) {
    fs::path p = root / f.path;
    fs::create_directories(p.parent_path());
    std::error_code ec;
    fs::remove(p, ec);
    if (f.symlink) {
      fs::create_symlink(f.content, p);
      continue;
    }
    std::ofstream(p, std::ios::binary) << f.content;
    chmod(p.c_str(), f.executable ? 0755 : 0644);
  }
}

// ---------------------------------------------------------------- git
// A bare upstream and a work tree that pushes to it.
class GitForge final : public Forge {
 public:
  GitForge(const std::string& dir, const std::string* clone_of = nullptr)
      : Forge("git"), bare_(dir + "/upstream.git"), work_(dir + "/work") {
    fs::create_directories(dir);
    if (clone_of) {
      git({"clone", "-q", "--bare", *clone_of, bare_});
      git({"clone", "-q", bare_, work_});
      return;
    }
    git({"init", "-q", "--bare", bare_});
    git({"init", "-q", work_});
    git({"-C", work_, "remote", "add", "origin", bare_});
    commit("main", "README", "first");
  }
  std::string url() const override { return bare_; }
  std::string mainBranch() const override { return "main"; }
  std::string sideBranch(const std::string& leaf) const override { return "feature/" + leaf; }
  std::string sidePattern() const override { return "feature/*"; }

  std::string branch(const std::string& name, const std::string& from) override {
    git({"-C", bare_, "branch", "--", name, from});
    return head(name);
  }
  std::string commit(const std::string& branch, const std::vector<File>& files,
                     const std::string& message) override {
    checkout(branch);
    writeFiles(work_, files);
    git({"-C", work_, "add", "-A"});
    git({"-C", work_, "commit", "-q", "--allow-empty", "-m", message});
    git({"-C", work_, "push", "-q", "-f", "origin", "HEAD:refs/heads/" + branch});
    return head(branch);
  }
  using Forge::commit;
  std::string merge(const std::string& into, const std::string& from,
                    const std::string& message) override {
    checkout(into);
    git({"-C", work_, "fetch", "-q", "origin", "+refs/heads/*:refs/remotes/origin/*"});
    git({"-C", work_, "merge", "-q", "--no-ff", "-m", message, "origin/" + from});
    git({"-C", work_, "push", "-q", "origin", "HEAD:refs/heads/" + into});
    return head(into);
  }
  std::string head(const std::string& branch) override {
    return git({"-C", bare_, "rev-parse", "--verify", "refs/heads/" + branch});
  }
  std::string rewindOne(const std::string& branch) override {
    std::string parent = git({"-C", bare_, "rev-parse", "refs/heads/" + branch + "~1"});
    git({"-C", bare_, "update-ref", "refs/heads/" + branch, parent});
    return parent;
  }
  std::unique_ptr<Forge> fork(const std::string& dir) override {
    return std::make_unique<GitForge>(dir, &bare_);
  }
  std::string unknownRevision() const override { return std::string(40, 'e'); }
  std::string author() const override {
    return std::string(kAuthorName) + " <" + kAuthorEmail + ">";
  }

 private:
  static std::string git(std::vector<std::string> args) {
    args.insert(args.begin(), {"git", "-c", std::string("user.name=") + kAuthorName, "-c",
                               std::string("user.email=") + kAuthorEmail, "-c",
                               "init.defaultBranch=main", "-c", "advice.detachedHead=false"});
    return tool(std::move(args));
  }
  // The work tree on branch, as the upstream has it (or new, from main).
  void checkout(const std::string& branch) {
    git({"-C", work_, "fetch", "-q", "origin", "+refs/heads/*:refs/remotes/origin/*"});
    auto [exists, out] =
        run({"git", "-C", bare_, "rev-parse", "--verify", "-q", "refs/heads/" + branch});
    if (exists == 0) {
      git({"-C", work_, "checkout", "-q", "-B", branch, "origin/" + branch});
    } else {  // the first commit of the upstream
      git({"-C", work_, "symbolic-ref", "HEAD", "refs/heads/" + branch});
    }
  }
  std::string bare_, work_;
};

// ---------------------------------------------------------------- bzr
// A shared repository without trees holding the branches (the upstream), and
// a lightweight checkout per branch to commit from.
class BzrForge final : public Forge {
 public:
  BzrForge(const std::string& dir, const BzrForge* parent = nullptr)
      : Forge("bzr"), repo_(dir + "/upstream"), work_(dir + "/work") {
    fs::create_directories(work_);
    brz({"init-shared-repo", "-q", "--no-trees", repo_});
    if (parent) {
      brz({"branch", "-q", parent->repo_ + "/trunk", repo_ + "/trunk"});
      return;
    }
    brz({"init", "-q", repo_ + "/trunk"});
    commit("trunk", "README", "first");
  }
  std::string url() const override { return repo_; }
  std::string mainBranch() const override { return "trunk"; }
  std::string sideBranch(const std::string& leaf) const override { return "feature/" + leaf; }
  std::string sidePattern() const override { return "feature/*"; }

  std::string branch(const std::string& name, const std::string& from) override {
    fs::create_directories(fs::path(repo_ + "/" + name).parent_path());
    brz({"branch", "-q", repo_ + "/" + from, repo_ + "/" + name});
    return head(name);
  }
  std::string commit(const std::string& branch, const std::vector<File>& files,
                     const std::string& message) override {
    std::string work = checkout(branch);
    writeFiles(work, files);
    brz({"add", "-q", work});
    brz({"commit", "-q", "--unchanged", "-m", message, work});
    return head(branch);
  }
  using Forge::commit;
  std::string merge(const std::string& into, const std::string& from,
                    const std::string& message) override {
    std::string work = checkout(into);
    brz({"merge", "-q", "-d", work, repo_ + "/" + from});
    brz({"commit", "-q", "-m", message, work});
    return head(into);
  }
  std::string head(const std::string& branch) override {
    // "revno revid": the revision id is what a plugin reports.
    std::string line = trimmed(readFile(repo_ + "/" + branch + "/.bzr/branch/last-revision"));
    return line.substr(line.find(' ') + 1);
  }
  std::string rewindOne(const std::string& branch) override {
    brz({"uncommit", "-q", "--force", repo_ + "/" + branch});
    return head(branch);
  }
  std::unique_ptr<Forge> fork(const std::string& dir) override {
    return std::make_unique<BzrForge>(dir, this);
  }
  std::string unknownRevision() const override {
    return "nobody@example.org-20240101000000-0123456789abcdef";
  }
  std::string author() const override {
    return std::string(kAuthorName) + " <" + kAuthorEmail + ">";
  }

 private:
  static std::string brz(std::vector<std::string> args) {
    setenv("BRZ_EMAIL", (std::string(kAuthorName) + " <" + kAuthorEmail + ">").c_str(), 1);
    setenv("BRZ_LOG", "/dev/null", 1);
    args.insert(args.begin(), "brz");
    return tool(std::move(args));
  }
  std::string checkout(const std::string& branch) {
    std::string work = work_ + "/" + branch;
    if (!fs::exists(work)) {
      fs::create_directories(fs::path(work).parent_path());
      brz({"checkout", "-q", "--lightweight", repo_ + "/" + branch, work});
    } else {
      brz({"update", "-q", work});
    }
    return work;
  }
  std::string repo_, work_;
};

// ---------------------------------------------------------------- svn
// A repository with the usual layout (trunk, branches, tags) and one working
// copy of its root.
class SvnForge final : public Forge {
 public:
  explicit SvnForge(const std::string& dir)
      : Forge("svn"), repo_(dir + "/upstream"), wc_(dir + "/wc") {
    fs::create_directories(dir);
    tool({"svnadmin", "create", repo_});
    svn({"mkdir", "-q", "--parents", "-m", "layout", url() + "/trunk", url() + "/branches",
         url() + "/tags"});
    svn({"checkout", "-q", url(), wc_});
    commit("trunk", "README", "first");
  }
  std::string url() const override { return "file://" + repo_; }
  std::string mainBranch() const override { return "trunk"; }
  std::string sideBranch(const std::string& leaf) const override { return "branches/" + leaf; }
  std::string sidePattern() const override { return "branches/*"; }
  bool mergeParents() const override { return false; }
  bool canRewrite() const override { return false; }
  bool canFork() const override { return false; }

  std::string branch(const std::string& name, const std::string& from) override {
    svn({"copy", "-q", "--parents", "-m", "branch " + name, url() + "/" + from,
         url() + "/" + name});
    svn({"update", "-q", wc_});
    return head(name);
  }
  std::string commit(const std::string& branch, const std::vector<File>& files,
                     const std::string& message) override {
    svn({"update", "-q", wc_});
    fs::path root = fs::path(wc_) / branch;
    writeFiles(root, files);
    svn({"add", "-q", "--force", "--parents", root.string()});
    for (const auto& f : files) {
      if (f.executable) svn({"propset", "-q", "svn:executable", "on", (root / f.path).string()});
    }
    svn({"commit", "-q", "-m", message, wc_});
    return head(branch);
  }
  using Forge::commit;
  std::string merge(const std::string& into, const std::string& from,
                    const std::string& message) override {
    svn({"update", "-q", wc_});
    svn({"merge", "-q", url() + "/" + from, (fs::path(wc_) / into).string()});
    svn({"commit", "-q", "-m", message, wc_});
    return head(into);
  }
  std::string head(const std::string& branch) override {
    return branch + "@" + svn({"info", "--show-item", "last-changed-revision", url() + "/" + branch});
  }
  std::string rewindOne(const std::string&) override {
    throw std::logic_error("svn history cannot be rewritten");
  }
  std::unique_ptr<Forge> fork(const std::string&) override {
    throw std::logic_error("svn has no forks");
  }
  std::string unknownRevision() const override { return "branches/nowhere@1"; }
  std::string author() const override { return "alice"; }

 private:
  static std::string svn(std::vector<std::string> args) {
    args.insert(args.begin(), {"svn", "--non-interactive", "--username", "alice"});
    return tool(std::move(args));
  }
  std::string repo_, wc_;
};

}  // namespace

std::unique_ptr<Forge> Forge::make(const std::string& vcs, const std::string& dir) {
  // The machine's git configuration stays out of the tests' repositories:
  // the forge's own git and every git the code under test starts.
  setenv("GIT_CONFIG_GLOBAL", "/dev/null", 1);
  setenv("GIT_CONFIG_NOSYSTEM", "1", 1);
  if (vcs == "git") return std::make_unique<GitForge>(dir);
  if (vcs == "bzr") return std::make_unique<BzrForge>(dir);
  if (vcs == "svn") return std::make_unique<SvnForge>(dir);
  throw std::invalid_argument("no forge for VCS " + vcs);
}

}  // namespace pefnos::test
