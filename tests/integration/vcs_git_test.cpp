// The git VCS plugin, loaded through the Registry from the build's plugin
// directory, against real repositories the tests make, on a real libuv loop
// (tests/support/vcs_fixture.h). What every VCS plugin must do is in
// vcs_contract_test.cpp; here is what is git's own: its processes, refs,
// objects, messages and attributes.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "git_stream.h"
#include "tests/support/stream_commits.h"
#include "tests/support/vcs_fixture.h"

namespace pefnos {
namespace {
namespace fs = std::filesystem;
using test::StreamCommit;
using test::commitsOf;

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

// ---- Mirroring: fastExport, fastImport, publish ------------------------------

// The smallest mark a stream defines (blobs included).
uint64_t firstMarkOf(const std::string& stream) {
  uint64_t first = UINT64_MAX;
  size_t at = 0;
  while (at < stream.size()) {
    size_t nl = stream.find('\n', at);
    if (nl == std::string::npos) nl = stream.size();
    std::string line = stream.substr(at, nl - at);
    at = nl + 1;
    if (line.rfind("data ", 0) == 0) at += std::stoull(line.substr(5));
    if (line.rfind("mark :", 0) == 0)
      first = std::min<uint64_t>(first, std::stoull(line.substr(6)));
  }
  return first;
}

class VcsGitMirrorTest : public VcsGitTest {
 protected:
  void SetUp() override {
    VcsGitTest::SetUp();
    src_up = makeUpstream("src");
    dst_up = tmp.path() + "/dst.git";
    ASSERT_EQ(test::run({"git", "init", "-q", "--bare", dst_up}).first, 0);
    src = repo(1, src_up);
    dst = Repo{2, dst_up, tmp.path() + "/dst-proxy.git", "refs/pefnos/2/", {}};
  }

  struct Mirrored {
    Status exported = Error{"no answer"};
    Result<Imported> imported = Error{"no answer"};
    std::string stream;  // as the exporter wrote it
    std::string ref;     // Import::ref()
    size_t chunks = 0;
  };

  // Pipes src's fastExport into dst's fastImport as the host does: the export
  // is paused while a chunk is being written, and the import finished (or
  // killed) once the export has ended.
  Mirrored mirror(ExportSpec e, const ImportSpec& i) {
    Mirrored m;
    std::shared_ptr<Import> import;
    std::shared_ptr<Running> running;
    int pending = 0;
    bool exported = false;
    std::function<void()> maybeFinish = [&] {
      if (!exported || pending > 0) return;
      if (m.exported)
        import->finish();
      else
        import->kill();
    };
    m.imported = await<Result<Imported>>(
        [&](auto done) {
          import = vcs->fastImport(dst, i, done);
          ASSERT_TRUE(import);
          m.ref = import->ref();
          e.ref = m.ref;
          running = vcs->fastExport(src, e, [&](std::string_view chunk) {
            m.stream.append(chunk);
            ++m.chunks;
            ++pending;
            running->pause();
            import->write(std::string(chunk), [&](bool) {
              if (--pending > 0) return;
            running->resume();
            maybeFinish();
          });
        },
        [&](Status s) {
          m.exported = std::move(s);
          exported = true;
          maybeFinish();
        });
    ASSERT_TRUE(running);
  });
  return m;
}

