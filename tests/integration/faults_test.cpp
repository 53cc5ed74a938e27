// Faults as an operator meets them: a master killed with -9 at random points
// and started again, a database server restarted under load, workers killed
// mid-build and mid-source-transfer, a step that outruns the database, and
// two masters on one database, one of which dies. Real `pefnos master` and
// `pefnos worker` processes, a real git upstream, and after each fault the
// invariants checked by SQL against what the rows and the repositories say.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include <pqxx/pqxx>

#include "core/cluster/cluster.h"
#include "tests/support/child.h"
#include "tests/support/forge.h"
#include "tests/support/testdb.h"

namespace pefnos {
namespace {

using namespace std::chrono;
using test::Child;
using test::waitUntil;
namespace fs = std::filesystem;

// Queries against one database by its connection string (the shared test
// cluster's or a private one's); a fresh connection after the server went away.
class Sql {
 public:
  explicit Sql(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  // Retried on a connection lost to a server restart (for up to 20 s).
  std::string operator()(const std::string& sql) {
    for (int attempt = 0;; ++attempt) {
      try {
        if (!conn_ || !conn_->is_open()) conn_ = std::make_unique<pqxx::connection>(conninfo_);
        pqxx::work tx(*conn_);
        auto r = tx.exec(sql);
        tx.commit();
        if (r.empty() || r[0].empty() || r[0][0].is_null()) return "";
        return r[0][0].as<std::string>();
      } catch (const pqxx::broken_connection&) {
        conn_.reset();
        if (attempt >= 100) throw;
        std::this_thread::sleep_for(milliseconds(200));
      }
    }
  }
  // A string literal (standard_conforming_strings is on).
  static std::string quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
    return out + "'";
  }
  const std::string& conninfo() const { return conninfo_; }

 private:
  std::string conninfo_;
  std::unique_ptr<pqxx::connection> conn_;
};

// kB from a line of /proc/PID/status ("VmHWM:   123456 kB"), or -1.
long statusKb(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  }
  return -1;
}

// A `pefnos master` that can be killed and started again under its name,
// port and state directory.
struct MasterProcess {
  std::string conninfo_or_home, name, state_dir;
  bool home = false;
  int heartbeat = 10;
  int port = 0;
  std::unique_ptr<Child> child;

  void start() {
    std::vector<std::string> argv{test::pefnosBinary(), "master", home ? "--home" : "--db", conninfo_or_home,
                                  "--name", name, "--state-dir", state_dir, "--workers",
                                  "127.0.0.1:" + std::to_string(port), "--heartbeat", std::to_string(heartbeat)};
    child = std::make_unique<Child>(argv);
  }
  // Serving: what it held before is given back and it listens for workers.
  void waitServing() {
    ASSERT_TRUE(child->waitOutput("listening for workers on 127.0.0.1:", seconds(30))) << child->output();
    std::smatch m;
    std::string out = child->output();
    ASSERT_TRUE(std::regex_search(out, m, std::regex("listening for workers on 127\\.0\\.0\\.1:(\\d+)")));
    port = std::stoi(m[1]);
  }
  void kill9() {
    if (child) child->stop(SIGKILL, seconds(10));
  }
  std::string output() const { return child ? child->output() : std::string("(no master)"); }
};

class Faults : public ::testing::Test {
 protected:
  void SetUp() override {
    sql_ = std::make_unique<Sql>(tdb_.conninfo());
    forge_ = test::Forge::make("git", dir_.path() + "/up");
  }
  void TearDown() override {
    // Workers first, so that none is left reconnecting; then masters.
    workers_.clear();
    for (auto* m : {&master_, &other_}) {
      if (m->child) m->child->stop(SIGTERM, seconds(20));
    }
  }
  std::string sql(const std::string& s) { return (*sql_)(s); }
  std::string q(const std::string& s) { return sql_->quote(s); }
  long long num(const std::string& s) { return std::stoll(sql(s)); }

  void addProject() { sql("INSERT INTO pefnos.project (id, name) VALUES (1, 'p')"); }
  int addRepository(const std::string& name, const std::string& url, int poll_interval) {
    return std::stoi(sql("INSERT INTO pefnos.repository (project_id, name, vcs, url, poll_interval) VALUES (1, " +
                         q(name) + ", 'git', " + q(url) + ", " + std::to_string(poll_interval) + ") RETURNING id"));
  }
  int addBranch(int repo, const std::string& name) {
    return std::stoi(sql("INSERT INTO pefnos.branch (repository_id, name) VALUES (" + std::to_string(repo) + ", " +
                         q(name) + ") RETURNING id"));
  }
  int addBuilder(const std::string& name, int branch, const std::string& steps, int max_concurrent) {
    int b = std::stoi(sql("INSERT INTO pefnos.builder (project_id, name, steps, max_concurrent) VALUES (1, " +
                          q(name) + ", " + q(steps) + "::jsonb, " + std::to_string(max_concurrent) + ") RETURNING id"));
    sql("INSERT INTO pefnos.builder_branch (builder_id, branch_id) VALUES (" + std::to_string(b) + ", " +
        std::to_string(branch) + ")");
    return b;
  }
  std::string addWorker(const std::string& name) {
    sql("INSERT INTO pefnos.worker (name, trusted, tags, slots) VALUES (" + q(name) + ", true, '{}', 4)");
    std::string file = dir_.path() + "/" + name + ".secret";
    auto [rc, out] = test::run({test::pefnosBinary(), "ctl", "worker-secret", name, "--secret-file", file, "--db",
                                sql_->conninfo()});
    EXPECT_EQ(rc, 0) << out;
    return file;
  }
  void startWorker(const std::string& name, int port, int slots = 2) {
    workers_[name] = std::make_unique<Child>(std::vector<std::string>{
        test::pefnosBinary(), "worker", "--master", "127.0.0.1:" + std::to_string(port), "--name", name,
        "--secret-file", dir_.path() + "/" + name + ".secret", "--workdir", dir_.path() + "/work-" + name, "--slots",
        std::to_string(slots)});
  }
  MasterProcess makeMaster(const std::string& name, int heartbeat = 10) {
    MasterProcess m;
    m.conninfo_or_home = tdb_.conninfo();
    m.name = name;
    m.state_dir = dir_.path() + "/state-" + name;
    m.heartbeat = heartbeat;
    return m;
  }
  // Waits for a command row to end; returns its state.
  std::string waitCommand(const std::string& id, seconds timeout = seconds(60)) {
    const std::string s = "SELECT state FROM pefnos.command WHERE id = " + id;
    waitUntil([&] { auto st = sql(s); return st == "done" || st == "failed"; }, timeout);
    return sql(s);
  }

