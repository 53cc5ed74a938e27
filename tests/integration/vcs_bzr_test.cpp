// The bzr VCS plugin, loaded through the Registry from the build's plugin
// directory, against real Bazaar repositories the tests make with the brz
// CLI (and Breezy's Python API where the CLI cannot: ghosts), on a real libuv
// loop. First, unit tests of the plugin's pure parsing (bzr_parse.h); last,
// mirroring: fastExport piped into a real `git fast-import`, `git
// fast-export` piped into fastImport, and publish to a real upstream.
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

TEST(BzrParse, StreamRefsAreGitRefsWithoutSpaces) {
  for (const char* good : {"refs/heads/master", "refs/heads/feature/x", "refs/pefnos/mirror/7"})
    EXPECT_TRUE(bzr::isValidStreamRef(good)) << good;
  for (const char* bad : {"", "master", "refs/", "refs/heads/", "refs/heads/a b", "refs/heads/a\nb",
                          "refs/heads/a..b", "refs/heads/a:b", "refs/heads/a~1", "refs/heads/x.",
                          "refs//x", "refs/heads/a@{1}", "refs/heads/a\\b"})
    EXPECT_FALSE(bzr::isValidStreamRef(bad)) << bad;
}

TEST(BzrParse, MarksReadAsMarkRevisionLines) {
  auto marks = bzr::parseMarks(":1 joe@example.org-1\n:12 git-v1:abc\n");
  ASSERT_TRUE(marks);
  EXPECT_EQ(*marks, (std::vector<std::pair<uint64_t, std::string>>{{1, "joe@example.org-1"},
                                                                   {12, "git-v1:abc"}}));
  EXPECT_EQ(bzr::parseMarks("")->size(), 0u);
  for (const char* bad : {":1 a", "1 a\n", ":0 a\n", ":x a\n", ":1\n", ":1 a b\n", ": a\n",
                          ":99999999999999999999999 a\n", ":1 null:\n"})
    EXPECT_FALSE(bzr::parseMarks(bad)) << bad;
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

  // Runs the loop until done() holds or timeout_ms (20 s) have passed.
  void runUntil(const std::function<bool()>& done, uint64_t timeout_ms = 20000) {
    bool expired = false;
    loop::Timer tick(&loop);
    tick.start(10, 10, [] {});
    loop::Timer watchdog(&loop);
    watchdog.start(timeout_ms, 0, [&] { expired = true; });
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

// ---------------------------------------------------------------------------
// Mirroring: fast-export into a real git, fast-import from a real git, publish

// Runs git for the test itself; fails the test on error. Its stdout (and stderr).
std::string git(std::vector<std::string> args) {
  std::vector<std::string> argv{"git"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto [code, output] = test::run(argv);
  EXPECT_EQ(code, 0) << "git " << args.front() << " " << args.back() << ": " << output;
  return trimmed(output);
}

std::string gitCommitAll(const std::string& dir, const std::string& message) {
  git({"-C", dir, "add", "-A"});
  git({"-C", dir, "-c", "user.name=Gina Git", "-c", "user.email=gina@example.org", "commit", "-q",
       "--allow-empty", "-m", message});
  return git({"-C", dir, "rev-parse", "HEAD"});
}

// One commit of a fast-import stream, as the tests read it back.
struct StreamCommit {
  bool reset = false;  // a `reset` came just before it
  uint64_t mark = 0;
  std::string revision;  // original-oid
  std::string author, committer, message;
  std::vector<uint64_t> parents;     // from, then merges
  std::vector<std::string> changes;  // "D path", "M mode path", "deleteall"
};

std::vector<StreamCommit> parseStream(const std::string& s) {
  std::vector<StreamCommit> commits;
  bool reset = false;
  size_t pos = 0;
  auto line = [&] {
    size_t nl = s.find('\n', pos);
    if (nl == std::string::npos) nl = s.size();
    std::string l = s.substr(pos, nl - pos);
    pos = std::min(nl + 1, s.size());
    return l;
  };
  auto data = [&](const std::string& header) {
    size_t n = std::stoul(header.substr(5));
    std::string d = s.substr(pos, n);
    pos += n;
    if (pos < s.size() && s[pos] == '\n') ++pos;
    return d;
  };
  auto starts = [](const std::string& l, const char* prefix) { return l.rfind(prefix, 0) == 0; };
  while (pos < s.size()) {
    std::string l = line();
    if (l.empty()) continue;
    if (starts(l, "reset ")) {
      reset = true;
      continue;
    }
    if (starts(l, "commit ")) {
      commits.emplace_back();
      commits.back().reset = std::exchange(reset, false);
      continue;
    }
    if (commits.empty()) {
      ADD_FAILURE() << "a stream line outside any commit: " << l;
      return commits;
    }
    auto& c = commits.back();
    if (starts(l, "mark :"))
      c.mark = std::stoull(l.substr(6));
    else if (starts(l, "original-oid "))
      c.revision = l.substr(13);
    else if (starts(l, "author "))
      c.author = l.substr(7);
    else if (starts(l, "committer "))
      c.committer = l.substr(10);
    else if (starts(l, "data "))
      c.message = data(l);
    else if (starts(l, "from :") || starts(l, "merge :"))
      c.parents.push_back(std::stoull(l.substr(l.find(':') + 1)));
    else if (starts(l, "M ")) {
      size_t inline_at = l.find(" inline ");
      EXPECT_NE(inline_at, std::string::npos) << l;
      c.changes.push_back(l.substr(0, 9) + l.substr(inline_at + 8));  // "M 100644 path"
      data(line());
    } else
      c.changes.push_back(l);
  }
  return commits;
}

// git's marks file: mark -> object id.
std::map<uint64_t, std::string> gitMarks(const std::string& file) {
  std::map<uint64_t, std::string> marks;
  std::ifstream in(file);
  for (std::string mark, sha; in >> mark >> sha;) marks[std::stoull(mark.substr(1))] = sha;
  return marks;
}

struct GitCommit {
  std::string tree;
  std::vector<std::string> parents;
  std::string author, committer, message;
};

GitCommit gitCommit(const std::string& dir, const std::string& sha) {
  auto [code, raw] = test::run({"git", "-C", dir, "cat-file", "commit", sha});
  EXPECT_EQ(code, 0) << raw;
  GitCommit c;
  size_t body = raw.find("\n\n");
  c.message = body == std::string::npos ? "" : raw.substr(body + 2);
  std::istringstream headers(raw.substr(0, body));
  for (std::string l; std::getline(headers, l);) {
    if (l.rfind("tree ", 0) == 0)
      c.tree = l.substr(5);
    else if (l.rfind("parent ", 0) == 0)
      c.parents.push_back(l.substr(7));
    else if (l.rfind("author ", 0) == 0)
      c.author = l.substr(7);
    else if (l.rfind("committer ", 0) == 0)
      c.committer = l.substr(10);
  }
  return c;
}

class VcsBzrMirrorTest : public VcsBzrTest {
 protected:
  struct Exported {
    Status status = ok();
    std::string stream;
  };

  // The plugin's fastExport piped into `git fast-import` in git_dir through
  // the host, with back-pressure, as a mirror run pipes it; git keeps its
  // marks in marks (read first when it exists).
  Exported exportToGit(const Repo& r, const ExportSpec& spec, const std::string& git_dir,
                       const std::string& marks) {
    struct Pipe {  // what late callbacks may still touch
      std::string stream;
      std::optional<Status> exported;
      std::optional<ProcessResult> imported;
      int pending = 0;
      std::shared_ptr<Running> exporter, importer;
    };
    auto pipe = std::make_shared<Pipe>();
    ProcessSpec ps;
    ps.argv = {"git", "-C", git_dir, "fast-import", "--quiet", "--export-marks=" + marks};
    if (fs::exists(marks)) ps.argv.push_back("--import-marks=" + marks);
    ps.stdin_pipe = true;
    ps.timeout_seconds = 60;
    pipe->importer = host->stream(
        ps, [](std::string_view) {},
        [pipe](ProcessResult result) { pipe->imported = std::move(result); });
    std::weak_ptr<Pipe> weak = pipe;
    pipe->exporter = vcs->fastExport(
        r, spec,
        [weak](std::string_view chunk) {
          auto p = weak.lock();
          if (!p) return;
          p->stream.append(chunk);
          if (++p->pending == 1) p->exporter->pause();
          p->importer->write(std::string(chunk), [weak](bool) {
            auto p = weak.lock();
            if (p && --p->pending == 0 && !p->exported) p->exporter->resume();
          });
        },
        [weak](Status status) {
          auto p = weak.lock();
          if (!p) return;
          EXPECT_FALSE(p->exported) << "done called twice";
          p->exported = std::move(status);
          p->importer->closeInput();
        });
    runUntil([&] { return pipe->exported && pipe->imported && pipe->pending == 0; }, 60000);
    if (!pipe->exported || !pipe->imported) {
      ADD_FAILURE() << "the export into git did not end in time";
      if (pipe->exporter) pipe->exporter->kill();
      pipe->importer->kill();
      runUntil([&] { return pipe->imported && pipe->pending == 0; });
      return {Error{"timed out"}, pipe->stream};
    }
    if (pipe->exported->ok()) {
      EXPECT_TRUE(pipe->imported->ok()) << pipe->imported->describe("git fast-import") << "\n"
                                        << pipe->stream.substr(0, 4000);
    }
    return {*pipe->exported, pipe->stream};
  }

  // `git fast-export` of refs/heads/master in git_dir piped into the plugin's
  // fastImport through the host, with back-pressure; git's marks in
  // marks_out (marks_in read first, if given).
  Result<Imported> importFromGit(const Repo& r, const ImportSpec& spec, const std::string& git_dir,
                                 const std::string& marks_in, const std::string& marks_out) {
    struct Pipe {
      std::optional<Result<Imported>> imported;
      std::optional<ProcessResult> exported;
      int pending = 0;
      std::shared_ptr<Running> exporter;
      std::shared_ptr<Import> importer;
    };
    auto pipe = std::make_shared<Pipe>();
    pipe->importer = vcs->fastImport(r, spec, [pipe](Result<Imported> result) {
      EXPECT_FALSE(pipe->imported) << "done called twice";
      pipe->imported.emplace(std::move(result));
    });
    if (!pipe->importer) {
      runUntil([&] { return pipe->imported.has_value(); });
      return pipe->imported ? std::move(*pipe->imported) : Result<Imported>(Error{"no answer"});
    }
    EXPECT_EQ(pipe->importer->ref(), "refs/heads/master");
    ProcessSpec ps;
    ps.argv = {"git", "-C", git_dir, "fast-export", "--export-marks=" + marks_out};
    if (!marks_in.empty()) ps.argv.push_back("--import-marks=" + marks_in);
    ps.argv.push_back("refs/heads/master");
    ps.timeout_seconds = 60;
    std::weak_ptr<Pipe> weak = pipe;
    pipe->exporter = host->stream(
        ps,
        [weak](std::string_view chunk) {
          auto p = weak.lock();
          if (!p) return;
          if (++p->pending == 1) p->exporter->pause();
          p->importer->write(std::string(chunk), [weak](bool) {
            auto p = weak.lock();
            if (p && --p->pending == 0 && !p->exported) p->exporter->resume();
          });
        },
        [weak](ProcessResult result) {
          auto p = weak.lock();
          if (!p) return;
          EXPECT_TRUE(result.ok()) << result.describe("git fast-export");
          p->exported = std::move(result);
          p->importer->finish();
        });
    runUntil([&] { return pipe->imported && pipe->exported && pipe->pending == 0; }, 60000);
    if (!pipe->imported || !pipe->exported) {
      ADD_FAILURE() << "the import from git did not end in time";
      pipe->exporter->kill();
      pipe->importer->kill();
      runUntil([&] { return pipe->imported && pipe->exported && pipe->pending == 0; });
      return Error{"timed out"};
    }
    return std::move(*pipe->imported);
  }

  Status publish(const Repo& r, const std::string& branch, const std::string& revision,
                 const std::string& expected) {
    return await<Status>([&](auto done) { vcs->publish(r, branch, revision, expected, done); });
  }

  // Every revision up to tip that sha_of maps, against its git commit: the
  // tree is the plugin's tree digest, the parents correspond.
  void expectSameHistory(const Repo& r, const std::string& tip, const std::string& git_dir,
                         const std::map<std::string, std::string>& sha_of) {
    auto commits = listCommits(r, tip, {}, 1000);
    ASSERT_TRUE(commits) << commits.error().message;
    for (const auto& c : *commits) {
      auto sha = sha_of.find(c.revision);
      if (sha == sha_of.end()) continue;
      GitCommit g = gitCommit(git_dir, sha->second);
      auto digest = treeDigest(r, c.revision);
      ASSERT_TRUE(digest) << digest.error().message;
      EXPECT_EQ(g.tree, *digest) << "the tree of " << c.revision << " (" << c.message << ")";
      std::vector<std::string> parents;
      for (const auto& p : c.parents) {
        auto it = sha_of.find(p);
        if (it != sha_of.end()) parents.push_back(it->second);
      }
      EXPECT_EQ(g.parents, parents) << "the parents of " << c.revision << " (" << c.message << ")";
    }
  }
};

// Marks of a stream: bzr revision -> git commit, through git's marks file.
std::map<std::string, std::string> shaByRevision(const std::vector<StreamCommit>& commits,
                                                 const std::map<uint64_t, std::string>& marks) {
  std::map<std::string, std::string> sha_of;
  for (const auto& c : commits) {
    auto it = marks.find(c.mark);
    EXPECT_NE(it, marks.end()) << "git has no mark :" << c.mark;
    if (it != marks.end()) sha_of[c.revision] = it->second;
  }
  return sha_of;
}

TEST_F(VcsBzrMirrorTest, ExportOfMergesRenamesExecBitsSymlinksAndOddNamesGivesGitTheSameTrees) {
  std::string up = makeSharedRepository("up");
  std::string trunk = makeBranch(up + "/trunk");
  fs::path t(trunk);
  writeFile(t / "a.txt", "a\n");
  writeFile(t / "dir/sub/b.txt", "b\n");
  writeFile(t / "run.sh", "#!/bin/sh\necho hi\n");
  chmod((trunk + "/run.sh").c_str(), 0755);
  fs::create_directory_symlink("dir/sub", t / "link");
  fs::create_directories(t / "empty");
  writeFile(t / "ünïcode ファイル.txt", "u\n");
  writeFile(t / "say \"hi\".txt", "q\n");
  writeFile(t / "\"leading quote", "lq\n");
  writeFile(t / "back\\slash", "bs\n");
  writeFile(t / "tab\tname", "tab\n");
  writeFile(t / "big.bin", std::string(3u << 20, 'x') + "end");  // more than one pipe's worth
  std::string r1 = commitAll(trunk, "Größe ✓ root\n\n«body»",
                             {{"Zoë Ünïcode <zoe@example.org>"}, "2024-01-02 03:04:05 +0530"});
  // Renames (a file, a directory), an exec bit dropped, a symlink retargeted.
  brz({"mv", "-q", trunk + "/a.txt", trunk + "/renamed.txt"});
  brz({"mv", "-q", trunk + "/dir", trunk + "/moved"});
  chmod((trunk + "/run.sh").c_str(), 0644);
  fs::remove(t / "link");
  fs::create_directory_symlink("moved/sub/b.txt", t / "link");
  writeFile(t / "moved/sub/b.txt", "b2\n");
  std::string r2 = commitAll(trunk, "renames", {{}, "2024-01-03 00:00:00 -0800"});
  // A side branch from r2, merged back later.
  std::string side = up + "/side";
  brz({"branch", "-q", trunk, side});
  std::string s1 = commitFile(side, "side.txt", "side one");
  std::string s2 = commitFile(side, "moved/sub/side.txt", "side two");
  // A file becomes a directory.
  brz({"rm", "-q", trunk + "/renamed.txt"});
  writeFile(t / "renamed.txt/inner.txt", "inner\n");
  std::string r3 = commitAll(trunk, "file to directory");
  brz({"merge", "-q", "-d", trunk, side});
  std::string r4 = commitAll(trunk, "merge side",
                             {{"Alice <alice@example.org>", "Carol <carol@example.org>"}, ""});
  // The directory becomes a file again; the empty directory goes.
  brz({"rm", "-q", trunk + "/renamed.txt", trunk + "/empty"});
  writeFile(t / "renamed.txt", "a file again\n");
  std::string r5 = commitAll(trunk, "directory to file");

  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  std::string work = tmp.path() + "/git";
  git({"init", "-q", "--bare", work});
  std::string marks = tmp.path() + "/git-marks";
  auto exported = exportToGit(r, {"trunk", r5, "refs/heads/main", {}, 1}, work, marks);
  ASSERT_TRUE(exported.status) << exported.status.error().message;

  auto commits = parseStream(exported.stream);
  ASSERT_EQ(commits.size(), 7u);
  std::vector<std::string> order;
  for (const auto& c : commits) order.push_back(c.revision);
  EXPECT_EQ(order.back(), r5) << "the last commit is the revision asked for";
  EXPECT_EQ(order.front(), r1);
  std::set<std::string> all(order.begin(), order.end());
  EXPECT_EQ(all, (std::set<std::string>{r1, r2, s1, s2, r3, r4, r5}));
  for (size_t i = 0; i < commits.size(); ++i) {
    EXPECT_EQ(commits[i].mark, i + 1) << "marks from the first mark, in order";
    EXPECT_EQ(commits[i].reset, i == 0) << "a reset before the root only";
  }
  // Parents before children, by mark.
  for (const auto& c : commits)
    for (uint64_t p : c.parents) EXPECT_LT(p, c.mark);

  auto sha_of = shaByRevision(commits, gitMarks(marks));
  expectSameHistory(r, r5, work, sha_of);
  EXPECT_EQ(git({"--git-dir", work, "rev-parse", "refs/heads/main"}), sha_of[r5]);
  EXPECT_EQ(gitCommit(work, sha_of[r4]).parents,
            (std::vector<std::string>{sha_of[r3], sha_of[s2]}));

  GitCommit root = gitCommit(work, sha_of[r1]);
  EXPECT_EQ(root.author, "Zoë Ünïcode <zoe@example.org> 1704144845 +0530");
  EXPECT_EQ(root.committer, "Bob Committer <bob@example.org> 1704144845 +0530");
  EXPECT_EQ(root.message, "Größe ✓ root\n\n«body»");
  EXPECT_EQ(gitCommit(work, sha_of[r2]).author, "Bob Committer <bob@example.org> 1704268800 -0800");
  EXPECT_EQ(gitCommit(work, sha_of[r4]).author.rfind("Alice <alice@example.org> ", 0), 0u)
      << "the first of several authors";
  // What git holds: odd names intact, the symlink and exec bits, no empty directory.
  std::string listing = git({"--git-dir", work, "-c", "core.quotePath=false", "ls-tree", "-r",
                             "--full-tree", sha_of[r1]});
  for (const char* name :
       {"\tünïcode ファイル.txt", "\t\"say \\\"hi\\\".txt\"", "\t\"\\\"leading quote\"",
        "\t\"back\\\\slash\"", "\t\"tab\\tname\"", "120000 blob", "100755 blob"})
    EXPECT_NE(listing.find(name), std::string::npos) << name << " in\n" << listing;
  EXPECT_EQ(listing.find("empty"), std::string::npos);
  // Each change is against the first parent only.
  EXPECT_EQ(commits.back().changes,
            (std::vector<std::string>{"D renamed.txt/inner.txt", "M 100644 renamed.txt"}));
  EXPECT_EQ(host->count("fast-export"), 1u);
}

TEST_F(VcsBzrMirrorTest, IncrementalExportOfABranchFromOldHistoryKeepsEveryParent) {
  std::string up = makeSharedRepository("up");
  std::string trunk = makeBranch(up + "/trunk");
  std::vector<std::string> revs;
  for (int i = 1; i <= 4; ++i)
    revs.push_back(commitFile(trunk, "f" + std::to_string(i), "r" + std::to_string(i)));
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  std::string work = tmp.path() + "/git";
  git({"init", "-q", "--bare", work});
  std::string marks = tmp.path() + "/git-marks";
  auto first = exportToGit(r, {"trunk", revs[3], "refs/heads/main", {}, 1}, work, marks);
  ASSERT_TRUE(first.status) << first.status.error().message;
  auto first_commits = parseStream(first.stream);
  ASSERT_EQ(first_commits.size(), 4u);

  // A side branch forks from r2, gets two commits, merges back into the tip.
  std::string side = up + "/side";
  brz({"branch", "-q", "-r", "revid:" + revs[1], trunk, side});
  std::string s1 = commitFile(side, "s1", "side one");
  std::string s2 = commitFile(side, "f2", "side two changes f2");
  brz({"merge", "-q", "-d", trunk, side});
  std::string merge = commitAll(trunk, "merge the old side branch");
  std::string r6 = commitFile(trunk, "f6", "r6");
  ASSERT_TRUE(updateProxy(r, {"trunk"}));

  ExportSpec spec{"trunk", r6, "refs/heads/main", {}, 5};
  for (const auto& c : first_commits) spec.known.emplace_back(c.revision, c.mark);
  auto second = exportToGit(r, spec, work, marks);
  ASSERT_TRUE(second.status) << second.status.error().message;
  auto commits = parseStream(second.stream);
  ASSERT_EQ(commits.size(), 4u) << second.stream;
  std::map<std::string, StreamCommit> by_revision;
  for (const auto& c : commits) by_revision[c.revision] = c;
  ASSERT_EQ(by_revision.size(), 4u);
  ASSERT_TRUE(by_revision.count(s1) && by_revision.count(s2) && by_revision.count(merge));
  EXPECT_EQ(commits.back().revision, r6);
  for (const auto& c : commits) {
    EXPECT_GE(c.mark, 5u);
    EXPECT_FALSE(c.reset);
  }
  EXPECT_EQ(by_revision[s1].parents, std::vector<uint64_t>{2}) << "from r2's known mark";
  EXPECT_EQ(by_revision[merge].parents, (std::vector<uint64_t>{4, by_revision[s2].mark}));
  EXPECT_EQ(by_revision[s2].changes, std::vector<std::string>{"M 100644 f2"});

  auto git_marks = gitMarks(marks);
  auto sha_of = shaByRevision(first_commits, git_marks);
  for (auto& [rev, sha] : shaByRevision(commits, git_marks)) sha_of[rev] = sha;
  ASSERT_EQ(sha_of.size(), 8u);
  expectSameHistory(r, r6, work, sha_of);
  EXPECT_EQ(gitCommit(work, sha_of[s1]).parents, std::vector<std::string>{sha_of[revs[1]]});
  EXPECT_EQ(gitCommit(work, sha_of[merge]).parents,
            (std::vector<std::string>{sha_of[revs[3]], sha_of[s2]}));
  EXPECT_EQ(git({"--git-dir", work, "rev-parse", "refs/heads/main"}), sha_of[r6]);
  EXPECT_EQ(git({"--git-dir", work, "rev-list", "--count", "refs/heads/main"}), "8");

  // Known marks that leave out r2, which the side branch needs: refused, not a lost parent.
  auto partial = await<Status>([&](auto done) {
    vcs->fastExport(
        r, {"trunk", r6, "refs/heads/main", {{revs[3], 4}}, 5}, [](std::string_view) {}, done);
  });
  ASSERT_FALSE(partial);
  EXPECT_NE(partial.error().message.find(revs[1] + " is an ancestor of the target's revisions but "
                                                   "has no mark"),
            std::string::npos)
      << partial.error().message;
}

TEST_F(VcsBzrMirrorTest, NothingIsExportedWhenTheTargetHasTheRevision) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::string r1 = commitFile(up, "a", "one");
  std::string r2 = commitFile(up, "b", "two");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  for (const auto& [revision, known] :
       std::vector<std::pair<std::string, std::vector<std::pair<std::string, uint64_t>>>>{
           {r2, {{r1, 1}, {r2, 2}}},  // known itself
           {r1, {{r2, 2}}}}) {        // an ancestor of a known revision
    std::string stream;
    auto status = await<Status>([&](auto done) {
      vcs->fastExport(
          r, {"trunk", revision, "refs/heads/main", known, 3},
          [&](std::string_view chunk) { stream.append(chunk); }, done);
    });
    ASSERT_TRUE(status) << status.error().message;
    EXPECT_EQ(stream, "");
  }
}

TEST_F(VcsBzrMirrorTest, AnUnknownRevisionOrABadSpecFailsTheExportClearly) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::string r1 = commitFile(up, "a", "one");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  std::string unknown = "nobody@example.org-20240101000000-0123456789abcdef";
  std::string stream;
  auto status = await<Status>([&](auto done) {
    vcs->fastExport(
        r, {"trunk", unknown, "refs/heads/main", {}, 1},
        [&](std::string_view chunk) { stream.append(chunk); }, done);
  });
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("revision " + unknown + " is not in the proxy " + proxy),
            std::string::npos)
      << status.error().message;
  EXPECT_EQ(stream, "");

  size_t processes = host->argvs.size();
  for (ExportSpec bad : std::vector<ExportSpec>{
           {"trunk", r1, "refs/heads/main", {{r1, 3}}, 3},  // a known mark not below the first
           {"trunk", r1, "refs/heads/main", {}, 0},
           {"trunk", r1, "main branch", {}, 1},
           {"trunk", r1, "refs/heads/main", {{"-x", 1}}, 2},
           {"trunk", "--help", "refs/heads/main", {}, 1}}) {
    auto refused = await<Status>([&](auto done) {
      EXPECT_EQ(vcs->fastExport(
                    r, bad, [](std::string_view) {}, done),
                nullptr);
    });
    EXPECT_FALSE(refused) << bad.ref << " " << bad.first_mark;
  }
  EXPECT_EQ(host->argvs.size(), processes) << "refused before any process";
}

