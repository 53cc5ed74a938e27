// The scheduler with each VCS plugin, as a user meets it: a real `pefnos
// master`, real upstreams made by the VCS's own tools (tests/support/forge.h),
// rows and commands. Written once, built once per plugin (PEFNOS_TEST_VCS).
#include <gtest/gtest.h>

#include "tests/support/child.h"
#include "tests/support/forge.h"
#include "tests/support/testdb.h"

#ifndef PEFNOS_TEST_VCS
#error "compile with PEFNOS_TEST_VCS naming the plugin"
#endif

namespace pefnos {
namespace {

using namespace std::chrono;
using test::Child;
using test::waitUntil;

class SchedulerVcs : public ::testing::Test {
 protected:
  void SetUp() override {
    tdb_.scalar("INSERT INTO pefnos.project (id, name) VALUES (1, 'p')");
    forge_ = test::Forge::make(PEFNOS_TEST_VCS, dir_.path() + "/up");
  }
  std::string q(const std::string& s) { return tdb_.conn().quote(s); }
  int addRepository(const std::string& name, const std::string& url) {
    return std::stoi(tdb_.scalar(
        "INSERT INTO pefnos.repository (project_id, name, vcs, url, poll_interval) VALUES (1, " +
        q(name) + ", " + q(PEFNOS_TEST_VCS) + ", " + q(url) + ", 3600) RETURNING id"));
  }
  int addBranch(int repo, const std::string& name, bool pattern = false) {
    return std::stoi(tdb_.scalar("INSERT INTO pefnos.branch (repository_id, name, pattern) VALUES (" +
                                 std::to_string(repo) + ", " + q(name) + ", " +
                                 (pattern ? "true" : "false") + ") RETURNING id"));
  }
  int addBuilder(const std::string& name, int branch) {
    int b = std::stoi(tdb_.scalar("INSERT INTO pefnos.builder (project_id, name) VALUES (1, " +
                                  q(name) + ") RETURNING id"));
    tdb_.scalar("INSERT INTO pefnos.builder_branch (builder_id, branch_id) VALUES (" +
                std::to_string(b) + ", " + std::to_string(branch) + ")");
    return b;
  }
  void startMaster() {
    master_ = std::make_unique<Child>(std::vector<std::string>{
        test::pefnosBinary(), "master", "--workers", "none", "--db", tdb_.conninfo(), "--name", "m", "--state-dir",
        dir_.path() + "/state"});
  }
  // poll_now through the command table; returns the command's error or result.
  std::string pollNow(int repo, bool expect_ok = true) {
    std::string id = tdb_.scalar("SELECT pefnos.poll_now(" + std::to_string(repo) + ")");
    EXPECT_TRUE(waitUntil([&] {
      auto s = tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id);
      return s == "done" || s == "failed";
    }, seconds(60))) << master_->output();
    std::string outcome =
        tdb_.scalar("SELECT coalesce(error, result::text) FROM pefnos.command WHERE id = " + id);
    EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id) == "done", expect_ok)
        << outcome << master_->output();
    return outcome;
  }
  std::string commitField(const std::string& field, const std::string& revision) {
    return tdb_.scalar("SELECT " + field + " FROM pefnos.commit WHERE revision = " + q(revision));
  }
  std::string count(const std::string& from_where) {
    return tdb_.scalar("SELECT count(*) FROM " + from_where);
  }

  test::TestDatabase tdb_;
  test::TempDir dir_{"pefnos-schedvcs"};
  std::unique_ptr<test::Forge> forge_;
  std::unique_ptr<Child> master_;
};