  // The invariants that hold whenever a master serves, whatever was killed.
  void checkInvariants(const std::string& when) {
    SCOPED_TRACE(when);
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build_request WHERE (state = 'claimed') <> "
                  "(claimed_by IS NOT NULL AND lease_until IS NOT NULL)"),
              "0") << "a request both claimed and free";
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build b LEFT JOIN pefnos.build_request r ON r.id = b.request_id "
                  "WHERE r.id IS NULL"),
              "0") << "a build without its request";
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build b JOIN pefnos.build_request r ON r.id = b.request_id "
                  "WHERE b.state IN ('pending', 'running') AND (r.state <> 'claimed' OR r.claimed_by <> b.master)"),
              "0") << sql("SELECT string_agg(b.id || ':' || b.state || '/' || r.state || ':' || coalesce(r.claimed_by, "
                          "'-') || '/' || coalesce(b.master, '-'), ', ') FROM pefnos.build b JOIN pefnos.build_request r "
                          "ON r.id = b.request_id WHERE b.state IN ('pending', 'running')")
                   << " (a build running for a request that its master does not hold)";
    EXPECT_EQ(sql("SELECT count(*) FROM (SELECT request_id FROM pefnos.build WHERE state IN ('pending', 'running') "
                  "GROUP BY request_id HAVING count(*) > 1) AS twice"),
              "0") << "a request running twice";
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build_request r WHERE state = 'done' AND NOT EXISTS (SELECT 1 FROM "
                  "pefnos.build b WHERE b.request_id = r.id AND b.state NOT IN ('pending', 'running', 'interrupted'))"),
              "0") << "a request done without a finished build";
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.command WHERE (state = 'done' AND result IS NULL) OR "
                  "(state = 'failed' AND error IS NULL)"),
              "0") << "a command ended without its outcome";
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_run WHERE state = 'running' AND lease_until IS NULL"), "0");
    // What had finished at the last check is still there, as it was.
    for (const auto& [id, state] : finished_builds_) {
      ASSERT_EQ(sql("SELECT state FROM pefnos.build WHERE id = " + id), state) << "finished build " << id << " changed";
    }
    for (const auto& [id, outcome] : finished_commands_) {
      ASSERT_EQ(sql("SELECT state || ' ' || coalesce(result::text, error) FROM pefnos.command WHERE id = " + id),
                outcome) << "finished command " << id << " changed";
    }
    pqxx::connection c(sql_->conninfo());
    pqxx::read_transaction tx(c);
    for (const auto& row : tx.exec("SELECT id, state FROM pefnos.build WHERE finished_at IS NOT NULL")) {
      finished_builds_[row[0].as<std::string>()] = row[1].as<std::string>();
    }
    for (const auto& row : tx.exec("SELECT id, state || ' ' || coalesce(result::text, error) FROM pefnos.command "
                                   "WHERE state IN ('done', 'failed')")) {
      finished_commands_[row[0].as<std::string>()] = row[1].as<std::string>();
    }
  }
  // Every mark's target commit is in the target; the branch head is a marked
  // revision; when nothing runs, the last succeeded run published that head.
  // Until then, a run killed between recording its marks and publishing has
  // marks the target lacks: the next run forgets them (or publishes them),
  // so only the marks of succeeded runs must be there at once.
  void checkMarks(int mirror, const std::string& target_dir, const std::string& branch, bool settled) {
    const std::string m = std::to_string(mirror);
    pqxx::connection c(sql_->conninfo());
    pqxx::read_transaction tx(c);
    std::vector<std::string> targets;
    std::string batch;
    for (const auto& row : tx.exec("SELECT k.target_revision, r.state = 'succeeded' FROM pefnos.mirror_mark k "
                                   "JOIN pefnos.mirror_run r ON r.id = k.run_id WHERE k.mirror_id = " + m)) {
      targets.push_back(row[0].as<std::string>());
      if (settled || row[1].as<bool>()) batch += targets.back() + "^{commit}\n";
    }
    std::ofstream(dir_.path() + "/marks-batch") << batch;
    auto [rc, out] = test::run({"sh", "-c", "git -C \"$0\" cat-file --batch-check < \"$1\"", target_dir,
                                dir_.path() + "/marks-batch"});
    ASSERT_EQ(rc, 0) << out;
    EXPECT_EQ(out.find("missing"), std::string::npos) << "a mark's target commit is not in the target:\n" << out;
    auto [hrc, head] = test::run({"git", "-C", target_dir, "rev-parse", "--verify", "-q", "refs/heads/" + branch});
    if (hrc != 0) {
      EXPECT_FALSE(settled) << "the target branch was never published";
      return;
    }
    head.erase(head.find_last_not_of("\n") + 1);
    EXPECT_NE(std::find(targets.begin(), targets.end(), head), targets.end())
        << "the target branch head " << head << " is not a marked revision";
    if (settled) {
      EXPECT_EQ(tx.exec("SELECT coalesce((SELECT target_head FROM pefnos.mirror_run WHERE state = 'succeeded' AND "
                        "mirror_id = " + m + " ORDER BY id DESC LIMIT 1), '')")[0][0].as<std::string>(),
                head) << "the last succeeded run's target head is not the branch head";
    }
  }

  test::TestDatabase tdb_;
  test::TempDir dir_{"pefnos-faults"};
  std::unique_ptr<Sql> sql_;
  std::unique_ptr<test::Forge> forge_;
  MasterProcess master_, other_;
  std::map<std::string, std::unique_ptr<Child>> workers_;
  std::map<std::string, std::string> finished_builds_, finished_commands_;
};