  // The known marks of both sides after a run: source revision -> mark, mark -> target id.
  void remember(const Mirrored& m) {
  std::map<uint64_t, std::string> target(m.imported->marks.begin(), m.imported->marks.end());
  for (const auto& c : commitsOf(m.stream)) {
    ASSERT_TRUE(target.count(c.mark)) << "no target id for :" << c.mark;
    export_known.emplace_back(c.original, c.mark);
    import_known.emplace_back(c.mark, target[c.mark]);
    highest = std::max(highest, c.mark);
  }
}

ExportSpec exportSpec(const std::string& revision) {
  ExportSpec e;
  e.branch = "main";
  e.revision = revision;
  e.known = export_known;
  e.first_mark = highest + 1;
  return e;
}
ImportSpec importSpec() { return ImportSpec{"main", import_known}; }

Status publish(const std::string& revision, const std::string& expected) {
  return await<Status>([&](auto done) { vcs->publish(dst, "main", revision, expected, done); });
}

std::string dstProxyRef(const std::string& ref) {
  auto [code, out] =
      test::run({"git", "--git-dir=" + dst.proxy, "rev-parse", "--verify", "-q", ref});
  return code == 0 ? trimmed(out) : "";
}
std::vector<std::string> refsIn(const std::string& git_dir, const std::string& prefix) {
  auto [code, out] =
      test::run({"git", "--git-dir=" + git_dir, "for-each-ref", "--format=%(refname)", prefix});
  return linesOf(out);
}

std::string src_up, dst_up;
Repo src, dst;
std::vector<std::pair<std::string, uint64_t>> export_known;
std::vector<std::pair<uint64_t, std::string>> import_known;
uint64_t highest = 0;
};

// A history with what a mirror must carry: a merge, an executable, a symlink,
// a rename, a deletion, a file that becomes a directory, non-UTF-8 bytes in an
// author's name and a message. Returns main's head.
std::string makeRichHistory(const std::string& dir) {
  writeFile(fs::path(dir) / "a.txt", "a\n");
  writeFile(fs::path(dir) / "run.sh", "#!/bin/sh\necho hi\n");
  chmod((fs::path(dir) / "run.sh").c_str(), 0755);
  fs::create_symlink("a.txt", fs::path(dir) / "link");
  writeFile(fs::path(dir) / "thing", "a file, for now\n");
  commitAll(dir, "root", {"2024-01-01T10:00:00+02:00", "2024-01-01T11:00:00+02:00"});
  git(dir, {"checkout", "-q", "-b", "side"});
  writeFile(fs::path(dir) / "dir/side.txt", "side\n");
  commitAll(dir, "side", {"2024-01-02T10:00:00-05:00", "2024-01-02T12:00:00Z"});
  git(dir, {"checkout", "-q", "main"});
  git(dir, {"mv", "a.txt", "renamed.txt"});
  fs::remove(fs::path(dir) / "thing");
  writeFile(fs::path(dir) / "thing/inside.txt", "now a directory\n");
  setenv("GIT_AUTHOR_NAME", "Rene Latin-1", 1);
  std::string utf8 = commitAll(dir, "cafe: rename, and a file becomes a directory");
  setenv("GIT_AUTHOR_NAME", "Alice Example", 1);
  // git commit turns Latin-1 into UTF-8: the bytes are written by hand.
  std::string raw = git(dir, {"cat-file", "commit", utf8}) + "\n";
  for (auto [from, to] :
       {std::pair<std::string, std::string>{"Rene", "Ren\xe9"}, {"cafe", "caf\xe9"}})
    raw.replace(raw.find(from), from.size(), to);
  writeFile(fs::path(dir) / ".git" / "latin1-commit", raw);
  std::string latin1 = git(dir, {"hash-object", "-t", "commit", "-w", ".git/latin1-commit"});
  git(dir, {"update-ref", "HEAD", latin1});
  setenv("GIT_AUTHOR_DATE", "2024-01-04T09:08:07+05:30", 1);
  git(dir, {"merge", "-q", "--no-ff", "side", "-m", "Merge side"});
  fs::remove(fs::path(dir) / "run.sh");
  return commitAll(dir, "delete run.sh");
}

TEST_F(VcsGitMirrorTest, ExportImportRoundTripRebuildsTheSameCommitsAndPublishes) {
  std::string head = makeRichHistory(src_up);
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ASSERT_TRUE(updateProxy(dst, {}));  // the target's proxy; its branch does not exist yet

  auto m = mirror(exportSpec(head), importSpec());
  ASSERT_TRUE(m.exported) << m.exported.error().message;
  ASSERT_TRUE(m.imported) << m.imported.error().message;
  EXPECT_EQ(m.ref, "refs/pefnos/2/-mirror/main");

  auto commits = commitsOf(m.stream);
  auto all = linesOf(git(src_up, {"rev-list", "--topo-order", "--reverse", head}));
  ASSERT_EQ(commits.size(), all.size());
  EXPECT_TRUE(commits.front().reset_before) << "a root commit starts with reset";
  EXPECT_EQ(commits.back().original, head) << "the stream ends with the revision";
  EXPECT_EQ(m.imported->marks.size(), commits.size());
  std::map<uint64_t, std::string> imported(m.imported->marks.begin(), m.imported->marks.end());
  for (const auto& c : commits) {
    // Same tree, parents, authors, dates and bytes of message: the same commit id.
    EXPECT_EQ(imported[c.mark], c.original)
        << git(src_up, {"cat-file", "commit", c.original}) << "\n----\n"
        << git(tmp.path(), {"--git-dir=" + dst.proxy, "cat-file", "commit", imported[c.mark]});
  }
  EXPECT_EQ(firstMarkOf(m.stream), 1u) << "marks start at first_mark";
  EXPECT_EQ(dstProxyRef(m.ref), head);
  EXPECT_EQ(refsIn(proxy, "refs/pefnos/1/-export/"), std::vector<std::string>{})
      << "the export's temporary ref is gone";
  // The non-UTF-8 bytes went through untouched.
  std::string raw = git(tmp.path(), {"--git-dir=" + dst.proxy, "cat-file", "commit",
                                     git(src_up, {"rev-parse", "main^^"})});
  EXPECT_NE(raw.find("author Ren\xe9 Latin-1 <"), std::string::npos) << raw;
  EXPECT_NE(raw.find("caf\xe9: rename"), std::string::npos);

  auto published = publish(head, "");
  ASSERT_TRUE(published) << published.error().message;
  EXPECT_EQ(git(dst_up, {"rev-parse", "refs/heads/main"}), head);
  EXPECT_EQ(git(dst_up, {"for-each-ref", "--format=%(refname)"}), "refs/heads/main")
      << "publish pushes the branch and nothing else";
}

TEST_F(VcsGitMirrorTest, IncrementalExportCarriesASideBranchFromOldHistoryThatMergesBack) {
  std::string old_root = commitFile(src_up, "a.txt", "root");
  commitFile(src_up, "b.txt", "second");
  std::string first_head = commitFile(src_up, "c.txt", "third");
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ASSERT_TRUE(updateProxy(dst, {}));
  auto first = mirror(exportSpec(first_head), importSpec());
  ASSERT_TRUE(first.imported) << first.imported.error().message;
  remember(first);
  ASSERT_TRUE(publish(first_head, ""));

  // A side branch from the root (old history), new work on main, a merge.
  git(src_up, {"checkout", "-q", "-b", "old-side", old_root});
  std::string side1 = commitFile(src_up, "side1.txt", "side one");
  std::string side2 = commitFile(src_up, "side2.txt", "side two");
  git(src_up, {"checkout", "-q", "main"});
  std::string mainline = commitFile(src_up, "d.txt", "mainline");
  git(src_up, {"merge", "-q", "--no-ff", "old-side", "-m", "Merge old-side"});
  std::string merge = git(src_up, {"rev-parse", "HEAD"});
  std::string after = commitFile(src_up, "e.txt", "after the merge");
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ASSERT_TRUE(updateProxy(dst, {"main"}));  // as the host does before importing

  auto e = exportSpec(merge);  // up to the merge, not main's head
  auto second = mirror(e, importSpec());
  ASSERT_TRUE(second.exported) << second.exported.error().message;
  ASSERT_TRUE(second.imported) << second.imported.error().message;

  auto commits = commitsOf(second.stream);
  std::map<std::string, StreamCommit> by_original;
  for (const auto& c : commits) by_original[c.original] = c;
  ASSERT_EQ(by_original.size(), 4u) << second.stream;
  EXPECT_EQ((std::set<std::string>{side1, side2, mainline, merge}),
            (std::set<std::string>{commits[0].original, commits[1].original, commits[2].original,
                                   commits[3].original}));
  EXPECT_EQ(commits.back().original, merge);
  std::map<std::string, uint64_t> known(export_known.begin(), export_known.end());
  auto mark = [&](const std::string& revision) {
    return ":" +
           std::to_string(known.count(revision) ? known[revision] : by_original[revision].mark);
  };
  EXPECT_EQ(by_original[side1].parents, std::vector<std::string>{mark(old_root)})
      << "the side branch builds on a known mark of old history";
  EXPECT_FALSE(by_original[side1].reset_before);
  EXPECT_EQ(by_original[mainline].parents, std::vector<std::string>{mark(first_head)});
  EXPECT_EQ(by_original[merge].parents, (std::vector<std::string>{mark(mainline), mark(side2)}));
  EXPECT_EQ(firstMarkOf(second.stream), highest + 1) << "new marks start at first_mark";

  std::map<uint64_t, std::string> imported(second.imported->marks.begin(),
                                           second.imported->marks.end());
  EXPECT_EQ(imported.size(), 4u);
  for (const auto& c : commits) EXPECT_EQ(imported[c.mark], c.original);
  EXPECT_EQ(dstProxyRef(second.ref), merge);
  ASSERT_TRUE(publish(merge, first_head));
  EXPECT_EQ(git(dst_up, {"rev-parse", "refs/heads/main"}), merge);

  // A third run with a gap in the numbering: marks still start at first_mark.
  remember(second);
  auto third_spec = exportSpec(after);
  third_spec.first_mark = highest + 10;
  auto third = mirror(third_spec, importSpec());
  ASSERT_TRUE(third.imported) << third.imported.error().message;
  auto last = commitsOf(third.stream);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(firstMarkOf(third.stream), highest + 10);
  EXPECT_EQ(last[0].parents,
            std::vector<std::string>{":" + std::to_string(by_original[merge].mark)});
}

TEST_F(VcsGitMirrorTest, NothingIsExportedWhenTheTargetHasTheRevision) {
  std::string root = commitFile(src_up, "a.txt", "root");
  std::string head = commitFile(src_up, "b.txt", "second");
  ASSERT_TRUE(updateProxy(src, {"main"}));

  size_t before = host->argvs.size();
  ExportSpec e{"main", head, "refs/x/main", {{root, 1}, {head, 2}}, 3};
  size_t chunks = 0;
  auto status = await<Status>([&](auto done) {
    EXPECT_TRUE(vcs->fastExport(
        src, e, [&](std::string_view) { ++chunks; }, done));
  });
  ASSERT_TRUE(status) << status.error().message;
  EXPECT_EQ(chunks, 0u);
  EXPECT_EQ(host->argvs.size(), before) << "no process for an empty stream";
}

TEST_F(VcsGitMirrorTest, IncompleteKnownMarksAreRefusedBeforeAnythingIsStreamed) {
  std::string root = commitFile(src_up, "a.txt", "root");
  std::string head = commitFile(src_up, "b.txt", "second");
  ASSERT_TRUE(updateProxy(src, {"main"}));
  size_t chunks = 0;

  // An ancestor of a known revision that has no mark itself.
  ExportSpec ancestor{"main", root, "refs/x/main", {{head, 1}}, 2};
  auto status = await<Status>([&](auto done) {
    vcs->fastExport(
        src, ancestor, [&](std::string_view) { ++chunks; }, done);
  });
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("incomplete"), std::string::npos) << status.error().message;
  EXPECT_EQ(chunks, 0u);