TEST_F(SchedulerVcs, CommitsHeadsAndBuildRequestsAreRecordedAndFollowNewCommits) {
  const std::string main = forge_->mainBranch();
  forge_->commit(main, "a", "second");
  std::string head = forge_->commit(main, "b", "third\n\nwith a body");
  int repo = addRepository("r", forge_->url());
  int main_row = addBranch(repo, main);
  int builder = addBuilder("build", main_row);
  startMaster();

  pollNow(repo);
  EXPECT_EQ(tdb_.scalar("SELECT revision FROM pefnos.branch_head WHERE branch_id = " +
                        std::to_string(main_row)),
            head);
  EXPECT_EQ(commitField("message", head), "third\n\nwith a body");
  EXPECT_EQ(commitField("array_to_string(files, ',')", head), "b");
  EXPECT_EQ(commitField("author", head), forge_->author());
  EXPECT_EQ(commitField("author_date IS NOT NULL", head), "t");
  EXPECT_EQ(tdb_.scalar("SELECT builder_id || ' ' || revision || ' ' || reason || ' ' || "
                        "(commit_id IS NOT NULL) FROM pefnos.build_request"),
            std::to_string(builder) + " " + head + " poll true");
  std::string commits = count("pefnos.commit");
  EXPECT_GE(std::stoi(commits), 3) << "the first, second and third commits";

  // Nothing new: nothing recorded twice.
  pollNow(repo);
  EXPECT_EQ(count("pefnos.build_request"), "1");
  EXPECT_EQ(count("pefnos.commit"), commits);

  forge_->commit(main, "d", "fourth");
  std::string newest = forge_->commit(main, "e", "fifth");
  pollNow(repo);
  EXPECT_EQ(std::stoi(count("pefnos.commit")), std::stoi(commits) + 2);
  EXPECT_EQ(count("pefnos.build_request"), "2");
  EXPECT_EQ(tdb_.scalar("SELECT revision FROM pefnos.build_request ORDER BY id DESC LIMIT 1"), newest);
  EXPECT_EQ(commitField("cardinality(parents)", newest), "1");
  std::string parent = commitField("parents[1]", newest);
  EXPECT_EQ(commitField("message", parent), "fourth");
  EXPECT_EQ(tdb_.scalar("SELECT last_error IS NULL AND last_success_at IS NOT NULL "
                        "FROM pefnos.repository_poll"),
            "t");
}

TEST_F(SchedulerVcs, APatternDiscoversNewBranches) {
  const std::string main = forge_->mainBranch();
  int repo = addRepository("r", forge_->url());
  addBranch(repo, main);
  addBranch(repo, forge_->sidePattern(), true);
  startMaster();
  pollNow(repo);
  EXPECT_EQ(count("pefnos.branch WHERE origin_id IS NOT NULL"), "0");

  std::string one = forge_->sideBranch("one");
  forge_->branch(one, main);
  std::string head = forge_->commit(one, "x", "on one");
  pollNow(repo);
  EXPECT_EQ(tdb_.scalar("SELECT b.name || ' ' || h.revision FROM pefnos.branch b "
                        "JOIN pefnos.branch_head h ON h.branch_id = b.id WHERE b.origin_id IS NOT NULL"),
            one + " " + head);
  EXPECT_EQ(commitField("message", head), "on one");
}

TEST_F(SchedulerVcs, AnUnreachableUpstreamIsRecordedAndOthersGoOn) {
  std::string gone = dir_.path() + "/does-not-exist";
  int bad = addRepository("gone", (forge_->vcs() == "svn" ? "file://" : "") + gone);
  addBranch(bad, forge_->mainBranch());
  int good = addRepository("good", forge_->url());
  addBranch(good, forge_->mainBranch());
  startMaster();

  std::string error = pollNow(bad, false);
  EXPECT_NE(error.find("does-not-exist"), std::string::npos) << error;
  EXPECT_EQ(tdb_.scalar("SELECT last_error IS NOT NULL AND last_success_at IS NULL "
                        "FROM pefnos.repository_poll WHERE repository_id = " + std::to_string(bad)),
            "t");
  pollNow(good);
  EXPECT_EQ(count("pefnos.branch_head"), "1");
}

}  // namespace
}  // namespace pefnos
