// The master as a user meets it: the real `pefnos` binary against a real
// PostgreSQL, driven through rows, NOTIFY and the CLI.
#include <gtest/gtest.h>
#include <signal.h>

#include "tests/support/child.h"
#include "tests/support/testdb.h"

namespace pefnos {
namespace {

using namespace std::chrono;
using test::Child;
using test::waitUntil;

class MasterTest : public ::testing::Test {
 protected:
  std::unique_ptr<Child> startMaster(const std::string& name = "m1") {
    return std::make_unique<Child>(std::vector<std::string>{
        test::pefnosBinary(), "master", "--workers", "none", "--db", tdb_.conninfo(), "--name", name});
  }
  std::string state(const std::string& id) {
    return tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id);
  }
  bool allDone() {
    return waitUntil([&] { return tdb_.scalar("SELECT count(*) FROM pefnos.command WHERE state <> 'done'") == "0"; },
                     seconds(20));
  }

  test::TestDatabase tdb_;
};

TEST_F(MasterTest, PingCommandIsAnswered) {
  auto master = startMaster();
  std::string id = tdb_.scalar("SELECT pefnos.ping()");
  ASSERT_TRUE(waitUntil([&] { return state(id) == "done"; }, seconds(20))) << master->output();
  EXPECT_EQ(tdb_.scalar("SELECT result->>'master' FROM pefnos.command WHERE id = " + id), "m1");
  EXPECT_EQ(tdb_.scalar("SELECT claimed_by FROM pefnos.command WHERE id = " + id), "m1");
  EXPECT_EQ(master->stop(SIGTERM, seconds(20)), 0) << master->output();
}

TEST_F(MasterTest, CtlPingWaitShowsTheRoundTrip) {
  auto master = startMaster();
  auto [rc, out] = test::run({test::pefnosBinary(), "ctl", "ping", "--wait", "--db", tdb_.conninfo()});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("(ping) done in"), std::string::npos) << out;
  EXPECT_NE(out.find("\"pong\": true"), std::string::npos) << out;
}

TEST_F(MasterTest, UnknownCommandKindIsMarkedFailedWithTheReason) {
  auto master = startMaster();
  std::string id = tdb_.scalar("SELECT pefnos.command('frobnicate')");
  ASSERT_TRUE(waitUntil([&] { return state(id) == "failed"; }, seconds(20))) << master->output();
  std::string error = tdb_.scalar("SELECT error FROM pefnos.command WHERE id = " + id);
  EXPECT_NE(error.find("unknown command kind 'frobnicate'"), std::string::npos) << error;
  EXPECT_NE(error.find("ping"), std::string::npos) << error;
  // The master goes on serving.
  std::string ping = tdb_.scalar("SELECT pefnos.ping()");
  EXPECT_TRUE(waitUntil([&] { return state(ping) == "done"; }, seconds(20)));
}

TEST_F(MasterTest, CommandsInsertedWhileNoMasterRanRunAtStart) {
  for (int i = 0; i < 5; ++i) tdb_.scalar("SELECT pefnos.ping()");
  auto master = startMaster();
  EXPECT_TRUE(allDone()) << master->output();
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.command WHERE state = 'done'"), "5");
}

TEST_F(MasterTest, CommandsLeftRunningByAnEarlierLifeAreRunAgain) {
  tdb_.scalar("INSERT INTO pefnos.command (kind, state, claimed_by, lease_until, attempts) "
              "VALUES ('ping', 'running', 'm1', now() + interval '1 hour', 1)");
  auto master = startMaster("m1");
  EXPECT_TRUE(allDone()) << master->output();
  EXPECT_EQ(tdb_.scalar("SELECT attempts FROM pefnos.command"), "2");
}

TEST_F(MasterTest, ExpiredLeaseOfAnotherMasterIsTakenOver) {
  tdb_.scalar("INSERT INTO pefnos.command (kind, state, claimed_by, lease_until, attempts) "
              "VALUES ('ping', 'running', 'dead-master', now() - interval '1 second', 1)");
  auto master = startMaster("m2");
  EXPECT_TRUE(allDone()) << master->output();
  EXPECT_EQ(tdb_.scalar("SELECT claimed_by FROM pefnos.command"), "m2");
}

