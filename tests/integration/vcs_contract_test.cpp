// The contract every VCS plugin keeps, written once and compiled once per
// plugin (PEFNOS_TEST_VCS is "git", "bzr" or "svn"): real upstreams made by
// the VCS's own tools (tests/support/forge.h), the plugin loaded from the
// build's plugin directory, a real loop. What a VCS cannot express (svn has
// no forks, no rewritten history, no merge parents) is asked of the Forge.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include "tests/support/forge.h"
#include "tests/support/vcs_fixture.h"

#ifndef PEFNOS_TEST_VCS
#error "compile with PEFNOS_TEST_VCS naming the plugin"
#endif

namespace pefnos {
namespace {
namespace fs = std::filesystem;

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<std::string> revisions(const std::vector<CommitInfo>& commits) {
  std::vector<std::string> out;
  for (const auto& c : commits) out.push_back(c.revision);
  return out;
}

class VcsContract : public test::VcsFixture {
 protected:
  VcsContract() : VcsFixture(PEFNOS_TEST_VCS) {}

  void SetUp() override {
    VcsFixture::SetUp();
    forge = test::Forge::make(PEFNOS_TEST_VCS, tmp.path() + "/up");
    proxy = tmp.path() + "/proxy";
  }

  Repo repo(int id, const test::Forge& f) {
    return Repo{id, f.url(), proxy, "refs/pefnos/" + std::to_string(id) + "/", f.branchConfig()};
  }
  std::map<std::string, std::string> headsOf(const Repo& r) {
    auto heads = listHeads(r);
    EXPECT_TRUE(heads) << heads.error().message;
    std::map<std::string, std::string> got;
    if (heads)
      for (const auto& h : *heads) got[h.branch] = h.revision;
    return got;
  }
  // Everything on branch since `since`, through the proxy, oldest first.
  std::vector<CommitInfo> newCommits(const Repo& r, const std::string& branch,
                                     const std::string& since, size_t limit = 100) {
    auto updated = updateProxy(r, {branch});
    EXPECT_TRUE(updated) << updated.error().message;
    auto commits = listCommits(r, forge->head(branch), {since}, limit);
    EXPECT_TRUE(commits) << commits.error().message;
    return commits ? *commits : std::vector<CommitInfo>{};
  }

