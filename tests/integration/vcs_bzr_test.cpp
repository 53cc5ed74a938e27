// The bzr VCS plugin, loaded through the Registry from the build's plugin
// directory, against real Bazaar repositories the tests make with the brz
// CLI (and Breezy's Python API where the CLI cannot: ghosts), on a real libuv
// loop. First, unit tests of the plugin's pure parsing (bzr_parse.h).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "plugins/vcs-bzr/bzr_parse.h"
#include "tests/support/vcs_fixture.h"

namespace pefnos {
namespace {
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// Pure logic

TEST(BzrParse, BranchNamesStayInsideTheLocation) {
  for (const char* good : {"trunk", "feature/x", "ünïcode/ブランチ", "release-1.0", "a.b/c"})
    EXPECT_TRUE(bzr::isValidBranchName(good)) << good;
  for (const char* bad : {"", "..", "../x", "a/../b", "a/..", "-x", "a/-x", "/abs", "a/", "a//b",
                          "./a", "a\nb", "a\tb", "a\x7f", ".bzr", "x/.bzr/branch", "a\\b"})
    EXPECT_FALSE(bzr::isValidBranchName(bad)) << bad;
}

TEST(BzrParse, RevisionIdsHaveNoSpacesControlsOrLeadingDash) {
  EXPECT_TRUE(bzr::isValidRevisionId("joe@example.org-20240102030405-abcdef0123456789"));
  EXPECT_TRUE(bzr::isValidRevisionId("git-v1:0123456789abcdef0123456789abcdef01234567"));
  for (const char* bad : {"", "-r", "a b", "a\nb", "a\tb", "null:", "x\x7f"})
    EXPECT_FALSE(bzr::isValidRevisionId(bad)) << bad;
}

TEST(BzrParse, RefPrefixesAreRelativeDirectories) {
  EXPECT_TRUE(bzr::isValidRefPrefix("refs/pefnos/7/"));
  for (const char* bad : {"", "/", "refs/pefnos/7", "/refs/7/", "refs/../7/", "-x/"})
    EXPECT_FALSE(bzr::isValidRefPrefix(bad)) << bad;
}

TEST(BzrParse, LocalLocationsAreAbsolutePathsAndFileUrls) {
  EXPECT_EQ(bzr::localPath("/srv/bzr/x"), "/srv/bzr/x");
  EXPECT_EQ(bzr::localPath("file:///srv/bzr/x"), "/srv/bzr/x");
  EXPECT_EQ(bzr::localPath("file://localhost/srv/x"), "/srv/x");
  EXPECT_EQ(bzr::localPath("file:///a%20b/%C3%BC"), "/a b/ü");
  EXPECT_EQ(bzr::localPath("file:///a%2"), std::nullopt);
  EXPECT_EQ(bzr::localPath("file:///a%00b"), std::nullopt);
  EXPECT_EQ(bzr::localPath("file://host/x"), std::nullopt);
  EXPECT_EQ(bzr::localPath("http://example.org/x"), std::nullopt);
  EXPECT_EQ(bzr::localPath("bzr+ssh://example.org/x"), std::nullopt);
  EXPECT_EQ(bzr::localPath("relative/x"), std::nullopt);
}

TEST(BzrParse, LastRevisionFiles) {
  EXPECT_EQ(bzr::parseLastRevision("3 joe@example.org-2024-abc\n"), "joe@example.org-2024-abc");
  EXPECT_EQ(bzr::parseLastRevision("0 null:\n"), "");
  EXPECT_EQ(bzr::parseLastRevision("x joe-1\n"), std::nullopt);
  EXPECT_EQ(bzr::parseLastRevision("3\n"), std::nullopt);
  EXPECT_EQ(bzr::parseLastRevision("3 a b\n"), std::nullopt);
  EXPECT_TRUE(bzr::hasLastRevisionFile("Bazaar Branch Format 7 (needs bzr 1.6)\n"));
  EXPECT_FALSE(bzr::hasLastRevisionFile("Bazaar-NG Branch Reference Format 1\n"));
  EXPECT_FALSE(bzr::hasLastRevisionFile("Bazaar-NG branch format 5\n"));
}

// ---------------------------------------------------------------------------
// Making repositories

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Runs brz for the test itself (never through the plugin); fails the test on error.
std::string brz(std::vector<std::string> args) {
  std::vector<std::string> argv{"brz"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto [code, output] = test::run(argv);
  EXPECT_EQ(code, 0) << "brz " << args.front() << ": " << output;
  return trimmed(output);
}

void writeFile(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << content;
}

// The branch's last revision, as the plugin would read it.
std::string lastRevision(const std::string& branch) {
  std::ifstream in(fs::path(branch) / ".bzr/branch/last-revision");
  std::string revno, revid;
  in >> revno >> revid;
  return revid;
}

struct CommitOptions {
  std::vector<std::string> authors;
  std::string time;  // "2024-01-02 03:04:05 +0200"
};

// Adds everything in the branch's working tree and commits it; returns the new revision.
std::string commitAll(const std::string& tree, const std::string& message, CommitOptions o = {}) {
  brz({"add", "-q", tree});
  std::vector<std::string> args{"commit", "-q", "--unchanged", "-m", message};
  for (const auto& a : o.authors) args.insert(args.end(), {"--author", a});
  if (!o.time.empty()) args.insert(args.end(), {"--commit-time", o.time});
  args.push_back(tree);
  brz(args);
  return lastRevision(tree);
}

std::string commitFile(const std::string& tree, const std::string& file, const std::string& message,
                       CommitOptions o = {}) {
  writeFile(fs::path(tree) / file, message + "\n");
  return commitAll(tree, message, std::move(o));
}

// Runs Python with Breezy (the tests' way to do what the CLI cannot).
std::string python(const std::string& script, std::vector<std::string> args = {}) {
  std::vector<std::string> argv{"/usr/bin/python3", "-c", script};
  argv.insert(argv.end(), args.begin(), args.end());
  auto [code, output] = test::run(argv);
  EXPECT_EQ(code, 0) << output;
  return trimmed(output);
}

size_t revisionCount(const std::string& proxy) {
  std::string out = python(
      "import sys, breezy, breezy.bzr\n"
      "from breezy.repository import Repository\n"
      "with breezy.initialize():\n"
      "  r = Repository.open(sys.argv[1])\n"
      "  with r.lock_read(): print(len(r.all_revision_ids()))\n",
      {proxy});
  return std::stoul(out);
}

std::vector<std::string> linesOf(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

// The pids of our children running the long-lived helper.
std::vector<pid_t> helperPids() {
  std::vector<pid_t> pids;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream cmdline(entry.path() / "cmdline");
    std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
    std::ifstream statf(entry.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(statf)), std::istreambuf_iterator<char>());
    size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream fields(stat.substr(paren + 2));
    std::string state;
    pid_t ppid = 0;
    fields >> state >> ppid;
    if (ppid == getpid() && args.find("vcs-bzr-helper.py") != std::string::npos &&
        args.find("serve") != std::string::npos)
      pids.push_back(std::stoi(name));
  }
  return pids;
}

class VcsBzrTest : public test::VcsFixture {
 protected:
  VcsBzrTest() : VcsFixture("bzr") {}