// 1. kill -9 of the master at random points while builds, polls, commands and
// a mirror run are in flight; started again under its name, 20 times.
TEST_F(Faults, TwentyKillsOfTheMasterLoseNoRequestCommandResultOrMark) {
  const char* env_seed = std::getenv("PEFNOS_FAULTS_SEED");
  const unsigned seed = env_seed ? static_cast<unsigned>(std::stoul(env_seed))
                                 : static_cast<unsigned>(system_clock::now().time_since_epoch().count());
  std::cout << "[faults] seed " << seed << " (PEFNOS_FAULTS_SEED=" << seed << " repeats it)" << std::endl;
  RecordProperty("seed", std::to_string(seed));
  std::mt19937 random(seed);
  const auto began = steady_clock::now();

  addProject();
  const int repo = addRepository("up", forge_->url(), 1);
  const int branch = addBranch(repo, "main");
  const std::string steps = R"([{"type": "shell", "argv": ["sh", "-c", "echo go; sleep 0.8; echo done"]}])";
  const int b1 = addBuilder("b1", branch, steps, 3), b2 = addBuilder("b2", branch, steps, 3);
  auto target = test::Forge::make("git", dir_.path() + "/tgt");
  const int trepo = addRepository("tgt", target->url(), 3600);
  const int mirror = std::stoi(sql(
      "INSERT INTO pefnos.mirror (name, kind, source_branch_id, target_repository_id, target_branch, delay) VALUES "
      "('m', 'branch', " + std::to_string(branch) + ", " + std::to_string(trepo) + ", 'mirrored', 0) RETURNING id"));
  for (const char* w : {"w1", "w2", "w3"}) addWorker(w);

  master_ = makeMaster("m");
  master_.start();
  master_.waitServing();
  for (const char* w : {"w1", "w2", "w3"}) startWorker(w, master_.port);
  std::vector<std::string> commands{sql("SELECT pefnos.poll_now(" + std::to_string(repo) + ")")};
  ASSERT_EQ(waitCommand(commands.back()), "done") << master_.output();  // the branch has a head to force
  const int kRounds = 20;
  int rounds = 0;
  for (int round = 0; round < kRounds; ++round) {
    // Work for this round: a commit upstream (a poll request per builder and a
    // mirror run), three forced builds, pings, a poll and a mirror run asked for.
    forge_->commit("main", "f" + std::to_string(round % 4) + ".txt", "round " + std::to_string(round));
    for (int i = 0; i < 3; ++i) {
      commands.push_back(sql("SELECT pefnos.force_build(" + std::to_string(i % 2 ? b2 : b1) + ", " +
                             std::to_string(branch) + ")"));
    }
    commands.push_back(sql("SELECT pefnos.ping()"));
    commands.push_back(sql("SELECT pefnos.poll_now(" + std::to_string(repo) + ")"));
    if (round % 3 == 0) commands.push_back(sql("SELECT pefnos.mirror_now(" + std::to_string(mirror) + ")"));
    std::this_thread::sleep_for(milliseconds(std::uniform_int_distribution<int>(100, 1500)(random)));
    const std::string in_flight = sql(
        "SELECT (SELECT count(*) FROM pefnos.build WHERE state IN ('pending', 'running')) || ' builds, ' || "
        "(SELECT count(*) FROM pefnos.command WHERE state IN ('queued', 'running')) || ' commands, ' || "
        "(SELECT count(*) FROM pefnos.mirror_run WHERE state = 'running') || ' mirror runs'");
    master_.kill9();
    std::cout << "[faults] round " << round + 1 << ": killed with " << in_flight << " in flight" << std::endl;
    master_.start();
    master_.waitServing();
    if (HasFatalFailure()) return;
    checkInvariants("after restart " + std::to_string(round + 1));
    checkMarks(mirror, target->url(), "mirrored", false);
    ++rounds;
  }
  std::cout << "[faults] " << rounds << " rounds of kill -9 in "
            << duration_cast<milliseconds>(steady_clock::now() - began).count() << " ms" << std::endl;

  // Everything asked for is done, nothing twice.
  const std::string head = forge_->head("main");
  ASSERT_TRUE(waitUntil([&] {
    return sql("SELECT count(*) FROM pefnos.build_request WHERE state <> 'done'") == "0" &&
           sql("SELECT count(*) FROM pefnos.command WHERE state NOT IN ('done', 'failed')") == "0" &&
           sql("SELECT count(*) FROM pefnos.mirror_run WHERE state = 'running'") == "0" &&
           sql("SELECT revision FROM pefnos.branch_head WHERE branch_id = " + std::to_string(branch)) == head &&
           sql("SELECT coalesce((SELECT state FROM pefnos.mirror_run ORDER BY id DESC LIMIT 1), '')") == "succeeded" &&
           sql("SELECT count(*) FROM pefnos.mirror_mark WHERE source_revision = " + q(head)) == "1";
  }, seconds(90))) << sql("SELECT string_agg(state || ' ' || n, ', ') FROM (SELECT state, count(*) AS n FROM "
                          "pefnos.build_request GROUP BY state) AS s")
                   << " / " << sql("SELECT string_agg(id || ' ' || kind || ' ' || state, ', ') FROM pefnos.command "
                                   "WHERE state NOT IN ('done', 'failed')")
                   << " / " << sql("SELECT string_agg(id || ' ' || state || ' ' || coalesce(error, ''), ', ') FROM "
                                   "pefnos.mirror_run")
                   << master_.output();
  checkInvariants("at the end");
  checkMarks(mirror, target->url(), "mirrored", true);
  // Every request was built exactly once to the end; every interrupted build was run again.
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build_request r WHERE (SELECT count(*) FROM pefnos.build b WHERE "
                "b.request_id = r.id AND b.state = 'succeeded') <> 1"),
            "0") << "a request not built exactly once";
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build WHERE state NOT IN ('succeeded', 'interrupted')"), "0")
      << sql("SELECT string_agg(id || ' ' || state || ' ' || summary::text, ', ') FROM pefnos.build WHERE state NOT "
             "IN ('succeeded', 'interrupted')");
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build b WHERE state = 'succeeded' AND (SELECT string_agg(convert_from("
                "l.data, 'UTF8'), '' ORDER BY l.seq) FROM pefnos.log l JOIN pefnos.step s ON s.id = l.step_id WHERE "
                "s.build_id = b.id) IS DISTINCT FROM E'go\\ndone\\n'"),
            "0") << "a succeeded build's log is not whole";
  // Commands: none lost, each with its outcome; forced builds exactly once each.
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.command"), std::to_string(commands.size()));
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.command WHERE kind IN ('ping', 'poll-now', 'force-build') AND state <> "
                "'done'"),
            "0") << sql("SELECT string_agg(id || ' ' || kind || ' ' || coalesce(error, ''), ', ') FROM pefnos.command "
                        "WHERE state <> 'done'");
  const long long forced = num("SELECT count(*) FROM pefnos.build_request WHERE reason = 'force'");
  // Exactly once: a master killed after the request's commit and before the
  // command's outcome runs the command again when it restarts, and finds the
  // request it made.
  EXPECT_EQ(forced, 3 * kRounds);
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.command c WHERE kind = 'force-build' AND (SELECT count(*) FROM "
                "pefnos.build_request r WHERE r.command_id = c.id) <> 1"),
            "0") << "a force-build command without exactly one request";
  // Polls: every upstream commit recorded once, one poll request per head per builder.
  auto [rc, count] = test::run({"git", "-C", forge_->url(), "rev-list", "--count", "main"});
  count.erase(count.find_last_not_of("\n") + 1);
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.commit WHERE network_id = " + std::to_string(repo)), count);
  EXPECT_EQ(sql("SELECT count(*) FROM (SELECT builder_id, revision FROM pefnos.build_request WHERE reason = 'poll' "
                "GROUP BY 1, 2 HAVING count(*) > 1) AS twice"),
            "0") << "a head requested twice by polls";
  // The mirror carried every source commit once.
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_mark WHERE mirror_id = " + std::to_string(mirror)), count);
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_verify WHERE NOT ok"), "0");
  std::cout << "[faults] " << rounds << " rounds, " << num("SELECT count(*) FROM pefnos.build_request")
            << " requests (" << forced << " forced for " << 3 * kRounds << " force-build commands), "
            << num("SELECT count(*) FROM pefnos.build") << " builds ("
            << num("SELECT count(*) FROM pefnos.build WHERE state = 'interrupted'") << " interrupted and run again), "
            << commands.size() << " commands (" << num("SELECT count(*) FROM pefnos.command WHERE attempts > 1")
            << " run again after a kill), " << num("SELECT count(*) FROM pefnos.mirror_run") << " mirror runs ("
            << num("SELECT count(*) FROM pefnos.mirror_run WHERE state = 'succeeded'") << " succeeded), "
            << duration_cast<milliseconds>(steady_clock::now() - began).count() << " ms in all" << std::endl;
  (void)b2;
}

