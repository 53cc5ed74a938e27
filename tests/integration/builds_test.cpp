// Builds as a user meets them: a real `pefnos master` listening for workers on
// loopback, real `pefnos worker` processes with secrets, a real git upstream,
// the step plugins from the build tree, and rows and commands.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/protocol/auth.h"
#include "core/protocol/protocol.h"
#include "tests/support/child.h"
#include "tests/support/forge.h"
#include "tests/support/http_client.h"
#include "tests/support/testdb.h"
#include "tests/support/worker_session.h"

namespace pefnos {
namespace {

using namespace std::chrono;
using test::Child;
using test::waitUntil;
namespace fs = std::filesystem;

class Builds : public ::testing::Test {
 protected:
  void SetUp() override {
    tdb_.scalar("INSERT INTO pefnos.project (id, name) VALUES (1, 'p')");
    forge_ = test::Forge::make("git", dir_.path() + "/up");
    forge_->commit("main", {{"README", "hello from the source\n"}, {"run.sh", "#!/bin/sh\necho ran\n", true}},
                   "a tree to build");
  }
  std::string q(const std::string& s) { return tdb_.conn().quote(s); }

  int addRepository(bool trusted = true) {
    int repo = std::stoi(tdb_.scalar(
        "INSERT INTO pefnos.repository (project_id, name, vcs, url, poll_interval, trusted) VALUES (1, 'r" +
        std::to_string(++repos_) + "', 'git', " + q(forge_->url()) + ", 3600, " + (trusted ? "true" : "false") +
        ") RETURNING id"));
    branch_ = std::stoi(tdb_.scalar("INSERT INTO pefnos.branch (repository_id, name) VALUES (" +
                                    std::to_string(repo) + ", 'main') RETURNING id"));
    return repo;
  }
  int addBuilder(const std::string& steps, bool trusted = false, const std::string& requires_tags = "{}",
                 int max_concurrent = 2) {
    int b = std::stoi(tdb_.scalar(
        "INSERT INTO pefnos.builder (project_id, name, steps, trusted, requires_tags, max_concurrent) VALUES (1, 'b" +
        std::to_string(++builders_) + "', " + q(steps) + "::jsonb, " + (trusted ? "true" : "false") + ", " +
        q(requires_tags) + "::jsonb, " + std::to_string(max_concurrent) + ") RETURNING id"));
    tdb_.scalar("INSERT INTO pefnos.builder_branch (builder_id, branch_id) VALUES (" + std::to_string(b) + ", " +
                std::to_string(branch_) + ")");
    return b;
  }
  // A worker row and its secret file (through `pefnos ctl worker-secret`).
  std::string addWorker(const std::string& name, bool trusted = true, const std::string& tags = "{}") {
    tdb_.scalar("INSERT INTO pefnos.worker (name, trusted, tags, slots) VALUES (" + q(name) + ", " +
                (trusted ? "true" : "false") + ", " + q(tags) + "::jsonb, 4)");
    std::string file = dir_.path() + "/" + name + ".secret";
    auto [rc, out] = test::run({test::pefnosBinary(), "ctl", "worker-secret", name, "--secret-file", file,
                                "--db", tdb_.conninfo()});
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(tdb_.scalar("SELECT secret_hash LIKE 'scram-sha256$%' FROM pefnos.worker WHERE name = " + q(name)),
              "t");
    return file;
  }
  void startMaster(int heartbeat_seconds = 10) {
    master_ = std::make_unique<Child>(std::vector<std::string>{
        test::pefnosBinary(), "master", "--db", tdb_.conninfo(), "--name", "m", "--state-dir",
        dir_.path() + "/state", "--workers", "127.0.0.1:0", "--heartbeat", std::to_string(heartbeat_seconds)});
    ASSERT_TRUE(master_->waitOutput("listening for workers on 127.0.0.1:", seconds(30))) << master_->output();
    std::smatch m;
    std::string out = master_->output();
    ASSERT_TRUE(std::regex_search(out, m, std::regex("listening for workers on 127\\.0\\.0\\.1:(\\d+)")));
    port_ = std::stoi(m[1]);
  }
  std::unique_ptr<Child> startWorker(const std::string& name, const std::string& secret_file,
                                     const std::string& tags = "") {
    std::vector<std::string> argv{test::pefnosBinary(), "worker", "--master", "127.0.0.1:" + std::to_string(port_),
                                  "--name", name, "--secret-file", secret_file, "--workdir",
                                  dir_.path() + "/work-" + name, "--slots", "2"};
    if (!tags.empty()) argv.insert(argv.end(), {"--tags", tags});
    return std::make_unique<Child>(argv);
  }
  // A raw TCP connection to the master's worker port that has sent bytes;
  // reads on it time out after 10 s.
  int connectRaw(const std::string& bytes) { return test::connectLoopback(port_, bytes); }
  // Polls the repository: its head becomes a build request.
  void poll(int repo) {
    std::string id = tdb_.scalar("SELECT pefnos.poll_now(" + std::to_string(repo) + ")");
    ASSERT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id) == "done"; },
                          seconds(30)))
        << tdb_.scalar("SELECT coalesce(error, state) FROM pefnos.command WHERE id = " + id) << master_->output();
  }
  // Waits for the newest build of builder to end; returns its state.
  std::string waitBuild(int builder, seconds timeout = seconds(30)) {
    std::string sql = "SELECT coalesce((SELECT state FROM pefnos.build WHERE builder_id = " + std::to_string(builder) +
                      " ORDER BY id DESC LIMIT 1), 'none')";
    waitUntil([&] {
      auto s = tdb_.scalar(sql);
      return s != "none" && s != "pending" && s != "running";
    }, timeout);
    return tdb_.scalar(sql);
  }
  std::string logOf(int builder, int position) {
    return tdb_.scalar(
        "SELECT coalesce(string_agg(convert_from(l.data, 'UTF8'), '' ORDER BY l.seq), '') FROM pefnos.log l "
        "JOIN pefnos.step s ON s.id = l.step_id JOIN pefnos.build b ON b.id = s.build_id WHERE b.builder_id = " +
        std::to_string(builder) + " AND s.position = " + std::to_string(position) +
        " AND b.id = (SELECT max(id) FROM pefnos.build WHERE builder_id = " + std::to_string(builder) + ")");
  }
  std::string stepField(int builder, int position, const std::string& field) {
    return tdb_.scalar("SELECT " + field + " FROM (SELECT s.* FROM pefnos.step s JOIN pefnos.build b ON b.id = "
                       "s.build_id WHERE b.builder_id = " + std::to_string(builder) + " AND s.position = " +
                       std::to_string(position) + " ORDER BY b.id DESC LIMIT 1) AS step");
  }

  test::TestDatabase tdb_;
  test::TempDir dir_{"pefnos-builds"};
  std::unique_ptr<test::Forge> forge_;
  std::unique_ptr<Child> master_;
  int port_ = 0, repos_ = 0, builders_ = 0, branch_ = 0;
};