  static void SetUpTestSuite() {
    setenv("BRZ_EMAIL", "Bob Committer <bob@example.org>", 1);
    setenv("BRZ_LOG", "/dev/null", 1);
    setenv("GIT_CONFIG_GLOBAL", "/dev/null", 1);
    setenv("GIT_CONFIG_NOSYSTEM", "1", 1);
  }

  void SetUp() override {
    VcsFixture::SetUp();
    proxy = tmp.path() + "/proxy";
  }

  Repo repo(int id, const std::string& url) {
    return Repo{id, url, proxy, "refs/pefnos/" + std::to_string(id) + "/", {}};
  }

  // A shared repository with working trees; branches are made in it.
  std::string makeSharedRepository(const std::string& name) {
    std::string dir = tmp.path() + "/" + name;
    brz({"init-shared-repo", "-q", dir});
    return dir;
  }
  std::string makeBranch(const std::string& dir) {
    fs::create_directories(fs::path(dir).parent_path());
    brz({"init", "-q", dir});
    return dir;
  }
  std::string proxyBranchRevision(const Repo& r, const std::string& branch) {
    return lastRevision(proxy + "/" + r.ref_prefix + branch);
  }

  std::map<std::string, std::string> headMap(const std::vector<Head>& heads) {
    std::map<std::string, std::string> got;
    for (const auto& h : heads) got[h.branch] = h.revision;
    return got;
  }