TEST_F(VcsBzrMirrorTest, GhostParentsAreLeftOutOfTheStream) {
  std::string up = makeSharedRepository("up");
  std::string trunk = makeBranch(up + "/trunk");
  std::string base = commitFile(trunk, "a.txt", "base");
  writeFile(fs::path(trunk) / "b.txt", "b\n");
  brz({"add", "-q", trunk});
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
  std::vector<std::string> ids;
  for (const auto& line : linesOf(out))
    if (line.rfind("rev=", 0) == 0) ids.push_back(line.substr(4));
  ASSERT_EQ(ids.size(), 2u) << out;
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk", "orphan"}));
  std::string work = tmp.path() + "/git";
  git({"init", "-q", "--bare", work});

  auto merged =
      exportToGit(r, {"trunk", ids[0], "refs/heads/trunk", {}, 1}, work, tmp.path() + "/m1");
  ASSERT_TRUE(merged.status) << merged.status.error().message;
  auto commits = parseStream(merged.stream);
  ASSERT_EQ(commits.size(), 2u);
  EXPECT_EQ(commits[1].parents, std::vector<uint64_t>{1}) << "the ghost is no merge";
  EXPECT_EQ(commits[1].changes, std::vector<std::string>{"M 100644 b.txt"});

  auto orphaned =
      exportToGit(r, {"orphan", ids[1], "refs/heads/orphan", {}, 1}, work, tmp.path() + "/m2");
  ASSERT_TRUE(orphaned.status) << orphaned.status.error().message;
  commits = parseStream(orphaned.stream);
  ASSERT_EQ(commits.size(), 1u);
  EXPECT_TRUE(commits[0].reset) << "a root in git";
  EXPECT_TRUE(commits[0].parents.empty());
  EXPECT_EQ(commits[0].changes, std::vector<std::string>{"M 100644 o.txt"});
  auto digest = treeDigest(r, ids[1]);
  ASSERT_TRUE(digest);
  EXPECT_EQ(git({"--git-dir", work, "rev-parse", "refs/heads/orphan^{tree}"}), *digest);
}