TEST_F(Builds, APolledCommitIsBuiltOnAWorkerWithItsSourceAndEveryResultIsStored) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "source"}, {"type": "shell", "argv": ["cat", "README"]},
                               {"type": "shell", "argv": ["./run.sh"]}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  ASSERT_TRUE(master_->waitOutput("worker 'w1' connected", seconds(20))) << master_->output() << worker->output();
  poll(repo);

  EXPECT_EQ(waitBuild(builder), "succeeded") << master_->output() << worker->output();
  EXPECT_EQ(logOf(builder, 1), "hello from the source\n");
  EXPECT_EQ(logOf(builder, 2), "ran\n") << "the executable bit survived the trip";
  EXPECT_EQ(tdb_.scalar("SELECT string_agg(state, ',' ORDER BY position) FROM pefnos.step"),
            "succeeded,succeeded,succeeded");
  EXPECT_EQ(tdb_.scalar("SELECT state || ' ' || (finished_at IS NOT NULL) FROM pefnos.build_request"), "done true");
  EXPECT_EQ(tdb_.scalar("SELECT number || ' ' || (SELECT name FROM pefnos.worker WHERE id = worker_id) || ' ' || "
                        "master FROM pefnos.build"),
            "1 w1 m");
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.step WHERE started_at IS NULL OR finished_at IS NULL"), "0");
}