// 2. The database server restarts under load (a private cluster: the shared
// one serves every other test): the master reconnects and catches up.
TEST_F(Faults, ADatabaseRestartUnderLoadIsCaughtUpWith) {
  test::TempDir home_dir("pefnos-pgrestart");
  const std::string home = home_dir.path();
  const std::string bin = test::pefnosBinary();
  auto started = test::run({bin, "cluster", "start", "--home", home, "--fast"});
  ASSERT_EQ(started.first, 0) << started.second;
  struct StopCluster {
    std::string bin, home;
    ~StopCluster() { test::run({bin, "cluster", "stop", "--home", home}); }
  } stop_cluster{bin, home};
  ASSERT_EQ(test::run({bin, "db", "migrate", "--home", home}).first, 0);
  sql_ = std::make_unique<Sql>(cluster::conninfo(cluster::layoutFor(home)));
  addProject();
  const int repo = addRepository("up", forge_->url(), 3600);
  const int branch = addBranch(repo, "main");
  const int builder = addBuilder("b", branch, R"([{"type": "shell", "argv": ["sh", "-c", "echo go; sleep 1; echo done"]}])", 4);
  addWorker("w1");
  addWorker("w2");
  master_ = makeMaster("m");
  master_.home = true;
  master_.conninfo_or_home = home;
  master_.start();
  master_.waitServing();
  startWorker("w1", master_.port);
  startWorker("w2", master_.port);
  ASSERT_EQ(waitCommand(sql("SELECT pefnos.poll_now(" + std::to_string(repo) + ")")), "done") << master_.output();
  for (int i = 0; i < 8; ++i) sql("SELECT pefnos.force_build(" + std::to_string(builder) + ", " + std::to_string(branch) + ")");
  ASSERT_TRUE(waitUntil([&] { return sql("SELECT count(*) FROM pefnos.build WHERE state = 'running'") != "0"; }, seconds(30)));

  const auto down = steady_clock::now();
  ASSERT_EQ(test::run({bin, "cluster", "stop", "--home", home}).first, 0);
  ASSERT_TRUE(master_.child->waitOutput("lost the", seconds(20))) << master_.output();
  std::this_thread::sleep_for(seconds(2));  // builds go on on the workers meanwhile
  ASSERT_EQ(test::run({bin, "cluster", "start", "--home", home, "--fast"}).first, 0);
  // At once, most likely before the master is back: NOTIFYs lost, rows found by catching up.
  std::vector<std::string> commands;
  for (int i = 0; i < 10; ++i) commands.push_back(sql("SELECT pefnos.ping()"));
  for (int i = 0; i < 4; ++i) {
    commands.push_back(sql("SELECT pefnos.force_build(" + std::to_string(builder) + ", " + std::to_string(branch) + ")"));
  }
  EXPECT_TRUE(waitUntil([&] {
    return sql("SELECT count(*) FROM pefnos.command WHERE state <> 'done'") == "0" &&
           sql("SELECT count(*) FROM pefnos.build_request WHERE state <> 'done'") == "0";
  }, seconds(60))) << sql("SELECT string_agg(id || ' ' || state, ', ') FROM pefnos.build_request") << master_.output();
  std::cout << "[faults] database down and back; all caught up "
            << duration_cast<milliseconds>(steady_clock::now() - down).count() << " ms after the stop" << std::endl;
  EXPECT_FALSE(master_.child->exited().has_value()) << master_.output();
  checkInvariants("after the database restart");
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build_request"), "13");
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build_request r WHERE (SELECT count(*) FROM pefnos.build b WHERE "
                "b.request_id = r.id AND b.state = 'succeeded') <> 1"),
            "0") << sql("SELECT string_agg(request_id || ':' || state, ', ' ORDER BY id) FROM pefnos.build");
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build WHERE state NOT IN ('succeeded', 'interrupted')"), "0");
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.event WHERE source = 'db' AND message LIKE 'lost the database%'"), "1");
  EXPECT_EQ(master_.child->stop(SIGTERM, seconds(20)), 0) << master_.output();
  workers_.clear();
}

