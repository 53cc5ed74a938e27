// The JSON API and metrics of a real master (`--http 127.0.0.1:0`), read
// over real loopback HTTP, against rows the test writes.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <fcntl.h>
#include <poll.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "tests/support/child.h"
#include "tests/support/http_client.h"
#include "tests/support/testdb.h"

namespace pefnos {
namespace {

using namespace std::chrono;
using nlohmann::json;

using test::request;

// A client of a streaming response (SSE or a followed log): the head, then
// whatever arrives, read with a deadline.
class StreamClient {
 public:
  StreamClient(int port, const std::string& target, int rcvbuf = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf > 0) setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    ok_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    std::string req = "GET " + target + " HTTP/1.1\r\nHost: test\r\n\r\n";
    ok_ = ok_ && write(fd_, req.data(), req.size()) == static_cast<ssize_t>(req.size());
  }
  ~StreamClient() { close(fd_); }
  StreamClient(const StreamClient&) = delete;
  StreamClient& operator=(const StreamClient&) = delete;

  // Reads until needle is in what was received (or the peer closes, or timeout).
  bool waitFor(const std::string& needle, milliseconds timeout = milliseconds(5000)) {
    const auto end = steady_clock::now() + timeout;
    size_t from = 0;  // what was searched already
    while (received_.find(needle, from) == std::string::npos) {
      from = received_.size() > needle.size() ? received_.size() - needle.size() : 0;
      if (eof_ || !readSome(end)) return false;
    }
    return true;
  }
  // The same, in the body with its chunked framing taken off.
  bool waitForBody(const std::string& needle, milliseconds timeout = milliseconds(5000)) {
    const auto end = steady_clock::now() + timeout;
    while (body().find(needle) == std::string::npos) {
      if (eof_ || !readSome(end)) return false;
    }
    return true;
  }
  std::string body() const {
    std::string out;
    size_t at = received_.find("\r\n\r\n");
    if (at == std::string::npos) return out;
    at += 4;
    for (;;) {
      size_t line = received_.find("\r\n", at);
      if (line == std::string::npos) break;
      size_t size = std::stoul(received_.substr(at, line - at), nullptr, 16);
      if (size == 0 || line + 2 + size > received_.size()) break;
      out += received_.substr(line + 2, size);
      at = line + 2 + size + 2;
    }
    return out;
  }
  bool waitClosed(milliseconds timeout = milliseconds(5000)) {
    const auto end = steady_clock::now() + timeout;
    while (!eof_)
      if (!readSome(end)) return eof_;
    return true;
  }
  int status() const { return received_.size() > 12 ? std::atoi(received_.c_str() + 9) : 0; }
  const std::string& received() const { return received_; }
  bool eof() const { return eof_; }
  int fd() const { return fd_; }

 private:
  bool readSome(steady_clock::time_point end) {
    auto left = duration_cast<milliseconds>(end - steady_clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    char buf[65536];
    ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) {
      eof_ = true;
      return true;
    }
    received_.append(buf, static_cast<size_t>(n));
    return true;
  }
  int fd_ = -1;
  bool ok_ = false, eof_ = false;
  std::string received_;
};

// Resident memory of a process, in kB.
long rssKb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return 0;
}

// The value of an unlabelled metric, or -1.
double metric(int port, const std::string& name) {
  auto body = request(port, "GET", "/metrics").body;
  std::smatch m;
  if (!std::regex_search(body, m, std::regex("\n" + name + " ([0-9.e+-]+)\n"))) return -1;
  return std::stod(m[1]);
}

class Web : public ::testing::Test {
 protected:
  void SetUp() override {
    // A finished build with two steps; the second printed a log in three chunks.
    tdb_.scalar("INSERT INTO pefnos.project (id, name) VALUES (1, 'p')");
    tdb_.scalar("INSERT INTO pefnos.builder (id, project_id, name) VALUES (1, 1, 'compile')");
    tdb_.scalar("INSERT INTO pefnos.build_request (id, builder_id, revision, reason, state, finished_at) "
                "VALUES (1, 1, 'abc', 'force', 'done', now())");
    tdb_.scalar("INSERT INTO pefnos.build (id, request_id, builder_id, number, state, started_at, finished_at) "
                "VALUES (7, 1, 1, 1, 'succeeded', now(), now())");
    tdb_.scalar("INSERT INTO pefnos.step (id, build_id, position, name, type, state, summary) VALUES "
                "(70, 7, 0, 'source', 'source', 'succeeded', '{}'), "
                "(71, 7, 1, 'make', 'make', 'succeeded', '{\"warnings\": 2}')");
    tdb_.scalar("INSERT INTO pefnos.log (step_id, seq, data) VALUES (71, 0, 'hello '), (71, 1, 'wide '), "
                "(71, 2, 'world\n')");
    master_ = std::make_unique<test::Child>(std::vector<std::string>{
        test::pefnosBinary(), "master", "--db", tdb_.conninfo(), "--name", "m", "--workers", "127.0.0.1:0",
        "--http", "127.0.0.1:0"});
    ASSERT_TRUE(master_->waitOutput("serving HTTP on http://127.0.0.1:", seconds(30))) << master_->output();
    std::smatch m;
    std::string out = master_->output();
    ASSERT_TRUE(std::regex_search(out, m, std::regex("serving HTTP on http://127\\.0\\.0\\.1:(\\d+)/")));
    port_ = std::stoi(m[1]);
  }