TEST_F(Builds, AForcedBuildWaitsForItsCommandAndFailuresAreReportedPerStep) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["sh", "-c", "echo to stderr >&2; exit 3"]},
                               {"type": "shell", "argv": ["true"]}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  poll(repo);  // the head is known
  EXPECT_EQ(waitBuild(builder), "failed") << master_->output();
  auto [rc, out] = test::run({test::pefnosBinary(), "ctl", "force-build", std::to_string(builder),
                              std::to_string(branch_), "--wait", "--db", tdb_.conninfo()});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("done"), std::string::npos) << out;
  EXPECT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT count(*) FROM pefnos.build WHERE state = 'failed'") == "2"; },
                        seconds(30)));
  EXPECT_EQ(stepField(builder, 0, "state || ' ' || exit_code"), "failed 3");
  EXPECT_EQ(stepField(builder, 1, "state"), "skipped");
  EXPECT_EQ(tdb_.scalar("SELECT reason FROM pefnos.build_request ORDER BY id DESC LIMIT 1"), "force");
  EXPECT_EQ(tdb_.scalar("SELECT convert_from(data, 'UTF8') || stream FROM pefnos.log ORDER BY step_id DESC LIMIT 1"),
            "to stderr\nerr");
}

TEST_F(Builds, BadStepsFailTheBuildWithTheReasonAndTheBuilderGoesOn) {
  int repo = addRepository();
  int unknown = addBuilder(R"([{"type": "teleport"}])");
  int invalid = addBuilder(R"([{"type": "shell", "argv": []}])");
  int missing = addBuilder(R"([{"type": "shell", "argv": ["no-such-program-here"]}])");
  int slow = addBuilder(R"([{"type": "shell", "argv": ["sleep", "30"], "timeout": 1}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  poll(repo);
  EXPECT_EQ(waitBuild(unknown), "error");
  EXPECT_NE(stepField(unknown, 0, "summary->>'message'").find("no step plugin named 'teleport'"), std::string::npos);
  EXPECT_EQ(waitBuild(invalid), "error");
  EXPECT_NE(stepField(invalid, 0, "summary->>'message'").find("argv"), std::string::npos)
      << stepField(invalid, 0, "summary::text");
  EXPECT_EQ(waitBuild(missing), "failed");
  EXPECT_NE(logOf(missing, 0).find("not started"), std::string::npos) << logOf(missing, 0);
  EXPECT_EQ(waitBuild(slow), "failed");
  EXPECT_NE(logOf(slow, 0).find("timed out after 1 s"), std::string::npos) << logOf(slow, 0);
}

TEST_F(Builds, TrustKeepsUntrustedCodeAndSecretsApart) {
  int untrusted_repo = addRepository(false);
  int untrusted_builder = addBuilder(R"([{"type": "shell", "argv": ["true"]}])");
  std::string trusted_secret = addWorker("trusted", true);
  std::string untrusted_secret = addWorker("untrusted", false);
  startMaster();
  auto trusted = startWorker("trusted", trusted_secret);
  ASSERT_TRUE(master_->waitOutput("worker 'trusted' connected", seconds(20))) << master_->output();
  poll(untrusted_repo);
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.build"), "0") << "untrusted code ran on a trusted worker";
  auto untrusted = startWorker("untrusted", untrusted_secret);
  EXPECT_EQ(waitBuild(untrusted_builder), "succeeded") << master_->output();
  EXPECT_EQ(tdb_.scalar("SELECT w.name FROM pefnos.build b JOIN pefnos.worker w ON w.id = b.worker_id"), "untrusted");

  // A trusted repository's builder that needs a trusted worker and a secret:
  // never on the untrusted worker, and its secret only to the trusted one.
  int trusted_repo = addRepository(true);
  int secret_builder = addBuilder(
      R"([{"type": "shell", "argv": ["sh", "-c", "echo $TOKEN"], "secret_env": {"TOKEN": "s3cret"}}])", true);
  trusted->stop(SIGTERM, seconds(10));
  poll(trusted_repo);
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.build WHERE builder_id = " + std::to_string(secret_builder)),
            "0") << "a trusted build ran on an untrusted worker";
  trusted = startWorker("trusted", trusted_secret);
  EXPECT_EQ(waitBuild(secret_builder), "succeeded") << master_->output();
  EXPECT_EQ(logOf(secret_builder, 0), "s3cret\n");

  // A builder that needs no trusted worker but whose step asks for a secret:
  // on the untrusted worker it fails before anything runs.
  int leaky = addBuilder(R"([{"type": "shell", "argv": ["env"], "secret_env": {"TOKEN": "s3cret"}}])", false);
  trusted->stop(SIGTERM, seconds(10));
  tdb_.scalar("SELECT pefnos.force_build(" + std::to_string(leaky) + ", " + std::to_string(branch_) + ")");
  EXPECT_EQ(waitBuild(leaky), "error") << master_->output();
  EXPECT_NE(stepField(leaky, 0, "summary->>'message'").find("not trusted"), std::string::npos);
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.log WHERE position('s3cret' in convert_from(data, 'UTF8')) > 0 "
                        "AND step_id IN (SELECT s.id FROM pefnos.step s JOIN pefnos.build b ON b.id = s.build_id "
                        "WHERE b.builder_id = " + std::to_string(leaky) + ")"),
            "0");
}