// A git repository whose branch is master, as the Import's ref wants it.
std::string makeGitRepository(const std::string& dir) {
  git({"init", "-q", "-b", "master", dir});
  return dir;
}

TEST_F(VcsBzrMirrorTest, GitHistoryImportsIntoTheProxyAndPublishesWithoutOverwriting) {
  std::string g = makeGitRepository(tmp.path() + "/git");
  fs::path gp(g);
  writeFile(gp / "a.txt", "a\n");
  writeFile(gp / "ünïcode ファイル.txt", "u\n");
  writeFile(gp / "with space.txt", "s\n");
  writeFile(gp / "say \"hi\".txt", "q\n");
  writeFile(gp / "run.sh", "#!/bin/sh\n");
  chmod((g + "/run.sh").c_str(), 0755);
  fs::create_directory_symlink("a.txt", gp / "link");
  std::string c1 = gitCommitAll(g, "root ✓");
  writeFile(gp / "a.txt", "a2\n");
  std::string c2 = gitCommitAll(g, "two");
  git({"-C", g, "checkout", "-q", "-b", "side", c1});
  writeFile(gp / "side.txt", "side\n");
  std::string s1 = gitCommitAll(g, "side");
  git({"-C", g, "checkout", "-q", "master"});
  git({"-C", g, "-c", "user.name=Gina Git", "-c", "user.email=gina@example.org", "merge", "-q",
       "--no-ff", "-m", "merge side", "side"});
  std::string m1 = git({"-C", g, "rev-parse", "HEAD"});

  std::string up = makeSharedRepository("up");  // the bzr upstream: no branch yet
  Repo r = repo(1, up);
  std::string gm1 = tmp.path() + "/gm1", gm2 = tmp.path() + "/gm2";
  auto first = importFromGit(r, {"trunk", {}}, g, "", gm1);
  ASSERT_TRUE(first) << first.error().message;
  // Every commit mark of the stream, mapped to a revision with git's tree.
  std::map<std::string, std::string> sha_of;  // bzr revision -> git commit
  std::map<std::string, std::string> revision_of;
  auto git_marks = gitMarks(gm1);
  for (const auto& [mark, revision] : first->marks) {
    ASSERT_TRUE(git_marks.count(mark)) << "mark :" << mark << " is no git mark";
    sha_of[revision] = git_marks[mark];
    revision_of[git_marks[mark]] = revision;
  }
  ASSERT_EQ(revision_of.size(), 4u);
  for (const auto& sha : {c1, c2, s1, m1}) ASSERT_TRUE(revision_of.count(sha)) << sha;
  std::string tip = revision_of[m1];
  EXPECT_EQ(lastRevision(proxy + "/mirror/refs/pefnos/1/trunk"), tip);
  expectSameHistory(r, tip, g, sha_of);
  auto commits = listCommits(r, tip, {}, 10);
  ASSERT_TRUE(commits);
  ASSERT_EQ(commits->size(), 4u);
  EXPECT_EQ(commits->front().author, "Gina Git <gina@example.org>");
  EXPECT_EQ(trimmed(commits->front().message), "root ✓");
  EXPECT_EQ(commits->back().parents, (std::vector<std::string>{revision_of[c2], revision_of[s1]}));

  // Published as a new branch of the upstream (expected: none).
  auto published = publish(r, "trunk", tip, "");
  ASSERT_TRUE(published) << published.error().message;
  EXPECT_EQ(lastRevision(up + "/trunk"), tip);

  // Incremental: a side branch from the root, merged back; marks of the first run known.
  git({"-C", g, "checkout", "-q", "-b", "old", c1});
  writeFile(gp / "old.txt", "old\n");
  std::string o1 = gitCommitAll(g, "from old history");
  git({"-C", g, "checkout", "-q", "master"});
  git({"-C", g, "-c", "user.name=Gina Git", "-c", "user.email=gina@example.org", "merge", "-q",
       "--no-ff", "-m", "merge old", "old"});
  std::string m2 = git({"-C", g, "rev-parse", "HEAD"});
  auto second = importFromGit(r, {"trunk", first->marks}, g, gm1, gm2);
  ASSERT_TRUE(second) << second.error().message;
  git_marks = gitMarks(gm2);
  for (const auto& [mark, revision] : second->marks) {
    ASSERT_TRUE(git_marks.count(mark));
    sha_of[revision] = git_marks[mark];
    revision_of[git_marks[mark]] = revision;
  }
  ASSERT_TRUE(revision_of.count(o1) && revision_of.count(m2));
  std::string tip2 = revision_of[m2];
  expectSameHistory(r, tip2, g, sha_of);
  auto o1_commits = listCommits(r, revision_of[o1], {revision_of[c1]}, 10);
  ASSERT_TRUE(o1_commits);
  ASSERT_EQ(o1_commits->size(), 1u);
  EXPECT_EQ(o1_commits->front().parents, std::vector<std::string>{revision_of[c1]});
  EXPECT_EQ(lastRevision(proxy + "/mirror/refs/pefnos/1/trunk"), tip2);

  published = publish(r, "trunk", tip2, tip);
  ASSERT_TRUE(published) << published.error().message;
  EXPECT_EQ(lastRevision(up + "/trunk"), tip2);
  EXPECT_TRUE(publish(r, "trunk", tip2, tip)) << "published already: nothing to do";

  // Someone commits upstream: a publish from what we expected refuses.
  std::string co = tmp.path() + "/checkout";
  brz({"checkout", "-q", "--lightweight", up + "/trunk", co});
  commitFile(co, "theirs.txt", "someone else");
  std::string theirs =
      lastRevision(up + "/trunk");  // a lightweight checkout has no branch of its own
  ASSERT_FALSE(theirs.empty());
  ASSERT_NE(theirs, tip2);
  auto refused = publish(r, "trunk", tip2, tip);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("diverged"), std::string::npos) << refused.error().message;
  EXPECT_EQ(lastRevision(up + "/trunk"), theirs) << "left untouched";
  refused = publish(r, "trunk", tip2, "");  // expected to be absent, but it is there
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("diverged"), std::string::npos) << refused.error().message;
  EXPECT_EQ(lastRevision(up + "/trunk"), theirs);
  // A branch expected at a head but gone is diverged too.
  refused = publish(r, "feature/x", tip2, tip);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("diverged"), std::string::npos) << refused.error().message;
  EXPECT_FALSE(fs::exists(up + "/feature/x"));
}

