// The scheduler with the vcs-git plugin, as a user meets it: a real `pefnos
// master`, real git repositories made by the test, rows and commands.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "tests/support/child.h"
#include "tests/support/testdb.h"

namespace pefnos {
namespace {

using namespace std::chrono;
using test::Child;
using test::run;
using test::waitUntil;

// Runs git with argv and returns its trimmed stdout; fails the test otherwise.
std::string git(std::vector<std::string> args) {
  args.insert(args.begin(), {"git", "-c", "user.name=Test Author", "-c", "user.email=t@example.org",
                             "-c", "init.defaultBranch=main", "-c", "advice.detachedHead=false"});
  auto [rc, out] = run(args);
  EXPECT_EQ(rc, 0) << out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// An upstream bare repository and a work tree that pushes to it.
class Upstream {
 public:
  Upstream(const std::string& dir, const std::string& name) : bare_(dir + "/" + name + ".git"), work_(dir + "/" + name) {
    git({"init", "-q", "--bare", bare_});
    git({"init", "-q", work_});
    git({"-C", work_, "remote", "add", "origin", bare_});
  }
  // Clones `parent`'s upstream as a fork, with its history.
  Upstream(const std::string& dir, const std::string& name, const Upstream& parent)
      : bare_(dir + "/" + name + ".git"), work_(dir + "/" + name) {
    git({"clone", "-q", "--bare", parent.bare_, bare_});
    git({"clone", "-q", bare_, work_});
  }
  std::string commit(const std::string& file, const std::string& message) {
    std::ofstream(work_ + "/" + file) << message << "\n";
    git({"-C", work_, "add", "--", file});
    git({"-C", work_, "commit", "-q", "-m", message});
    return git({"-C", work_, "rev-parse", "HEAD"});
  }
  void push(const std::string& branch, bool force = false) {
    std::vector<std::string> a = {"-C", work_, "push", "-q"};
    if (force) a.push_back("--force");
    a.insert(a.end(), {"origin", "HEAD:refs/heads/" + branch});
    git(a);
  }
  const std::string& url() const { return bare_; }
  const std::string& work() const { return work_; }

 private:
  std::string bare_, work_;
};

class SchedulerGit : public ::testing::Test {
 protected:
  void SetUp() override {
    tdb_.scalar("INSERT INTO pefnos.project (id, name) VALUES (1, 'p')");
  }
  int addRepository(const std::string& name, const std::string& url, std::optional<int> parent = {}) {
    return std::stoi(tdb_.scalar(
        "INSERT INTO pefnos.repository (project_id, name, vcs, url, poll_interval, parent_id) "
        "VALUES (1, " + tdb_.conn().quote(name) + ", 'git', " + tdb_.conn().quote(url) +
        ", 3600, " + (parent ? std::to_string(*parent) : "NULL") + ") RETURNING id"));
  }
  int addBranch(int repo, const std::string& name, bool pattern = false) {
    return std::stoi(tdb_.scalar("INSERT INTO pefnos.branch (repository_id, name, pattern) VALUES (" +
                                 std::to_string(repo) + ", " + tdb_.conn().quote(name) + ", " +
                                 (pattern ? "true" : "false") + ") RETURNING id"));
  }
  int addBuilder(const std::string& name, const std::vector<int>& branches) {
    int b = std::stoi(tdb_.scalar("INSERT INTO pefnos.builder (project_id, name) VALUES (1, " +
                                  tdb_.conn().quote(name) + ") RETURNING id"));
    for (int br : branches) {
      tdb_.scalar("INSERT INTO pefnos.builder_branch (builder_id, branch_id) VALUES (" +
                  std::to_string(b) + ", " + std::to_string(br) + ")");
    }
    return b;
  }
  void startMaster() {
    master_ = std::make_unique<Child>(std::vector<std::string>{
        test::pefnosBinary(), "master", "--workers", "none", "--db", tdb_.conninfo(), "--name", "m",
        "--state-dir", dir_.path() + "/state"});
  }
  // poll_now through the command table; returns the command's final row.
  std::string pollNow(int repo, bool expect_ok = true, const std::string& fn = "poll_now") {
    std::string id = tdb_.scalar("SELECT pefnos." + fn + "(" + std::to_string(repo) + ")");
    EXPECT_TRUE(waitUntil([&] {
      auto s = tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id);
      return s == "done" || s == "failed";
    }, seconds(30))) << master_->output();
    std::string state = tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id);
    EXPECT_EQ(state == "done", expect_ok)
        << tdb_.scalar("SELECT coalesce(error, result::text) FROM pefnos.command WHERE id = " + id)
        << master_->output();
    return tdb_.scalar("SELECT coalesce(error, result::text) FROM pefnos.command WHERE id = " + id);
  }
  std::string count(const std::string& from_where) {
    return tdb_.scalar("SELECT count(*) FROM " + from_where);
  }