TEST_F(Builds, AWrongSecretOrUnknownNameIsRefusedAndNothingChanges) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["true"]}])");
  std::string good = addWorker("w1");
  std::string wrong = dir_.path() + "/wrong.secret";
  std::ofstream(wrong) << "not the secret\n";
  fs::permissions(wrong, fs::perms::owner_read | fs::perms::owner_write);
  startMaster();
  poll(repo);
  auto impostor = startWorker("w1", wrong);
  auto stranger = startWorker("nobody", wrong);
  EXPECT_TRUE(waitUntil([&] { return impostor->exited().has_value() && stranger->exited().has_value(); }, seconds(20)));
  EXPECT_EQ(impostor->exited().value_or(-1), 2) << impostor->output();
  EXPECT_NE(impostor->output().find("unknown worker or wrong secret"), std::string::npos) << impostor->output();
  EXPECT_EQ(stranger->exited().value_or(-1), 2) << stranger->output();
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.build"), "0");
  EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.build_request"), "queued");
  // The real one still gets in and builds.
  auto worker = startWorker("w1", good);
  EXPECT_EQ(waitBuild(builder), "succeeded") << master_->output();
}

TEST_F(Builds, MalformedFramesDropOnlyThatConnection) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["true"]}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto sendRaw = [&](const std::string& bytes) {
    int fd = connectRaw(bytes);
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf);  // 0: the master closed it
    close(fd);
    return n;
  };
  std::string oversized("\xff\xff\xff\xff\x01\x00\x00\x00\x00", 9);
  EXPECT_EQ(sendRaw(oversized), 0);
  EXPECT_EQ(sendRaw(std::string("\x00\x00\x00\x03\x01\x00\x00\x00\x00{x}", 12)), 0);  // not JSON
  EXPECT_EQ(sendRaw(std::string("\x00\x00\x00\x02\x07\x00\x00\x00\x00{}", 11)), 0);  // unknown kind
  EXPECT_EQ(sendRaw(protocol::encodeControl({{"type", "auth"}, {"proof", "x"}})), 0);  // out of order
  EXPECT_NE(master_->output().find("protocol error"), std::string::npos) << master_->output();
  auto worker = startWorker("w1", secret);
  poll(repo);
  EXPECT_EQ(waitBuild(builder), "succeeded") << master_->output();
}