TEST_F(VcsBzrMirrorTest, ABadStreamOrAnotherRefFailsTheImportWithTheReason) {
  std::string up = makeSharedRepository("up");
  Repo r = repo(1, up);
  auto importStream = [&](const std::string& stream) {
    return await<Result<Imported>>([&](auto done) {
      auto import = vcs->fastImport(r, {"trunk", {}}, done);
      ASSERT_TRUE(import);
      import->write(stream, [](bool){});
      import->finish();
    });
  };
  auto bad = importStream("commit refs/heads/master\nmark :1\nnonsense here\n");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("importing into " + proxy + "/mirror/refs/pefnos/1/trunk"),
            std::string::npos)
      << bad.error().message;
  EXPECT_NE(bad.error().message.find("a bad stream: line 3: Command b'commit' is missing section "
                                     "b'committer'"),
            std::string::npos)
      << bad.error().message;

  std::string commit =
      "commit refs/heads/other\nmark :1\ncommitter A <a@example.org> 1700000000 +0000\ndata 2\nhi\n"
      "M 100644 inline a.txt\ndata 2\na\n\n";
  auto other = importStream(commit);
  ASSERT_FALSE(other);
  EXPECT_NE(other.error().message.find("the stream writes to refs/heads/other; this import takes "
                                       "refs/heads/master only"),
            std::string::npos)
      << other.error().message;
  EXPECT_FALSE(fs::exists(proxy + "/mirror/refs/pefnos/1/other"));

  // Known marks the proxy does not have: refused before anything is written.
  auto missing = await<Result<Imported>>([&](auto done) {
    auto import = vcs->fastImport(r, {"trunk", {{1, "nobody@example.org-1"}}}, done);
    ASSERT_TRUE(import);
    import->finish();
  });
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find(
                "nobody@example.org-1, known to the stream, is not in the proxy"),
            std::string::npos)
      << missing.error().message;

  // Not UTF-8 in an author and a message: brz fast-import replaces the bytes.
  std::string latin1 =
      "commit refs/heads/master\nmark :1\nauthor J\xf6rg <j@example.org> 1700000000 +0100\n"
      "committer J\xf6rg <j@example.org> 1700000000 +0100\ndata 5\nd\xe9j\xe0\n"
      "M 100644 inline a.txt\ndata 2\na\n\n";
  auto replaced = importStream(latin1);
  ASSERT_TRUE(replaced) << replaced.error().message;
  ASSERT_EQ(replaced->marks.size(), 1u);
  EXPECT_EQ(replaced->marks[0].first, 1u);
  auto commits = listCommits(r, replaced->marks[0].second, {}, 1);
  ASSERT_TRUE(commits) << commits.error().message;
  EXPECT_EQ(commits->front().author, "J\xef\xbf\xbdrg <j@example.org>");
}

