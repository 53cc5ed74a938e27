// The git VCS plugin, loaded through the Registry from the build's plugin
// directory, against real repositories the tests make, on a real libuv loop
// (tests/support/vcs_fixture.h). What every VCS plugin must do is in
// vcs_contract_test.cpp; here is what is git's own: its processes, refs,
// objects, messages and attributes.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "tests/support/vcs_fixture.h"

namespace pefnos {
namespace {
namespace fs = std::filesystem;

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Runs git for the test itself (never through the plugin); fails the test on error.
std::string git(const std::string& dir, std::vector<std::string> args) {
  std::vector<std::string> argv{"git", "-C", dir};
  argv.insert(argv.end(), args.begin(), args.end());
  auto [code, output] = test::run(argv);
  EXPECT_EQ(code, 0) << "git " << args.front() << " in " << dir << ": " << output;
  return trimmed(output);
}

void writeFile(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << content;
}

struct When {
  std::string author = "2024-01-02T03:04:05+02:00";
  std::string committer = "2024-01-03T04:05:06-05:00";
};

// Commits everything in dir with fixed dates; returns the new revision.
std::string commitAll(const std::string& dir, const std::string& message, When when = {}) {
  setenv("GIT_AUTHOR_DATE", when.author.c_str(), 1);
  setenv("GIT_COMMITTER_DATE", when.committer.c_str(), 1);
  git(dir, {"add", "-A"});
  git(dir, {"commit", "-q", "--allow-empty", "-m", message});
  return git(dir, {"rev-parse", "HEAD"});
}

std::string commitFile(const std::string& dir, const std::string& file, const std::string& message,
                       When when = {}) {
  writeFile(fs::path(dir) / file, message + "\n");
  return commitAll(dir, message, when);
}

size_t objectCount(const std::string& proxy) {
  auto [code, out] = test::run({"git", "--git-dir=" + proxy, "count-objects", "-v"});
  EXPECT_EQ(code, 0) << out;
  size_t total = 0;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("count: ", 0) == 0) total += std::stoul(line.substr(7));
    if (line.rfind("in-pack: ", 0) == 0) total += std::stoul(line.substr(9));
  }
  return total;
}