TEST_F(Builds, AWorkerLostMidBuildInterruptsItAndAnotherWorkerRunsIt) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["sh", "-c", "echo started; sleep 2; echo slow done"]}])");
  std::string s1 = addWorker("w1"), s2 = addWorker("w2");
  startMaster();
  auto first = startWorker("w1", s1);
  ASSERT_TRUE(master_->waitOutput("worker 'w1' connected", seconds(20)));
  poll(repo);
  ASSERT_TRUE(waitUntil([&] { return logOf(builder, 0).find("started") != std::string::npos; }, seconds(20)))
      << master_->output();
  first->stop(SIGKILL, seconds(5));
  EXPECT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT state FROM pefnos.build WHERE number = 1") == "interrupted"; },
                        seconds(20)))
      << master_->output();
  EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.build_request"), "queued");
  EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.step ORDER BY id LIMIT 1"), "interrupted");
  auto second = startWorker("w2", s2);
  EXPECT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT state FROM pefnos.build WHERE number = 2") == "succeeded"; },
                        seconds(30)))
      << master_->output();
  EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.build_request"), "done");
  EXPECT_EQ(logOf(builder, 0), "started\nslow done\n");
}

TEST_F(Builds, StopEndsARunningBuild) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["sh", "-c", "echo go; sleep 60"]}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  poll(repo);
  ASSERT_TRUE(waitUntil([&] { return logOf(builder, 0) == "go\n"; }, seconds(20))) << master_->output();
  std::string build = tdb_.scalar("SELECT id FROM pefnos.build");
  auto started = steady_clock::now();
  auto [rc, out] = test::run({test::pefnosBinary(), "ctl", "stop", build, "--wait", "--db", tdb_.conninfo()});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(waitBuild(builder), "cancelled") << master_->output();
  EXPECT_LT(steady_clock::now() - started, seconds(20));
  EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.build_request"), "done");
}

TEST_F(Builds, ConcurrencyLimitsAndSlotsAreKept) {
  int repo = addRepository();
  int one_at_a_time = addBuilder(R"([{"type": "shell", "argv": ["sleep", "0.5"]}])", false, "{}", 1);
  int two_at_once = addBuilder(R"([{"type": "shell", "argv": ["sleep", "0.5"]}])", false, "{}", 2);
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);  // 2 slots
  poll(repo);
  for (int b : {one_at_a_time, one_at_a_time, two_at_once, two_at_once}) {
    tdb_.scalar("SELECT pefnos.force_build(" + std::to_string(b) + ", " + std::to_string(branch_) + ")");
  }
  int most_running = 0, most_of_one = 0;
  const std::string running = "SELECT count(*) FROM pefnos.build WHERE state = 'running'";
  const std::string of_one = running + " AND builder_id = " + std::to_string(one_at_a_time);
  ASSERT_TRUE(waitUntil([&] {
    most_running = std::max(most_running, std::stoi(tdb_.scalar(running)));
    most_of_one = std::max(most_of_one, std::stoi(tdb_.scalar(of_one)));
    return tdb_.scalar("SELECT count(*) FROM pefnos.build WHERE state = 'succeeded'") == "6";
  }, seconds(60))) << master_->output();
  EXPECT_EQ(most_of_one, 1) << "max_concurrent 1 ran two at once";
  EXPECT_EQ(most_running, 2) << "a worker of 2 slots ran " << most_running << " at once";
}