// 3. Workers killed mid-source-transfer and mid-build: the build is
// interrupted and run again on another worker; nothing is lost.
TEST_F(Faults, WorkersKilledMidTransferAndMidBuildHaveTheirBuildsRunElsewhere) {
  // A big tree of incompressible bytes: its transfer takes a moment.
  std::mt19937_64 random(7);
  std::vector<test::File> files;
  for (int f = 0; f < 8; ++f) {
    std::string bytes(6u << 20, '\0');
    for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
      uint64_t v = random();
      std::memcpy(&bytes[i], &v, 8);
    }
    files.push_back({"big/" + std::to_string(f) + ".bin", std::move(bytes)});
  }
  files.push_back({"README", "the small file\n"});
  forge_->commit("main", files, "a big tree");
  files.clear();
  addProject();
  const int repo = addRepository("up", forge_->url(), 3600);
  const int branch = addBranch(repo, "main");
  const int builder = addBuilder(
      "b", branch, R"([{"type": "source"}, {"type": "shell", "argv": ["sh", "-c", "cat README; sleep 2; echo built"]}])", 4);
  for (const char* w : {"w1", "w2", "w3"}) addWorker(w);
  master_ = makeMaster("m");
  master_.start();
  master_.waitServing();
  for (const char* w : {"w1", "w2", "w3"}) startWorker(w, master_.port, 1);
  ASSERT_TRUE(waitUntil([&] { return master_.output().find("worker 'w3' connected") != std::string::npos; }, seconds(20)));
  ASSERT_EQ(waitCommand(sql("SELECT pefnos.poll_now(" + std::to_string(repo) + ")")), "done") << master_.output();

  auto workerOf = [&](const std::string& build) {
    return sql("SELECT w.name FROM pefnos.build b JOIN pefnos.worker w ON w.id = b.worker_id WHERE b.id = " + build);
  };
  // Mid-transfer: the source step runs (its tree on its way), the build step has not started.
  std::string build;
  ASSERT_TRUE(waitUntil([&] {
    build = sql("SELECT b.id FROM pefnos.build b JOIN pefnos.step s ON s.build_id = b.id AND s.position = 0 "
                "WHERE s.state = 'running' AND b.state = 'running'");
    return !build.empty();
  }, seconds(30))) << master_.output();
  const std::string first = workerOf(build);
  workers_[first]->stop(SIGKILL, seconds(5));
  EXPECT_EQ(sql("SELECT started_at IS NULL FROM pefnos.step WHERE build_id = " + build + " AND position = 1"), "t")
      << "the build step started: the worker was not killed mid-transfer";
  EXPECT_TRUE(waitUntil([&] { return sql("SELECT state FROM pefnos.build WHERE id = " + build) == "interrupted"; },
                        seconds(20))) << master_.output();
  EXPECT_EQ(sql("SELECT state FROM pefnos.step WHERE build_id = " + build + " AND position = 0"), "interrupted");

  // Mid-build: the build step has printed, and its worker dies.
  std::string second_build;
  ASSERT_TRUE(waitUntil([&] {
    second_build = sql("SELECT b.id FROM pefnos.build b JOIN pefnos.step s ON s.build_id = b.id AND s.position = 1 "
                       "JOIN pefnos.log l ON l.step_id = s.id WHERE b.state = 'running' LIMIT 1");
    return !second_build.empty();
  }, seconds(30))) << master_.output();
  const std::string second = workerOf(second_build);
  EXPECT_NE(second, first);
  workers_[second]->stop(SIGKILL, seconds(5));
  EXPECT_TRUE(waitUntil([&] { return sql("SELECT state FROM pefnos.build WHERE id = " + second_build) == "interrupted"; },
                        seconds(20))) << master_.output();

  // The third worker builds it whole.
  ASSERT_TRUE(waitUntil([&] { return sql("SELECT state FROM pefnos.build_request") == "done"; }, seconds(60)))
      << master_.output();
  EXPECT_EQ(sql("SELECT string_agg(state, ',' ORDER BY number) FROM pefnos.build"), "interrupted,interrupted,succeeded");
  const std::string last = sql("SELECT id FROM pefnos.build WHERE state = 'succeeded'");
  const std::string third = workerOf(last);
  EXPECT_NE(third, first);
  EXPECT_NE(third, second);
  EXPECT_EQ(sql("SELECT string_agg(convert_from(l.data, 'UTF8'), '' ORDER BY l.seq) FROM pefnos.log l JOIN pefnos.step s "
                "ON s.id = l.step_id WHERE s.position = 1 AND s.build_id = " + last),
            "the small file\nbuilt\n");
  // The tree arrived whole on the third worker.
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build_request"), "1");
  checkInvariants("after the workers died");
  (void)builder;
}