  test::TestDatabase tdb_;
  std::unique_ptr<test::Child> master_;
  int port_ = 0;
};

TEST_F(Web, BuildsAreListedAndOneBuildCarriesItsSteps) {
  auto list = request(port_, "GET", "/api/v1/builds?limit=10");
  ASSERT_EQ(list.status, 200) << list.head << list.body;
  auto builds = json::parse(list.body)["builds"];
  ASSERT_EQ(builds.size(), 1u);
  EXPECT_EQ(builds[0]["id"], 7);
  EXPECT_EQ(builds[0]["builder"], "compile");
  EXPECT_EQ(builds[0]["state"], "succeeded");

  auto one = request(port_, "GET", "/api/v1/builds/7");
  ASSERT_EQ(one.status, 200) << one.body;
  auto build = json::parse(one.body);
  ASSERT_EQ(build["steps"].size(), 2u);
  EXPECT_EQ(build["steps"][1]["summary"]["warnings"], 2);
  EXPECT_EQ(build["steps"][1]["log_bytes"], 17);

  EXPECT_EQ(json::parse(request(port_, "GET", "/api/v1/builds?state=failed").body)["builds"].size(), 0u);
  EXPECT_EQ(request(port_, "GET", "/api/v1/builds/8").status, 404);
}

TEST_F(Web, LogRangesCutAcrossChunksAndARangeBeyondTheEndIsRefused) {
  auto all = request(port_, "GET", "/api/v1/steps/71/log");
  ASSERT_EQ(all.status, 200);
  EXPECT_EQ(all.body, "hello wide world\n");
  EXPECT_NE(all.head.find("X-Log-Size: 17"), std::string::npos) << all.head;
  EXPECT_EQ(request(port_, "GET", "/api/v1/steps/71/log?offset=3&limit=9").body, "lo wide w");
  EXPECT_EQ(request(port_, "GET", "/api/v1/steps/71/log?offset=17").body, "");  // the end: nothing yet
  auto beyond = request(port_, "GET", "/api/v1/steps/71/log?offset=18");
  EXPECT_EQ(beyond.status, 416);
  EXPECT_NE(beyond.body.find("beyond the end"), std::string::npos);
  EXPECT_EQ(request(port_, "GET", "/api/v1/steps/99/log").status, 404);
}