TEST_F(Builds, AChattyStepIsStoredWholeAndInOrder) {
  int repo = addRepository();
  // 8 MiB of numbered lines: more than the master's log budget in flight.
  int builder = addBuilder(R"([{"type": "shell", "argv": ["seq", "1", "1000000"]}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  poll(repo);
  EXPECT_EQ(waitBuild(builder, seconds(120)), "succeeded") << master_->output();
  auto [rc, expected] = test::run({"seq", "1", "1000000"});
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(tdb_.scalar("SELECT sum(length(data)) FROM pefnos.log"), std::to_string(expected.size()));
  EXPECT_EQ(tdb_.scalar("SELECT md5(string_agg(data, ''::bytea ORDER BY seq)) FROM pefnos.log"),
            tdb_.scalar("SELECT md5(" + q(expected) + "::bytea)"));
  EXPECT_EQ(tdb_.scalar("SELECT max(seq) + 1 = count(*) FROM pefnos.log"), "t") << "a chunk is missing";
}

TEST_F(Builds, OutputBeyondTheLimitKillsTheCommand) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["yes"], "max_output": 100000}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  poll(repo);
  EXPECT_EQ(waitBuild(builder), "failed") << master_->output();
  EXPECT_NE(logOf(builder, 0).find("printed more than 100000 bytes"), std::string::npos);
  EXPECT_LE(std::stoll(tdb_.scalar("SELECT sum(length(data)) FROM pefnos.log WHERE stream = 'out'")), 100000 + 65536);
}

TEST_F(Builds, ABuildDirectoryThatCannotBeMadeFailsTheBuild) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["true"]}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  ASSERT_TRUE(master_->waitOutput("worker 'w1' connected", seconds(20)));
  // The work directory becomes a file: not even root can make a directory in it.
  fs::remove_all(dir_.path() + "/work-w1");
  std::ofstream(dir_.path() + "/work-w1") << "in the way\n";
  poll(repo);
  EXPECT_EQ(waitBuild(builder), "error") << master_->output();
  EXPECT_NE(tdb_.scalar("SELECT summary->>'message' FROM pefnos.build").find("cannot create the build directory"),
            std::string::npos);
}

TEST_F(Builds, AMasterKilledMidBuildLosesNothingWhenItStartsAgain) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["sh", "-c", "echo begun; sleep 3; echo finished"]}])");
  std::string secret = addWorker("w1");
  startMaster();
  const int port = port_;
  auto worker = startWorker("w1", secret);
  poll(repo);
  ASSERT_TRUE(waitUntil([&] { return logOf(builder, 0) == "begun\n"; }, seconds(20))) << master_->output();
  master_->stop(SIGKILL, seconds(5));
  // The same name and port: the worker finds it again, the master gives back what it held.
  master_ = std::make_unique<Child>(std::vector<std::string>{
      test::pefnosBinary(), "master", "--db", tdb_.conninfo(), "--name", "m", "--state-dir", dir_.path() + "/state",
      "--workers", "127.0.0.1:" + std::to_string(port)});
  EXPECT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT count(*) FROM pefnos.build WHERE state = 'succeeded'") == "1"; },
                        seconds(60)))
      << master_->output() << worker->output();
  EXPECT_EQ(tdb_.scalar("SELECT string_agg(state, ',' ORDER BY number) FROM pefnos.build"), "interrupted,succeeded");
  EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.build_request"), "done");
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.build_request"), "1");
}