TEST_F(VcsBzrMirrorTest, AKilledImportReportsAnErrorAndChangesNothing) {
  std::string up = makeBranch(tmp.path() + "/up");
  std::string base = commitFile(up, "a", "base");
  Repo r = repo(1, up);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  size_t revisions = revisionCount(proxy);

  std::optional<Result<Imported>> got;
  int done_calls = 0;
  auto import = vcs->fastImport(r, {"trunk", {{1, base}}}, [&](Result<Imported> result) {
    ++done_calls;
    got.emplace(std::move(result));
  });
  ASSERT_TRUE(import);
  std::string commit =
      "commit refs/heads/master\nmark :2\ncommitter A <a@example.org> 1700000000 +0000\ndata "
      "2\nhi\n"
      "from :1\nM 100644 inline b.txt\ndata 2\nb\n\n";
  bool written = false;
  import->write(commit, [&](bool ok) { written = ok;
});
runUntil([&] { return written; });
ASSERT_TRUE(written);
// Let the helper start and take the commit in, then abandon the stream.
runUntil([] { return false; }, 1500);
import->kill();
runUntil([&] { return got.has_value(); });
ASSERT_TRUE(got);
ASSERT_FALSE(*got);
EXPECT_NE(got->error().message.find("abandoned"), std::string::npos) << got->error().message;
EXPECT_EQ(revisionCount(proxy), revisions) << "no revision was committed";
std::string mirror = proxy + "/mirror/refs/pefnos/1/trunk";
if (fs::exists(mirror)) {
  EXPECT_EQ(lastRevision(mirror), base) << "the mirror branch starts at the proxy's head";
}
bool late = true;
  import->write("more", [&](bool ok) { late = ok;
  }  // namespace
);
runUntil([&] { return !late; });
EXPECT_FALSE(late) << "a write after the end fails";
import.reset();
runUntil([] { return false; }, 100);
EXPECT_EQ(done_calls, 1);
}  // namespace pefnos