  test::TempDir tmp{"pefnos-contract"};
  std::unique_ptr<test::Forge> forge;
  std::string proxy;
};

TEST_F(VcsContract, ListHeadsFindsEveryConfiguredBranchWithItsOwnHead) {
  std::string main = forge->head(forge->mainBranch());
  std::string x = forge->sideBranch("x"), uni = forge->sideBranch("ünïcode-ブランチ");
  forge->branch(x, forge->mainBranch());
  forge->branch(uni, forge->mainBranch());
  std::string uni_head = forge->commit(uni, "u.txt", "on the unicode branch");
  // The main branch moves after x was made: each head is the branch's own.
  std::string main2 = forge->commit(forge->mainBranch(), "m.txt", "main moves on");
  std::map<std::string, std::string> want{
      {forge->mainBranch(), main2}, {x, forge->head(x)}, {uni, uni_head}};
  EXPECT_EQ(headsOf(repo(1, *forge)), want);
  EXPECT_NE(forge->head(x), main2);
  EXPECT_NE(main, main2);
}

TEST_F(VcsContract, NewCommitsCarryTheirMetadataOldestFirst) {
  std::string base = forge->head(forge->mainBranch());
  std::string a = forge->commit(forge->mainBranch(), {{"a.txt", "a\n"}, {"dir/b.txt", "b\n"}},
                                "Add a and b\n\nWith a body line.");
  std::string b = forge->commit(forge->mainBranch(), "c.txt", "second");

  auto commits = newCommits(repo(1, *forge), forge->mainBranch(), base);
  ASSERT_EQ(revisions(commits), (std::vector<std::string>{a, b}));
  const auto& first = commits[0];
  EXPECT_EQ(first.parents, std::vector<std::string>{base});
  EXPECT_EQ(sorted(first.files), (std::vector<std::string>{"a.txt", "dir/b.txt"}));
  EXPECT_EQ(first.message, "Add a and b\n\nWith a body line.");
  EXPECT_EQ(first.author, forge->author());
  EXPECT_FALSE(first.committer.empty());
  std::regex iso(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d)");
  EXPECT_TRUE(std::regex_match(first.author_date, iso)) << first.author_date;
  EXPECT_TRUE(std::regex_match(first.committer_date, iso)) << first.committer_date;
  EXPECT_EQ(commits[1].parents, std::vector<std::string>{a});
  EXPECT_EQ(commits[1].files, std::vector<std::string>{"c.txt"});
}

TEST_F(VcsContract, AMergeListsBothLinesParentsFirstAndKeepsItsSecondParent) {
  std::string main = forge->mainBranch(), side = forge->sideBranch("m");
  std::string base = forge->head(main);
  forge->branch(side, main);
  std::string s1 = forge->commit(side, "s.txt", "on the side");
  std::string m1 = forge->commit(main, "m.txt", "on main");
  std::string merge = forge->merge(main, side, "Merge the side");

  Repo r = repo(1, *forge);
  ASSERT_TRUE(updateProxy(r, {main, side}));
  auto commits = listCommits(r, merge, {base}, 100);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_FALSE(commits->empty());
  const auto& m = commits->back();
  EXPECT_EQ(m.revision, merge);
  ASSERT_FALSE(m.parents.empty());
  EXPECT_EQ(m.parents[0], m1);
  EXPECT_NE(std::find(m.files.begin(), m.files.end(), "s.txt"), m.files.end())
      << "a merge's files are against its first parent";
  std::set<std::string> listed;
  for (const auto& c : *commits) {
    for (const auto& p : c.parents) {
      if (p == base || p == s1) continue;
      EXPECT_TRUE(listed.count(p)) << c.revision << " before its parent " << p;
    }
    listed.insert(c.revision);
  }
  if (forge->mergeParents()) {
    EXPECT_EQ(m.parents, (std::vector<std::string>{m1, s1}));
    EXPECT_EQ(sorted(revisions(*commits)), sorted({s1, m1, merge}));
  } else {
    EXPECT_EQ(revisions(*commits), (std::vector<std::string>{m1, merge}));
  }
}

TEST_F(VcsContract, LimitKeepsTheNewestCommits) {
  std::string base = forge->head(forge->mainBranch());
  std::vector<std::string> revs;
  for (int i = 0; i < 4; ++i)
    revs.push_back(forge->commit(forge->mainBranch(), "f" + std::to_string(i), "c" + std::to_string(i)));
  auto commits = newCommits(repo(1, *forge), forge->mainBranch(), base, 2);
  ASSERT_EQ(revisions(commits), (std::vector<std::string>{revs[2], revs[3]}));
  EXPECT_EQ(commits[0].parents, std::vector<std::string>{revs[1]}) << "the parent beyond the limit";
}

TEST_F(VcsContract, ExclusionsTheProxyLacksAreIgnoredAndAnUnknownTargetFails) {
  std::string first = forge->commit(forge->mainBranch(), "a", "first");
  std::string second = forge->commit(forge->mainBranch(), "b", "second");
  Repo r = repo(1, *forge);
  ASSERT_TRUE(updateProxy(r, {forge->mainBranch()}));
  auto commits = listCommits(r, second, {forge->unknownRevision(), first}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  EXPECT_EQ(revisions(*commits), std::vector<std::string>{second});

  auto unknown = listCommits(r, forge->unknownRevision(), {}, 10);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find(forge->unknownRevision()), std::string::npos)
      << unknown.error().message;
}

TEST_F(VcsContract, OddFileNamesAreReportedExactly) {
  std::string base = forge->head(forge->mainBranch());
  std::vector<std::string> names{"ünïcode ファイル.txt", "space name.txt", "quote'd \"x\".txt",
                                 "per%25cent.txt", "at@sign.txt", "dir with space/inner.txt"};
  std::vector<test::File> files;
  for (const auto& n : names) files.push_back({n, "x\n"});
  std::string rev = forge->commit(forge->mainBranch(), files, "odd names");
  auto commits = newCommits(repo(1, *forge), forge->mainBranch(), base);
  ASSERT_EQ(commits.size(), 1u);
  EXPECT_EQ(commits[0].revision, rev);
  EXPECT_EQ(sorted(commits[0].files), sorted(names));
}

TEST_F(VcsContract, ExportKeepsModesAndLinksAndTheDigestIsGitsTreeIdOfTheContent) {
  std::string rev = forge->commit(
      forge->mainBranch(),
      {{"dir/a.txt", "a\n"}, {"run.sh", "#!/bin/sh\necho hi\n", true},
       {"link", "dir/a.txt", false, true}, {"ünï.txt", "u\n"}},
      "modes and links");
  forge->commit(forge->mainBranch(), "later.txt", "not in the export");
  Repo r = repo(1, *forge);
  ASSERT_TRUE(updateProxy(r, {forge->mainBranch()}));

  auto tar = exportTree(r, rev);
  ASSERT_TRUE(tar) << tar.error().message;
  std::string tar_path = tmp.path() + "/export.tar", out = tmp.path() + "/out";
  std::ofstream(tar_path, std::ios::binary) << *tar;
  fs::create_directories(out);
  auto [code, msg] = test::run({"tar", "-xf", tar_path, "-C", out});
  ASSERT_EQ(code, 0) << msg;
  EXPECT_TRUE(fs::exists(out + "/README"));
  EXPECT_TRUE(fs::exists(out + "/dir/a.txt"));
  EXPECT_TRUE(fs::exists(out + "/ünï.txt"));
  EXPECT_FALSE(fs::exists(out + "/later.txt"));
  struct stat st {};
  ASSERT_EQ(stat((out + "/run.sh").c_str(), &st), 0);
  EXPECT_TRUE(st.st_mode & S_IXUSR) << "the executable bit was lost";
  ASSERT_TRUE(fs::is_symlink(out + "/link"));
  EXPECT_EQ(fs::read_symlink(out + "/link"), "dir/a.txt");

  // git's own tree id of exactly that content.
  std::string git_dir = tmp.path() + "/digest.git";
  ASSERT_EQ(test::run({"git", "init", "-q", "--bare", git_dir}).first, 0);
  std::vector<std::string> g{"git", "--git-dir=" + git_dir, "--work-tree=" + out};
  auto add = g, write = g;
  add.insert(add.end(), {"add", "-A", "-f", "."});
  write.push_back("write-tree");
  ASSERT_EQ(test::run(add).first, 0);
  auto [wrc, tree] = test::run(write);
  ASSERT_EQ(wrc, 0) << tree;

  auto digest = treeDigest(r, rev);
  ASSERT_TRUE(digest) << digest.error().message;
  EXPECT_EQ(*digest, trimmed(tree));
}

TEST_F(VcsContract, AnUnreachableUpstreamGivesAnErrorNamingIt) {
  std::string gone = tmp.path() + "/deleted-upstream";
  Repo r = repo(1, *forge);
  r.url = (forge->vcs() == "svn" ? "file://" : "") + gone;
  auto heads = listHeads(r);
  ASSERT_FALSE(heads);
  EXPECT_NE(heads.error().message.find(gone), std::string::npos) << heads.error().message;
  auto updated = updateProxy(r, {forge->mainBranch()});
  ASSERT_FALSE(updated);
  EXPECT_NE(updated.error().message.find(gone), std::string::npos) << updated.error().message;
}

TEST_F(VcsContract, HostileNamesAndRevisionsAreRefused) {
  Repo r = repo(1, *forge);
  ASSERT_TRUE(updateProxy(r, {forge->mainBranch()}));
  for (const char* name : {"../escape", "-rf", "a/../../b"}) {
    auto refused = updateProxy(r, {name});
    EXPECT_FALSE(refused) << name;
  }
  EXPECT_FALSE(listCommits(r, "--help", {}, 10));
  EXPECT_FALSE(listCommits(r, forge->head(forge->mainBranch()), {"--output=/tmp/x"}, 10));
  EXPECT_FALSE(fs::exists(tmp.path() + "/escape"));
}

TEST_F(VcsContract, AForkSharesTheProxyAndBringsOnlyItsOwnCommits) {
  if (!forge->canFork()) GTEST_SKIP() << forge->vcs() << " has no forks";
  auto fork = forge->fork(tmp.path() + "/fork");
  std::string base = forge->head(forge->mainBranch());
  std::string extra = fork->commit(fork->mainBranch(), "fork-only.txt", "fork only");
  Repo parent = repo(10, *forge), child = repo(1, *fork);
  ASSERT_TRUE(updateProxy(parent, {forge->mainBranch()}));
  auto updated = updateProxy(child, {fork->mainBranch()});
  ASSERT_TRUE(updated) << updated.error().message;
  auto commits = listCommits(child, extra, {base}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  EXPECT_EQ(revisions(*commits), std::vector<std::string>{extra});
  // Forgetting the fork (ids 1 and 10: a prefix match would take the parent too)
  // leaves the parent whole.
  ASSERT_TRUE(forget(child));
  auto still = listCommits(parent, base, {}, 10);
  ASSERT_TRUE(still) << still.error().message;
  EXPECT_FALSE(still->empty());
  EXPECT_TRUE(forget(child)) << "forgetting twice is no error";
}

TEST_F(VcsContract, ARewrittenBranchIsFollowed) {
  if (!forge->canRewrite()) GTEST_SKIP() << forge->vcs() << " history cannot be rewritten";
  std::string main = forge->mainBranch();
  std::string first = forge->commit(main, "a", "first");
  forge->commit(main, "b", "second");
  Repo r = repo(1, *forge);
  ASSERT_TRUE(updateProxy(r, {main}));
  ASSERT_EQ(forge->rewindOne(main), first);
  EXPECT_EQ(headsOf(r)[main], first);
  ASSERT_TRUE(updateProxy(r, {main}));
  std::string rewritten = forge->commit(main, "c", "rewritten");
  auto commits = newCommits(r, main, first);
  EXPECT_EQ(revisions(commits), std::vector<std::string>{rewritten});
}

TEST_F(VcsContract, ForgetThenUpdateAgain) {
  Repo r = repo(1, *forge);
  ASSERT_TRUE(updateProxy(r, {forge->mainBranch()}));
  ASSERT_TRUE(forget(r));
  std::string next = forge->commit(forge->mainBranch(), "n", "after forget");
  auto updated = updateProxy(r, {forge->mainBranch()});
  ASSERT_TRUE(updated) << updated.error().message;
  auto commits = listCommits(r, next, {}, 1);
  ASSERT_TRUE(commits) << commits.error().message;
  EXPECT_EQ(revisions(*commits), std::vector<std::string>{next});
}

TEST_F(VcsContract, PollingAnUnchangedLocalUpstreamIsCheap) {
  Repo r = repo(1, *forge);
  ASSERT_TRUE(listHeads(r));
  size_t before = host->argvs.size();
  ASSERT_TRUE(listHeads(r));
  // git reads a local upstream's refs with one process; bzr reads the branch
  // files and svn the repository's youngest revision without any.
  EXPECT_EQ(host->argvs.size() - before, forge->vcs() == "git" ? 1u : 0u);
}

TEST_F(VcsContract, NoCallbackAfterTheVcsIsDestroyed) {
  bool called = false;
  Repo r = repo(1, *forge);
  vcs->listHeads(r, [&](Result<std::vector<Head>>) { called = true; });
  vcs->updateProxy(r, {forge->mainBranch()}, [&](Status) { called = true; });
  vcs->listCommits(r, "--bad", {}, 1, [&](Result<std::vector<CommitInfo>>) { called = true; });
  vcs.reset();
  uv_run(&loop, UV_RUN_DEFAULT);  // the killed processes end; nobody is told
  EXPECT_FALSE(called);
  EXPECT_EQ(host->in_flight, 0);
}

}  // namespace
}  // namespace pefnos