  // A parent of the new history that the target has (an ancestor of a known
  // revision) but without a mark: refused before anything is streamed.
  std::string third = commitFile(src_up, "c.txt", "third");
  git(src_up, {"checkout", "-q", "-b", "side", root});
  std::string side = commitFile(src_up, "s.txt", "side");
  ASSERT_TRUE(updateProxy(src, {"main", "side"}));
  ExportSpec gap{"side", side, "refs/x/side", {{third, 1}}, 2};
  status = await<Status>([&](auto done) {
    vcs->fastExport(
        src, gap, [&](std::string_view) { ++chunks; }, done);
  });
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("incomplete: " + root), std::string::npos)
      << status.error().message;
  EXPECT_EQ(chunks, 0u);
  EXPECT_EQ(refsIn(proxy, "refs/pefnos/1/-export/"), std::vector<std::string>{});
}

TEST_F(VcsGitMirrorTest, ExportOfAnUnknownRevisionFailsAndLeavesNoRef) {
  commitFile(src_up, "a.txt", "root");
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ExportSpec e{"main", std::string(40, 'a'), "refs/x/main", {}, 1};
  auto status = await<Status>([&](auto done) {
    vcs->fastExport(
        src, e, [](std::string_view) {}, done);
  });
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find(std::string(40, 'a')), std::string::npos)
      << status.error().message;
  EXPECT_EQ(refsIn(proxy, "refs/pefnos/1/"), std::vector<std::string>{"refs/pefnos/1/main"});

  // Refused before any process: not an id, a ref that is not one, marks that collide.
  size_t before = host->argvs.size();
  for (ExportSpec bad :
       {ExportSpec{"main", "HEAD", "refs/x/main", {}, 1},
        ExportSpec{"main", std::string(40, 'a'), "--output=/tmp/x", {}, 1},
        ExportSpec{"main", std::string(40, 'a'), "refs/x/main", {{std::string(40, 'b'), 5}}, 5}}) {
    auto s = await<Status>([&](auto done) {
      EXPECT_FALSE(vcs->fastExport(
          src, bad, [](std::string_view) {}, done));
    });
    EXPECT_FALSE(s);
  }
  EXPECT_EQ(host->argvs.size(), before);
}