TEST_F(Builds, RequiredTagsPickTheWorkerAndPriorityThenAgeOrderTheQueue) {
  int repo = addRepository();
  int tagged = addBuilder(R"([{"type": "shell", "argv": ["true"]}])", false, R"({"os": "debian"})", 1);
  std::string plain_secret = addWorker("plain"), debian_secret = addWorker("debian");
  startMaster();
  poll(repo);  // the branch has a head
  for (int priority : {0, 5, 10, 5}) {
    tdb_.scalar("INSERT INTO pefnos.build_request (builder_id, branch_id, revision, reason, priority) "
                "SELECT " + std::to_string(tagged) + ", " + std::to_string(branch_) +
                ", revision, 'force', " + std::to_string(priority) + " FROM pefnos.branch_head");
  }
  auto plain = startWorker("plain", plain_secret);
  ASSERT_TRUE(master_->waitOutput("worker 'plain' connected", seconds(20)));
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.build"), "0") << "a worker without the tag took the build";
  // The worker declares the tag itself (the configuration may add more).
  auto debian = startWorker("debian", debian_secret, "os=debian,arch=amd64");
  ASSERT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT count(*) FROM pefnos.build WHERE state = 'succeeded'") == "5"; },
                        seconds(30)))
      << master_->output();
  // The poll's request (priority 0, oldest) came first in age but last in priority.
  EXPECT_EQ(tdb_.scalar("SELECT string_agg(r.priority::text || ':' || r.id, ',' ORDER BY b.number) FROM pefnos.build b "
                        "JOIN pefnos.build_request r ON r.id = b.request_id"),
            tdb_.scalar("SELECT string_agg(priority::text || ':' || id, ',' ORDER BY priority DESC, id) "
                        "FROM pefnos.build_request"));
  EXPECT_EQ(tdb_.scalar("SELECT count(DISTINCT worker_id) FROM pefnos.build"), "1");
}

TEST_F(Builds, AWorkerOfAnotherProtocolVersionIsRefusedWithTheReason) {
  addWorker("w1");
  startMaster();
  int fd = connectRaw(protocol::encodeControl({{"type", "hello"}, {"version", 99}, {"name", "w1"}}));
  protocol::Decoder decoder;
  char buf[4096];
  std::optional<protocol::Frame> frame;
  for (ssize_t n; !frame && (n = read(fd, buf, sizeof buf)) > 0;) {
    ASSERT_TRUE(decoder.feed(std::string_view(buf, static_cast<size_t>(n))));
    frame = decoder.next();
  }
  close(fd);
  ASSERT_TRUE(frame.has_value());
  auto message = protocol::parseControl(frame->payload);
  ASSERT_TRUE(message);
  EXPECT_EQ((*message)["type"], "refused");
  EXPECT_NE((*message)["reason"].get<std::string>().find("protocol version 1"), std::string::npos) << frame->payload;
}

TEST_F(Builds, AWorkerThatFallsSilentIsDroppedAndItsBuildRunsElsewhere) {
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["true"]}])");
  std::string secret_file = addWorker("mute");
  std::string good = addWorker("w2");
  startMaster(1);  // heartbeats every second: silence for 3 s drops a worker
  // A worker that logs in properly, is given a build, then says nothing more
  // (a network partition, a frozen machine).
  std::ifstream in(secret_file);
  std::string secret;
  std::getline(in, secret);
  auto mute = test::helloAs(port_, "mute");
  auto welcome = mute.auth(mute.proof(secret));
  ASSERT_TRUE(welcome && (*welcome)["type"] == "welcome") << (welcome ? welcome->dump() : "nothing");
  const int fd = mute.fd;
  protocol::Decoder& decoder = mute.decoder;
  poll(repo);
  auto start = test::readControl(fd, decoder);
  ASSERT_TRUE(start && (*start)["type"] == "build-start") << (start ? start->dump() : "nothing");
  // Silence. The master drops it within a few heartbeats and queues the build again.
  EXPECT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT state FROM pefnos.build WHERE number = 1") == "interrupted"; },
                        seconds(15)))
      << master_->output();
  EXPECT_NE(master_->output().find("worker 'mute'"), std::string::npos);
  EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.build_request"), "queued");
  close(fd);
  auto worker = startWorker("w2", good);
  EXPECT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT state FROM pefnos.build WHERE number = 2") == "succeeded"; },
                        seconds(30)))
      << master_->output();
  (void)builder;
}