TEST_F(VcsBzrMirrorTest, AResetMakesTheNextCommitARootAsInGit) {
  std::string up = makeSharedRepository("up");
  Repo r = repo(1, up);
  auto commit = [](int mark, const std::string& file, const std::string& parents) {
    return "commit refs/heads/master\nmark :" + std::to_string(mark) +
           "\ncommitter A <a@example.org> 170000000" + std::to_string(mark) +
           " +0000\ndata 1\nc\n" + parents + "M 100644 inline " + file + "\ndata 2\nx\n\n";
  };
  std::string stream = "reset refs/heads/master\n" + commit(1, "a.txt", "") +
                       "reset refs/heads/master\n" + commit(2, "b.txt", "") +
                       commit(3, "c.txt", "from :1\nmerge :2\n");
  auto imported = await<Result<Imported>>([&](auto done) {
    auto import = vcs->fastImport(r, {"trunk", {}}, done);
    ASSERT_TRUE(import);
    import->write(stream, nullptr);
    import->finish();
  });
  ASSERT_TRUE(imported) << imported.error().message;
  std::map<uint64_t, std::string> rev(imported->marks.begin(), imported->marks.end());
  ASSERT_EQ(rev.size(), 3u);
  auto commits = listCommits(r, rev[3], {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 3u);
  std::map<std::string, std::vector<std::string>> parents;
  for (const auto& c : *commits) parents[c.revision] = c.parents;
  EXPECT_TRUE(parents[rev[1]].empty());
  EXPECT_TRUE(parents[rev[2]].empty()) << "a root, not a child of :1";
  EXPECT_EQ(parents[rev[3]], (std::vector<std::string>{rev[1], rev[2]}));
}

TEST_F(VcsBzrMirrorTest, ForgetRemovesTheMirrorBranchesToo) {
  std::string up = makeSharedRepository("up");
  Repo r = repo(1, up);
  auto imported = await<Result<Imported>>([&](auto done) {
    auto import = vcs->fastImport(r, {"trunk", {}}, done);
    ASSERT_TRUE(import);
    import->write(
        "reset refs/heads/master\ncommit refs/heads/master\nmark :1\n"
        "committer A <a@example.org> 1700000000 +0000\ndata 2\nhi\nM 100644 inline a.txt\ndata "
        "2\na\n\n",
        nullptr);
    import->finish();
  });
  ASSERT_TRUE(imported) << imported.error().message;
  ASSERT_TRUE(fs::exists(proxy + "/mirror/refs/pefnos/1/trunk/.bzr"));
  auto forgotten = forget(r);
  ASSERT_TRUE(forgotten) << forgotten.error().message;
  EXPECT_FALSE(fs::exists(proxy + "/mirror/refs/pefnos/1"));
  EXPECT_EQ(revisionCount(proxy), 1u) << "revisions stay";
}

}  // namespace
}  // namespace pefnos