TEST_F(VcsGitMirrorTest, KillingAnExportEndsItWithAnErrorAndRemovesItsRef) {
  // Enough data that the export is still running after its first chunk.
  std::string big(4 << 20, 'x');
  for (int i = 0; i < 3; ++i) {
    big[0] = static_cast<char>('a' + i);
    writeFile(fs::path(src_up) / ("big" + std::to_string(i)), big);
    commitAll(src_up, "big " + std::to_string(i));
  }
  std::string head = git(src_up, {"rev-parse", "HEAD"});
  ASSERT_TRUE(updateProxy(src, {"main"}));
  std::shared_ptr<Running> running;
  size_t chunks = 0;
  auto status = await<Status>([&](auto done) {
    running = vcs->fastExport(
        src, ExportSpec{"main", head, "refs/x/main", {}, 1},
        [&](std::string_view) {
          if (++chunks == 1) running->kill();
        },
        done);
  });
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("killed by signal"), std::string::npos)
      << status.error().message;
  EXPECT_EQ(refsIn(proxy, "refs/pefnos/1/-export/"), std::vector<std::string>{});
}

TEST_F(VcsGitMirrorTest, PublishRefusesAnUpstreamThatMovedAndLeavesItUntouched) {
  std::string first = commitFile(src_up, "a.txt", "first");
  std::string second = commitFile(src_up, "b.txt", "second");
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ASSERT_TRUE(updateProxy(dst, {}));
  auto m = mirror(exportSpec(second), importSpec());
  ASSERT_TRUE(m.imported) << m.imported.error().message;

  ASSERT_TRUE(publish(first, ""));
  // Expected absent, but it exists now.
  auto again = publish(second, "");
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("diverged"), std::string::npos) << again.error().message;
  // Expected at a commit where it is not.
  auto wrong = publish(second, second);
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("diverged"), std::string::npos) << wrong.error().message;
  EXPECT_EQ(git(dst_up, {"rev-parse", "refs/heads/main"}), first) << "the upstream is untouched";

  ASSERT_TRUE(publish(second, first));
  EXPECT_EQ(git(dst_up, {"rev-parse", "refs/heads/main"}), second);
  // Never backwards, even from the expected head.
  auto back = publish(first, second);
  ASSERT_FALSE(back);
  EXPECT_NE(back.error().message.find("fast-forward"), std::string::npos) << back.error().message;
  EXPECT_EQ(git(dst_up, {"rev-parse", "refs/heads/main"}), second);
  EXPECT_TRUE(publish(second, second)) << "already there";
  // Names that could be options never reach git as such.
  EXPECT_FALSE(publish("--all", first));
  EXPECT_FALSE(
      await<Status>([&](auto done) { vcs->publish(dst, "--mirror", second, first, done); }));
  auto missing = publish(std::string(40, 'c'), second);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().message.find("diverged"), std::string::npos) << missing.error().message;
}

