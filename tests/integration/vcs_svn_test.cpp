// The Subversion VCS plugin: first its pure half (svn_parse.h) fed directly,
// then the plugin loaded through the Registry against real repositories the
// tests make with svnadmin and svn, on a real libuv loop. The counting Host
// records every process the plugin starts, so that "one listing per level"
// and "no process for an unchanged repository" are measured, not assumed.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "svn_parse.h"
#include "tests/support/child.h"
#include "tests/support/stream_commits.h"
#include "tests/support/vcs_fixture.h"

namespace pefnos {
namespace {
namespace fs = std::filesystem;
using test::StreamCommit;
using test::commitsOf;
using namespace std::chrono_literals;

// ---------------------------------------------------------------- pure half

TEST(SvnParse, RevisionIdSplitsAtTheLastAt) {
  auto id = svn::parseRevisionId("mail@host/trunk@12");
  ASSERT_TRUE(id);
  EXPECT_EQ(id->path, "mail@host/trunk");
  EXPECT_EQ(id->revision, 12);
  EXPECT_EQ(svn::revisionId("branches/x", 7), "branches/x@7");
  for (const char* bad :
       {"trunk", "trunk@", "trunk@x", "trunk@-1", "trunk@ 1", "@1", "../x@1", "-r@1", "a//b@1",
        "/trunk@1", "trunk/@1", "a\nb@1", "trunk@99999999999999999999"})
    EXPECT_FALSE(svn::parseRevisionId(bad)) << bad;
}

TEST(SvnParse, HostileBranchPathsAreRefused) {
  for (const char* good :
       {"trunk", "branches/x", "releases/2024 été/stable", "a%b@c", "branches/*"})
    EXPECT_TRUE(svn::isValidBranchPath(good)) << good;
  for (const char* bad :
       {"", "..", "a/../b", "./a", "-x", "--config-dir", "a\tb", "a\x7f", "a//b", "/abs", "trail/"})
    EXPECT_FALSE(svn::isValidBranchPath(bad)) << bad;
}

TEST(SvnParse, PathsAreEncodedForUrls) {
  EXPECT_EQ(svn::encodePath("a b/é%@#?"), "a%20b/%C3%A9%25%40%23%3F");
  EXPECT_EQ(svn::joinUrl("file:///r/", "/proj/a b"), "file:///r/proj/a%20b");
  EXPECT_EQ(svn::joinUrl("svn://h/r", ""), "svn://h/r");
  EXPECT_EQ(svn::decodePercent("a%20b%C3%A9%2"), "a bé%2");
}

TEST(SvnParse, LocalPathsOfFileUrls) {
  EXPECT_EQ(svn::localPathOfUrl("file:///srv/a%20b/repo"), "/srv/a b/repo");
  EXPECT_EQ(svn::localPathOfUrl("file://localhost/srv/r"), "/srv/r");
  EXPECT_FALSE(svn::localPathOfUrl("file://otherhost/srv/r"));
  EXPECT_FALSE(svn::localPathOfUrl("svn://host/srv/r"));
  EXPECT_FALSE(svn::localPathOfUrl("file:///a%00b"));
}

TEST(SvnParse, YoungestFromDbCurrent) {
  EXPECT_EQ(svn::parseYoungest("42\n"), 42);
  EXPECT_EQ(svn::parseYoungest("42 1v 2\n"), 42);  // old FSFS formats
  EXPECT_FALSE(svn::parseYoungest("42"));          // torn: no newline yet
  EXPECT_FALSE(svn::parseYoungest("x\n"));
}

svn::BranchSearch::Entry dir(std::string name, svn::Revnum rev) {
  return {std::move(name), true, rev};
}

TEST(SvnParse, LiteralPrefixesAreListedInTheFirstRound) {
  auto search = svn::BranchSearch::make({{"trunk", false}, {"branches/*", true}, {"tags/*", true}});
  ASSERT_TRUE(search);
  EXPECT_EQ(search->targets(), (std::vector<std::string>{"", "branches", "tags"}));
  search->feed({{dir("trunk", 5), dir("branches", 6), {"README", false, 2}},
                {dir("x", 6), {"file", false, 3}},
                {}});
  EXPECT_TRUE(search->finished());
  auto heads = search->heads();
  ASSERT_EQ(heads.size(), 2u);
  EXPECT_EQ(heads[0].branch, "branches/x");
  EXPECT_EQ(heads[0].revision, "branches/x@6");
  EXPECT_EQ(heads[1].revision, "trunk@5");
}

TEST(SvnParse, GlobsInTheMiddleTakeOneRoundPerLevel) {
  auto search = svn::BranchSearch::make({{"releases/*/stable", true}, {"lit*", false}});
  ASSERT_TRUE(search);
  EXPECT_EQ(search->targets(), (std::vector<std::string>{"", "releases"}));
  search->feed({{dir("lit*", 3), dir("literal", 3)}, {dir("2024", 4), dir("2025", 5)}});
  EXPECT_EQ(search->targets(), (std::vector<std::string>{"releases/2024", "releases/2025"}));
  search->feed({{dir("stable", 4)}, {dir("unstable", 5)}});
  EXPECT_TRUE(search->finished());
  auto heads = search->heads();
  ASSERT_EQ(heads.size(), 2u);
  EXPECT_EQ(heads[0].revision, "lit*@3");  // an exact name is no glob
  EXPECT_EQ(heads[1].revision, "releases/2024/stable@4");
}

TEST(SvnParse, BranchSearchRefusesHostilePatterns) {
  EXPECT_FALSE(svn::BranchSearch::make({{"../x", false}}));
  EXPECT_FALSE(svn::BranchSearch::make({{"-x/*", true}}));
}

TEST(SvnParse, OnlyMissingTargetsIsTold) {
  EXPECT_TRUE(svn::onlyMissingTargets(
      "svn: warning: W160013: Path '/tags' not found\n"
      "svn: E200009: Could not list all targets because some targets don't exist\n"));
  EXPECT_FALSE(svn::onlyMissingTargets("svn: E170013: Unable to connect\nsvn: E200009: x\n"));
  EXPECT_FALSE(svn::onlyMissingTargets(""));
}

TEST(SvnParse, ListsAndLogsParse) {
  auto lists = svn::parseLists(
      "<?xml version=\"1.0\"?><lists><list path=\"u\"><entry kind=\"dir\"><name>a b</name>"
      "<commit revision=\"3\"/></entry></list><list path=\"v\"></list></lists>");
  ASSERT_TRUE(lists);
  ASSERT_EQ(lists->size(), 2u);
  EXPECT_EQ((*lists)[0][0].name, "a b");
  EXPECT_FALSE(svn::parseLists("<lists><list><entry"));
  auto log = svn::parseLog(
      "<log><logentry revision=\"4\"><author>al</author><date>2024-01-02T03:04:05.123456Z</date>"
      "<paths><path kind=\"dir\" action=\"A\" copyfrom-path=\"/t\" copyfrom-rev=\"2\">/b</path>"
      "</paths><msg>m</msg></logentry></log>");
  ASSERT_TRUE(log);
  EXPECT_EQ((*log)[0].paths[0].copyfrom_path, "/t");
  EXPECT_EQ(svn::isoDate((*log)[0].date), "2024-01-02T03:04:05+00:00");
}

svn::LogEntry entry(svn::Revnum rev, std::vector<svn::LogPath> paths) {
  return svn::LogEntry{rev, "al", "2024-01-02T03:04:05.000000Z", "r" + std::to_string(rev),
                       std::move(paths)};
}

TEST(SvnParse, HistoryFollowsCopies) {
  // /p/branches/b copied at r5 from /p/trunk@3 (its parent directory copied
  // at r3 from /old… is outside the URL /p: history ends there).
  std::vector<svn::LogEntry> log = {
      entry(6, {{"/p/branches/b/f", 'M', false, "", 0}, {"/p/trunk/g", 'M', false, "", 0}}),
      entry(5, {{"/p/branches/b", 'A', true, "/p/trunk", 3}}),
      entry(3, {{"/p/trunk/f", 'A', false, "", 0},
                {"/p/trunk/d", 'D', true, "", 0},
                {"/p/trunk/e", 'A', true, "", 0}}),
      entry(2, {{"/p", 'A', true, "/old", 1}}),
      entry(1, {{"/old/trunk/f", 'A', false, "", 0}}),
  };
  auto all = svn::branchHistory(log, "/p/branches/b", "/p", {}, 10);
  ASSERT_EQ(all.size(), 4u);  // r1 is outside the URL
  EXPECT_EQ(all[0].revision, "trunk@2");
  EXPECT_EQ(all[1].revision, "trunk@3");
  EXPECT_EQ(all[1].files, (std::vector<std::string>{"f", "d"}));
  EXPECT_EQ(all[2].revision, "branches/b@5");
  EXPECT_EQ(all[2].parents, (std::vector<std::string>{"trunk@3"}));
  EXPECT_TRUE(all[2].files.empty());
  EXPECT_EQ(all[3].files, (std::vector<std::string>{"f"}));
  EXPECT_EQ(all[3].author_date, "2024-01-02T03:04:05+00:00");

  auto newest = svn::branchHistory(log, "/p/branches/b", "/p", {}, 2);
  ASSERT_EQ(newest.size(), 2u);
  EXPECT_EQ(newest[0].revision, "branches/b@5");
  EXPECT_EQ(newest[0].parents, (std::vector<std::string>{"trunk@3"}));

  auto excluded = svn::branchHistory(log, "/p/branches/b", "/p", {{"trunk", 4}}, 10);
  ASSERT_EQ(excluded.size(), 2u);
  EXPECT_EQ(excluded[0].revision, "branches/b@5");
}

// ------------------------------------------------------------- the plugin

// Runs a command for the test itself; fails the test on error.
std::string must(std::vector<std::string> argv) {
  auto [rc, out] = test::run(argv);
  std::string line;
  for (const auto& a : argv) line += a + " ";
  EXPECT_EQ(rc, 0) << line << "\n" << out;
  return out;
}

void writeFile(const fs::path& path, const std::string& data, bool executable = false) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
  if (executable)
    fs::permissions(path, fs::perms::owner_exec | fs::perms::group_exec | fs::perms::others_exec,
                    fs::perm_options::add);
}

std::string fileUrl(const std::string& path) { return "file://" + svn::encodePath(path); }

// A repository the test makes, with a working copy of its root for commits.
class SvnRepository {
 public:
  SvnRepository() {
    must({"svnadmin", "create", "--", root()});
    // Lets the test fix authors and dates with propset --revprop.
    fs::create_symlink("/bin/true", fs::path(root()) / "hooks" / "pre-revprop-change");
    must({"svn", "checkout", "-q", "--", url(), wc()});
  }
  std::string root() const { return dir_.path() + "/repo"; }
  std::string url() const { return fileUrl(root()); }
  std::string wc() const { return dir_.path() + "/wc"; }