  test::TestDatabase tdb_;
  test::TempDir dir_{"pefnos-sched"};
  std::unique_ptr<Child> master_;
};

TEST_F(SchedulerGit, NewCommitsBecomeRowsHeadsAndBuildRequests) {
  Upstream up(dir_.path(), "up");
  up.commit("a", "first");
  up.commit("b", "second");
  std::string head = up.commit("c", "third\n\nwith a body");
  up.push("main");
  int repo = addRepository("r", up.url());
  int main = addBranch(repo, "main");
  int builder = addBuilder("build", {main});
  startMaster();

  pollNow(repo);
  EXPECT_EQ(count("pefnos.commit"), "3");
  EXPECT_EQ(tdb_.scalar("SELECT revision FROM pefnos.branch_head WHERE branch_id = " + std::to_string(main)), head);
  EXPECT_EQ(tdb_.scalar("SELECT message FROM pefnos.commit WHERE revision = '" + head + "'"),
            "third\n\nwith a body");
  EXPECT_EQ(tdb_.scalar("SELECT array_to_string(files, ',') FROM pefnos.commit WHERE revision = '" + head + "'"), "c");
  EXPECT_EQ(tdb_.scalar("SELECT author FROM pefnos.commit WHERE revision = '" + head + "'"),
            "Test Author <t@example.org>");
  EXPECT_EQ(tdb_.scalar("SELECT builder_id || ' ' || revision || ' ' || reason || ' ' || (commit_id IS NOT NULL) "
                        "FROM pefnos.build_request"),
            std::to_string(builder) + " " + head + " poll true");

  // Nothing new: nothing recorded twice.
  pollNow(repo);
  EXPECT_EQ(count("pefnos.build_request"), "1");

  up.commit("d", "fourth");
  std::string newest = up.commit("e", "fifth");
  up.push("main");
  pollNow(repo, true, "notify_push");
  EXPECT_EQ(count("pefnos.commit"), "5");
  EXPECT_EQ(count("pefnos.build_request"), "2");
  EXPECT_EQ(tdb_.scalar("SELECT revision FROM pefnos.build_request ORDER BY id DESC LIMIT 1"), newest);
  EXPECT_EQ(tdb_.scalar("SELECT array_to_string(parents, ',') FROM pefnos.commit WHERE revision = '" + newest + "'"),
            git({"-C", up.work(), "rev-parse", "HEAD~1"}));
  EXPECT_EQ(tdb_.scalar("SELECT last_error IS NULL AND last_success_at IS NOT NULL FROM pefnos.repository_poll"), "t");
}

TEST_F(SchedulerGit, PatternBranchesAppearAndVanishButAreNeverDeleted) {
  Upstream up(dir_.path(), "up");
  up.commit("a", "base");
  up.push("main");
  up.push("feature/one");
  up.commit("b", "two");
  up.push("feature/two");
  up.push("quote\"d'name");
  int repo = addRepository("r", up.url());
  int pattern = addBranch(repo, "feature/*", true);
  int everything = addBranch(repo, "quote*", true);
  addBranch(repo, "nothing/*", true);  // matches nothing: no rows, no error
  addBuilder("features", {pattern, everything});
  startMaster();

  pollNow(repo);
  EXPECT_EQ(count("pefnos.branch WHERE origin_id = " + std::to_string(pattern) + " AND active"), "2");
  EXPECT_EQ(count("pefnos.branch WHERE name = 'quote\"d''name' AND active"), "1");
  EXPECT_EQ(count("pefnos.build_request"), "3");
  EXPECT_EQ(count("pefnos.branch_head"), "3");

  git({"--git-dir", up.url(), "update-ref", "-d", "refs/heads/feature/one"});
  pollNow(repo);
  EXPECT_EQ(tdb_.scalar("SELECT active FROM pefnos.branch WHERE name = 'feature/one'"), "f");
  EXPECT_EQ(count("pefnos.branch WHERE name = 'feature/one'"), "1");

  up.push("feature/one");  // back again
  pollNow(repo);
  EXPECT_EQ(tdb_.scalar("SELECT active FROM pefnos.branch WHERE name = 'feature/one'"), "t");
}

TEST_F(SchedulerGit, ForksShareTheProxyAndCommitsAreRecordedOnce) {
  Upstream parent_up(dir_.path(), "parent");
  for (int i = 0; i < 30; ++i) parent_up.commit("f" + std::to_string(i), "parent " + std::to_string(i));
  parent_up.push("main");
  Upstream fork_up(dir_.path(), "fork", parent_up);
  fork_up.commit("fork-only", "fork's own");
  fork_up.push("main");

  int parent = addRepository("parent", parent_up.url());
  int fork = addRepository("fork", fork_up.url(), parent);
  addBranch(parent, "main");
  addBranch(fork, "main");
  startMaster();
  pollNow(parent);
  pollNow(fork);

  // One row per revision of the network, shared by the fork.
  EXPECT_EQ(count("pefnos.commit"), "31");
  EXPECT_EQ(count("pefnos.commit WHERE network_id = " + std::to_string(parent)), "31");
  // One proxy for the network, holding each object once: nothing fetched twice.
  const std::string proxy = dir_.path() + "/state/proxy/git/" + std::to_string(parent);
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/state/proxy/git/" + std::to_string(fork)));
  std::set<std::string> upstream_objects;
  for (const auto& u : {parent_up.url(), fork_up.url()}) {
    std::istringstream lines(git({"--git-dir", u, "rev-list", "--objects", "--all"}));
    for (std::string line; std::getline(lines, line);) upstream_objects.insert(line.substr(0, 40));
  }
  std::istringstream counts(git({"--git-dir", proxy, "count-objects", "-v"}));
  long stored = 0;
  for (std::string key, value; counts >> key >> value;) {
    if (key == "count:" || key == "in-pack:") stored += std::stol(value);
  }
  EXPECT_EQ(stored, static_cast<long>(upstream_objects.size()));
  EXPECT_EQ(git({"--git-dir", proxy, "rev-parse", "refs/pefnos/" + std::to_string(fork) + "/main"}),
            git({"-C", fork_up.work(), "rev-parse", "HEAD"}));
  auto [fsck_rc, fsck] = run({"git", "--git-dir", proxy, "fsck", "--no-progress"});
  EXPECT_EQ(fsck_rc, 0) << fsck;

  // The fork goes: its refs leave the proxy, the parent's history stays whole.
  tdb_.scalar("UPDATE pefnos.repository SET active = false WHERE id = " + std::to_string(fork));
  const std::string fork_ref = "refs/pefnos/" + std::to_string(fork) + "/main";
  EXPECT_TRUE(waitUntil([&] {
    return run({"git", "--git-dir", proxy, "rev-parse", "--verify", "--quiet", fork_ref}).first != 0;
  }, seconds(20))) << master_->output();
  EXPECT_EQ(git({"--git-dir", proxy, "rev-parse", "refs/pefnos/" + std::to_string(parent) + "/main"}),
            git({"--git-dir", parent_up.url(), "rev-parse", "main"}));
  auto [fsck2_rc, fsck2] = run({"git", "--git-dir", proxy, "fsck", "--no-progress"});
  EXPECT_EQ(fsck2_rc, 0) << fsck2;
  pollNow(parent);
}

TEST_F(SchedulerGit, ForcePushMovesTheHeadBackAndKeepsHistoryRows) {
  Upstream up(dir_.path(), "up");
  std::string first = up.commit("a", "one");
  up.commit("b", "two");
  up.push("main");
  int repo = addRepository("r", up.url());
  int main = addBranch(repo, "main");
  addBuilder("b", {main});
  startMaster();
  pollNow(repo);

  git({"-C", up.work(), "reset", "-q", "--hard", first});
  up.push("main", true);
  pollNow(repo);
  EXPECT_EQ(tdb_.scalar("SELECT revision FROM pefnos.branch_head"), first);
  EXPECT_EQ(tdb_.scalar("SELECT commit_id IS NOT NULL FROM pefnos.branch_head"), "t");
  EXPECT_EQ(count("pefnos.commit"), "2");
  EXPECT_EQ(count("pefnos.build_request"), "2");

  std::string rewritten = up.commit("c", "rewritten");
  up.push("main", true);
  pollNow(repo);
  EXPECT_EQ(tdb_.scalar("SELECT revision FROM pefnos.branch_head"), rewritten);
  EXPECT_EQ(count("pefnos.commit"), "3");
}

TEST_F(SchedulerGit, UnreachableUpstreamIsRecordedAndOthersGoOn) {
  Upstream up(dir_.path(), "up");
  up.commit("a", "one");
  up.push("main");
  int bad = addRepository("gone", dir_.path() + "/does-not-exist.git");
  addBranch(bad, "main");
  int good = addRepository("good", up.url());
  addBranch(good, "main");
  startMaster();

  std::string error = pollNow(bad, false);
  EXPECT_NE(error.find("does-not-exist.git"), std::string::npos) << error;
  EXPECT_EQ(tdb_.scalar("SELECT last_error IS NOT NULL AND last_poll_at IS NOT NULL AND last_success_at IS NULL "
                        "FROM pefnos.repository_poll WHERE repository_id = " + std::to_string(bad)), "t");
  EXPECT_EQ(count("pefnos.event WHERE source = 'scheduler' AND level = 'error'"), "1");
  pollNow(good);
  EXPECT_EQ(count("pefnos.branch_head"), "1");

  // Fixing the row takes effect without a restart.
  tdb_.scalar("UPDATE pefnos.repository SET url = " + tdb_.conn().quote(up.url()) +
              " WHERE id = " + std::to_string(bad));
  EXPECT_TRUE(waitUntil([&] {
    std::string id = tdb_.scalar("SELECT pefnos.poll_now(" + std::to_string(bad) + ")");
    waitUntil([&] { return tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id) != "queued" &&
                           tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id) != "running"; },
              seconds(10));
    return tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id) == "done";
  }, seconds(20))) << master_->output();
  EXPECT_EQ(count("pefnos.branch_head"), "2");
  EXPECT_EQ(tdb_.scalar("SELECT last_error IS NULL FROM pefnos.repository_poll WHERE repository_id = " +
                        std::to_string(bad)), "t");
}