TEST_F(Web, MetricsAndStatusSayWhatTheRowsSay) {
  auto metrics = request(port_, "GET", "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("pefnos_builds{state=\"succeeded\"} 1\n"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("pefnos_build_queue 0\n"), std::string::npos);
  EXPECT_NE(metrics.body.find("# TYPE pefnos_log_bytes_total counter"), std::string::npos);
  auto status = json::parse(request(port_, "GET", "/api/v1/status").body);
  EXPECT_EQ(status["builds"]["succeeded"], 1);
  EXPECT_EQ(status["queue"], 0);
  EXPECT_EQ(status["workers"], 0);
  EXPECT_EQ(json::parse(request(port_, "GET", "/api/v1/workers").body)["workers"].size(), 0u);
}

TEST_F(Web, CtlStatusPrintsTheSummaryTheApiGives) {
  tdb_.scalar("INSERT INTO pefnos.repository (id, project_id, name, vcs, url) VALUES (1, 1, 'gone', 'git', '/x')");
  tdb_.scalar("INSERT INTO pefnos.repository_poll (repository_id, last_error) VALUES (1, 'no such repository')");
  auto [rc, out] = test::run({test::pefnosBinary(), "ctl", "status", "--db", tdb_.conninfo()});
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("builds        succeeded 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("repositories  1 active, 1 failing\n  gone: no such repository\n"), std::string::npos) << out;
  EXPECT_NE(out.find("master        m (heartbeat"), std::string::npos) << out;

  auto [jrc, text] = test::run({test::pefnosBinary(), "ctl", "status", "--json", "--db", tdb_.conninfo()});
  ASSERT_EQ(jrc, 0) << text;
  json cli = json::parse(text.substr(text.find('{')));
  json api = json::parse(request(port_, "GET", "/api/v1/status").body);
  api.erase("workers");  // only the master knows its connections
  api.erase("running");
  for (auto* j : {&cli, &api})
    for (auto& m : (*j)["masters"]) m.erase("heartbeat_age_s");  // read a moment apart
  EXPECT_EQ(cli, api);
}

TEST_F(Web, BadRequestsGetClearErrorsAndWriteNothing) {
  EXPECT_EQ(request(port_, "GET", "/api/v1/nothing-here").status, 404);
  EXPECT_EQ(request(port_, "GET", "/etc/passwd").status, 404);
  EXPECT_EQ(request(port_, "GET", "/api/v1/steps/..%2f..%2fetc/log").status, 404);
  auto post = request(port_, "POST", "/api/v1/builds");
  EXPECT_EQ(post.status, 405);
  EXPECT_NE(post.head.find("Allow: GET, HEAD"), std::string::npos);
  auto limit = request(port_, "GET", "/api/v1/builds?limit=abc");
  EXPECT_EQ(limit.status, 400);
  EXPECT_NE(limit.body.find("'limit'"), std::string::npos);
  EXPECT_EQ(request(port_, "GET", "/api/v1/builds?limit=100000").status, 400);
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.command"), "0");
  // The master serves on after all that.
  EXPECT_EQ(request(port_, "GET", "/api/v1/builds/7").status, 200);
}

TEST_F(Web, WritesAreCommandsThatNeedAToken) {
  tdb_.scalar("INSERT INTO pefnos.repository (id, project_id, name, vcs, url) VALUES (1, 1, 'r', 'git', '/x')");
  tdb_.scalar("INSERT INTO pefnos.branch (id, repository_id, name) VALUES (1, 1, 'main')");
  auto [rc, token] = test::run({test::pefnosBinary(), "ctl", "token", "create", "gui", "--db", tdb_.conninfo()});
  ASSERT_EQ(rc, 0) << token;
  while (!token.empty() && token.back() == '\n') token.pop_back();
  ASSERT_EQ(token.rfind("pft_", 0), 0u) << token;
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.api_token WHERE hash <> " + tdb_.conn().quote(token)), "1")
      << "the token itself is not stored";
  const std::string force = R"({"kind": "force-build", "args": {"builder": 1, "branch": 1, "revision": "abc"}})";

  auto none = request(port_, "POST", "/api/v1/commands", force);
  EXPECT_EQ(none.status, 401);
  EXPECT_NE(none.head.find("WWW-Authenticate: Bearer"), std::string::npos);
  EXPECT_EQ(request(port_, "POST", "/api/v1/commands", force, "Authorization: Bearer pft_wrong\r\n").status, 401);
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.command"), "0") << "a refused write wrote something";

  const std::string bearer = "Authorization: Bearer " + token + "\r\n";
  auto made = request(port_, "POST", "/api/v1/commands", force, bearer);
  ASSERT_EQ(made.status, 202) << made.body;
  auto id = json::parse(made.body)["command"].get<long long>();
  EXPECT_EQ(tdb_.scalar("SELECT kind || ' ' || (args->>'builder') || ' ' || (args->>'revision') || ' ' || "
                        "requested_by FROM pefnos.command WHERE id = " + std::to_string(id)),
            "force-build 1 abc api:gui");

  // The caller's mistakes, said as they are; nothing written.
  auto missing = request(port_, "POST", "/api/v1/commands", R"({"kind": "force-build", "args": {"builder": 9, "branch": 1}})", bearer);
  EXPECT_EQ(missing.status, 400);
  EXPECT_NE(missing.body.find("no active builder with id 9"), std::string::npos) << missing.body;
  EXPECT_EQ(request(port_, "POST", "/api/v1/commands", R"({"kind": "rm -rf"})", bearer).status, 400);
  EXPECT_EQ(request(port_, "POST", "/api/v1/commands", "not json", bearer).status, 400);
  EXPECT_EQ(request(port_, "POST", "/api/v1/commands", R"({"kind": "stop-build", "args": {"build": "7"}})", bearer).status,
            400);
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.command"), "1");

  auto [revoke_rc, revoked] = test::run({test::pefnosBinary(), "ctl", "token", "revoke", "gui", "--db", tdb_.conninfo()});
  ASSERT_EQ(revoke_rc, 0) << revoked;
  EXPECT_EQ(request(port_, "POST", "/api/v1/commands", force, bearer).status, 401);
}

// Configuration and history beside the fixture's build: two repositories (one
// failing), branches with heads, a fork's commits, a queued request, a mirror
// with runs and verifications, commands.
void addWorld(test::TestDatabase& tdb) {
  tdb.scalar("INSERT INTO pefnos.repository (id, project_id, name, vcs, url) VALUES (1, 1, 'r1', 'git', '/r1'),"
             " (2, 1, 'r2', 'git', '/r2')");
  tdb.scalar("UPDATE pefnos.repository SET parent_id = 1 WHERE id = 2");
  tdb.scalar("INSERT INTO pefnos.repository_poll (repository_id, last_poll_at, last_success_at, duration_ms, polls)"
             " VALUES (1, now(), now(), 12, 3)");
  tdb.scalar("INSERT INTO pefnos.repository_poll (repository_id, last_poll_at, last_error, duration_ms)"
             " VALUES (2, now(), 'unreachable', 40)");
  tdb.scalar("INSERT INTO pefnos.branch (id, repository_id, name) VALUES (1, 1, 'main'), (2, 1, 'dev'), (3, 2, 'main')");
  tdb.scalar("INSERT INTO pefnos.commit (id, network_id, revision, author, message, parents, files) VALUES"
             " (1, 1, 'abc', 'Ann', 'first line\nbody', '{}', '{a.c,b.c}'), (2, 1, 'def', 'Bob', 'second', '{abc}', '{}')");
  tdb.scalar("INSERT INTO pefnos.branch_head (branch_id, revision, commit_id) VALUES (1, 'def', 2), (3, 'abc', 1)");
  tdb.scalar("UPDATE pefnos.build_request SET branch_id = 1, commit_id = 1 WHERE id = 1");
  tdb.scalar("INSERT INTO pefnos.builder (id, project_id, name) VALUES (2, 1, 'test')");
  tdb.scalar("INSERT INTO pefnos.builder_branch (builder_id, branch_id) VALUES (1, 1), (2, 1)");
  tdb.scalar("INSERT INTO pefnos.build_request (id, builder_id, branch_id, commit_id, revision, reason, state,"
             " claimed_by, lease_until, finished_at) VALUES (2, 1, 1, 2, 'def', 'poll', 'done', NULL, NULL, now()),"
             " (3, 2, 1, 2, 'def', 'poll', 'done', NULL, NULL, now()), (4, 2, 1, 2, 'def', 'force', 'queued', NULL, NULL, NULL)");
  tdb.scalar("INSERT INTO pefnos.build (id, request_id, builder_id, number, state, started_at, finished_at) VALUES"
             " (8, 2, 1, 2, 'failed', now(), now()), (9, 3, 2, 1, 'warnings', now(), now())");
  tdb.scalar("INSERT INTO pefnos.mirror (id, name, source_branch_id, target_repository_id, target_branch) VALUES"
             " (1, 'm1', 1, 2, 'mirror'), (2, 'm2', 2, 2, 'mirror-dev')");
  tdb.scalar("INSERT INTO pefnos.mirror_run (id, mirror_id, state, revisions, finished_at) VALUES"
             " (1, 1, 'succeeded', 2, now()), (2, 1, 'failed', 1, now()), (3, 2, 'succeeded', 1, now())");
  tdb.scalar("INSERT INTO pefnos.mirror_verify (mirror_id, run_id, source_revision, target_revision, ok, differences)"
             " VALUES (1, 1, 'abc', 'x1', true, '[]'), (1, 2, 'def', 'x2', false, '[\"README\"]'),"
             " (2, 3, 'abc', 'y1', true, '[]')");
  tdb.scalar("INSERT INTO pefnos.command (kind, args) VALUES ('ping', '{}')");
}

TEST_F(Web, EveryListingPagesAndFilters) {
  addWorld(tdb_);
  auto get = [&](const std::string& target) {
    auto r = request(port_, "GET", "/api/v1/" + target);
    EXPECT_EQ(r.status, 200) << target << ": " << r.body;
    return json::parse(r.body, nullptr, false);
  };
  EXPECT_EQ(get("projects")["projects"][0]["builders"], 2);

  auto repos = get("repositories")["repositories"];
  ASSERT_EQ(repos.size(), 2u);
  EXPECT_EQ(repos[0]["polls"], 3);
  EXPECT_EQ(repos[0]["failing"], false);
  EXPECT_EQ(repos[0]["heads"].size(), 2u);
  EXPECT_EQ(repos[0]["heads"][1]["name"], "main");
  EXPECT_EQ(repos[0]["heads"][1]["revision"], "def");
  EXPECT_TRUE(repos[0]["heads"][0]["revision"].is_null()) << "dev has no head yet";
  EXPECT_NE(repos[0]["last_poll_at"].get<std::string>().find('T'), std::string::npos) << repos[0];
  EXPECT_EQ(repos[0]["last_poll_at"].get<std::string>().back(), 'Z');
  auto failing = get("repositories?failing=true")["repositories"];
  ASSERT_EQ(failing.size(), 1u);
  EXPECT_EQ(failing[0]["last_error"], "unreachable");

  EXPECT_EQ(get("branches?repository=1")["branches"].size(), 2u);
  EXPECT_EQ(get("branches?repository=2")["branches"][0]["head"], "abc");
  auto commits = get("commits?repository=2")["commits"];  // the fork's network: its root's commits
  ASSERT_EQ(commits.size(), 2u);
  EXPECT_EQ(commits[0]["revision"], "def");
  EXPECT_EQ(commits[0]["parents"], json::array({"abc"}));
  EXPECT_EQ(get("commits/1")["files"], json::array({"a.c", "b.c"}));

  auto builders = get("builders")["builders"];
  ASSERT_EQ(builders.size(), 2u);
  EXPECT_EQ(builders[0]["last_build"]["id"], 8);
  EXPECT_EQ(builders[1]["queued"], 1);
  EXPECT_EQ(builders[0]["branches"][0]["name"], "main");

  auto queue = get("requests?state=queued")["requests"];
  ASSERT_EQ(queue.size(), 1u);
  EXPECT_EQ(queue[0]["builder"], "test");
  EXPECT_EQ(get("requests?builder=1")["requests"].size(), 2u);

  EXPECT_EQ(get("builds?builder=2")["builds"].size(), 1u);
  EXPECT_EQ(get("builds?state=failed")["builds"][0]["id"], 8);
  EXPECT_EQ(get("builds?revision=def")["builds"].size(), 2u);
  auto first = get("builds?limit=2");  // newest first, paged before an id
  ASSERT_EQ(first["builds"].size(), 2u);
  EXPECT_EQ(first["builds"][0]["id"], 9);
  EXPECT_EQ(first["next_before"], 8);
  auto rest = get("builds?limit=2&before=8")["builds"];
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0]["id"], 7);
  EXPECT_EQ(get("builds?limit=1&offset=2")["builds"][0]["id"], 7);

  auto steps = get("steps?build=7")["steps"];
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[1]["log_bytes"], 17);
  EXPECT_EQ(get("steps/71")["name"], "make");

  auto mirrors = get("mirrors")["mirrors"];
  ASSERT_EQ(mirrors.size(), 2u);
  EXPECT_EQ(mirrors[0]["last_run"]["state"], "failed");
  EXPECT_EQ(mirrors[0]["verification"], "mismatch");
  EXPECT_EQ(mirrors[0]["last_mismatch"]["differences"], json::array({"README"}));
  EXPECT_EQ(mirrors[1]["verification"], "verified");
  EXPECT_EQ(get("mirrors?verification=mismatch")["mirrors"].size(), 1u);
  EXPECT_EQ(get("mirrors/1")["runs"].size(), 2u);
  auto runs = get("mirror-runs?mirror=1")["mirror-runs"];
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0]["verification"]["failed"], 1);
  EXPECT_EQ(get("mirror-verifications?ok=false")["mirror-verifications"].size(), 1u);

  auto commands = get("commands?kind=ping")["commands"];
  ASSERT_EQ(commands.size(), 1u);
  EXPECT_EQ(get("workers")["workers"].size(), 0u);
  EXPECT_EQ(request(port_, "GET", "/api/v1/mirrors/99").status, 404);
}