std::vector<std::string> linesOf(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

class VcsGitTest : public test::VcsFixture {
 protected:
  VcsGitTest() : VcsFixture("git") {}

  static void SetUpTestSuite() {
    // The machine's git configuration stays out of the tests' repositories.
    setenv("GIT_CONFIG_GLOBAL", "/dev/null", 1);
    setenv("GIT_CONFIG_NOSYSTEM", "1", 1);
    setenv("GIT_AUTHOR_NAME", "Alice Example", 1);
    setenv("GIT_AUTHOR_EMAIL", "alice@example.org", 1);
    setenv("GIT_COMMITTER_NAME", "Bob Committer", 1);
    setenv("GIT_COMMITTER_EMAIL", "bob@example.org", 1);
  }

  void SetUp() override {
    VcsFixture::SetUp();
    proxy = tmp.path() + "/proxy.git";
  }

  // A new upstream repository with branch main.
  std::string makeUpstream(const std::string& name) {
    std::string dir = tmp.path() + "/" + name;
    auto [code, out] = test::run({"git", "init", "-q", "-b", "main", dir});
    EXPECT_EQ(code, 0) << out;
    return dir;
  }

  Repo repo(int id, const std::string& url) {
    return Repo{id, url, proxy, "refs/pefnos/" + std::to_string(id) + "/", {}};
  }

  std::string proxyRef(const std::string& ref) {
    auto [code, out] = test::run({"git", "--git-dir=" + proxy, "rev-parse", "--verify", "-q", ref});
    return code == 0 ? trimmed(out) : "";
  }

  test::TempDir tmp{"pefnos-git"};
  std::string proxy;
};

TEST_F(VcsGitTest, ListHeadsReturnsEveryBranchInOneCall) {
  std::string up = makeUpstream("up");
  std::string main = commitFile(up, "a.txt", "first");
  git(up, {"checkout", "-q", "-b", "feature/deep/x"});
  std::string feature = commitFile(up, "b.txt", "feature");
  git(up, {"checkout", "-q", "-b", "ünïcode/ブランチ"});
  std::string unicode = commitFile(up, "c.txt", "unicode");

  auto heads = listHeads(repo(1, up));
  ASSERT_TRUE(heads) << heads.error().message;
  std::map<std::string, std::string> got;
  for (const auto& h : *heads) got[h.branch] = h.revision;
  std::map<std::string, std::string> want{
      {"main", main}, {"feature/deep/x", feature}, {"ünïcode/ブランチ", unicode}};
  EXPECT_EQ(got, want);
  // A local upstream is read with one for-each-ref, not ls-remote's two processes.
  EXPECT_EQ(host->argvs.size(), 1u);
  EXPECT_EQ(host->count("for-each-ref"), 1u);
}

TEST_F(VcsGitTest, ListCommitsAcrossAMergeGivesParentsFilesMessagesDatesOldestFirst) {
  std::string up = makeUpstream("up");
  std::string root =
      commitFile(up, "a.txt", "root", {"2024-01-01T10:00:00+02:00", "2024-01-01T11:00:00+02:00"});
  git(up, {"checkout", "-q", "-b", "side"});
  std::string side =
      commitFile(up, "dir/b.txt", "side", {"2024-01-02T10:00:00-05:00", "2024-01-02T12:00:00Z"});
  git(up, {"checkout", "-q", "main"});
  std::string mainline = commitFile(up, "c.txt", "mainline",
                                    {"2024-01-03T10:00:00+00:00", "2024-01-03T10:30:00+01:00"});
  setenv("GIT_AUTHOR_DATE", "2024-01-04T09:08:07+05:30", 1);
  setenv("GIT_COMMITTER_DATE", "2024-01-05T01:02:03-03:00", 1);
  git(up, {"merge", "-q", "--no-ff", "side", "-m", "Merge side\n\nWith a body line."});
  std::string merge = git(up, {"rev-parse", "HEAD"});

  Repo r = repo(1, up);
  auto updated = updateProxy(r, {"main", "side"});
  ASSERT_TRUE(updated) << updated.error().message;
  EXPECT_EQ(proxyRef("refs/pefnos/1/main"), merge);
  EXPECT_EQ(proxyRef("refs/pefnos/1/side"), side);

  auto commits = listCommits(r, merge, {}, 100);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 4u);
  const auto& c = *commits;
  // Oldest first, every parent before its children.
  EXPECT_EQ(c[0].revision, root);
  EXPECT_EQ(c[3].revision, merge);
  std::set<std::string> middle{c[1].revision, c[2].revision};
  EXPECT_EQ(middle, (std::set<std::string>{side, mainline}));

  EXPECT_TRUE(c[0].parents.empty());
  EXPECT_EQ(c[0].files, std::vector<std::string>{"a.txt"});  // a root commit: all its files
  EXPECT_EQ(c[0].message, "root");
  EXPECT_EQ(c[0].author, "Alice Example <alice@example.org>");
  EXPECT_EQ(c[0].author_date, "2024-01-01T10:00:00+02:00");
  EXPECT_EQ(c[0].committer, "Bob Committer <bob@example.org>");
  EXPECT_EQ(c[0].committer_date, "2024-01-01T11:00:00+02:00");

  const auto& m = c[3];
  EXPECT_EQ(m.parents, (std::vector<std::string>{mainline, side}));
  EXPECT_EQ(m.files, std::vector<std::string>{"dir/b.txt"});  // against the first parent
  EXPECT_EQ(m.message, "Merge side\n\nWith a body line.");
  EXPECT_EQ(m.author_date, "2024-01-04T09:08:07+05:30");
  EXPECT_EQ(m.committer_date, "2024-01-05T01:02:03-03:00");
  auto sideInfo = c[1].revision == side ? c[1] : c[2];
  EXPECT_EQ(sideInfo.files, std::vector<std::string>{"dir/b.txt"});
  EXPECT_EQ(sideInfo.author_date, "2024-01-02T10:00:00-05:00");
  EXPECT_EQ(sideInfo.committer_date, "2024-01-02T12:00:00+00:00");
}

TEST_F(VcsGitTest, ListCommitsReportsOddFileNamesExactly) {
  std::string up = makeUpstream("up");
  std::vector<std::string> names{"ünïcode ファイル.txt", "tab\there.txt", "quote\"d\\.txt",
                                 "sep\x1e"
                                 "record\x1f"
                                 "field.txt",
                                 "new\nline.txt"};
  for (const auto& n : names) writeFile(fs::path(up) / n, "x\n");
  std::string rev = commitAll(up, "odd names");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"main"}));

  auto commits = listCommits(r, rev, {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 1u);
  auto files = commits->front().files;
  std::sort(files.begin(), files.end());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(files, names);
}

TEST_F(VcsGitTest, AForkFetchedIntoTheSameProxyBringsOnlyItsNewObjects) {
  std::string up = makeUpstream("up");
  for (int i = 0; i < 3; ++i)
    commitFile(up, "file" + std::to_string(i), "commit " + std::to_string(i));
  std::string fork = tmp.path() + "/fork";
  auto [code, out] = test::run({"git", "clone", "-q", up, fork});
  ASSERT_EQ(code, 0) << out;
  std::string extra = commitFile(fork, "fork-only.txt", "fork only");

  ASSERT_TRUE(updateProxy(repo(1, up), {"main"}));
  size_t before = objectCount(proxy);
  size_t processes_before = host->argvs.size();
  auto updated = updateProxy(repo(2, fork), {"main"});
  ASSERT_TRUE(updated) << updated.error().message;

  // One commit, its root tree, one blob: nothing the parent already brought.
  EXPECT_EQ(objectCount(proxy) - before, 3u);
  EXPECT_EQ(host->argvs.size() - processes_before, 1u) << "one fetch, no second init";
  EXPECT_EQ(proxyRef("refs/pefnos/2/main"), extra);
  EXPECT_NE(proxyRef("refs/pefnos/1/main"), extra);
}

