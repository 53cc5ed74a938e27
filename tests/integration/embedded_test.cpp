// The embedded default: `pefnos up` with its private PostgreSQL, and a master
// that survives its database server going away and coming back.
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <regex>

#include "core/cluster/cluster.h"
#include "tests/support/child.h"
#include "tests/support/http_client.h"
#include "tests/support/testdb.h"

namespace pefnos {
namespace {

using namespace std::chrono;
using test::Child;
using test::run;
using test::waitUntil;

std::optional<pid_t> postmasterPid(const std::string& home) {
  std::ifstream in(home + "/pg/postmaster.pid");
  pid_t pid = 0;
  if (in >> pid) return pid;
  return std::nullopt;
}

// The real uid of a process, from /proc/PID/status ("Uid: real effective ...").
uid_t processUid(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Uid:", 0) == 0) return static_cast<uid_t>(std::stoul(line.substr(4)));
  }
  return static_cast<uid_t>(-1);
}

TEST(Up, DemoServesCommandsAndCtrlCLeavesNoProcessBehind) {
  test::TempDir dir("pefnos-up");
  const std::string home = dir.path() + "/home";
  const std::string bin = test::pefnosBinary();
  pid_t server = 0;
  for (int round = 0; round < 2; ++round) {
    Child up({bin, "up", "--home", home, "--demo", "--workers", "127.0.0.1:0", "--http", "127.0.0.1:0"});
    ASSERT_TRUE(up.waitOutput("pefnos is up", seconds(90))) << up.output();
    // The second run reuses the cluster the first one created.
    EXPECT_EQ(up.output().find("creating a PostgreSQL cluster") != std::string::npos, round == 0)
        << up.output();
    auto pid = postmasterPid(home);
    ASSERT_TRUE(pid.has_value());
    server = *pid;
    // Started by root, the daemon needs root only to start the server as
    // its user: then it becomes that user too, and owns what it writes.
    const uid_t expected = geteuid() == 0 ? getpwnam("postgres")->pw_uid : geteuid();
    EXPECT_EQ(processUid(up.pid()), expected) << up.output();
    for (const char* dir : {"/state", "/work", "/demo", "/local-worker.secret"}) {
      struct stat st {};
      ASSERT_EQ(stat((home + dir).c_str(), &st), 0) << dir;
      EXPECT_EQ(st.st_uid, expected) << dir;
    }

    auto [rc, out] = run({bin, "ctl", "ping", "--wait", "--home", home});
    EXPECT_EQ(rc, 0) << out << up.output();
    EXPECT_NE(out.find("done"), std::string::npos) << out;
    auto [rc2, exported] = run({bin, "config", "export", "--home", home});
    EXPECT_EQ(rc2, 0) << exported;
    EXPECT_NE(exported.find("\"demo\""), std::string::npos) << exported;
    // The demo's git, Bazaar and Subversion repositories are polled: their
    // commits and discovered branches appear.
    const std::string conninfo = cluster::conninfo(cluster::layoutFor(home));
    auto scalar = [&](const std::string& sql) {
      pqxx::connection c(conninfo);
      pqxx::nontransaction tx(c);
      return tx.exec(sql)[0][0].as<std::string>();
    };
    // git: main, feature/hello, the fork's main; bzr: trunk; svn: trunk, branches/hello.
    EXPECT_TRUE(waitUntil([&] { return scalar("SELECT count(*) FROM pefnos.branch_head") == "6"; },
                          seconds(30)))
        << up.output();
    EXPECT_EQ(scalar("SELECT string_agg(vcs || ' ' || n, ', ' ORDER BY vcs) FROM (SELECT r.vcs, "
                     "count(*) AS n FROM pefnos.commit c JOIN pefnos.repository r ON r.id = "
                     "c.network_id GROUP BY r.vcs) AS per_vcs"),
              "bzr 1, git 2, svn 3");
    EXPECT_EQ(scalar("SELECT count(*) FROM pefnos.branch WHERE name IN ('feature/hello', "
                     "'branches/hello') AND active"),
              "2");
    EXPECT_EQ(scalar("SELECT count(*) FROM pefnos.commit WHERE message IN ('Start the Bazaar "
                     "demo', 'Start the Subversion demo')"),
              "2");
    // The local worker builds them: git, bzr and svn sources unpacked and read.
    // The fork is untrusted: its request waits for an untrusted worker.
    if (round == 0) {
      EXPECT_TRUE(waitUntil([&] { return scalar("SELECT count(*) FROM pefnos.build WHERE state = 'succeeded'") == "4"; },
                            seconds(60)))
          << scalar("SELECT coalesce(string_agg(state, ','), 'none') FROM pefnos.build") << up.output();
      EXPECT_EQ(scalar("SELECT count(*) FROM pefnos.log WHERE position('in Bazaar' in convert_from(data, 'UTF8')) > 0"),
                "1");
      EXPECT_EQ(scalar("SELECT count(*) FROM pefnos.log WHERE position('in Subversion' in convert_from(data, 'UTF8')) > 0"),
                "1");
      EXPECT_EQ(scalar("SELECT r.state FROM pefnos.build_request r JOIN pefnos.branch b ON b.id = r.branch_id "
                       "JOIN pefnos.repository p ON p.id = b.repository_id WHERE p.name = 'demo-fork'"),
                "queued");
      // The same, through the demo's HTTP API.
      std::smatch m;
      std::string out = up.output();
      ASSERT_TRUE(std::regex_search(out, m, std::regex("serving HTTP on http://127\\.0\\.0\\.1:(\\d+)/")));
      auto status = test::request(std::stoi(m[1]), "GET", "/api/v1/status");
      EXPECT_EQ(status.status, 200);
      EXPECT_NE(status.body.find("\"succeeded\":4"), std::string::npos) << status.body;
      EXPECT_NE(status.body.find("\"workers\":1"), std::string::npos) << status.body;
      auto page = test::request(std::stoi(m[1]), "GET", "/");
      EXPECT_EQ(page.status, 200);
      EXPECT_NE(page.body.find("<html"), std::string::npos);
      // The Bazaar branch is mirrored into git (5 s after it was polled).
      EXPECT_TRUE(waitUntil([&] { return scalar("SELECT count(*) FROM pefnos.mirror_run WHERE state = 'succeeded'") == "1"; },
                            seconds(60)))
          << scalar("SELECT coalesce(string_agg(state || ' ' || coalesce(error, ''), ','), 'none') FROM pefnos.mirror_run")
          << up.output();
      EXPECT_EQ(scalar("SELECT count(*) || ' ' || bool_and(ok) FROM pefnos.mirror_verify"), "1 true");
      auto [grc, readme] = test::run({"git", "--git-dir=" + home + "/demo/demo-bzr-mirror.git", "show", "trunk:README"});
      EXPECT_EQ(readme, "The pefnos demo branch, in Bazaar.\n");
    }

    EXPECT_EQ(up.stop(SIGINT, seconds(60)), 0) << up.output();
    EXPECT_FALSE(postmasterPid(home).has_value()) << "the server's pid file is still there";
    EXPECT_TRUE(waitUntil([&] { return kill(server, 0) != 0; }, seconds(10)))
        << "PostgreSQL " << server << " is still running";
  }
}

TEST(Up, HomeThatCannotBeWrittenIsAClearError) {
  auto [rc, out] = run({test::pefnosBinary(), "up", "--home", "/etc/passwd/home"});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("cannot create the home /etc/passwd/home"), std::string::npos) << out;
}