// A local upstream with a receive hook gets a real push, so that the hook
// runs; without one, objects go in as a pack and the branch moves by
// update-ref (the test above): both refuse an upstream that moved.
TEST_F(VcsGitMirrorTest, AnUpstreamWithAReceiveHookIsPushedToAndItsHookRuns) {
  const std::string marker = dst_up + "/hook-ran";
  {
    std::ofstream hook(dst_up + "/hooks/post-receive");
    hook << "#!/bin/sh\ncat > " << marker << "\n";
  }
  std::filesystem::permissions(dst_up + "/hooks/post-receive", std::filesystem::perms::owner_all);
  std::string first = commitFile(src_up, "a.txt", "first");
  std::string second = commitFile(src_up, "b.txt", "second");
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ASSERT_TRUE(updateProxy(dst, {}));
  auto m = mirror(exportSpec(second), importSpec());
  ASSERT_TRUE(m.imported) << m.imported.error().message;
  ASSERT_TRUE(publish(first, ""));
  ASSERT_TRUE(std::filesystem::exists(marker)) << "the push ran the upstream's hook";
  auto wrong = publish(second, second);
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("diverged"), std::string::npos) << wrong.error().message;
  ASSERT_TRUE(publish(second, first));
  EXPECT_EQ(git(dst_up, {"rev-parse", "refs/heads/main"}), second);
  std::ifstream in(marker);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, first + " " + second + " refs/heads/main");
}