TEST_F(SchedulerGit, UnknownVcsIsAClearErrorOnTheRow) {
  int repo = std::stoi(tdb_.scalar("INSERT INTO pefnos.repository (project_id, name, vcs, url) "
                                   "VALUES (1, 'hg', 'mercurial', '/x') RETURNING id"));
  startMaster();
  std::string error = pollNow(repo, false);
  EXPECT_NE(error.find("no VCS plugin named 'mercurial'"), std::string::npos) << error;
  EXPECT_NE(tdb_.scalar("SELECT last_error FROM pefnos.repository_poll").find("mercurial"), std::string::npos);
}

TEST_F(SchedulerGit, ForkCycleIsRefusedByTheDatabase) {
  int a = addRepository("a", "/a");
  int b = addRepository("b", "/b", a);
  EXPECT_THROW(tdb_.scalar("UPDATE pefnos.repository SET parent_id = " + std::to_string(b) +
                           " WHERE id = " + std::to_string(a)),
               pqxx::sql_error);
}

TEST_F(SchedulerGit, CtlPollNowWaitsForTheReport) {
  Upstream up(dir_.path(), "up");
  up.commit("a", "one");
  up.push("main");
  int repo = addRepository("r", up.url());
  addBranch(repo, "main");
  startMaster();
  auto [rc, out] = run({test::pefnosBinary(), "ctl", "poll-now", std::to_string(repo), "--wait",
                        "--db", tdb_.conninfo()});
  EXPECT_EQ(rc, 0) << out << master_->output();
  EXPECT_NE(out.find("\"commits\": 1"), std::string::npos) << out;
}

TEST_F(SchedulerGit, PluginsListShowsGitLoaded) {
  auto [rc, out] = run({test::pefnosBinary(), "plugins", "list", "--db", tdb_.conninfo()});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("loaded   vcs  git"), std::string::npos) << out;
}

}  // namespace
}  // namespace pefnos