TEST_F(Web, MalformedFiltersAndUnknownPathsAreRefusedClearly) {
  for (const std::string bad : {"builds?builder=abc", "builds?state=exploded", "builds?colour=red", "builds?limit=0",
                                "builds?offset=-1", "builds?before=x", "repositories?active=maybe",
                                "branches?name=a%01b", "steps?after=%zz", "console?revisions=0",
                                "steps/71/log?follow=2", "steps/71/log?follow=1&limit=5", "events?x=1",
                                "builds/abc"}) {
    auto r = request(port_, "GET", "/api/v1/" + bad);
    EXPECT_EQ(r.status, 400) << bad << ": " << r.body;
    EXPECT_TRUE(json::parse(r.body, nullptr, false).contains("error")) << bad << ": " << r.body;
  }
  EXPECT_NE(request(port_, "GET", "/api/v1/builds?state=exploded").body.find("succeeded"), std::string::npos)
      << "the error names the states there are";
  for (const std::string unknown : {"/api/v1/nothing", "/api/v2/builds", "/api/v1/builds/7/zzz", "/favicon.ico", "/x/y"}) {
    EXPECT_EQ(request(port_, "GET", unknown).status, 404) << unknown;
  }
  EXPECT_EQ(request(port_, "GET", "/api/v1/builds?builder=1").status, 200) << "still serving";
}