// 4. A step prints faster than the database stores it: the master's memory
// stays bounded (the worker is slowed down) and the log has every byte.
TEST_F(Faults, AStepThatOutrunsTheDatabaseKeepsMemoryBoundedAndLosesNoByte) {
  addProject();
  const int repo = addRepository("up", forge_->url(), 3600);
  const int branch = addBranch(repo, "main");
  // About 60 MB of numbered lines as fast as seq prints them.
  addBuilder("b", branch, R"([{"type": "shell", "argv": ["seq", "1", "8000000"]}])", 1);
  addWorker("w1");
  master_ = makeMaster("m");
  master_.start();
  master_.waitServing();
  startWorker("w1", master_.port);
  ASSERT_TRUE(waitUntil([&] { return master_.output().find("worker 'w1' connected") != std::string::npos; }, seconds(20)));
  const long before = statusKb(master_.child->pid(), "VmRSS");
  const auto began = steady_clock::now();
  ASSERT_EQ(waitCommand(sql("SELECT pefnos.poll_now(" + std::to_string(repo) + ")")), "done") << master_.output();
  ASSERT_TRUE(waitUntil([&] { return sql("SELECT coalesce((SELECT state FROM pefnos.build), 'none')") == "succeeded"; },
                        seconds(100))) << sql("SELECT coalesce((SELECT state FROM pefnos.build), 'none')") << master_.output();
  const double secs = duration<double>(steady_clock::now() - began).count();
  const long hwm = statusKb(master_.child->pid(), "VmHWM");
  auto [rc, expected] = test::run({"sh", "-c", "seq 1 8000000 | md5sum | cut -d' ' -f1"});
  ASSERT_EQ(rc, 0);
  expected.erase(expected.find_last_not_of("\n") + 1);
  auto [rc2, size] = test::run({"sh", "-c", "seq 1 8000000 | wc -c"});
  size.erase(size.find_last_not_of("\n") + 1);
  const long long stored = num("SELECT sum(length(data)) FROM pefnos.log");
  std::cout << "[faults] " << stored << " bytes of log in " << secs << " s ("
            << static_cast<long long>(stored / secs / 1e6) << " MB/s); master RSS " << before / 1024
            << " MB before, high-water mark " << hwm / 1024 << " MB" << std::endl;
  EXPECT_EQ(std::to_string(stored), size);
  EXPECT_EQ(sql("SELECT md5(string_agg(data, ''::bytea ORDER BY seq)) FROM pefnos.log"), expected);
  EXPECT_EQ(sql("SELECT max(seq) + 1 = count(*) FROM pefnos.log"), "t") << "a chunk is missing";
  // The log is 60 MB; the master holds a budget of 8 MB of it at most, plus chunks in flight.
  EXPECT_GT(before, 0);
  if (!test::kSanitized) {
    EXPECT_LT(hwm - before, 40 * 1024) << "the master's memory grew with the log";
  }
}