TEST_F(VcsGitMirrorTest, ImportRefusesHistoryThatDoesNotContainTheUpstreamHead) {
  std::string first = commitFile(src_up, "a.txt", "first");
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ASSERT_TRUE(updateProxy(dst, {}));
  auto m = mirror(exportSpec(first), importSpec());
  ASSERT_TRUE(m.imported) << m.imported.error().message;
  remember(m);
  ASSERT_TRUE(publish(first, ""));

  // Someone commits on the target; the host fetched it but (wrongly) streams anyway.
  std::string clone = tmp.path() + "/dst-clone";
  ASSERT_EQ(test::run({"git", "clone", "-q", "-b", "main", dst_up, clone}).first, 0);
  std::string theirs = commitFile(clone, "theirs.txt", "theirs");
  git(clone, {"push", "-q", "origin", "main"});
  std::string second = commitFile(src_up, "b.txt", "second");
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ASSERT_TRUE(updateProxy(dst, {"main"}));

  auto refused = mirror(exportSpec(second), importSpec());
  ASSERT_TRUE(refused.exported);
  ASSERT_FALSE(refused.imported);
  EXPECT_NE(refused.imported.error().message.find("diverged"), std::string::npos)
      << refused.imported.error().message;
  EXPECT_EQ(dstProxyRef(refused.ref), theirs) << "the mirror ref stays at the upstream head";
}

TEST_F(VcsGitMirrorTest, ABrokenStreamFailsTheImportAndLeavesTheRefAlone) {
  std::string first = commitFile(src_up, "a.txt", "first");
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ASSERT_TRUE(updateProxy(dst, {}));
  auto m = mirror(exportSpec(first), importSpec());
  ASSERT_TRUE(m.imported) << m.imported.error().message;
  remember(m);
  ASSERT_TRUE(publish(first, ""));
  ASSERT_TRUE(updateProxy(dst, {"main"}));
  std::string ref = "refs/pefnos/2/-mirror/main";
  std::string mark = ":" + std::to_string(highest + 1), known = ":" + std::to_string(highest);
  std::string good = "commit " + ref + "\nmark " + mark +
                     "\nauthor A <a@b> 1700000000 +0000\n"
                     "committer A <a@b> 1700000000 +0000\ndata 3\nnew\nfrom " +
                     known + "\nM 100644 inline x.txt\ndata 2\nx\n\n";

  // Feeds the stream, one write after the other, then finishes (or kills).
  auto import = [&](const std::vector<std::string>& pieces, bool kill) {
    return await<Result<Imported>>([&](auto done) {
      auto imp = vcs->fastImport(dst, importSpec(), done);
      ASSERT_TRUE(imp);
      EXPECT_EQ(imp->ref(), ref);
      auto next = std::make_shared<std::function<void(size_t)>>();
      *next = [imp, pieces, kill, next](size_t i) {
        if (i == pieces.size()) {
          kill ? imp->kill() : imp->finish();
          *next = nullptr;  // ends the cycle
          return;
        }
        imp->write(pieces[i], [next, i](bool) {
          if (*next) (*next)(i + 1);
        });
      };
      (*next)(0);
    });
  };

  // Sanity: the good commit alone imports, in pieces cut anywhere.
  auto fine = import({good.substr(0, 7), good.substr(7, 50), good.substr(57)}, false);
  ASSERT_TRUE(fine) << fine.error().message;
  ASSERT_EQ(fine->marks.size(), 1u);
  std::string made = fine->marks[0].second;
  EXPECT_EQ(git(src_up, {"--git-dir=" + dst.proxy, "rev-parse", made + "^"}), first);
  EXPECT_EQ(dstProxyRef(ref), made);
  ASSERT_TRUE(
      updateProxy(dst, {"main"}));  // not published: the next import starts again at `first`

  struct Case {
    std::string name;
    std::vector<std::string> pieces;
    bool kill;
    std::string message;  // in the error
  };
  std::vector<Case> cases = {
      {"garbage after a good commit", {good, "this is no command\n"}, false, "fatal:"},
      {"cut inside a data block", {good.substr(0, good.size() - 3)}, false, "data block"},
      {"a parent nobody defined",
       {"commit " + ref +
        "\nmark :50\nauthor A <a@b> 1 +0000\n"
        "committer A <a@b> 1 +0000\ndata 0\nfrom :40\n\n"},
       false,
       ":40"},
      {"another ref",
       {"reset refs/pefnos/2/main\nfrom " + known + "\n\n"},
       false,
       "refs/pefnos/2/main"},
      {"a tag",
       {good, "tag v1\nfrom " + mark + "\ntagger A <a@b> 1 +0000\ndata 0\n"},
       false,
       "tag"},
      {"a checkpoint", {good, "checkpoint\n"}, false, "checkpoint"},
      {"killed", {good}, true, "abandoned"},
  };
  for (const auto& c : cases) {
    auto broken = import(c.pieces, c.kill);
    ASSERT_FALSE(broken) << c.name;
    EXPECT_NE(broken.error().message.find(c.message), std::string::npos)
        << c.name << ": " << broken.error().message;
    EXPECT_EQ(dstProxyRef(ref), first) << c.name << ": the ref moved";
  }
  for (const auto& entry : fs::directory_iterator(dst.proxy))
    EXPECT_EQ(entry.path().filename().string().rfind("fast_import_crash_", 0), std::string::npos)
        << "a crash report was left in the proxy";
  EXPECT_EQ(git(src_up, {"--git-dir=" + dst_up, "rev-parse", "refs/heads/main"}), first);
}