TEST_F(VcsGitTest, UpdateProxyFollowsAForcePushThatMovesTheHeadBack) {
  std::string up = makeUpstream("up");
  std::string first = commitFile(up, "a", "first");
  std::string second = commitFile(up, "b", "second");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"main"}));
  ASSERT_EQ(proxyRef("refs/pefnos/1/main"), second);

  git(up, {"reset", "-q", "--hard", first});
  auto updated = updateProxy(r, {"main"});
  ASSERT_TRUE(updated) << updated.error().message;
  EXPECT_EQ(proxyRef("refs/pefnos/1/main"), first);

  std::string rewritten = commitFile(up, "c", "rewritten");  // diverges from `second`
  ASSERT_TRUE(updateProxy(r, {"main"}));
  EXPECT_EQ(proxyRef("refs/pefnos/1/main"), rewritten);
}

TEST_F(VcsGitTest, ExportTreeStreamsATarOfTheRevisionAsCommitted) {
  std::string up = makeUpstream("up");
  writeFile(fs::path(up) / "a.txt", "a\n");
  writeFile(fs::path(up) / "dir/b.txt", "b\n");
  writeFile(fs::path(up) / "tests/t.txt", "t\n");
  // A build needs the tree as committed, whatever archive attributes say.
  writeFile(fs::path(up) / ".gitattributes", "tests export-ignore\n");
  std::string rev = commitAll(up, "tree");
  commitFile(up, "later.txt", "not in the export");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"main"}));

  std::string tar;
  auto status = await<Status>([&](auto done) {
    auto running = vcs->exportTree(
        r, rev, [&](std::string_view chunk) { tar.append(chunk); }, done);
    EXPECT_TRUE(running);
  });
  ASSERT_TRUE(status) << status.error().message;
  EXPECT_EQ(host->count("archive"), 1u);
  std::string tar_path = tmp.path() + "/export.tar";
  std::ofstream(tar_path, std::ios::binary) << tar;
  auto [code, listing] = test::run({"tar", "-tf", tar_path});
  ASSERT_EQ(code, 0) << listing;
  auto files = linesOf(listing);
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{".gitattributes", "a.txt", "dir/", "dir/b.txt",
                                             "tests/", "tests/t.txt"}));
}

TEST_F(VcsGitTest, TreeDigestIsGitsTreeIdOfTheRevision) {
  std::string up = makeUpstream("up");
  std::string first = commitFile(up, "a", "first");
  commitFile(up, "b", "second");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"main"}));

  auto digest = treeDigest(r, first);
  ASSERT_TRUE(digest) << digest.error().message;
  EXPECT_EQ(*digest, git(up, {"rev-parse", first + "^{tree}"}));
  EXPECT_FALSE(treeDigest(r, "HEAD")) << "a revision must be an object id";
}

TEST_F(VcsGitTest, AnUnreachableUpstreamGivesAnErrorNamingTheUrlAndGitsMessage) {
  std::string gone = tmp.path() + "/deleted-upstream";
  auto heads = listHeads(repo(1, gone));
  ASSERT_FALSE(heads);
  EXPECT_NE(heads.error().message.find(gone), std::string::npos) << heads.error().message;
  EXPECT_NE(heads.error().message.find("does not appear to be a git repository"), std::string::npos)
      << heads.error().message;

  auto updated = updateProxy(repo(1, gone), {"main"});
  ASSERT_FALSE(updated);
  EXPECT_NE(updated.error().message.find(gone), std::string::npos) << updated.error().message;
  EXPECT_NE(updated.error().message.find("exited with 128"), std::string::npos)
      << updated.error().message;
}