  // Commits whatever changed in the working copy; returns the new revision.
  svn::Revnum commit(const std::string& message) {
    must({"svn", "add", "-q", "--force", "--", wc()});
    must({"svn", "commit", "-q", "-m", message, "--", wc()});
    must({"svn", "update", "-q", "--", wc()});
    return youngest();
  }
  svn::Revnum run(std::vector<std::string> svn_args) {  // a URL operation (cp, mkdir) as a commit
    std::vector<std::string> argv{"svn"};
    argv.insert(argv.end(), svn_args.begin(), svn_args.end());
    must(argv);
    must({"svn", "update", "-q", "--", wc()});
    return youngest();
  }
  svn::Revnum youngest() const {
    auto out = must({"svnlook", "youngest", root()});
    return std::stoll(out);
  }
  void setRevprop(svn::Revnum rev, const std::string& name, const std::string& value) {
    must({"svn", "propset", "-q", "--revprop", "-r", std::to_string(rev), name, value, url()});
  }

 private:
  test::TempDir dir_{"pefnos-svn"};
};

class SvnVcsTest : public test::VcsFixture {
 protected:
  SvnVcsTest() : VcsFixture("svn") {}

  Repo repoFor(const std::string& url, std::vector<Repo::Branch> branches, int id = 7) {
    Repo r;
    r.id = id;
    r.url = url;
    r.proxy = proxy_dir.path() + "/proxy";
    r.ref_prefix = "refs/pefnos/" + std::to_string(id) + "/";
    r.branches = std::move(branches);
    return r;
  }
  static std::vector<Repo::Branch> standardLayout() {
    return {{"trunk", false}, {"branches/*", true}, {"tags/*", true}};
  }
  std::map<std::string, std::string> headsOf(const Repo& r) {
    auto heads = listHeads(r);
    EXPECT_TRUE(heads) << heads.error().message;
    std::map<std::string, std::string> out;
    if (heads)
      for (const auto& h : *heads) out[h.branch] = h.revision;
    return out;
  }
  // Lists of `tar -t` of an exported revision, with mode letters.
  std::string tarListing(const std::string& tar) {
    test::TempDir dir("pefnos-svn-tar");
    writeFile(dir.path() + "/t.tar", tar);
    return must({"tar", "-tvf", dir.path() + "/t.tar"});
  }