  // Runs the loop until done() holds or 20 s have passed.
  void runUntil(const std::function<bool()>& done) {
    bool expired = false;
    loop::Timer tick(&loop);
    tick.start(10, 10, [] {});
    loop::Timer watchdog(&loop);
    watchdog.start(20000, 0, [&] { expired = true; });
    while (!done() && !expired) uv_run(&loop, UV_RUN_ONCE);
  }
  // Runs the loop until the helper, killed from outside, is seen to be gone.
  void awaitProcessesGone() {
    runUntil([&] { return host->in_flight == 0; });
    ASSERT_EQ(host->in_flight, 0);
  }

  test::TempDir tmp{"pefnos-bzr"};
  std::string proxy;
};

// ---------------------------------------------------------------------------
// Heads

TEST_F(VcsBzrTest, ListHeadsOfADirectoryOfBranchesReadsControlFilesWithoutAnyProcess) {
  std::string up = makeSharedRepository("up");
  std::string trunk = makeBranch(up + "/trunk");
  std::string t = commitFile(trunk, "a.txt", "first");
  std::string feature = up + "/feature/x";
  fs::create_directories(up + "/feature");
  brz({"branch", "-q", trunk, feature});
  std::string f = commitFile(feature, "b.txt", "feature");
  std::string unicode = makeBranch(up + "/ünïcode/ブランチ");
  std::string u = commitFile(unicode, "c.txt", "unicode");
  makeBranch(up + "/empty");                       // no head: left out
  makeBranch(trunk + "/nested");                   // inside a branch: never looked at
  writeFile(fs::path(up) / "docs/readme.txt", "x");  // a plain directory, no branch
  std::string elsewhere = makeBranch(tmp.path() + "/elsewhere");
  commitFile(elsewhere, "e.txt", "elsewhere");
  fs::create_directory_symlink(elsewhere, up + "/link");  // never followed

  auto heads = listHeads(repo(1, up));
  ASSERT_TRUE(heads) << heads.error().message;
  std::map<std::string, std::string> want{{"trunk", t},
                                          {"feature/x", f},
                                          {"ünïcode/ブランチ", u}};
  EXPECT_EQ(headMap(*heads), want);
  EXPECT_TRUE(host->argvs.empty()) << "a local location is read without any process";

  // A branch as the location: its one head is "trunk"; file:// URLs are local too.
  auto single = listHeads(repo(2, "file://" + trunk));
  ASSERT_TRUE(single) << single.error().message;
  EXPECT_EQ(headMap(*single), (std::map<std::string, std::string>{{"trunk", t}}));
  auto standalone = listHeads(repo(3, elsewhere));
  ASSERT_TRUE(standalone) << standalone.error().message;
  EXPECT_EQ(standalone->size(), 1u);
  EXPECT_TRUE(host->argvs.empty());
}

TEST_F(VcsBzrTest, PollingUnchangedLocalBranchesCostsUnderTenMillisecondsOfCpu) {
  // 50 branches in a shared repository, made in one Python process.
  std::string up = makeSharedRepository("up");
  std::string trunk = makeBranch(up + "/trunk");
  commitFile(trunk, "a.txt", "first");
  python(
      "import sys, breezy, breezy.bzr\n"
      "from breezy.controldir import ControlDir\n"
      "with breezy.initialize():\n"
      "  source = ControlDir.open(sys.argv[1] + '/trunk')\n"
      "  import os\n"
      "  for i in range(49):\n"
      "    os.makedirs(sys.argv[1] + '/team%d' % (i % 5), exist_ok=True)\n"
      "    source.sprout(sys.argv[1] + '/team%d/feature-%d' % (i % 5, i), create_tree_if_local=False)\n",
      {up});
  ASSERT_EQ(listHeads(repo(1, up))->size(), 50u);

  auto cpu = [] {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 +
           (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
  };
  double before = cpu();
  constexpr int kPolls = 100;
  for (int i = 0; i < kPolls; ++i) ASSERT_TRUE(listHeads(repo(1, up)));
  double per_poll = (cpu() - before) / kPolls;
  EXPECT_LT(per_poll, 10.0) << "ms of CPU per poll";
  RecordProperty("cpu_ms_per_poll", std::to_string(per_poll));
  std::cout << "CPU per poll of 50 branches: " << per_poll << " ms\n";
  EXPECT_TRUE(host->argvs.empty());
}

TEST_F(VcsBzrTest, ListHeadsFollowsABranchReferenceThroughTheHelper) {
  std::string up = makeSharedRepository("up");
  std::string trunk = makeBranch(up + "/trunk");
  std::string t = commitFile(trunk, "a.txt", "first");
  std::string checkout = tmp.path() + "/light checkout";
  brz({"checkout", "-q", "--lightweight", trunk, checkout});

  auto heads = listHeads(repo(1, "file://" + checkout));  // the space unescaped: a path
  ASSERT_TRUE(heads) << heads.error().message;
  EXPECT_EQ(headMap(*heads), (std::map<std::string, std::string>{{"trunk", t}}));
  EXPECT_EQ(host->count("serve"), 1u);
  // The helper stays: a second question costs no new process.
  ASSERT_TRUE(listHeads(repo(1, checkout)));
  EXPECT_EQ(host->argvs.size(), 1u);
}

TEST_F(VcsBzrTest, ARepositoryWithNoBranchesGivesAClearError) {
  std::string up = makeSharedRepository("up");
  auto heads = listHeads(repo(1, up));
  ASSERT_FALSE(heads);
  EXPECT_EQ(heads.error().message,
            up + " is a Bazaar repository with no branches; point the URL at a branch or at a "
                 "directory of branches");
}

TEST_F(VcsBzrTest, NotABranchOrAMissingPathGivesAnErrorNamingTheLocation) {
  std::string plain = tmp.path() + "/plain";
  writeFile(fs::path(plain) / "file.txt", "not bzr");
  auto heads = listHeads(repo(1, plain));
  ASSERT_FALSE(heads);
  EXPECT_EQ(heads.error().message, plain + " is not a Bazaar branch and holds no branches");

  std::string missing = tmp.path() + "/missing";
  heads = listHeads(repo(1, missing));
  ASSERT_FALSE(heads);
  EXPECT_EQ(heads.error().message, missing + " does not exist");

  heads = listHeads(repo(1, plain + "/file.txt"));
  ASSERT_FALSE(heads);
  EXPECT_NE(heads.error().message.find(plain + "/file.txt"), std::string::npos);
  EXPECT_TRUE(host->argvs.empty());
}

TEST_F(VcsBzrTest, AnHttpLocationOnAClosedPortFailsQuicklyThroughTheHelper) {
  std::string url = "http://127.0.0.1:1/repo";
  auto heads = await<Result<std::vector<Head>>>([&](auto done) { vcs->listHeads(repo(1, url), done); },
                                                30000);
  ASSERT_FALSE(heads);
  EXPECT_NE(heads.error().message.find(url), std::string::npos) << heads.error().message;
  EXPECT_NE(heads.error().message.find("Connection refused"), std::string::npos)
      << heads.error().message;
  EXPECT_EQ(host->count("serve"), 1u);
}

// ---------------------------------------------------------------------------
// Proxy and commits

TEST_F(VcsBzrTest, ListCommitsAcrossAMergeGivesParentsFilesAuthorsDatesOldestFirst) {
  std::string up = makeSharedRepository("up");
  std::string trunk = makeBranch(up + "/trunk");
  std::string root = commitFile(trunk, "a.txt", "root",
                                {{"Alice Example <alice@example.org>"}, "2024-01-01 10:00:00 +0200"});
  std::string sideDir = up + "/side";
  brz({"branch", "-q", trunk, sideDir});
  std::string side = commitFile(sideDir, "dir/b.txt", "side", {{}, "2024-01-02 10:00:00 -0500"});
  std::string mainline = commitFile(trunk, "c.txt", "mainline", {{}, "2024-01-03 10:00:00 +0000"});
  brz({"merge", "-q", "-d", trunk, sideDir});
  std::string merge = commitAll(trunk, "Merge side\n\nWith a body line.",
                                {{"Alice Example <alice@example.org>", "Carol <carol@example.org>"},
                                 "2024-01-04 09:08:07 +0530"});

  Repo r = repo(1, up);
  auto updated = updateProxy(r, {"trunk", "side"});
  ASSERT_TRUE(updated) << updated.error().message;
  EXPECT_EQ(proxyBranchRevision(r, "trunk"), merge);
  EXPECT_EQ(proxyBranchRevision(r, "side"), side);

  auto commits = listCommits(r, merge, {}, 100);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 4u);
  const auto& c = *commits;
  EXPECT_EQ(c[0].revision, root);
  EXPECT_EQ(c[3].revision, merge);
  std::set<std::string> middle{c[1].revision, c[2].revision};
  EXPECT_EQ(middle, (std::set<std::string>{side, mainline}));

  EXPECT_TRUE(c[0].parents.empty());
  EXPECT_EQ(c[0].files, std::vector<std::string>{"a.txt"});  // a root revision: all its files
  EXPECT_EQ(c[0].message, "root");
  EXPECT_EQ(c[0].author, "Alice Example <alice@example.org>");
  EXPECT_EQ(c[0].committer, "Bob Committer <bob@example.org>");
  EXPECT_EQ(c[0].author_date, "2024-01-01T10:00:00+02:00");
  EXPECT_EQ(c[0].committer_date, "2024-01-01T10:00:00+02:00");

  const auto& m = c[3];
  EXPECT_EQ(m.parents, (std::vector<std::string>{mainline, side}));
  EXPECT_EQ(m.files, std::vector<std::string>{"dir/b.txt"});  // against the left parent
  EXPECT_EQ(m.message, "Merge side\n\nWith a body line.");
  EXPECT_EQ(m.author, "Alice Example <alice@example.org>, Carol <carol@example.org>");
  EXPECT_EQ(m.author_date, "2024-01-04T09:08:07+05:30");
  const auto& sideInfo = c[1].revision == side ? c[1] : c[2];
  EXPECT_EQ(sideInfo.author, "Bob Committer <bob@example.org>");  // no --author: the committer
  EXPECT_EQ(sideInfo.files, std::vector<std::string>{"dir/b.txt"});
  EXPECT_EQ(sideInfo.author_date, "2024-01-02T10:00:00-05:00");
  // The pull, the listing and everything else went through one helper: no
  // Python started per change.
  EXPECT_EQ(host->count("pull"), 0u);
  EXPECT_EQ(host->count("serve"), 1u);
}

TEST_F(VcsBzrTest, NonAsciiAuthorsMessagesAndFileNamesArriveIntact) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::string message = "Größe ✓ ブランチ\n\n«body»";
  std::string rev = commitFile(up, "ünïcode ファイル.txt", message,
                               {{"Zoë Ünïcode <zoe@example.org>"}, "2024-03-04 05:06:07 -0300"});
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  auto commits = listCommits(r, rev, {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 1u);
  const auto& c = commits->front();
  EXPECT_EQ(c.author, "Zoë Ünïcode <zoe@example.org>");
  EXPECT_EQ(c.message, message);
  EXPECT_EQ(c.files, std::vector<std::string>{"ünïcode ファイル.txt"});
  EXPECT_EQ(c.author_date, "2024-03-04T05:06:07-03:00");
}

TEST_F(VcsBzrTest, ListCommitsLimitExclusionsAndAnUnknownRevision) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::vector<std::string> revs;
  for (int i = 0; i < 5; ++i)
    revs.push_back(commitFile(up, "f" + std::to_string(i), "c" + std::to_string(i)));
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));

  auto commits = listCommits(r, revs[4], {revs[0], "unknown@example.org-2024-xyz"}, 2);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 2u);
  EXPECT_EQ((*commits)[0].revision, revs[3]);
  EXPECT_EQ((*commits)[1].revision, revs[4]);
  EXPECT_EQ((*commits)[1].parents, std::vector<std::string>{revs[3]});

  auto excluded = listCommits(r, revs[4], {revs[2]}, 100);
  ASSERT_TRUE(excluded) << excluded.error().message;
  EXPECT_EQ(excluded->size(), 2u);

  std::string unknown = "nobody@example.org-20240101000000-0123456789abcdef";
  auto missing = listCommits(r, unknown, {}, 10);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find(unknown), std::string::npos) << missing.error().message;
}