TEST_F(Web, TheConsoleIsBuildersAcrossRevisionsInOnePass) {
  addWorld(tdb_);
  tdb_.scalar("INSERT INTO pefnos.build_request (id, builder_id, branch_id, commit_id, revision, reason, state,"
              " finished_at) VALUES (5, 1, 1, 2, 'def', 'force', 'done', now())");
  tdb_.scalar("INSERT INTO pefnos.build (id, request_id, builder_id, number, state, started_at) VALUES"
              " (10, 5, 1, 3, 'running', now())");
  auto r = request(port_, "GET", "/api/v1/console");
  ASSERT_EQ(r.status, 200) << r.body;
  auto c = json::parse(r.body);
  ASSERT_EQ(c["builders"].size(), 2u);
  EXPECT_EQ(c["builders"][0]["name"], "compile");
  ASSERT_EQ(c["revisions"].size(), 2u);
  auto def = c["revisions"][0];
  EXPECT_EQ(def["revision"], "def");
  EXPECT_EQ(def["author"], "Bob");
  EXPECT_EQ(def["branch"], "main");
  EXPECT_EQ(def["builds"]["1"]["id"], 10) << "the newest build of the builder for the revision";
  EXPECT_EQ(def["builds"]["1"]["state"], "running");
  EXPECT_EQ(def["builds"]["1"]["count"], 2);
  EXPECT_EQ(def["builds"]["2"]["state"], "warnings");
  auto abc = c["revisions"][1];
  EXPECT_EQ(abc["title"], "first line") << "the first line of the message";
  EXPECT_EQ(abc["builds"]["1"]["state"], "succeeded");
  EXPECT_FALSE(abc["builds"].contains("2"));
  EXPECT_EQ(json::parse(request(port_, "GET", "/api/v1/console?revisions=1").body)["revisions"].size(), 1u);
}