// 5. Two masters on one database share requests, commands, polls and mirror
// runs without doing anything twice; one dies and the other takes over its
// work within a lease period.
TEST_F(Faults, TwoMastersShareTheWorkOnceAndTheSurvivorTakesOverWithinALease) {
  const auto began = steady_clock::now();
  addProject();
  const int repo = addRepository("up", forge_->url(), 1);
  const int branch = addBranch(repo, "main");
  const int quick = addBuilder("quick", branch, R"([{"type": "shell", "argv": ["sh", "-c", "echo go; sleep 0.2"]}])", 8);
  const int slow = addBuilder("slow", branch, R"([{"type": "shell", "argv": ["sh", "-c", "echo go; sleep 3"]}])", 8);
  sql("UPDATE pefnos.builder_branch SET active = false WHERE builder_id = " + std::to_string(slow));
  // A mirror whose runs take a moment: a few MB of history.
  std::string blob;
  for (int i = 0; i < 20000; ++i) blob += "line " + std::to_string(i) + " of a file that changes\n";
  for (int i = 0; i < 12; ++i) forge_->commit("main", {test::File{"big.txt", std::to_string(i) + blob}}, "big " + std::to_string(i));
  auto target = test::Forge::make("git", dir_.path() + "/tgt");
  const int trepo = addRepository("tgt", target->url(), 3600);
  const int mirror = std::stoi(sql(
      "INSERT INTO pefnos.mirror (name, kind, source_branch_id, target_repository_id, target_branch, delay) VALUES "
      "('m', 'branch', " + std::to_string(branch) + ", " + std::to_string(trepo) + ", 'mirrored', 0) RETURNING id"));
  for (const char* w : {"a1", "a2", "b1", "b2"}) addWorker(w);
  master_ = makeMaster("alpha", 1);
  other_ = makeMaster("beta", 1);
  master_.start();
  other_.start();
  master_.waitServing();
  other_.waitServing();
  startWorker("a1", master_.port);
  startWorker("a2", master_.port);
  startWorker("b1", other_.port);
  startWorker("b2", other_.port);

  // Shared: both poll the upstream every second; commits, commands and builds flow.
  std::vector<std::string> commands{sql("SELECT pefnos.poll_now(" + std::to_string(repo) + ")")};
  ASSERT_EQ(waitCommand(commands.back()), "done") << master_.output();
  for (int round = 0; round < 5; ++round) {
    forge_->commit("main", {test::File{"big.txt", std::to_string(100 + round) + blob}}, "shared " + std::to_string(round));
    for (int i = 0; i < 6; ++i) {
      commands.push_back(sql("SELECT pefnos.force_build(" + std::to_string(quick) + ", " + std::to_string(branch) + ")"));
      commands.push_back(sql("SELECT pefnos.ping()"));
    }
    commands.push_back(sql("SELECT pefnos.poll_now(" + std::to_string(repo) + ")"));
    commands.push_back(sql("SELECT pefnos.mirror_now(" + std::to_string(mirror) + ")"));
    std::this_thread::sleep_for(milliseconds(700));
  }
  const std::string head = forge_->head("main");
  ASSERT_TRUE(waitUntil([&] {
    return sql("SELECT count(*) FROM pefnos.build_request WHERE state <> 'done'") == "0" &&
           sql("SELECT count(*) FROM pefnos.command WHERE state NOT IN ('done', 'failed')") == "0" &&
           sql("SELECT revision FROM pefnos.branch_head WHERE branch_id = " + std::to_string(branch)) == head &&
           sql("SELECT count(*) FROM pefnos.mirror_mark WHERE source_revision = " + q(head)) == "1" &&
           sql("SELECT count(*) FROM pefnos.mirror_run WHERE state = 'running'") == "0";
  }, seconds(90))) << master_.output() << other_.output();
  checkInvariants("two masters sharing");
  checkMarks(mirror, target->url(), "mirrored", true);
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build_request r WHERE (SELECT count(*) FROM pefnos.build b WHERE "
                "b.request_id = r.id) <> 1"),
            "0") << "a request built twice (or not at all) by two masters";
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.command WHERE attempts <> 1 OR claimed_by NOT IN ('alpha', 'beta')"), "0")
      << "a command run twice";
  // A mirror-now while the other master runs that mirror is refused, with the reason.
  // Known (core/mirror, reported): a run on a master whose own proxy has not yet
  // fetched a head that the other master recorded fails with "bad revision".
  const std::string unfetched = sql("SELECT count(*) FROM pefnos.command WHERE kind = 'mirror-now' AND error LIKE "
                                    "'%bad revision%'");
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.command WHERE state <> 'done' AND NOT (kind = 'mirror-now' AND (error LIKE "
                "'%is running on%' OR error LIKE '%is running already' OR error LIKE '%bad revision%'))"),
            "0")
      << sql("SELECT string_agg(id || ' ' || kind || ' ' || coalesce(error, ''), ', ') FROM pefnos.command WHERE state "
             "<> 'done'");
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build_request WHERE reason = 'force'"), "30");
  EXPECT_EQ(sql("SELECT count(*) FROM (SELECT builder_id, revision FROM pefnos.build_request WHERE reason = 'poll' "
                "GROUP BY 1, 2 HAVING count(*) > 1) AS twice"),
            "0") << "both masters polled a head into requests";
  EXPECT_EQ(sql("SELECT count(DISTINCT master) FROM pefnos.build"), "2") << "one master built everything";
  EXPECT_EQ(sql("SELECT coalesce(sum(revisions), 0) FROM pefnos.mirror_run WHERE state = 'succeeded'"),
            sql("SELECT count(*) FROM pefnos.mirror_mark")) << "a revision carried twice";
  std::cout << "[faults] two masters: builds " << sql("SELECT string_agg(master || ' ' || n, ', ') FROM (SELECT master, "
                                                      "count(*) AS n FROM pefnos.build GROUP BY 1) AS m")
            << "; commands " << sql("SELECT string_agg(claimed_by || ' ' || n, ', ') FROM (SELECT claimed_by, count(*) "
                                    "AS n FROM pefnos.command GROUP BY 1) AS m")
            << "; mirror-now failed for a head its proxy lacked: " << unfetched << "; mirror runs " << sql("SELECT string_agg(claimed_by || ' ' || n, ', ') FROM (SELECT claimed_by, "
                                       "count(*) AS n FROM pefnos.mirror_run GROUP BY 1) AS m")
            << std::endl;

  // alpha alone holds work: beta frozen, beta's workers away.
  workers_.erase("b1");
  workers_.erase("b2");
  ASSERT_EQ(kill(other_.child->pid(), SIGSTOP), 0);
  // Only mirror-now starts runs from here on: the run alpha holds is the command's.
  sql("UPDATE pefnos.mirror SET delay = 3600");
  for (int i = 0; i < 10; ++i) {
    forge_->commit("main", {test::File{"big.txt", std::to_string(200 + i) + blob + blob + blob + blob},
                            test::File{"big2.txt", std::to_string(300 + i) + blob + blob + blob + blob}},
                   "alpha alone " + std::to_string(i));
  }
  const std::string new_head = forge_->head("main");
  ASSERT_TRUE(waitUntil([&] {
    return sql("SELECT revision FROM pefnos.branch_head WHERE branch_id = " + std::to_string(branch)) == new_head;
  }, seconds(30))) << master_.output();
  for (int i = 0; i < 4; ++i) sql("SELECT pefnos.force_build(" + std::to_string(slow) + ", " + std::to_string(branch) + ")");
  const std::string mirror_cmd = sql("SELECT pefnos.mirror_now(" + std::to_string(mirror) + ")");
  bool alpha_holds = waitUntil([&] {
    return sql("SELECT count(*) FROM pefnos.build WHERE state = 'running' AND master = 'alpha'") == "4" &&
           sql("SELECT claimed_by || ' ' || state FROM pefnos.command WHERE id = " + mirror_cmd) == "alpha running" &&
           sql("SELECT count(*) FROM pefnos.mirror_run WHERE state = 'running' AND claimed_by = 'alpha'") == "1";
  }, seconds(30));
  // Past a renewal of the command's lease, so that it outlives the run's.
  std::this_thread::sleep_for(milliseconds(1200));
  const std::string held_run = sql("SELECT coalesce((SELECT claimed_by FROM pefnos.mirror_run WHERE state = 'running'), '')");
  master_.kill9();
  const auto killed = steady_clock::now();
  kill(other_.child->pid(), SIGCONT);
  ASSERT_TRUE(alpha_holds) << sql("SELECT string_agg(id || ' ' || state || ' ' || master, ', ') FROM pefnos.build "
                                  "WHERE state = 'running'")
                           << sql("SELECT claimed_by || ' ' || state FROM pefnos.command WHERE id = " + mirror_cmd)
                           << master_.output();
  std::cout << "[faults] alpha killed holding 4 builds, a mirror-now command"
            << (held_run == "alpha" ? " and its mirror run" : " (its mirror run already over)") << std::endl;
  startWorker("b1", other_.port);
  startWorker("b2", other_.port);
  const std::string lease = sql("SELECT extract(epoch FROM max(lease_until) - now())::int FROM pefnos.build_request "
                                "WHERE claimed_by = 'alpha'");
  // beta takes over: builds interrupted and run again, the command run again, the mirror run resumed.
  const bool taken_over = waitUntil([&] {
    return sql("SELECT count(*) FROM pefnos.build_request WHERE state <> 'done'") == "0" &&
           sql("SELECT state IN ('done', 'failed') FROM pefnos.command WHERE id = " + mirror_cmd) == "t" &&
           sql("SELECT count(*) FROM pefnos.mirror_run WHERE state = 'running'") == "0";
  }, seconds(100));
  const auto took = duration_cast<milliseconds>(steady_clock::now() - killed).count();
  std::cout << "[faults] beta took over alpha's work in " << took << " ms (alpha's build leases had "
            << lease << " s left at its death); test so far "
            << duration_cast<milliseconds>(steady_clock::now() - began).count() << " ms" << std::endl;
  ASSERT_TRUE(taken_over) << sql("SELECT string_agg(id || ' ' || state || ' ' || coalesce(claimed_by, '-'), ', ') FROM "
                                 "pefnos.build_request WHERE state <> 'done'")
                          << sql("SELECT state || ' ' || coalesce(claimed_by, '-') FROM pefnos.command WHERE id = " + mirror_cmd)
                          << other_.output();
  // Within a lease period (60 s: --heartbeat 1 gives the floor), plus a few heartbeats and the builds themselves.
  EXPECT_LT(took, 60000 + 15000);
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build WHERE builder_id = " + std::to_string(slow) +
                " AND state = 'interrupted' AND master = 'alpha'"),
            "4");
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.build WHERE builder_id = " + std::to_string(slow) +
                " AND state = 'succeeded' AND master = 'beta'"),
            "4");
  // Taken over by beta, unless alpha had already finished it when it died.
  const std::string cmd_by = sql("SELECT claimed_by || ' ' || attempts FROM pefnos.command WHERE id = " + mirror_cmd);
  EXPECT_TRUE(cmd_by == "beta 2" || cmd_by == "alpha 1") << cmd_by
      << sql("SELECT state || ' ' || coalesce(error, result::text) FROM pefnos.command WHERE id = " + mirror_cmd);
  ASSERT_TRUE(waitUntil([&] {
    return sql("SELECT count(*) FROM pefnos.mirror_mark WHERE source_revision = " + q(forge_->head("main"))) == "1" &&
           sql("SELECT coalesce((SELECT state FROM pefnos.mirror_run ORDER BY id DESC LIMIT 1), '')") == "succeeded";
  }, seconds(30))) << other_.output();
  checkInvariants("after alpha died");
  checkMarks(mirror, target->url(), "mirrored", true);
  // Run again by beta: done, or refused because beta's own tick already resumed
  // the run alpha left (known, core/mirror: mirror-now does not join a running run).
  EXPECT_EQ(sql("SELECT state = 'done' OR error LIKE '%is running already' FROM pefnos.command WHERE id = " + mirror_cmd),
            "t") << sql("SELECT coalesce(error, result::text) FROM pefnos.command WHERE id = " + mirror_cmd);
  (void)quick;
}

}  // namespace
}  // namespace pefnos
