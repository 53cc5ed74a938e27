// The JSON API and metrics of a real master (`--http 127.0.0.1:0`), read
// over real loopback HTTP, against rows the test writes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "tests/support/child.h"
#include "tests/support/http_client.h"
#include "tests/support/testdb.h"

namespace pefnos {
namespace {

using namespace std::chrono;
using nlohmann::json;

using test::request;

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

}  // namespace
}  // namespace pefnos