TEST_F(VcsGitMirrorTest, AnImportThatCannotStartRefusesItsWritesAndSaysWhy) {
  // No updateProxy: the target's proxy does not exist.
  std::optional<bool> written;
  auto failed = await<Result<Imported>>([&](auto done) {
    auto imp = vcs->fastImport(dst, importSpec(), done);
    ASSERT_TRUE(imp);
    imp->write("blob\nmark :1\ndata 0\n", [&](bool ok) { written = ok; });
  });
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.error().message.find("not a git repository"), std::string::npos)
      << failed.error().message;
  for (int i = 0; i < 10 && !written; ++i) uv_run(&loop, UV_RUN_NOWAIT);
  EXPECT_EQ(written, std::optional<bool>(false));
  EXPECT_FALSE(fs::exists(dst.proxy));
}

TEST_F(VcsGitMirrorTest, AMessageWithAnEncodingHeaderIsReencodedToUtf8) {
  commitFile(src_up, "a.txt", "root");
  writeFile(fs::path(src_up) / "b.txt", "b\n");
  git(src_up, {"add", "-A"});
  git(src_up, {"-c", "i18n.commitEncoding=ISO-8859-1", "commit", "-q", "-m", "caf\xe9 latin-1"});
  std::string head = git(src_up, {"rev-parse", "HEAD"});
  ASSERT_TRUE(updateProxy(src, {"main"}));
  ASSERT_TRUE(updateProxy(dst, {}));
  auto m = mirror(exportSpec(head), importSpec());
  ASSERT_TRUE(m.imported) << m.imported.error().message;
  std::string mirrored = m.imported->marks.back().second;
  EXPECT_NE(mirrored, head) << "the message's bytes changed, so the id did";
  std::string dst_git = "--git-dir=" + dst.proxy;
  EXPECT_EQ(git(src_up, {dst_git, "log", "-1", "--format=%B", mirrored}), "caf\xc3\xa9 latin-1");
  EXPECT_EQ(git(src_up, {dst_git, "rev-parse", mirrored + "^{tree}"}),
            git(src_up, {"rev-parse", head + "^{tree}"}));
  EXPECT_EQ(git(src_up, {dst_git, "cat-file", "commit", mirrored}).find("encoding "),
            std::string::npos);
}

// ---- The stream filters, fed in every way a stream can be cut ---------------

// Feeds the stream whole, byte by byte, and cut in two at every position;
// every way must give the same output (or an error).
template <class Filter, class Make>
std::string filtered(Make make, const std::string& stream, Status* status = nullptr) {
  std::string whole;
  Filter f = make();
  Status s = f.feed(stream, whole);
  if (s) s = f.finish();
  if (status) *status = s;
  std::vector<std::vector<size_t>> cuts;
  std::vector<size_t> bytes;
  for (size_t i = 1; i < stream.size(); ++i) {
    cuts.push_back({i});
    bytes.push_back(i);
  }
  cuts.push_back(bytes);
  for (const auto& cut : cuts) {
    Filter g = make();
    std::string out;
    Status t = ok();
    size_t at = 0;
    for (size_t c : cut) {
      if (t) t = g.feed(std::string_view(stream).substr(at, c - at), out);
      at = c;
    }
    if (t) t = g.feed(std::string_view(stream).substr(at), out);
    if (t) t = g.finish();
    EXPECT_EQ(static_cast<bool>(t), static_cast<bool>(s)) << "cut at " << cut.front();
    if (s && t) {
      EXPECT_EQ(out, whole) << "cut at " << cut.front();
    }
  }
  return whole;
}