TEST_F(MasterTest, ReloadCommandReportsConfigurationChanges) {
  auto master = startMaster();
  std::string id = tdb_.scalar("SELECT pefnos.reload()");
  ASSERT_TRUE(waitUntil([&] { return state(id) == "done"; }, seconds(20))) << master->output();
  EXPECT_EQ(tdb_.scalar("SELECT result->>'changed' FROM pefnos.command WHERE id = " + id), "0");
}

TEST_F(MasterTest, RegistersItselfAndStopsCleanlyOnSigint) {
  auto master = startMaster("named");
  ASSERT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT count(*) FROM pefnos.master WHERE name = 'named'") == "1"; },
                        seconds(20)));
  EXPECT_EQ(master->stop(SIGINT, seconds(20)), 0) << master->output();
  EXPECT_NE(master->output().find("stopped"), std::string::npos);
}

TEST_F(MasterTest, NewerSchemaIsRefusedWithAClearError) {
  tdb_.scalar("INSERT INTO pefnos.schema_migration (version, name, checksum) VALUES (999, 'future', 'x')");
  auto master = startMaster();
  ASSERT_TRUE(waitUntil([&] { return master->exited().has_value(); }, seconds(20)));
  EXPECT_EQ(*master->exited(), 1);
  EXPECT_NE(master->output().find("newer than this pefnos binary"), std::string::npos) << master->output();
}

TEST(MasterUnreachable, KeepsRetryingAndSaysSo) {
  Child master({test::pefnosBinary(), "master", "--db", "host=/nonexistent/pefnos port=1 dbname=x"});
  EXPECT_TRUE(master.waitOutput("database unreachable", seconds(10))) << master.output();
  EXPECT_FALSE(master.exited().has_value()) << master.output();
  EXPECT_EQ(master.stop(SIGTERM, seconds(20)), 0) << master.output();
}

TEST(Cli, DbUrlOfAHomePointsAtItsSocket) {
  auto [rc, out] = test::run({test::pefnosBinary(), "db", "url", "--home", "/srv/some home"});
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(out, "host='/srv/some home/run' port=5432 dbname=pefnos user=pefnos\n");
}

TEST(Cli, DbStatusReportsTheVersion) {
  test::TestDatabase tdb;
  auto [rc, out] = test::run({test::pefnosBinary(), "db", "status", "--db", tdb.conninfo()});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("up to date"), std::string::npos) << out;
}

TEST(Cli, AddressesThatAreNotHostAndPortAreRefusedBeforeAnythingStarts) {
  for (std::vector<std::string> cmd : {std::vector<std::string>{"master", "--workers", "127.0.0.1:99999"},
                                       {"master", "--http", "127.0.0.1:x"}, {"master", "--http", "7421"},
                                       {"worker", "--master", "localhost", "--name", "w", "--secret-file", "/x"}}) {
    cmd.insert(cmd.begin(), test::pefnosBinary());
    cmd.insert(cmd.end(), {"--db", "host=/nonexistent port=1 dbname=x"});
    if (cmd[1] == "worker") cmd.resize(cmd.size() - 2);
    auto [rc, out] = test::run(cmd);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find("is not HOST:PORT"), std::string::npos) << out;
  }
}

TEST(Cli, HelpIsOfferedOnEveryCommand) {
  for (std::vector<std::string> cmd : {std::vector<std::string>{"--help"}, {"up", "--help"},
                                       {"master", "--help"}, {"db", "migrate", "--help"},
                                       {"config", "import", "--help"}, {"ctl", "ping", "--help"},
                                       {"cluster", "start", "--help"}, {"worker", "--help"},
                                       {"ctl", "force-build", "--help"}, {"ctl", "stop", "--help"},
                                       {"ctl", "worker-secret", "--help"}, {"plugins", "list", "--help"},
                                       {"ctl", "status", "--help"}, {"ctl", "token", "create", "--help"}}) {
    cmd.insert(cmd.begin(), test::pefnosBinary());
    auto [rc, out] = test::run(cmd);
    EXPECT_EQ(rc, 0) << cmd[1];
    EXPECT_NE(out.find("Usage"), std::string::npos) << out;
  }
}

}  // namespace
}  // namespace pefnos