  test::TempDir proxy_dir{"pefnos-svn-proxy"};
};

// A standard layout: trunk with files, one branch, one tag.
struct Standard {
  SvnRepository repo;
  svn::Revnum layout, files, branch, tag, later;
  Standard() {
    layout = repo.run({"mkdir", "-q", "-m", "layout", "--", repo.url() + "/trunk",
                       repo.url() + "/branches", repo.url() + "/tags"});
    writeFile(repo.wc() + "/trunk/a.txt", "a\n");
    writeFile(repo.wc() + "/trunk/src/main.c", "int main;\n");
    files = repo.commit("files");
    branch = repo.run(
        {"copy", "-q", "-m", "branch x", "--", repo.url() + "/trunk", repo.url() + "/branches/x"});
    tag = repo.run(
        {"copy", "-q", "-m", "tag 1.0", "--", repo.url() + "/trunk", repo.url() + "/tags/1.0"});
    writeFile(repo.wc() + "/branches/x/src/main.c", "int main(void);\n");
    writeFile(repo.wc() + "/branches/x/new.txt", "new\n");
    later = repo.commit("work on x");
  }
};

TEST_F(SvnVcsTest, HeadsOfTheStandardLayoutInOneListingAndNoneWhenUnchanged) {
  Standard s;
  auto r = repoFor(s.repo.url(), standardLayout());
  auto heads = headsOf(r);
  EXPECT_EQ(heads, (std::map<std::string, std::string>{
                       {"trunk", "trunk@" + std::to_string(s.files)},
                       {"branches/x", "branches/x@" + std::to_string(s.later)},
                       {"tags/1.0", "tags/1.0@" + std::to_string(s.tag)}}));
  EXPECT_EQ(host->argvs.size(), 1u) << "one svn list for trunk, branches/ and tags/";
  EXPECT_EQ(host->count("list"), 1u);

  EXPECT_EQ(headsOf(r), heads);
  EXPECT_EQ(host->argvs.size(), 1u) << "an unchanged file:// repository costs no process";

  s.repo.run({"mkdir", "-q", "-m", "elsewhere", "--", s.repo.url() + "/unrelated"});
  EXPECT_EQ(headsOf(r), heads) << "heads are last-changed revisions, not the repository's";
  EXPECT_EQ(host->count("list"), 2u);
}

TEST_F(SvnVcsTest, AMissingLayoutDirectoryHasNoBranches) {
  SvnRepository repo;
  repo.run({"mkdir", "-q", "-m", "trunk only", "--", repo.url() + "/trunk"});
  auto heads = headsOf(repoFor(repo.url(), standardLayout()));
  EXPECT_EQ(heads, (std::map<std::string, std::string>{{"trunk", "trunk@1"}}));
}

TEST_F(SvnVcsTest, HeadsOfACustomLayoutWithUnicodeAndSpacesOneListingPerLevel) {
  SvnRepository repo;
  const std::string u = repo.url();
  repo.run({"mkdir", "-q", "--parents", "-m", "layout", "--",
            u + "/releases/2024%20%C3%A9t%C3%A9/stable", u + "/releases/a%25b%40c/stable",
            u + "/releases/old/unstable", u + "/releases/2025/stable"});
  writeFile(repo.wc() + "/releases/2024 été/stable/f t.txt", "x\n");
  auto changed = repo.commit("in the unicode one");
  writeFile(repo.wc() + "/releases/file", "not a directory\n");
  repo.commit("a file among them");
  auto heads = headsOf(repoFor(repo.url(), {{"releases/*/stable", true}}));
  EXPECT_EQ(heads,
            (std::map<std::string, std::string>{
                {"releases/2024 été/stable", "releases/2024 été/stable@" + std::to_string(changed)},
                {"releases/2025/stable", "releases/2025/stable@1"},
                {"releases/a%b@c/stable", "releases/a%b@c/stable@1"}}));
  EXPECT_EQ(host->count("list"), 2u) << "releases/, then its subdirectories in one process";
}

TEST_F(SvnVcsTest, AUrlMissingAtHeadIsAnErrorNamingIt) {
  SvnRepository repo;
  repo.run({"mkdir", "-q", "-m", "trunk", "--", repo.url() + "/trunk"});
  auto heads = listHeads(repoFor(repo.url() + "/nothere", standardLayout()));
  ASSERT_FALSE(heads);
  EXPECT_NE(heads.error().message.find(repo.url() + "/nothere"), std::string::npos)
      << heads.error().message;
  EXPECT_NE(heads.error().message.find("does not exist"), std::string::npos)
      << heads.error().message;
}

TEST_F(SvnVcsTest, MissingCredentialsFailQuicklyWithoutAPrompt) {
  test::TempDir dir("pefnos-svnserve");
  must({"svnadmin", "create", "--", dir.path() + "/locked"});
  writeFile(dir.path() + "/locked/conf/svnserve.conf",
            "[general]\nanon-access = none\nauth-access = write\n");
  // A free port: bind to 0, read it, close (the race is harmless in a test).
  int port = 0;
  {
    uv_tcp_t probe;
    uv_tcp_init(&loop, &probe);
    sockaddr_in addr{};
    uv_ip4_addr("127.0.0.1", 0, &addr);
    uv_tcp_bind(&probe, reinterpret_cast<const sockaddr*>(&addr), 0);
    sockaddr_storage bound{};
    int len = sizeof bound;
    uv_tcp_getsockname(&probe, reinterpret_cast<sockaddr*>(&bound), &len);
    port = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    uv_close(reinterpret_cast<uv_handle_t*>(&probe), nullptr);
    uv_run(&loop, UV_RUN_NOWAIT);
  }
  test::Child server({"svnserve", "-d", "--foreground", "--listen-host", "127.0.0.1",
                      "--listen-port", std::to_string(port), "-r", dir.path()});
  std::string url = "svn://127.0.0.1:" + std::to_string(port) + "/locked";
  ASSERT_TRUE(test::waitUntil(
      [&] {
        return test::run({"svn", "info", "--non-interactive", url})
                   .second.find("Connection refused") == std::string::npos;
      },
      5s));
  auto started = std::chrono::steady_clock::now();
  auto heads = await<Result<std::vector<Head>>>(
      [&](auto done) { vcs->listHeads(repoFor(url, standardLayout()), done); }, 20000);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 10s);
  ASSERT_FALSE(heads);
  EXPECT_NE(heads.error().message.find(url), std::string::npos) << heads.error().message;
  EXPECT_NE(heads.error().message.find("E170001"), std::string::npos) << heads.error().message;
  auto sync = updateProxy(repoFor(url, standardLayout()), {"trunk"});
  ASSERT_FALSE(sync);
  EXPECT_NE(sync.error().message.find(url), std::string::npos) << sync.error().message;
}

TEST_F(SvnVcsTest, AnUnreachableServerIsAnError) {
  auto heads = listHeads(repoFor("svn://127.0.0.1:1/x", standardLayout()));
  ASSERT_FALSE(heads);
  EXPECT_NE(heads.error().message.find("svn://127.0.0.1:1/x"), std::string::npos)
      << heads.error().message;
}