TEST_F(VcsBzrTest, GhostParentsBreakNothing) {
  std::string up = makeSharedRepository("up");
  std::string trunk = makeBranch(up + "/trunk");
  std::string base = commitFile(trunk, "a.txt", "base");
  writeFile(fs::path(trunk) / "b.txt", "b\n");
  brz({"add", "-q", trunk});
  // A merge of a revision nobody has, and a branch whose first parent is a ghost.
  std::string orphan = makeBranch(up + "/orphan");
  writeFile(fs::path(orphan) / "o.txt", "o\n");
  brz({"add", "-q", orphan});
  std::string out = python(
      "import sys, breezy, breezy.bzr\n"
      "from breezy.workingtree import WorkingTree\n"
      "with breezy.initialize():\n"
      "  t = WorkingTree.open(sys.argv[1])\n"
      "  with t.lock_write():\n"
      "    t.add_parent_tree_id(b'ghost@example.org-20240101000000-0000000000000001',\n"
      "                         allow_leftmost_as_ghost=True)\n"
      "    print('rev=' + t.commit('merge a ghost').decode())\n"
      "  o = WorkingTree.open(sys.argv[2])\n"
      "  with o.lock_write():\n"
      "    o.set_parent_ids([b'ghost@example.org-20240101000000-0000000000000002'],\n"
      "                     allow_leftmost_as_ghost=True)\n"
      "    print('rev=' + o.commit('on a ghost').decode())\n",
      {trunk, orphan});
  std::vector<std::string> ids;  // brz's own report is mixed in
  for (const auto& line : linesOf(out))
    if (line.rfind("rev=", 0) == 0) ids.push_back(line.substr(4));
  ASSERT_EQ(ids.size(), 2u) << out;
  Repo r = repo(1, up);
  auto updated = updateProxy(r, {"trunk", "orphan"});
  ASSERT_TRUE(updated) << updated.error().message;

  auto commits = listCommits(r, ids[0], {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 2u);
  EXPECT_EQ((*commits)[1].parents,
            (std::vector<std::string>{base, "ghost@example.org-20240101000000-0000000000000001"}));
  EXPECT_EQ((*commits)[1].files, std::vector<std::string>{"b.txt"});

  auto orphaned = listCommits(r, ids[1], {"ghost@example.org-20240101000000-0000000000000002"}, 10);
  ASSERT_TRUE(orphaned) << orphaned.error().message;
  ASSERT_EQ(orphaned->size(), 1u);
  EXPECT_EQ(orphaned->front().parents,
            std::vector<std::string>{"ghost@example.org-20240101000000-0000000000000002"});
  EXPECT_EQ(orphaned->front().files, std::vector<std::string>{"o.txt"});  // against nothing

  EXPECT_TRUE(treeDigest(r, ids[0]));
  EXPECT_TRUE(exportTree(r, ids[1]));
}

TEST_F(VcsBzrTest, AForkInTheSameProxyBringsOnlyItsNewRevisions) {
  std::string up = makeBranch(tmp.path() + "/up");
  for (int i = 0; i < 3; ++i) commitFile(up, "file" + std::to_string(i), "commit " + std::to_string(i));
  std::string fork = tmp.path() + "/fork";
  brz({"branch", "-q", up, fork});
  std::string extra = commitFile(fork, "fork-only.txt", "fork only");

  Repo parent = repo(1, up), child = repo(2, fork);
  ASSERT_TRUE(updateProxy(parent, {"trunk"}));
  EXPECT_EQ(revisionCount(proxy), 3u);
  auto updated = updateProxy(child, {"trunk"});
  ASSERT_TRUE(updated) << updated.error().message;
  EXPECT_EQ(revisionCount(proxy), 4u) << "one shared repository: the fork's own revision only";
  EXPECT_EQ(proxyBranchRevision(child, "trunk"), extra);
  EXPECT_NE(proxyBranchRevision(parent, "trunk"), extra);
  EXPECT_FALSE(fs::exists(proxy + "/refs/pefnos/2/trunk/.bzr/repository"));
}

TEST_F(VcsBzrTest, UpdateProxyFollowsAnUncommitAndANewCommit) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::string first = commitFile(up, "a", "first");
  std::string second = commitFile(up, "b", "second");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  ASSERT_EQ(proxyBranchRevision(r, "trunk"), second);

  brz({"uncommit", "-q", "--force", up});
  std::string rewritten = commitFile(up, "c", "rewritten");  // diverges from `second`
  auto updated = updateProxy(r, {"trunk"});
  ASSERT_TRUE(updated) << updated.error().message;
  EXPECT_EQ(proxyBranchRevision(r, "trunk"), rewritten);
  auto commits = listCommits(r, rewritten, {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 2u);
  EXPECT_EQ((*commits)[0].revision, first);
}

TEST_F(VcsBzrTest, UpdateProxyOfAMissingBranchNamesIt) {
  std::string up = makeSharedRepository("up");
  commitFile(makeBranch(up + "/trunk"), "a", "first");
  auto updated = updateProxy(repo(1, up), {"trunk", "nope"});
  ASSERT_FALSE(updated);
  EXPECT_NE(updated.error().message.find(up + " has no branch 'nope'"), std::string::npos)
      << updated.error().message;
}

// ---------------------------------------------------------------------------
// Trees

// A tree with what git orders carefully (a-b.txt, a/, a.txt, a0), an
// executable, a symlink and an empty directory (which git does not keep).
std::string makeTree(const std::string& branch) {
  writeFile(fs::path(branch) / "a.txt", "a\n");
  writeFile(fs::path(branch) / "a-b.txt", "ab\n");
  writeFile(fs::path(branch) / "a0", "0\n");
  writeFile(fs::path(branch) / "a/x.txt", "x\n");
  writeFile(fs::path(branch) / "dir/sub/b.txt", "b\n");
  writeFile(fs::path(branch) / "run.sh", "#!/bin/sh\necho hi\n");
  chmod((branch + "/run.sh").c_str(), 0755);
  fs::create_directory_symlink("dir/sub", fs::path(branch) / "link");
  fs::create_directories(fs::path(branch) / "empty");
  return commitAll(branch, "tree");
}

TEST_F(VcsBzrTest, ExportTreeStreamsATarWithExecBitsAndSymlinks) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::string rev = makeTree(up);
  commitFile(up, "later.txt", "not in the export");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));

  auto tar = exportTree(r, rev);
  ASSERT_TRUE(tar) << tar.error().message;
  std::string tar_path = tmp.path() + "/export.tar";
  std::ofstream(tar_path, std::ios::binary) << *tar;
  auto [code, listing] = test::run({"tar", "-tf", tar_path});
  ASSERT_EQ(code, 0) << listing;
  auto names = linesOf(listing);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"a-b.txt", "a.txt", "a/", "a/x.txt", "a0", "dir/",
                                             "dir/sub/", "dir/sub/b.txt", "empty/", "link",
                                             "run.sh"}));
  std::string out = tmp.path() + "/out";
  fs::create_directories(out);
  ASSERT_EQ(test::run({"tar", "-xf", tar_path, "-C", out}).first, 0);
  EXPECT_NE(fs::status(out + "/run.sh").permissions() & fs::perms::owner_exec, fs::perms::none);
  EXPECT_EQ(fs::status(out + "/a.txt").permissions() & fs::perms::owner_exec, fs::perms::none);
  ASSERT_TRUE(fs::is_symlink(out + "/link"));
  EXPECT_EQ(fs::read_symlink(out + "/link"), "dir/sub");
  EXPECT_EQ(host->count("export"), 1u);
}