TEST(Outage, CommandsInsertedWhileTheServerWasDownRunAfterIt) {
  test::TempDir dir("pefnos-outage");
  const std::string home = dir.path();
  const std::string bin = test::pefnosBinary();
  auto start = run({bin, "cluster", "start", "--home", home, "--fast"});
  ASSERT_EQ(start.first, 0) << start.second;
  ASSERT_EQ(run({bin, "db", "migrate", "--home", home}).first, 0);
  const std::string conninfo = cluster::conninfo(cluster::layoutFor(home));

  Child master({bin, "master", "--workers", "none", "--home", home, "--name", "survivor"});
  auto ping = [&] {
    pqxx::connection c(conninfo);
    pqxx::work tx(c);
    tx.exec("SELECT pefnos.ping()");
    tx.commit();
  };
  auto notDone = [&] {
    pqxx::connection c(conninfo);
    pqxx::read_transaction tx(c);
    return tx.exec("SELECT count(*) FROM pefnos.command WHERE state <> 'done'")[0][0].as<int>();
  };
  ping();
  ASSERT_TRUE(waitUntil([&] { return notDone() == 0; }, seconds(20))) << master.output();

  for (int outage = 0; outage < 2; ++outage) {
    ASSERT_EQ(run({bin, "cluster", "stop", "--home", home}).first, 0);
    ASSERT_TRUE(master.waitOutput("lost the", seconds(20))) << master.output();
    ASSERT_EQ(run({bin, "cluster", "start", "--home", home, "--fast"}).first, 0);
    // Inserted at once, most likely before the master has reconnected: the
    // NOTIFYs go nowhere, and the rows must be found by catching up.
    for (int i = 0; i < 20; ++i) ping();
    EXPECT_TRUE(waitUntil([&] { return notDone() == 0; }, seconds(30))) << master.output();
    EXPECT_FALSE(master.exited().has_value()) << master.output();
  }
  {
    pqxx::connection c(conninfo);
    pqxx::read_transaction tx(c);
    EXPECT_EQ(tx.exec("SELECT count(*) FROM pefnos.command WHERE state = 'done'")[0][0].as<int>(), 41);
    // Each outage is recorded where a GUI user looks.
    EXPECT_EQ(tx.exec("SELECT count(*) FROM pefnos.event WHERE source = 'db' AND "
                      "message LIKE 'lost the database connection for % s; reconnected%'")[0][0]
                  .as<int>(),
              2);
  }
  EXPECT_EQ(master.stop(SIGTERM, seconds(20)), 0) << master.output();
  run({bin, "cluster", "remove", "--home", home});
}

}  // namespace
}  // namespace pefnos