TEST_F(Builds, CMakeStepConfiguresBuildsAndCountsTestsOnTheWorker) {
  forge_->commit("main",
                 {{"CMakeLists.txt", "cmake_minimum_required(VERSION 3.16)\nproject(t LANGUAGES NONE)\n"
                                     "enable_testing()\nadd_test(NAME passes COMMAND true)\n"
                                     "add_test(NAME also_passes COMMAND true)\nadd_test(NAME fails COMMAND false)\n"}},
                 "a project with three tests");
  int repo = addRepository();
  int builder = addBuilder(R"([{"type": "source"}, {"type": "cmake", "jobs": 2}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  poll(repo);
  EXPECT_EQ(waitBuild(builder, seconds(60)), "failed") << master_->output();
  EXPECT_EQ(stepField(builder, 1, "summary->>'tests' || ' ' || (summary->>'failed')"), "3 1")
      << stepField(builder, 1, "summary::text");
  EXPECT_NE(logOf(builder, 1).find("tests failed out of 3"), std::string::npos);
}

TEST_F(Builds, OdooStepTestsTheChangedModulesAgainstAStandInServerAndRetestsFailures) {
  // The stand-in for Odoo's server: records its arguments, says sale_extra
  // fails and stock_extra passes, the way Odoo 16 logs it.
  const std::string args = dir_.path() + "/odoo-args", server = dir_.path() + "/fake-odoo";
  std::ofstream(server) << "#!/bin/sh\necho \"$@\" >> " << args << "\n"
      << "test -f sale_extra/__manifest__.py || { echo 'no addons here' >&2; exit 2; }\n"
      << "echo '2024-03-05 10:12:03,456 1 ERROR db odoo.addons.sale_extra.tests.test_order: FAIL: TestOrder.test_total'\n"
      << "echo '2024-03-05 10:12:05,200 1 INFO db odoo.addons.stock_extra.tests.test_move: Starting TestMove.test_done ...'\n"
      << "echo '2024-03-05 10:12:07,850 1 ERROR db odoo.tests.result: 1 failed, 0 error(s) of 5 tests when loading database'\n"
      << "exit 1\n";
  fs::permissions(server, fs::perms::owner_all);
  forge_->commit("main",
                 {{"sale_extra/__manifest__.py", "{'name': 'Sale extra'}\n"}, {"sale_extra/models.py", "x = 1\n"},
                  {"stock_extra/__manifest__.py", "{'name': 'Stock extra'}\n"}, {"stock_extra/views.xml", "<odoo/>\n"}},
                 "two addons");
  int repo = addRepository();
  nlohmann::json steps = nlohmann::json::array(
      {{{"type", "source"}}, {{"type", "odoo-test"}, {"server", {server}}, {"dropdb", {"true"}}}});
  int builder = addBuilder(steps.dump());
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  poll(repo);
  EXPECT_EQ(waitBuild(builder), "failed") << master_->output();
  EXPECT_EQ(stepField(builder, 1, "summary->'modules'"), R"({"sale_extra": "failed", "stock_extra": "passed"})");
  std::ifstream in(args);
  std::string first;
  std::getline(in, first);
  EXPECT_NE(first.find("-i sale_extra,stock_extra --test-enable --stop-after-init"), std::string::npos) << first;
  EXPECT_TRUE(std::regex_search(first, std::regex("-d pefnos-test-[0-9a-f]+ "))) << first;

  // A change elsewhere: the module that failed last time is tested again, alone.
  forge_->commit("main", "README", "docs only");
  poll(repo);
  ASSERT_TRUE(waitUntil([&] { return tdb_.scalar("SELECT count(*) FROM pefnos.build WHERE state = 'failed'") == "2"; },
                        seconds(30)))
      << tdb_.scalar("SELECT string_agg(build_id || ':' || position || ':' || state || ':' || summary::text, '; ') FROM pefnos.step") << master_->output();
  std::string second;
  std::getline(in, second);
  EXPECT_NE(second.find("-i sale_extra --test-enable"), std::string::npos) << second;
}

}  // namespace
}  // namespace pefnos