TEST_F(SvnVcsTest, HostileNamesAreRefusedBeforeAnyProcess) {
  Standard s;
  // Every answer here comes through Host::post. With libuv 1.44.2 a posted
  // function under UV_RUN_ONCE waits for the next other loop event, which
  // in await() is its 60 s watchdog: these awaits get a short one instead.
  auto listHeads = [&](const Repo& r) {
    return await<Result<std::vector<Head>>>([&](auto done) { vcs->listHeads(r, done); }, 200);
  };
  auto listCommits = [&](const Repo& r, const std::string& to, const std::vector<std::string>& x,
                         size_t n) {
    return await<Result<std::vector<CommitInfo>>>(
        [&](auto done) { vcs->listCommits(r, to, x, n, done); }, 200);
  };
  auto treeDigest = [&](const Repo& r, const std::string& rev) {
    return await<Result<std::string>>([&](auto done) { vcs->treeDigest(r, rev, done); }, 200);
  };
  auto exportTree = [&](const Repo& r, const std::string& rev) {
    return await<Status>(
        [&](auto done) {
          vcs->exportTree(
              r, rev, [](std::string_view) {}, done);
        },
        200);
  };
  auto forget = [&](const Repo& r) {
    return await<Status>([&](auto done) { vcs->forget(r, done); }, 200);
  };
  for (const char* bad : {"../../etc", "-r", "a\nb", "trunk/../.."}) {
    auto heads = listHeads(repoFor(s.repo.url(), {{bad, false}}));
    EXPECT_FALSE(heads) << bad;
  }
  auto r = repoFor(s.repo.url(), standardLayout());
  EXPECT_FALSE(listCommits(r, "../trunk@3", {}, 10));
  EXPECT_FALSE(listCommits(r, "--config-dir@3", {}, 10));
  EXPECT_FALSE(listCommits(r, "trunk@3", {"-x@1"}, 10));
  EXPECT_FALSE(treeDigest(r, "trunk@HEAD"));
  EXPECT_FALSE(exportTree(r, "trunk@-1"));
  auto bad_prefix = r;
  bad_prefix.ref_prefix = "../../";
  EXPECT_FALSE(forget(bad_prefix));
  EXPECT_TRUE(host->argvs.empty());
}