TEST_F(VcsBzrTest, TreeDigestEqualsGitsTreeIdOfTheSameContent) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::string rev = makeTree(up);
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));

  auto tar = exportTree(r, rev);
  ASSERT_TRUE(tar) << tar.error().message;
  std::string tar_path = tmp.path() + "/export.tar", work = tmp.path() + "/git";
  std::ofstream(tar_path, std::ios::binary) << *tar;
  fs::create_directories(work);
  ASSERT_EQ(test::run({"tar", "-xf", tar_path, "-C", work}).first, 0);
  ASSERT_EQ(test::run({"git", "init", "-q", work}).first, 0);
  ASSERT_EQ(test::run({"git", "-C", work, "add", "-A", "-f"}).first, 0);
  auto [code, tree] = test::run({"git", "-C", work, "write-tree"});
  ASSERT_EQ(code, 0) << tree;

  auto digest = treeDigest(r, rev);
  ASSERT_TRUE(digest) << digest.error().message;
  EXPECT_EQ(*digest, trimmed(tree));
  auto again = treeDigest(r, rev);  // from the blob cache
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *digest);
}

// ---------------------------------------------------------------------------
// The helper's life, safety

TEST_F(VcsBzrTest, AKilledHelperIsRestartedByTheNextRequest) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::string rev = commitFile(up, "a", "first");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  ASSERT_TRUE(listCommits(r, rev, {}, 10));
  auto pids = helperPids();
  ASSERT_EQ(pids.size(), 1u);
  ASSERT_EQ(kill(pids.front(), SIGKILL), 0);
  awaitProcessesGone();

  auto commits = listCommits(r, rev, {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  EXPECT_EQ(commits->size(), 1u);
  EXPECT_EQ(host->count("serve"), 2u);
  auto now = helperPids();
  ASSERT_EQ(now.size(), 1u);
  EXPECT_NE(now.front(), pids.front());
}

TEST_F(VcsBzrTest, ARequestPendingWhenTheHelperDiesFailsClearly) {
  // A server that accepts connections and never answers: the request hangs.
  std::string script =
      "import socket, sys\n"
      "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(5)\n"
      "print(s.getsockname()[1], flush=True)\n"
      "import time; time.sleep(600)\n";
  test::Child server({"/usr/bin/python3", "-c", script});
  ASSERT_TRUE(server.waitOutput("\n", std::chrono::seconds(10)));
  std::string port = trimmed(server.output());
  std::string url = "http://127.0.0.1:" + port + "/repo";

  std::optional<Result<std::vector<Head>>> got;
  vcs->listHeads(repo(1, url), [&](Result<std::vector<Head>> r) { got.emplace(std::move(r)); });
  // Wait until the helper runs, then kill it.
  ASSERT_TRUE(test::waitUntil(
      [&] {
        uv_run(&loop, UV_RUN_NOWAIT);
        return helperPids().size() == 1;
      },
      std::chrono::seconds(10)));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let it start the request
  ASSERT_EQ(kill(helperPids().front(), SIGKILL), 0);
  runUntil([&] { return got.has_value(); });
  ASSERT_TRUE(got);
  auto& heads = *got;
  ASSERT_FALSE(heads);
  EXPECT_NE(heads.error().message.find("listing the branches of " + url), std::string::npos)
      << heads.error().message;
  EXPECT_NE(heads.error().message.find("killed by signal 9"), std::string::npos)
      << heads.error().message;
}

TEST_F(VcsBzrTest, HostileBranchNamesAndRevisionsAreRefusedBeforeAnyProcess) {
  std::string up = makeSharedRepository("up");
  std::string trunk = makeBranch(up + "/trunk");
  std::string rev = commitFile(trunk, "a", "first");
  commitFile(makeBranch(up + "/-evil"), "e", "evil");  // a name that looks like an option
  Repo r = repo(1, up);

  auto heads = listHeads(r);
  ASSERT_TRUE(heads) << heads.error().message;
  ASSERT_EQ(heads->size(), 1u) << "the hostile branch is left out";
  EXPECT_EQ(heads->front().branch, "trunk");
  EXPECT_EQ(host->logged.size(), 1u);

  for (std::string bad : {"../escape", "-evil", "a/../../b", "/etc", "a\nb", ".bzr", ""}) {
    auto refused = updateProxy(r, {"trunk", bad});
    EXPECT_FALSE(refused) << bad;
  }
  for (std::string bad : {"--help", "a b", "a\nb", "null:", ""}) {
    EXPECT_FALSE(listCommits(r, bad, {}, 10)) << bad;
    EXPECT_FALSE(listCommits(r, rev, {bad}, 10)) << bad;
    EXPECT_FALSE(treeDigest(r, bad)) << bad;
    EXPECT_FALSE(exportTree(r, bad)) << bad;
  }
  Repo escaping = r;
  escaping.ref_prefix = "../outside/";
  EXPECT_FALSE(updateProxy(escaping, {"trunk"}));
  EXPECT_FALSE(forget(escaping));
  EXPECT_TRUE(host->argvs.empty()) << "nothing hostile reached a process";
  EXPECT_FALSE(fs::exists(tmp.path() + "/outside"));
}

TEST_F(VcsBzrTest, ForgetRemovesOnlyThatRepositorysBranchesAndNoRevisions) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::string base = commitFile(up, "a", "base");
  std::string fork = tmp.path() + "/fork";
  brz({"branch", "-q", up, fork});
  commitFile(fork, "b", "fork");
  // Ids 1 and 10: a prefix match on "refs/pefnos/1" would take the sibling too.
  Repo parent = repo(10, up), gone = repo(1, fork);
  ASSERT_TRUE(updateProxy(parent, {"trunk"}));
  ASSERT_TRUE(updateProxy(gone, {"trunk"}));
  size_t before = revisionCount(proxy);

  auto forgotten = forget(gone);
  ASSERT_TRUE(forgotten) << forgotten.error().message;
  EXPECT_FALSE(fs::exists(proxy + "/refs/pefnos/1"));
  EXPECT_TRUE(fs::exists(proxy + "/refs/pefnos/10/trunk/.bzr"));
  EXPECT_EQ(revisionCount(proxy), before);
  auto commits = listCommits(parent, base, {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  EXPECT_EQ(commits->size(), 1u);

  EXPECT_TRUE(forget(gone)) << "forgetting what is not there is no error";
  EXPECT_TRUE(forget(repo(3, up)));
}

}  // namespace
}  // namespace pefnos