TEST(GitStreamTest, ExportFilterDropsTheOriginalIdsOfBlobsOnly) {
  std::string stream =
      "blob\nmark :1\noriginal-oid 1111\ndata 14\noriginal-oid x\n\n"
      "reset refs/m\ncommit refs/m\nmark :2\noriginal-oid 2222\n"
      "author A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\ndata 4\nmsg\n"
      "M 100644 :1 f\n\n";
  git::ExportFilter f;
  std::string out = filtered<git::ExportFilter>([] { return git::ExportFilter(); }, stream);
  EXPECT_EQ(out,
            "blob\nmark :1\ndata 14\noriginal-oid x\n\n"
            "reset refs/m\ncommit refs/m\nmark :2\noriginal-oid 2222\n"
            "author A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\ndata 4\nmsg\n"
            "M 100644 :1 f\n\n");
  ASSERT_TRUE(f.feed(stream, out));
  EXPECT_EQ(f.commits(), 1u);
  EXPECT_EQ(f.lastOriginal(), "2222");
}

TEST(GitStreamTest, ExportFilterDropsTheDeletionOfAFileThatBecameADirectory) {
  // git 2.39 writes a commit's changes deepest first: `M x/y` before `D x`.
  std::string stream =
      "commit refs/m\nmark :2\ndata 0\nfrom :1\n"
      "M 100644 :1 thing/inside.txt\nM 100644 :1 \"q\\tdir/f\"\nD thing\nD \"q\\tdir\"\n"
      "D old/y\nM 100644 :1 old\nD other\n\n"
      "commit refs/m\nmark :3\ndata 0\nfrom :2\nD thing\n\n";
  std::string out = filtered<git::ExportFilter>([] { return git::ExportFilter(); }, stream);
  EXPECT_EQ(out,
            "commit refs/m\nmark :2\ndata 0\nfrom :1\n"
            "M 100644 :1 thing/inside.txt\nM 100644 :1 \"q\\tdir/f\"\n"
            "D old/y\nM 100644 :1 old\nD other\n\n"
            "commit refs/m\nmark :3\ndata 0\nfrom :2\nD thing\n\n");
}

TEST(GitStreamTest, ImportFilterNamesKnownParentsByIdAndCollectsCommitMarks) {
  std::string id(40, 'e');
  auto make = [&] { return git::ImportFilter("refs/m", {{1, id}}); };
  std::string stream =
      "blob\nmark :3\ndata 5\nfrom \n"
      "commit refs/m\nmark :4\ncommitter A <a@b> 1 +0000\ndata 10\nmerge :1\n\n"
      "from :1\nM 100644 :3 f\n\n"
      "commit refs/m\nmark :5\ncommitter A <a@b> 1 +0000\ndata 0\nfrom :4\nmerge :1\n"
      "done\n";
  Status s = ok();
  std::string out = filtered<git::ImportFilter>(make, stream, &s);
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(out,
            "blob\nmark :3\ndata 5\nfrom \n"
            "commit refs/m\nmark :4\ncommitter A <a@b> 1 +0000\ndata 10\nmerge :1\n\n"
            "from " +
                id +
                "\nM 100644 :3 f\n\n"
                "commit refs/m\nmark :5\ncommitter A <a@b> 1 +0000\ndata 0\nfrom :4\nmerge " +
                id + "\n");
  auto f = make();
  std::string o;
  ASSERT_TRUE(f.feed(stream, o));
  EXPECT_EQ(f.commitMarks(), (std::vector<uint64_t>{4, 5}));

  for (std::string bad :
       {"commit refs/other\n", "reset refs/other\n", "mark :1\n", "blob\nmark :3\nblob\nmark :3\n",
        "from :9\n", "from refs/x\n", "tag v\n", "feature force\n", "option git --force\n",
        "checkpoint\n", "cat-blob :1\n", "ls \"x\"\n", "get-mark :1\n", "data <<EOF\n",
        "data x\n"}) {
    Status st = ok();
    filtered<git::ImportFilter>(make, bad, &st);
    EXPECT_FALSE(st) << bad;
  }
  Status cut = ok();
  filtered<git::ImportFilter>(make, "blob\nmark :3\ndata 5\nab", &cut);
  EXPECT_FALSE(cut) << "a stream that ends inside a data block";
}

TEST(GitStreamTest, GetMarkAnswersSkipProgressAndMustAllBeThere) {
  std::string a(40, 'a'), b(40, 'b');
  auto ids = git::parseGetMarks("progress 1\n" + a + "\nprogress x\n" + b + "\n", 2);
  ASSERT_TRUE(ids) << ids.error().message;
  EXPECT_EQ(*ids, (std::vector<std::string>{a, b}));
  EXPECT_FALSE(git::parseGetMarks(a + "\n", 2));
  EXPECT_FALSE(git::parseGetMarks(a + "\nnot an id\n", 2));
}

}  // namespace
}  // namespace pefnos