TEST_F(Web, EventsFanOneNotifyOutToEveryClient) {
  std::vector<std::unique_ptr<StreamClient>> clients;
  for (int i = 0; i < 5; ++i) {
    clients.push_back(std::make_unique<StreamClient>(port_, "/api/v1/events"));
    ASSERT_TRUE(clients.back()->waitFor("pefnos events")) << clients.back()->received();
    EXPECT_NE(clients.back()->received().find("Content-Type: text/event-stream"), std::string::npos);
  }
  tdb_.scalar("UPDATE pefnos.build SET state = 'failed' WHERE id = 7");
  // The master LISTENs on the events' channels a moment after it serves HTTP
  // (its listener connects beside the web): a NOTIFY before that is lost, as
  // for any client that connects while the master starts. So it is repeated
  // until the first client sees it; then every client must have it.
  for (int i = 0; i < 100 && clients[0]->received().find("\"state\":\"failed\"") == std::string::npos; ++i) {
    tdb_.scalar("SELECT pg_notify('pefnos_build', '7')");
    clients[0]->waitFor("\"state\":\"failed\"", milliseconds(100));
  }
  for (auto& c : clients) {
    ASSERT_TRUE(c->waitFor("\"state\":\"failed\"")) << c->received();
    EXPECT_NE(c->received().find("event: build\ndata: {"), std::string::npos) << c->received();
    EXPECT_NE(c->received().find("\"builder\":\"compile\""), std::string::npos);
    EXPECT_NE(c->received().find("\"name\":\"make\""), std::string::npos) << "with its steps";
  }
  // A configuration change and a command reach them too, and the queue.
  tdb_.scalar("UPDATE pefnos.builder SET description = 'x' WHERE id = 1");
  std::string id = tdb_.scalar("SELECT pefnos.ping()");
  tdb_.scalar("INSERT INTO pefnos.build_request (id, builder_id, revision, reason) VALUES (50, 1, 'zzz', 'force')");
  for (auto& c : clients) {
    EXPECT_TRUE(c->waitFor("event: config\ndata: {\"id\":1,\"op\":\"UPDATE\",\"table\":\"builder\"}")) << c->received();
    EXPECT_TRUE(c->waitFor("event: command\ndata: {")) << c->received();
    EXPECT_TRUE(c->waitFor("\"id\":" + id + ",\"kind\":\"ping\"")) << c->received();
    EXPECT_TRUE(c->waitFor("event: queue\ndata: {")) << c->received();
  }
  EXPECT_EQ(metric(port_, "pefnos_event_clients"), 5);
  clients.clear();
  EXPECT_TRUE(test::waitUntil([&] { return metric(port_, "pefnos_event_clients") == 0; }, seconds(5)));
}