TEST_F(SvnVcsTest, ListCommitsFollowsTheBranchCopyBackToTrunk) {
  Standard s;
  s.repo.setRevprop(s.later, "svn:author", "alice");
  s.repo.setRevprop(s.later, "svn:date", "2024-02-03T04:05:06.789000Z");
  auto r = repoFor(s.repo.url(), standardLayout());
  ASSERT_TRUE(updateProxy(r, {"branches/x"}));
  auto to = "branches/x@" + std::to_string(s.later);
  auto commits = listCommits(r, to, {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 4u);
  const auto& c = *commits;
  EXPECT_EQ(c[0].revision, "trunk@" + std::to_string(s.layout));
  EXPECT_TRUE(c[0].parents.empty());
  EXPECT_EQ(c[1].revision, "trunk@" + std::to_string(s.files));
  EXPECT_EQ(c[1].parents, std::vector<std::string>{c[0].revision});
  EXPECT_EQ(c[1].files, (std::vector<std::string>{"a.txt", "src/main.c"}));
  EXPECT_EQ(c[2].revision, "branches/x@" + std::to_string(s.branch));
  EXPECT_EQ(c[2].parents, std::vector<std::string>{c[1].revision});
  EXPECT_TRUE(c[2].files.empty()) << "the copy that makes a branch changes no file";
  EXPECT_EQ(c[3].revision, to);
  EXPECT_EQ(c[3].files, (std::vector<std::string>{"new.txt", "src/main.c"}));
  EXPECT_EQ(c[3].author, "alice");
  EXPECT_EQ(c[3].committer, "alice");
  EXPECT_EQ(c[3].author_date, "2024-02-03T04:05:06+00:00");
  EXPECT_EQ(c[3].message, "work on x");
}

TEST_F(SvnVcsTest, ListCommitsStopsAtAnExclusionAndKeepsTheNewest) {
  Standard s;
  auto r = repoFor(s.repo.url(), standardLayout());
  ASSERT_TRUE(updateProxy(r, {}));
  auto to = "branches/x@" + std::to_string(s.later);
  // trunk@files covers trunk@layout too: history along a path is linear.
  auto since_trunk = listCommits(r, to, {"trunk@" + std::to_string(s.files)}, 10);
  ASSERT_TRUE(since_trunk) << since_trunk.error().message;
  ASSERT_EQ(since_trunk->size(), 2u);
  EXPECT_EQ((*since_trunk)[0].parents,
            std::vector<std::string>{"trunk@" + std::to_string(s.files)});
  auto newest = listCommits(r, to, {}, 1);
  ASSERT_TRUE(newest);
  ASSERT_EQ(newest->size(), 1u);
  EXPECT_EQ((*newest)[0].revision, to);
  EXPECT_EQ((*newest)[0].parents,
            std::vector<std::string>{"branches/x@" + std::to_string(s.branch)});
}

TEST_F(SvnVcsTest, AnUnknownRevisionIsAnErrorNamingIt) {
  Standard s;
  auto r = repoFor(s.repo.url(), standardLayout());
  ASSERT_TRUE(updateProxy(r, {}));
  auto commits = listCommits(r, "branches/nope@3", {}, 10);
  ASSERT_FALSE(commits);
  EXPECT_NE(commits.error().message.find("branches/nope@3"), std::string::npos)
      << commits.error().message;
}

TEST_F(SvnVcsTest, ASubdirectoryOfARepositoryIsARepository) {
  SvnRepository repo;
  const std::string u = repo.url();
  repo.run({"mkdir", "-q", "--parents", "-m", "two projects", "--", u + "/other/trunk",
            u + "/my proj/trunk", u + "/my proj/branches"});
  writeFile(repo.wc() + "/my proj/trunk/f.txt", "f\n");
  auto files = repo.commit("f");
  writeFile(repo.wc() + "/other/trunk/g.txt", "g\n");
  repo.commit("other project");
  auto branch = repo.run(
      {"copy", "-q", "-m", "b", "--", u + "/my%20proj/trunk", u + "/my%20proj/branches/b"});
  repo.run({"mkdir", "-q", "-m", "other again", "--", u + "/other/dir"});

  auto r = repoFor(u + "/my%20proj", standardLayout());
  auto heads = headsOf(r);
  EXPECT_EQ(heads, (std::map<std::string, std::string>{
                       {"trunk", "trunk@" + std::to_string(files)},
                       {"branches/b", "branches/b@" + std::to_string(branch)}}));
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  auto commits = listCommits(r, heads["branches/b"], {}, 10);
  ASSERT_TRUE(commits) << commits.error().message;
  ASSERT_EQ(commits->size(), 3u);
  EXPECT_EQ((*commits)[0].revision, "trunk@1");
  EXPECT_EQ((*commits)[1].revision, "trunk@" + std::to_string(files));
  EXPECT_EQ((*commits)[1].files, std::vector<std::string>{"f.txt"});
  EXPECT_EQ((*commits)[2].revision, heads["branches/b"]);
  auto tar = exportTree(r, heads["branches/b"]);
  ASSERT_TRUE(tar) << tar.error().message;
  EXPECT_NE(tarListing(*tar).find("./f.txt"), std::string::npos);
}

TEST_F(SvnVcsTest, UpdateProxySyncsOncePerChange) {
  Standard s;
  auto r = repoFor(s.repo.url(), standardLayout());
  headsOf(r);
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  ASSERT_TRUE(updateProxy(r, {"branches/x"}));
  EXPECT_EQ(host->count("synchronize"), 1u);
  EXPECT_EQ(must({"svnlook", "youngest", r.proxy + "/refs/pefnos/7"}),
            std::to_string(s.later) + "\n");
  writeFile(s.repo.wc() + "/trunk/a.txt", "changed\n");
  auto changed = s.repo.commit("change");
  EXPECT_EQ(headsOf(r)["trunk"], "trunk@" + std::to_string(changed));
  ASSERT_TRUE(updateProxy(r, {"trunk"}));
  EXPECT_EQ(host->count("synchronize"), 2u);
  auto commits = listCommits(r, "trunk@" + std::to_string(changed), {}, 1);
  ASSERT_TRUE(commits);
  EXPECT_EQ((*commits)[0].files, std::vector<std::string>{"a.txt"});
}

// The content the export and digest tests share: an executable, a symlink, a
// CRLF file, an svn:keywords file, and a .gitattributes and .gitignore that
// would change what git hashes if it obeyed them.
struct TreeWithModes {
  struct File {
    std::string content;
    bool executable;
  };
  const std::map<std::string, File> files = {
      {"a.txt", {"hello $Id$\n", false}},
      {"crlf.txt", {"x\r\ny\r\n", false}},
      {".gitattributes", {"* text eol=crlf\n", false}},
      {".gitignore", {"*.txt\n", false}},
      {"run.sh", {"#!/bin/sh\necho hi\n", true}},
      {"sub dir/\xC3\xA9.txt", {"e\n", false}},
  };
  SvnRepository repo;
  svn::Revnum rev;
  TreeWithModes() {
    repo.run({"mkdir", "-q", "-m", "trunk", "--", repo.url() + "/trunk"});
    const std::string t = repo.wc() + "/trunk";
    for (const auto& [path, f] : files) writeFile(t + "/" + path, f.content, f.executable);
    fs::create_symlink("a.txt", t + "/link");
    repo.commit("tree");
    must({"svn", "propset", "-q", "svn:keywords", "Id", t + "/a.txt"});
    rev = repo.commit("keywords on");
  }
};

TEST_F(SvnVcsTest, ExportKeepsExecutablesAndSymlinksAndCleansUp) {
  TreeWithModes tree;
  auto r = repoFor(tree.repo.url(), {{"trunk", false}});
  ASSERT_TRUE(updateProxy(r, {}));
  auto tar = exportTree(r, "trunk@" + std::to_string(tree.rev));
  ASSERT_TRUE(tar) << tar.error().message;
  std::string listing = tarListing(*tar);
  EXPECT_NE(listing.find("-rwxr-xr-x"), std::string::npos) << listing;
  EXPECT_NE(listing.find("./link -> a.txt"), std::string::npos) << listing;
  EXPECT_NE(listing.find("./sub dir/é.txt"), std::string::npos) << listing;
  test::TempDir out("pefnos-svn-untar");
  writeFile(out.path() + "/t.tar", *tar);
  must({"tar", "-xf", out.path() + "/t.tar", "-C", out.path()});
  std::ifstream in(out.path() + "/a.txt");
  std::string a((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(a, "hello $Id$\n") << "no keyword expansion";
  for (const auto& e : fs::directory_iterator(r.proxy))
    EXPECT_EQ(e.path().filename().string().rfind(".pefnos-svn-export", 0), std::string::npos)
        << "scratch left behind: " << e.path();
  auto missing = exportTree(r, "trunk@999");
  EXPECT_FALSE(missing);
  for (const auto& e : fs::directory_iterator(r.proxy))
    EXPECT_EQ(e.path().filename().string().rfind(".pefnos-svn-export", 0), std::string::npos)
        << "scratch left behind after a failure: " << e.path();
}

// git's tree id of the same content, built without any filter or attribute:
// each blob hashed from the bytes as committed, modes given explicitly.
std::string expectedTree(const TreeWithModes& tree) {
  test::TempDir dir("pefnos-svn-expect");
  const std::string g = dir.path() + "/g";
  must({"git", "init", "-q", g});
  int n = 0;
  auto blob = [&](const std::string& content) {
    std::string file = dir.path() + "/blob" + std::to_string(++n);
    writeFile(file, content);
    std::string id = must({"git", "-C", g, "hash-object", "-w", "--no-filters", "--", file});
    return id.substr(0, id.find('\n'));
  };
  for (const auto& [path, f] : tree.files) {
    std::string info = (f.executable ? "100755," : "100644,") + blob(f.content) + "," + path;
    must({"git", "-C", g, "update-index", "--add", "--cacheinfo", info});
  }
  must({"git", "-C", g, "update-index", "--add", "--cacheinfo",
        "120000," + blob("a.txt") + ",link"});
  std::string id = must({"git", "-C", g, "write-tree"});
  return id.substr(0, id.find('\n'));
}

TEST_F(SvnVcsTest, TreeDigestIsGitsTreeIdOfTheSameBytes) {
  TreeWithModes tree;
  auto r = repoFor(tree.repo.url(), {{"trunk", false}});
  ASSERT_TRUE(updateProxy(r, {}));
  auto digest = treeDigest(r, "trunk@" + std::to_string(tree.rev));
  ASSERT_TRUE(digest) << digest.error().message;
  EXPECT_EQ(*digest, expectedTree(tree));
  for (const auto& e : fs::directory_iterator(r.proxy))
    EXPECT_EQ(e.path().filename().string().rfind(".pefnos-svn-export", 0), std::string::npos);
}

TEST_F(SvnVcsTest, AnEmptyTreeHasGitsEmptyTreeId) {
  Standard s;
  auto r = repoFor(s.repo.url(), standardLayout());
  ASSERT_TRUE(updateProxy(r, {}));
  auto digest = treeDigest(r, "tags@" + std::to_string(s.layout));
  ASSERT_TRUE(digest) << digest.error().message;
  EXPECT_EQ(*digest, "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
}

TEST_F(SvnVcsTest, ForgetRemovesOnlyThatRepositorysMirror) {
  Standard s;
  auto seven = repoFor(s.repo.url(), standardLayout(), 7);
  auto eight = repoFor(s.repo.url(), standardLayout(), 8);
  ASSERT_TRUE(updateProxy(seven, {}));
  ASSERT_TRUE(updateProxy(eight, {}));
  ASSERT_TRUE(forget(seven));
  EXPECT_FALSE(fs::exists(seven.proxy + "/refs/pefnos/7"));
  EXPECT_TRUE(fs::exists(eight.proxy + "/refs/pefnos/8/format"));
  auto to = "trunk@" + std::to_string(s.files);
  EXPECT_TRUE(listCommits(eight, to, {}, 10));
  auto gone = listCommits(seven, to, {}, 10);
  ASSERT_FALSE(gone);
  EXPECT_NE(gone.error().message.find("no svn mirror"), std::string::npos) << gone.error().message;
  EXPECT_TRUE(forget(seven)) << "forgetting twice is fine";
  ASSERT_TRUE(updateProxy(seven, {})) << "and the mirror can be made again";
  EXPECT_TRUE(listCommits(seven, to, {}, 10));
}

TEST_F(SvnVcsTest, AHalfMadeMirrorIsMadeAgain) {
  Standard s;
  auto r = repoFor(s.repo.url(), standardLayout());
  fs::create_directories(r.proxy + "/refs/pefnos");
  must({"svnadmin", "create", "--", r.proxy + "/refs/pefnos/7"});  // killed before initialize
  ASSERT_TRUE(updateProxy(r, {}));
  EXPECT_TRUE(listCommits(r, "trunk@" + std::to_string(s.files), {}, 10));
}

TEST_F(SvnVcsTest, NoCallbackAfterTheVcsIsDestroyed) {
  Standard s;
  auto r = repoFor(s.repo.url(), standardLayout());
  ASSERT_TRUE(updateProxy(r, {}));
  int called = 0;
  vcs->listHeads(r, [&](auto) { ++called; });                // answered from a process
  vcs->listHeads(repoFor("", {}), [&](auto) { ++called; });  // answered by post
  vcs->updateProxy(repoFor("svn://127.0.0.1:1/x", {}, 9), {}, [&](auto) { ++called; });
  vcs->treeDigest(r, "trunk@" + std::to_string(s.files), [&](auto) { ++called; });
  auto running = vcs->exportTree(
      r, "trunk@" + std::to_string(s.files), [&](std::string_view) { ++called; },
      [&](auto) { ++called; });
  vcs.reset();
  for (int i = 0; i < 50; ++i) uv_run(&loop, UV_RUN_NOWAIT), usleep(2000);
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_EQ(called, 0);
}

// ---------------------------------------------------------- fast-export


// Everything a mirror must carry from svn, in history that branches from an
// old trunk revision: executable bits (set, then dropped), a symlink, a
// rename, a file that becomes a directory, an empty directory, line ends by
// svn:eol-style, unexpanded keywords, non-ASCII names and a path with a quote.
struct MirrorHistory {
  SvnRepository repo;
  svn::Revnum layout, files, reshaped, modes, elsewhere, branched, on_branch, on_trunk;
  MirrorHistory() {
    const std::string u = repo.url(), t = repo.wc() + "/trunk";
    layout = repo.run({"mkdir", "-q", "-m", "layout", "--", u + "/trunk", u + "/branches"});
    writeFile(t + "/a.txt", "hello $Id$\n");
    writeFile(t + "/run.sh", "#!/bin/sh\necho hi\n", true);
    writeFile(t + "/thing", "a file, for now\n");
    writeFile(t + "/dir/keep.txt", "keep\n");
    writeFile(t + "/crlf.txt", "one\ntwo\n");
    std::string big;  // more than one piece of the exporter, line ends translated
    for (int i = 0; big.size() < 300000; ++i) big += "line " + std::to_string(i) + "\n";
    writeFile(t + "/big.txt", big);
    writeFile(t + "/sub dir/é \"q\".txt", "unicode\n");
    fs::create_directories(t + "/empty");
    fs::create_symlink("a.txt", t + "/link");
    must({"svn", "add", "-q", "--force", "--", t});
    must({"svn", "propset", "-q", "svn:keywords", "Id", t + "/a.txt"});
    must({"svn", "propset", "-q", "svn:eol-style", "CRLF", t + "/crlf.txt"});
    must({"svn", "propset", "-q", "svn:eol-style", "CRLF", t + "/big.txt"});
    files = repo.commit("files");
    must({"svn", "move", "-q", "--", t + "/a.txt", t + "/renamed.txt"});
    must({"svn", "rm", "-q", "--", t + "/thing"});
    writeFile(t + "/thing/inside.txt", "now a directory\n");
    reshaped = repo.commit("rename, and a file becomes a directory");
    must({"svn", "propdel", "-q", "svn:executable", t + "/run.sh"});
    writeFile(t + "/crlf.txt", "one\ntwo\nthree\n");
    modes = repo.commit("no longer executable");
    elsewhere = repo.run({"mkdir", "-q", "-m", "elsewhere", "--", u + "/other"});
    branched = repo.run({"copy", "-q", "-m", "branch from old trunk", "--",
                         u + "/trunk@" + std::to_string(files), u + "/branches/old"});
    writeFile(repo.wc() + "/branches/old/branch.txt", "on the branch\n");
    must({"svn", "rm", "-q", "--", repo.wc() + "/branches/old/dir"});
    on_branch = repo.commit("work on the old branch");
    writeFile(t + "/later.txt", "later\n");
    on_trunk = repo.commit("later on trunk");
  }
};

class SvnExportTest : public SvnVcsTest {
 protected:
  static void SetUpTestSuite() {
    setenv("GIT_CONFIG_GLOBAL", "/dev/null", 1);
    setenv("GIT_CONFIG_NOSYSTEM", "1", 1);
  }
  void SetUp() override {
    SvnVcsTest::SetUp();
    git_dir = git_tmp.path() + "/mirror.git";
    must({"git", "init", "-q", "--bare", git_dir});
  }

  struct Exported {
    Status exported = Error{"no answer"};
    ProcessResult imported;
    std::string stream;
  };

  // Pipes the plugin's fastExport into a real `git fast-import` that the test
  // runs, as the host does: the export is paused while a chunk is written.
  Exported exportIntoGit(const Repo& r, ExportSpec e) {
    Exported x;
    std::string marks = git_tmp.path() + "/marks";
    ProcessSpec p;
    p.argv = {"git", "--git-dir=" + git_dir, "fast-import", "--quiet", "--export-marks=" + marks};
    if (fs::exists(marks)) p.argv.push_back("--import-marks=" + marks);
    p.stdin_pipe = true;
    std::shared_ptr<Running> importer, exporter;
    int pending = 0;
    bool ended = false;
    auto maybeClose = [&] {
      if (!ended || pending > 0) return;
      if (x.exported)
        importer->closeInput();
      else
        importer->kill();
    };
    x.imported = await<ProcessResult>([&](auto done) {
      importer = host->run(p, done);
      exporter = vcs->fastExport(
          r, e,
          [&](std::string_view chunk) {
            x.stream.append(chunk);
            ++pending;
            exporter->pause();
            importer->write(std::string(chunk), [&](bool) {
              if (--pending > 0) return;
              exporter->resume();
              maybeClose();
            });
          },
          [&](Status s) {
            x.exported = std::move(s);
            ended = true;
            maybeClose();
          });
      ASSERT_TRUE(exporter);
    });
    return x;
  }

  std::string gitTree(const std::string& commit) {
    auto out = must({"git", "--git-dir=" + git_dir, "rev-parse", commit + "^{tree}"});
    return out.substr(0, out.find('\n'));
  }
  std::string gitCommit(uint64_t mark) {  // from fast-import's marks file
    std::ifstream in(git_tmp.path() + "/marks");
    for (std::string line; std::getline(in, line);)
      if (line.rfind(":" + std::to_string(mark) + " ", 0) == 0)
        return line.substr(line.find(' ') + 1);
    return "";
  }

  // Every commit of the stream has the tree the plugin's digest gives its
  // revision, and the parents listCommits gives it.
  void expectMirrored(const Repo& r, const std::string& stream,
                      const std::map<std::string, uint64_t>& known) {
    std::map<std::string, uint64_t> marks = known;
    for (const auto& c : commitsOf(stream)) {
      marks[c.original] = c.mark;
      auto digest = treeDigest(r, c.original);
      ASSERT_TRUE(digest) << digest.error().message;
      EXPECT_EQ(gitTree(gitCommit(c.mark)), *digest) << c.original;
      auto info = listCommits(r, c.original, {}, 1);
      ASSERT_TRUE(info && info->size() == 1) << c.original;
      std::vector<std::string> parents;
      for (const auto& p : info->front().parents) parents.push_back(":" + std::to_string(marks[p]));
      EXPECT_EQ(c.parents, parents) << c.original;
      EXPECT_EQ(c.reset_before, parents.empty()) << c.original;
    }
  }

  test::TempDir git_tmp{"pefnos-svn-git"};
  std::string git_dir;
};

TEST_F(SvnExportTest, EveryMirroredCommitHasTheTreeDigestOfItsRevision) {
  MirrorHistory h;
  auto r = repoFor(h.repo.url(), standardLayout());
  ASSERT_TRUE(updateProxy(r, {}));
  std::string branch = "branches/old@" + std::to_string(h.on_branch);
  auto x = exportIntoGit(r, ExportSpec{"branches/old", branch, "refs/heads/old", {}, 1});
  ASSERT_TRUE(x.exported) << x.exported.error().message;
  ASSERT_TRUE(x.imported.ok()) << x.imported.describe("git fast-import");

  // The branch's history as listCommits tells it: back through the copy to old trunk.
  auto commits = commitsOf(x.stream);
  std::vector<std::string> ids;
  for (const auto& c : commits) ids.push_back(c.original);
  auto layout = "trunk@" + std::to_string(h.layout), files = "trunk@" + std::to_string(h.files);
  EXPECT_EQ(ids, (std::vector<std::string>{layout, files,
                                           "branches/old@" + std::to_string(h.branched), branch}));
  EXPECT_EQ(commits[0].mark, 1u);
  expectMirrored(r, x.stream, {});
  EXPECT_EQ(must({"git", "--git-dir=" + git_dir, "rev-parse", "refs/heads/old"}),
            gitCommit(commits.back().mark) + "\n");

  // What the tree holds, in git's terms.
  std::string listing = must({"git", "--git-dir=" + git_dir, "ls-tree", "-r", gitCommit(2)});
  EXPECT_NE(listing.find("100755 blob"), std::string::npos) << listing;
  EXPECT_NE(listing.find("120000 blob"), std::string::npos) << listing;
  EXPECT_EQ(listing.find("empty"), std::string::npos) << "empty directories vanish";
  EXPECT_EQ(must({"git", "--git-dir=" + git_dir, "show", gitCommit(2) + ":crlf.txt"}),
            "one\r\ntwo\r\n");
  EXPECT_EQ(must({"git", "--git-dir=" + git_dir, "show", gitCommit(2) + ":a.txt"}), "hello $Id$\n");
  // Author and date as listCommits gives them: the svn user as name and email, UTC.
  auto info = listCommits(r, files, {}, 1);
  ASSERT_TRUE(info) << info.error().message;
  const auto& c = info->front();
  EXPECT_EQ(
      must({"git", "--git-dir=" + git_dir, "log", "-1", "--format=%an <%ae>|%B|%aI|%cn",
            gitCommit(2)}),
      c.author + " <" + c.author + ">|" + c.message + "|" + c.author_date + "|" + c.author + "\n");
}

TEST_F(SvnExportTest, TrunkWithARenameAFileThatBecomesADirectoryAndModeChanges) {
  MirrorHistory h;
  auto r = repoFor(h.repo.url(), standardLayout());
  ASSERT_TRUE(updateProxy(r, {}));
  std::string trunk = "trunk@" + std::to_string(h.on_trunk);
  auto x = exportIntoGit(r, ExportSpec{"trunk", trunk, "refs/heads/trunk", {}, 1});
  ASSERT_TRUE(x.exported) << x.exported.error().message;
  ASSERT_TRUE(x.imported.ok()) << x.imported.describe("git fast-import");
  EXPECT_EQ(commitsOf(x.stream).size(), 5u);
  expectMirrored(r, x.stream, {});
  std::string reshaped = gitCommit(commitsOf(x.stream)[2].mark);
  std::string listing =
      must({"git", "--git-dir=" + git_dir, "ls-tree", "-r", "--name-only", reshaped});
  EXPECT_NE(listing.find("thing/inside.txt"), std::string::npos) << listing;
  EXPECT_NE(listing.find("renamed.txt"), std::string::npos) << listing;
  EXPECT_EQ(listing.find("a.txt\n"), std::string::npos) << listing;
}

TEST_F(SvnExportTest, IncrementalExportBuildsOnKnownMarksAndKnownIsNothing) {
  MirrorHistory h;
  auto r = repoFor(h.repo.url(), standardLayout());
  ASSERT_TRUE(updateProxy(r, {}));
  std::string trunk = "trunk@" + std::to_string(h.modes);
  auto first = exportIntoGit(r, ExportSpec{"trunk", trunk, "refs/heads/trunk", {}, 1});
  ASSERT_TRUE(first.exported) << first.exported.error().message;
  ASSERT_TRUE(first.imported.ok()) << first.imported.describe("git fast-import");
  std::vector<std::pair<std::string, uint64_t>> known;
  uint64_t highest = 0;
  for (const auto& c : commitsOf(first.stream)) {
    known.emplace_back(c.original, c.mark);
    highest = std::max(highest, c.mark);
  }
  ASSERT_EQ(known.size(), 4u);

  // The branch, copied from an old trunk revision the target already has.
  std::string branch = "branches/old@" + std::to_string(h.on_branch);
  auto second =
      exportIntoGit(r, ExportSpec{"branches/old", branch, "refs/heads/old", known, highest + 1});
  ASSERT_TRUE(second.exported) << second.exported.error().message;
  ASSERT_TRUE(second.imported.ok()) << second.imported.describe("git fast-import");
  auto commits = commitsOf(second.stream);
  ASSERT_EQ(commits.size(), 2u) << second.stream;
  EXPECT_EQ(commits[0].original, "branches/old@" + std::to_string(h.branched));
  EXPECT_EQ(commits[0].mark, highest + 1);
  EXPECT_EQ(commits[0].parents, std::vector<std::string>{":2"}) << "trunk@files, known";
  EXPECT_FALSE(commits[0].reset_before);
  std::map<std::string, uint64_t> known_map(known.begin(), known.end());
  expectMirrored(r, second.stream, known_map);

  // Trunk again, from where the first run stopped.
  auto third = exportIntoGit(r, ExportSpec{"trunk", "trunk@" + std::to_string(h.on_trunk),
                                           "refs/heads/trunk", known, highest + 10});
  ASSERT_TRUE(third.exported) << third.exported.error().message;
  ASSERT_TRUE(third.imported.ok()) << third.imported.describe("git fast-import");
  auto later = commitsOf(third.stream);
  ASSERT_EQ(later.size(), 1u);
  EXPECT_EQ(later[0].mark, highest + 10);
  EXPECT_EQ(later[0].parents, std::vector<std::string>{":" + std::to_string(known_map[trunk])});
  expectMirrored(r, third.stream, known_map);

  // Known: nothing at all, not even a process.
  size_t before = host->argvs.size();
  size_t chunks = 0;
  auto nothing = await<Status>([&](auto done) {
    EXPECT_TRUE(vcs->fastExport(
        r, ExportSpec{"trunk", trunk, "refs/heads/trunk", known, 99},
        [&](std::string_view) { ++chunks; }, done));
  });
  EXPECT_TRUE(nothing) << nothing.error().message;
  EXPECT_EQ(chunks, 0u);
  EXPECT_EQ(host->argvs.size(), before);
}

TEST_F(SvnExportTest, ARepositorySubdirectoryExportsWithItsOwnNames) {
  SvnRepository repo;
  const std::string u = repo.url();
  repo.run({"mkdir", "-q", "--parents", "-m", "two projects", "--", u + "/other/trunk",
            u + "/my proj/trunk", u + "/my proj/branches"});
  writeFile(repo.wc() + "/my proj/trunk/f.txt", "f\n");
  auto files = repo.commit("f");
  writeFile(repo.wc() + "/other/trunk/g.txt", "g\n");
  repo.commit("other project");
  auto branch = repo.run(
      {"copy", "-q", "-m", "b", "--", u + "/my%20proj/trunk", u + "/my%20proj/branches/b"});
  auto r = repoFor(u + "/my%20proj", standardLayout());
  ASSERT_TRUE(updateProxy(r, {}));
  std::string head = "branches/b@" + std::to_string(branch);
  auto x = exportIntoGit(r, ExportSpec{"branches/b", head, "refs/heads/b", {}, 1});
  ASSERT_TRUE(x.exported) << x.exported.error().message;
  ASSERT_TRUE(x.imported.ok()) << x.imported.describe("git fast-import");
  std::vector<std::string> ids;
  for (const auto& c : commitsOf(x.stream)) ids.push_back(c.original);
  EXPECT_EQ(ids, (std::vector<std::string>{"trunk@1", "trunk@" + std::to_string(files), head}));
  expectMirrored(r, x.stream, {});
}

TEST_F(SvnExportTest, BadRequestsAreErrors) {
  MirrorHistory h;
  auto r = repoFor(h.repo.url(), standardLayout());
  ASSERT_TRUE(updateProxy(r, {}));
  auto run = [&](ExportSpec e) {
    return await<Status>([&](auto done) {
      vcs->fastExport(
          r, e, [](std::string_view) {}, done);
    });
  };
  std::string trunk = "trunk@" + std::to_string(h.modes);
  // Not a revision in which trunk changed: its id would not be listCommits'.
  auto odd =
      run(ExportSpec{"trunk", "trunk@" + std::to_string(h.elsewhere), "refs/heads/t", {}, 1});
  ASSERT_FALSE(odd);
  EXPECT_NE(odd.error().message.find("trunk@" + std::to_string(h.modes)), std::string::npos)
      << odd.error().message;
  EXPECT_FALSE(run(ExportSpec{"trunk", "trunk@999", "refs/heads/t", {}, 1}));
  EXPECT_FALSE(run(ExportSpec{"trunk", "nowhere@3", "refs/heads/t", {}, 1}));
  size_t before = host->argvs.size();
  EXPECT_FALSE(run(ExportSpec{"trunk", trunk, "refs/heads/t\ncommit x", {}, 1}));
  EXPECT_FALSE(run(ExportSpec{"trunk", "-x@1", "refs/heads/t", {}, 1}));
  EXPECT_FALSE(run(ExportSpec{"trunk", trunk, "refs/heads/t", {{"trunk@1", 4}}, 4}));
  EXPECT_EQ(host->argvs.size(), before) << "refused before any process";
  // The target has a revision of the history without its mark.
  auto gap = run(
      ExportSpec{"trunk", trunk, "refs/heads/t", {{"trunk@" + std::to_string(h.reshaped), 1}}, 2});
  EXPECT_TRUE(gap) << "known: trunk@reshaped; exports only what follows it";
  auto wrong = run(ExportSpec{"trunk", trunk, "refs/heads/t", {{"trunk@999", 1}}, 2});
  ASSERT_FALSE(wrong) << "a known revision of trunk newer than what is exported";
  EXPECT_NE(wrong.error().message.find("incomplete"), std::string::npos) << wrong.error().message;
}

}  // namespace
}  // namespace pefnos