TEST_F(VcsGitTest, HostileBranchNamesAndUrlsNeverBecomeGitOptions) {
  // A program that would prove it ran; git runs --upload-pack values.
  std::string marker = tmp.path() + "/pwned";
  std::string evil = tmp.path() + "/evil";
  writeFile(evil, "#!/bin/sh\ntouch " + marker + "\nexit 1\n");
  chmod(evil.c_str(), 0755);
  std::string option = "--upload-pack=" + evil;

  std::string up = makeUpstream("up");
  std::string main = commitFile(up, "a", "first");
  git(up,
      {"update-ref", "refs/heads/" + option, "HEAD"});  // git allows it as a ref, not as a branch
  Repo r = repo(1, up);

  auto heads = listHeads(r);
  ASSERT_TRUE(heads) << heads.error().message;
  ASSERT_EQ(heads->size(), 1u) << "the hostile branch is left out";
  EXPECT_EQ(heads->front().branch, "main");
  EXPECT_EQ(host->logged.size(), 1u);

  auto refused = updateProxy(r, {"main", option});
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find(option), std::string::npos) << refused.error().message;
  EXPECT_FALSE(updateProxy(r, {"main:refs/heads/x"}));
  EXPECT_FALSE(updateProxy(r, {"a..b"}));

  // A URL that looks like an option is a (missing) repository's name. Run from
  // inside a clone: taken as an option, git would list the clone's origin with it.
  std::string clone = tmp.path() + "/clone";
  ASSERT_EQ(test::run({"git", "clone", "-q", up, clone}).first, 0);
  fs::path cwd = fs::current_path();
  fs::current_path(clone);
  EXPECT_FALSE(listHeads(repo(2, option)));
  EXPECT_FALSE(updateProxy(repo(2, option), {"main"}));
  fs::current_path(cwd);
  // Revisions must be object ids.
  EXPECT_FALSE(listCommits(r, "--output=" + marker, {}, 10));
  EXPECT_FALSE(listCommits(r, main, {"--output=" + marker}, 10));
  EXPECT_FALSE(fs::exists(marker)) << "git ran a program named by a branch or URL";

  // The trap is real: the same option given to git as an option runs it.
  test::run({"git", "ls-remote", option, up});
  EXPECT_TRUE(fs::exists(marker));
}

TEST_F(VcsGitTest, ForgetRemovesOnlyThatRepositorysRefsAndNoObjects) {
  std::string up = makeUpstream("up");
  std::string base = commitFile(up, "a", "base");
  std::string fork = tmp.path() + "/fork";
  ASSERT_EQ(test::run({"git", "clone", "-q", up, fork}).first, 0);
  git(fork, {"checkout", "-q", "-b", "topic/x"});
  commitFile(fork, "b", "fork");
  // Ids 1 and 10: a prefix match on "refs/pefnos/1" would take the sibling too.
  Repo parent = repo(10, up), gone = repo(1, fork);
  ASSERT_TRUE(updateProxy(parent, {"main"}));
  ASSERT_TRUE(updateProxy(gone, {"main", "topic/x"}));

  auto forgotten = forget(gone);
  ASSERT_TRUE(forgotten) << forgotten.error().message;
  auto [code, refs] =
      test::run({"git", "--git-dir=" + proxy, "for-each-ref", "--format=%(refname)"});
  EXPECT_EQ(linesOf(refs), std::vector<std::string>{"refs/pefnos/10/main"});
  auto commits = listCommits(parent, base, {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  EXPECT_EQ(commits->size(), 1u);
  auto [fsck, fsck_out] = test::run({"git", "--git-dir=" + proxy, "fsck", "--no-dangling"});
  EXPECT_EQ(fsck, 0) << fsck_out;

  EXPECT_TRUE(forget(repo(3, up))) << "forgetting a repository with no refs is no error";
}

TEST_F(VcsGitTest, ConcurrentUpdatesOfOneProxyRunOneAfterTheOther) {
  std::string up = makeUpstream("up");
  commitFile(up, "a", "base");
  std::string fork = tmp.path() + "/fork";
  ASSERT_EQ(test::run({"git", "clone", "-q", up, fork}).first, 0);
  std::string extra = commitFile(fork, "b", "fork");

  std::optional<Status> first, second, third;
  vcs->updateProxy(repo(1, up), {"main"}, [&](Status s) { first.emplace(std::move(s)); });
  vcs->updateProxy(repo(2, fork), {"main"}, [&](Status s) { second.emplace(std::move(s)); });
  vcs->forget(repo(1, up), [&](Status s) { third.emplace(std::move(s)); });
  auto last = await<Status>([&](auto done) { vcs->updateProxy(repo(1, up), {"main"}, done); });

  ASSERT_TRUE(first && second && third);
  EXPECT_TRUE(*first);
  EXPECT_TRUE(*second) << second->error().message;
  EXPECT_TRUE(*third);
  EXPECT_TRUE(last);
  EXPECT_EQ(host->most_in_flight, 1) << "two writers ran on one proxy at once";
  EXPECT_EQ(proxyRef("refs/pefnos/2/main"), extra);
  EXPECT_NE(proxyRef("refs/pefnos/1/main"), "");  // forgotten, then fetched again, in order
  EXPECT_EQ(test::run({"git", "--git-dir=" + proxy, "fsck"}).first, 0);
}

}  // namespace
}  // namespace pefnos