TEST_F(Web, ThousandsOfEventClientsAreBoundedInNumberAndMemory) {
  // 1,300 sockets on each side: past an unprivileged user's default of 1,024.
  rlimit files{};
  getrlimit(RLIMIT_NOFILE, &files);
  if (files.rlim_cur < 4096 && files.rlim_max >= 4096) {
    files.rlim_cur = 4096;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  const long before_kb = rssKb(master_->pid());
  std::vector<std::unique_ptr<StreamClient>> clients;
  for (int i = 0; i < 1300; ++i) clients.push_back(std::make_unique<StreamClient>(port_, "/api/v1/events"));
  int streaming = 0, refused = 0;
  for (auto& c : clients) {
    c->waitFor("\r\n\r\n", milliseconds(5000));
    if (c->status() == 200) ++streaming;
    else if (c->status() == 503 || c->eof()) ++refused;
  }
  EXPECT_EQ(streaming, 1000) << "the default limit";
  EXPECT_EQ(refused, 300);
  const long during_kb = rssKb(master_->pid());
  if (!test::kSanitized) {
    EXPECT_LT(during_kb - before_kb, 64 * 1024) << "1000 clients cost " << (during_kb - before_kb) << " kB";
  }
  // Every one of them still hears an event.
  tdb_.scalar("SELECT pg_notify('pefnos_build', '7')");
  int heard = 0;
  for (auto& c : clients)
    if (c->status() == 200 && c->waitFor("event: build", milliseconds(5000))) ++heard;
  EXPECT_EQ(heard, 1000);
  clients.clear();
  EXPECT_TRUE(test::waitUntil([&] { return metric(port_, "pefnos_event_clients") == 0; }, seconds(10)));
  StreamClient again(port_, "/api/v1/events");
  EXPECT_TRUE(again.waitFor("pefnos events")) << "room again once they left";
}

TEST_F(Web, AnEventClientThatDoesNotReadIsDropped) {
  StreamClient sleeper(port_, "/api/v1/events", 4096);  // never reads
  StreamClient reader(port_, "/api/v1/events");
  ASSERT_TRUE(reader.waitFor("pefnos events"));
  // Events of 7 kB each, 63 MB in all: far more than the kernel's buffers
  // and the 256 KiB the server keeps for a client. Distinct payloads
  // (PostgreSQL folds equal ones), sent in small batches that the reader
  // takes in between, so that the only backlog is the sleeper's.
  const long before_kb = rssKb(master_->pid());
  bool everything = true;
  for (int batch = 0; batch < 300 && everything; ++batch) {
    tdb_.scalar("SELECT count(pg_notify('pefnos_config', json_build_object('table', 'x', 'id', g, 'pad',"
                " repeat('x', 7000))::text)) FROM generate_series(" + std::to_string(batch * 30) + ", " +
                std::to_string(batch * 30 + 29) + ") g");
    everything = reader.waitFor("\"id\":" + std::to_string(batch * 30 + 29) + ",", milliseconds(15000));
  }
  EXPECT_TRUE(everything) << "the reader got everything";
  EXPECT_TRUE(test::waitUntil([&] { return metric(port_, "pefnos_event_clients_dropped_total") >= 1; }, seconds(10)));
  EXPECT_EQ(metric(port_, "pefnos_event_clients_dropped_total"), 1) << "only the one that does not read";
  // Far less than the 63 MB the sleeper would have held, had it been kept.
  if (!test::kSanitized) {
    EXPECT_LT(rssKb(master_->pid()) - before_kb, 16 * 1024);
  }
  // The server closed the sleeper: what it holds ends (bounded: a server
  // that kept it would leave the read waiting 10 s, then fail here).
  timeval limit{10, 0};
  setsockopt(sleeper.fd(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  char buf[65536];
  ssize_t n;
  while ((n = read(sleeper.fd(), buf, sizeof buf)) > 0) {
  }
  EXPECT_EQ(n, 0) << "the dropped client's connection ends";
}

TEST_F(Web, AFollowedLogStreamsNewChunksUntilTheStepEnds) {
  tdb_.scalar("UPDATE pefnos.build SET state = 'running', finished_at = NULL WHERE id = 7");
  tdb_.scalar("UPDATE pefnos.step SET state = 'running' WHERE id = 71");
  StreamClient tail(port_, "/api/v1/steps/71/log?follow=1&offset=3");
  ASSERT_TRUE(tail.waitForBody("lo wide world\n")) << tail.received() << master_->output();
  EXPECT_NE(tail.received().find("X-Log-Size: 17"), std::string::npos);
  tdb_.scalar("INSERT INTO pefnos.log (step_id, seq, data) VALUES (71, 3, 'line two\n')");
  ASSERT_TRUE(tail.waitForBody("line two\n", milliseconds(3000))) << tail.received();
  tdb_.scalar("INSERT INTO pefnos.log (step_id, seq, data) VALUES (71, 4, 'the end\n')");
  tdb_.scalar("UPDATE pefnos.step SET state = 'succeeded' WHERE id = 71");
  EXPECT_TRUE(tail.waitFor("\r\n0\r\n\r\n", milliseconds(3000))) << "the stream ends with the step";
  EXPECT_EQ(tail.body(), "lo wide world\nline two\nthe end\n") << "from the offset on, each byte once";
  // A finished step's log: everything, then the end; beyond the end: 416.
  StreamClient done(port_, "/api/v1/steps/71/log?follow=1");
  EXPECT_TRUE(done.waitFor("\r\n0\r\n\r\n"));
  EXPECT_EQ(done.body(), "hello wide world\nline two\nthe end\n");
  EXPECT_EQ(request(port_, "GET", "/api/v1/steps/71/log?follow=1&offset=999").status, 416);
  EXPECT_EQ(request(port_, "GET", "/api/v1/steps/404/log?follow=1").status, 404);
  EXPECT_EQ(request(port_, "GET", "/api/v1/steps/71/log?offset=22&limit=4").body, "two\n");
}

TEST_F(Web, ThePageIsServedFromTheBinaryAndAssetNamesCannotEscape) {
  auto page = request(port_, "GET", "/");
  ASSERT_EQ(page.status, 200);
  EXPECT_NE(page.head.find("Content-Type: text/html"), std::string::npos);
  EXPECT_NE(page.body.find("/assets/app.js"), std::string::npos);
  auto js = request(port_, "GET", "/assets/app.js");
  ASSERT_EQ(js.status, 200);
  EXPECT_NE(js.head.find("Content-Type: text/javascript"), std::string::npos);
  EXPECT_NE(js.body.find("EventSource"), std::string::npos);
  EXPECT_EQ(request(port_, "GET", "/assets/app.css").status, 200);
  for (const std::string escape : {"/assets/../web.cpp", "/assets/..%2fweb.cpp", "/assets/%2e%2e/%2e%2e/etc/passwd",
                                   "/assets/a/../../x", "/assets/%5c..%5cx", "/assets//etc/passwd"}) {
    auto r = request(port_, "GET", escape);
    EXPECT_TRUE(r.status == 400 || r.status == 404) << escape << " " << r.status;
    EXPECT_EQ(r.body.find("pefnos"), std::string::npos) << escape;
  }
  EXPECT_EQ(request(port_, "GET", "/assets/..%2fweb.cpp").status, 400);
  EXPECT_EQ(request(port_, "GET", "/assets/nothing.js").status, 404);
  EXPECT_EQ(request(port_, "GET", "/assets/").status, 400);
}

TEST_F(Web, MetricsCountCommandLatencyAndMirrorRuns) {
  // The first ping may be claimed by the catch-up after LISTEN, without a
  // NOTIFY to time; the second one is certainly woken by its NOTIFY.
  for (int i = 1; i <= 2; ++i) {
    tdb_.scalar("SELECT pefnos.ping()");
    EXPECT_TRUE(test::waitUntil([&] {
      return tdb_.scalar("SELECT count(*) FROM pefnos.command WHERE state = 'done'") == std::to_string(i);
    }, seconds(10)));
  }
  auto body = request(port_, "GET", "/metrics").body;
  EXPECT_NE(body.find("# TYPE pefnos_notify_to_action_seconds histogram"), std::string::npos) << body;
  const bool one = body.find("pefnos_notify_to_action_seconds_count 1\n") != std::string::npos &&
                   body.find("pefnos_notify_to_action_seconds_bucket{le=\"+Inf\"} 1\n") != std::string::npos;
  const bool two = body.find("pefnos_notify_to_action_seconds_count 2\n") != std::string::npos &&
                   body.find("pefnos_notify_to_action_seconds_bucket{le=\"+Inf\"} 2\n") != std::string::npos;
  EXPECT_TRUE(one || two) << body;
  EXPECT_NE(body.find("pefnos_mirror_runs{state=\"failed\"} 0\n"), std::string::npos) << body;
  EXPECT_NE(body.find("pefnos_poll_duration_ms_max"), std::string::npos);
  addWorld(tdb_);
  body = request(port_, "GET", "/metrics").body;
  EXPECT_NE(body.find("pefnos_mirror_runs{state=\"succeeded\"} 2\n"), std::string::npos) << body;
  EXPECT_NE(body.find("pefnos_repositories_failing 1\n"), std::string::npos) << body;
}

}  // namespace
}  // namespace pefnos
