// The config room against a real PostgreSQL: JSON import/export, and the
// in-memory model driven by a real libuv loop, LISTEN connection and NOTIFYs.
// Every loop test ends with its objects destroyed and uv_loop_close() == 0.
#include "core/config/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "core/db/db.h"
#include "core/loop/loop.h"
#include "tests/support/testdb.h"

namespace pefnos::config {
namespace {

using json = nlohmann::json;

json demoExample() {
  std::ifstream in(std::string(PEFNOS_SOURCE_DIR) + "/config/examples/demo.json");
  return json::parse(in);
}

// Rows in every configuration table.
int configRows(test::TestDatabase& db) {
  return std::stoi(db.scalar(
      "SELECT (SELECT count(*) FROM pefnos.project) + (SELECT count(*) FROM pefnos.repository)"
      " + (SELECT count(*) FROM pefnos.branch) + (SELECT count(*) FROM pefnos.builder)"
      " + (SELECT count(*) FROM pefnos.builder_branch) + (SELECT count(*) FROM pefnos.worker)"
      " + (SELECT count(*) FROM pefnos.mirror) + (SELECT count(*) FROM pefnos.plugin_directory)"));
}

std::string joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

bool contains(const std::vector<std::string>& errors, const std::string& line) {
  return std::find(errors.begin(), errors.end(), line) != errors.end();
}

// A document that leaves out defaults and uses every kind of row and reference.
json fullDocument() {
  return json::parse(R"({
    "projects": [
      {"name": "zeta", "repositories": [
         {"name": "upstream", "vcs": "bzr", "url": "http://example.org/upstream",
          "branches": [{"name": "trunk"}]}]},
      {"name": "alpha", "description": "first", "repositories": [
         {"name": "fork", "vcs": "git", "url": "/srv/fork.git", "parent": "zeta/upstream",
          "trusted": false, "branches": [{"name": "main"}, {"name": "dev/*", "pattern": true}]},
         {"name": "base", "vcs": "git", "url": "/srv/base.git", "poll_interval": 30,
          "branches": [{"name": "main", "active": false}]}],
       "builders": [
         {"name": "check", "steps": [{"type": "shell", "argv": ["make", "check"]}],
          "requires_tags": {"arch": "amd64"}, "properties": {"x": [1, 2.5, "y"]},
          "branches": [{"repository": "fork", "branch": "main"},
                       {"repository": "base", "branch": "main"},
                       {"repository": "zeta/upstream", "branch": "trunk"}]}]}],
    "workers": [{"name": "w2", "secret_hash": "h", "slots": 4}, {"name": "w1", "trusted": false}],
    "mirrors": [
      {"name": "to-bzr", "source": {"project": "alpha", "repository": "fork", "branch": "main"},
       "target": {"project": "zeta", "repository": "upstream", "branch": "from-git"}},
      {"name": "coll", "kind": "collection", "collection": "c1", "delay": 0, "verify": "sample",
       "source": {"project": "alpha", "repository": "base", "branch": "main"},
       "target": {"project": "alpha", "repository": "fork", "branch": "base-main"}}],
    "plugin_directories": [{"path": "/srv/pefnos/plugins"}, {"path": "/opt/vendor/pefnos", "active": false}]
  })");
}

// --- Import / export

TEST(ConfigImport, ExampleImportsAndExportsInItsCanonicalForm) {
  test::TestDatabase db;
  json example = demoExample();
  ImportReport report = importConfig(db.conn(), example);
  ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
  // 1 project, 5 repositories, 6 branches, 2 builders, 5 builder branches, 1 worker, 1 mirror.
  EXPECT_EQ(report.created, 21);
  EXPECT_EQ(configRows(db), 21);
  EXPECT_EQ(exportConfig(db.conn()).value(), example) << exportConfig(db.conn()).value().dump(2);
}

TEST(ConfigImport, ExportImportExportIsIdentical) {
  test::TestDatabase first, second;
  ImportReport report = importConfig(first.conn(), fullDocument());
  ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
  json exported = exportConfig(first.conn()).value();

  report = importConfig(second.conn(), exported);
  ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
  EXPECT_EQ(exportConfig(second.conn()).value(), exported)
      << exportConfig(second.conn()).value().dump(2) << "\n---\n"
      << exported.dump(2);
}

TEST(ConfigImport, ExportFillsDefaultsAndSortsByName) {
  test::TestDatabase db;
  ASSERT_TRUE(importConfig(db.conn(), fullDocument()).errors.empty());
  json doc = exportConfig(db.conn()).value();
  ASSERT_EQ(doc["projects"].size(), 2u);
  EXPECT_EQ(doc["projects"][0]["name"], "alpha");
  const json& base = doc["projects"][0]["repositories"][0];
  EXPECT_EQ(base["name"], "base");
  EXPECT_EQ(base["parent"], nullptr);
  EXPECT_EQ(base["trusted"], true);
  EXPECT_EQ(doc["projects"][0]["repositories"][1]["parent"], "zeta/upstream");
  EXPECT_EQ(doc["projects"][0]["repositories"][1]["poll_interval"], 60);
  EXPECT_EQ(doc["projects"][0]["repositories"][1]["branches"][0]["name"], "dev/*");
  EXPECT_EQ(doc["workers"][0]["name"], "w1");
  EXPECT_EQ(doc["workers"][0]["secret_hash"], nullptr);
  EXPECT_EQ(doc["mirrors"][0]["name"], "coll");
  EXPECT_EQ(doc["mirrors"][1]["verify"], "all");
  EXPECT_EQ(doc["projects"][0]["builders"][0]["branches"][2],
            json({{"repository", "zeta/upstream"}, {"branch", "trunk"}, {"active", true}}));
  EXPECT_EQ(doc["plugin_directories"],
            json::parse(R"([{"path": "/opt/vendor/pefnos", "active": false},
                            {"path": "/srv/pefnos/plugins", "active": true}])"));
}

TEST(ConfigImport, ReimportLeavesEveryRowUntouchedAndNotifiesNothing) {
  test::TestDatabase db;
  ASSERT_TRUE(importConfig(db.conn(), fullDocument()).errors.empty());
  const std::string stamps =
      "SELECT string_agg(u::text, ',' ORDER BY u) FROM (SELECT updated_at u FROM pefnos.project"
      " UNION ALL SELECT updated_at FROM pefnos.repository UNION ALL SELECT updated_at FROM "
      "pefnos.branch UNION ALL SELECT updated_at FROM pefnos.builder UNION ALL SELECT updated_at"
      " FROM pefnos.builder_branch UNION ALL SELECT updated_at FROM pefnos.worker"
      " UNION ALL SELECT updated_at FROM pefnos.mirror"
      " UNION ALL SELECT updated_at FROM pefnos.plugin_directory) s";
  std::string before = db.scalar(stamps);
  int rows = configRows(db);

  pqxx::connection listener(db.conninfo());
  std::vector<std::string> heard;
  struct Receiver : pqxx::notification_receiver {
    Receiver(pqxx::connection& c, std::vector<std::string>* out)
        : pqxx::notification_receiver(c, "pefnos_config"), out(out) {}
    void operator()(const std::string& payload, int) override { out->push_back(payload); }
    std::vector<std::string>* out;
  } receiver(listener, &heard);

  ImportReport report = importConfig(db.conn(), fullDocument());
  ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
  EXPECT_EQ(report.created, 0);
  EXPECT_EQ(report.updated, 0);
  EXPECT_EQ(report.unchanged, rows);
  EXPECT_EQ(db.scalar(stamps), before);

  // A marker sent after the import: everything the import notified arrives before it.
  db.scalar("SELECT pg_notify('pefnos_config', 'marker')");
  while (std::find(heard.begin(), heard.end(), "marker") == heard.end()) {
    ASSERT_GT(listener.await_notification(10, 0), 0) << "the marker never arrived";
  }
  EXPECT_EQ(heard, std::vector<std::string>{"marker"});
}

TEST(ConfigImport, ChangedFieldUpdatesOnlyItsRow) {
  test::TestDatabase db;
  json doc = fullDocument();
  ASSERT_TRUE(importConfig(db.conn(), doc).errors.empty());
  int rows = configRows(db);
  doc["projects"][1]["repositories"][1]["poll_interval"] = 90;
  doc["workers"][0]["tags"] = {{"os", "debian"}};

  ImportReport report = importConfig(db.conn(), doc);
  ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
  EXPECT_EQ(report.updated, 2);
  EXPECT_EQ(report.unchanged, rows - 2);
  EXPECT_EQ(db.scalar("SELECT poll_interval FROM pefnos.repository WHERE name = 'base'"), "90");
  EXPECT_EQ(db.scalar("SELECT tags->>'os' FROM pefnos.worker WHERE name = 'w2'"), "debian");
}

TEST(ConfigImport, PluginDirectoriesAreUpsertedByPath) {
  test::TestDatabase db;
  ImportReport report =
      importConfig(db.conn(), json::parse(R"({"plugin_directories": [{"path": "/a"}]})"));
  ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
  EXPECT_EQ(report.created, 1);
  report = importConfig(db.conn(), json::parse(R"({"plugin_directories": [
    {"path": "/b"}, {"path": "/a", "active": false}]})"));
  ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
  EXPECT_EQ(report.created, 1);
  EXPECT_EQ(report.updated, 1);
  EXPECT_EQ(db.scalar("SELECT string_agg(path || ' ' || active, ',' ORDER BY path) "
                      "FROM pefnos.plugin_directory"),
            "/a false,/b true");
}

TEST(ConfigImport, BadPluginDirectoriesAreAllReportedAndNothingIsWritten) {
  test::TestDatabase db;
  ImportReport report = importConfig(db.conn(), json::parse(R"({"plugin_directories": [
    {"path": "relative/dir"}, {"path": "/a"}, {"path": "/a", "active": false}, {"active": true},
    {"path": "/b", "owner": "me"}, {"path": "/c\nd"}, {"path": 7}, "/d"]})"));
  std::vector<std::string> expected = {
      "/plugin_directories/0/path: expected an absolute path, got \"relative/dir\"",
      "/plugin_directories/2/path: duplicate plugin directory \"/a\" (also at "
      "/plugin_directories/1)",
      "/plugin_directories/3: missing required field \"path\"",
      "/plugin_directories/4/owner: unknown field",
      "/plugin_directories/5/path: control characters are not allowed",
      "/plugin_directories/6/path: expected a string, got a number",
      "/plugin_directories/7: expected an object, got a string"};
  for (const auto& line : expected)
    EXPECT_TRUE(contains(report.errors, line)) << line << "\nin:\n" << joined(report.errors);
  EXPECT_EQ(report.errors.size(), expected.size()) << joined(report.errors);
  EXPECT_EQ(configRows(db), 0);
}

TEST(ConfigImport, RowsAbsentFromTheDocumentAreLeftAlone) {
  test::TestDatabase db;
  ASSERT_TRUE(importConfig(db.conn(), demoExample()).errors.empty());
  ImportReport report = importConfig(db.conn(), json::parse(R"({"workers": [{"name": "extra"}]})"));
  ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
  EXPECT_EQ(report.created, 1);
  EXPECT_EQ(configRows(db), 22);
}

TEST(ConfigImport, ReferencesResolveAgainstRowsAlreadyInTheDatabase) {
  test::TestDatabase db;
  ASSERT_TRUE(importConfig(db.conn(), demoExample()).errors.empty());
  ImportReport report = importConfig(db.conn(), json::parse(R"({
    "projects": [{"name": "demo", "builders": [
      {"name": "late", "branches": [{"repository": "demo-fork", "branch": "main"}]}]}],
    "mirrors": [{"name": "m", "source": {"project": "demo", "repository": "demo", "branch": "main"},
                 "target": {"project": "demo", "repository": "demo-fork", "branch": "x"}}]})"));
  ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
  EXPECT_EQ(report.created, 3);  // builder, its branch, mirror
  EXPECT_EQ(report.updated, 1);  // the project: its description now defaults to ""
}

TEST(ConfigImport, WrongTypesAndUnknownFieldsAreAllReportedAndNothingIsWritten) {
  test::TestDatabase db;
  ImportReport report = importConfig(db.conn(), json::parse(R"({
    "projects": [{"name": "p", "colour": "red", "repositories": [
      {"name": "ok", "vcs": "git", "url": "/a"},
      {"name": "r", "vcs": "git", "url": "/b", "poll_interval": "60", "trusted": 1}]}],
    "workers": [{"slots": 2.5}, "w"],
    "extra": []})"));
  std::vector<std::string> expected = {
      "/projects/0/colour: unknown field",
      "/projects/0/repositories/1/poll_interval: expected an integer, got a string",
      "/projects/0/repositories/1/trusted: expected a boolean, got a number",
      "/workers/0: missing required field \"name\"",
      "/workers/0/slots: expected an integer, got a fractional number",
      "/workers/1: expected an object, got a string",
      "/extra: unknown field"};
  for (const auto& line : expected)
    EXPECT_TRUE(contains(report.errors, line)) << line << "\nin:\n" << joined(report.errors);
  EXPECT_EQ(report.errors.size(), expected.size()) << joined(report.errors);
  EXPECT_EQ(report.created, 0);
  EXPECT_EQ(configRows(db), 0);
}

TEST(ConfigImport, UnknownReferencesAreAllReportedAndNothingIsWritten) {
  test::TestDatabase db;
  ImportReport report = importConfig(db.conn(), json::parse(R"({
    "projects": [{"name": "y", "repositories": [
        {"name": "y", "vcs": "git", "url": "/y", "parent": "nowhere/z", "branches": [{"name": "main"}]}],
      "builders": [{"name": "b", "branches": [{"repository": "y", "branch": "x"},
                                              {"repository": "q", "branch": "main"}]}]}],
    "mirrors": [{"name": "m", "source": {"project": "y", "repository": "y", "branch": "gone"},
                 "target": {"project": "y", "repository": "t", "branch": "main"}}]})"));
  std::vector<std::string> expected = {
      "/projects/0/repositories/0/parent: unknown repository \"z\" of project \"nowhere\"",
      "/projects/0/builders/0/branches/0: unknown branch \"x\" of repository \"y\"",
      "/projects/0/builders/0/branches/1/repository: unknown repository \"q\" of project \"y\"",
      "/mirrors/0/source: unknown branch \"gone\" of repository \"y\" of project \"y\"",
      "/mirrors/0/target: unknown repository \"t\" of project \"y\""};
  for (const auto& line : expected)
    EXPECT_TRUE(contains(report.errors, line)) << line << "\nin:\n" << joined(report.errors);
  EXPECT_EQ(report.errors.size(), expected.size()) << joined(report.errors);
  EXPECT_EQ(configRows(db), 0);
}

TEST(ConfigImport, ForkCycleIsRefused) {
  test::TestDatabase db;
  ImportReport report = importConfig(db.conn(), json::parse(R"({"projects": [{"name": "p",
    "repositories": [{"name": "a", "vcs": "git", "url": "/a", "parent": "b"},
                     {"name": "b", "vcs": "git", "url": "/b", "parent": "a"}]}]})"));
  EXPECT_TRUE(contains(report.errors, "/projects/0/repositories/0/parent: makes a cycle of forks"))
      << joined(report.errors);
  EXPECT_EQ(configRows(db), 0);
}

TEST(ConfigImport, RowsRefusedByTheDatabaseAreReportedWithTheirPathAndNothingIsHalfApplied) {
  test::TestDatabase db;
  ImportReport report = importConfig(db.conn(), json::parse(R"({
    "projects": [{"name": "fine", "repositories": [
      {"name": "good", "vcs": "git", "url": "/good"},
      {"name": "slow", "vcs": "git", "url": "/slow", "poll_interval": 0}]}],
    "workers": [{"name": "-dash"}, {"name": "ok"}]})"));
  ASSERT_EQ(report.errors.size(), 2u) << joined(report.errors);
  EXPECT_EQ(report.errors[0].rfind("/projects/0/repositories/1: ", 0), 0u) << report.errors[0];
  EXPECT_NE(report.errors[0].find("repository_poll_interval_check"), std::string::npos)
      << report.errors[0];
  EXPECT_EQ(report.errors[1].rfind("/workers/0: ", 0), 0u) << report.errors[1];
  EXPECT_NE(report.errors[1].find("pefnos.name"), std::string::npos) << report.errors[1];
  EXPECT_EQ(report.created, 0);
  EXPECT_EQ(configRows(db), 0);
}

TEST(ConfigImport, JsonSyntaxErrorIsReportedWithItsPosition) {
  test::TestDatabase db;
  std::string path = "/tmp/pefnos-config-test-" + std::to_string(getpid()) + ".json";
  {
    std::ofstream out(path);
    out << "{\n  \"workers\": [\n    {\"name\": \"w\",}\n  ]\n}\n";
  }
  Result<ImportReport> result = importFile(db.conn(), path);
  unlink(path.c_str());
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("line 3"), std::string::npos) << result.error().message;
  EXPECT_NE(result.error().message.find(path), std::string::npos) << result.error().message;
  EXPECT_EQ(configRows(db), 0);
}

TEST(ConfigImport, MissingFileIsAnError) {
  test::TestDatabase db;
  Result<ImportReport> result = importFile(db.conn(), "/nonexistent/pefnos.json");
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("/nonexistent/pefnos.json"), std::string::npos);
}

TEST(ConfigExport, ARowNestedTooDeepToImportAgainIsAnError) {
  test::TestDatabase db;
  ASSERT_TRUE(importConfig(db.conn(), demoExample()).errors.empty());
  db.scalar("UPDATE pefnos.worker SET tags = '{\"a\": " + std::string(300, '[') + std::string(300, ']') + "}'");
  auto exported = exportConfig(db.conn());
  ASSERT_FALSE(exported.ok());
  EXPECT_EQ(exported.error().message, "the tags of worker '" + db.scalar("SELECT name FROM pefnos.worker") +
                                          "' are nested more than 256 deep");
}

TEST(ConfigExport, DiscoveredBranchesAreLeftOut) {
  test::TestDatabase db;
  ASSERT_TRUE(importConfig(db.conn(), demoExample()).errors.empty());
  db.scalar(
      "INSERT INTO pefnos.branch (repository_id, name, origin_id) SELECT repository_id, "
      "'feature/found', id FROM pefnos.branch WHERE name = 'feature/*'");
  EXPECT_EQ(exportConfig(db.conn()).value(), demoExample());
}

// --- The model, on a real loop

class ConfigModel : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop), 0);
    ImportReport report = importConfig(db.conn(), demoExample());
    ASSERT_TRUE(report.errors.empty()) << joined(report.errors);
    database = std::make_unique<db::Database>(&loop, db::Database::Options{db.conninfo(), 2, "db"});
    listener = std::make_unique<db::Listener>(&loop, db.conninfo());
    model = std::make_unique<Model>(*database, *listener);
    model->onChange([this](const Change& c) { changes.push_back(c); });
  }
  void TearDown() override {
    model.reset();
    listener.reset();
    database.reset();
    uv_run(&loop, UV_RUN_DEFAULT);  // the closes started by the destructors
    EXPECT_EQ(uv_loop_close(&loop), 0) << "a handle was leaked";
  }
  void startListening() {
    model->start();
    listener->start();
    ASSERT_TRUE(runUntil([this] { return model->loaded(); })) << "no initial load";
    changes.clear();
  }
  // Runs the loop until condition() holds; false after 10 s.
  bool runUntil(const std::function<bool()>& condition) {
    loop::Timer tick(&loop);  // uv_run(ONCE) returns at least this often
    tick.start(5, 5, [] {});
    uint64_t deadline = uv_now(&loop) + 10000;
    while (!condition()) {
      if (uv_now(&loop) > deadline) return false;
      uv_run(&loop, UV_RUN_ONCE);
    }
    return true;
  }
  // Waits for a full reload to finish; returns its count of changes. Reads are
  // queued in order, so every NOTIFY received before has been applied by then.
  int reloadAndWait() {
    std::optional<Result<int>> result;
    model->reload([&](Result<int> r) { result.emplace(std::move(r)); });
    EXPECT_TRUE(runUntil([&] { return result.has_value(); }));
    if (!result || !result->ok()) {
      ADD_FAILURE() << "reload failed";
      return -1;
    }
    return **result;
  }
  int idOf(const std::string& sql) { return std::stoi(db.scalar(sql)); }

  test::TestDatabase db;
  uv_loop_t loop;
  std::unique_ptr<db::Database> database;
  std::unique_ptr<db::Listener> listener;
  std::unique_ptr<Model> model;
  std::vector<Change> changes;
};

TEST_F(ConfigModel, InitialLoadSeesEveryRow) {
  startListening();
  EXPECT_EQ(model->projects().size(), 1u);
  EXPECT_EQ(model->repositories().size(), 5u);
  EXPECT_EQ(model->branches().size(), 6u);
  EXPECT_EQ(model->builders().size(), 2u);
  EXPECT_EQ(model->builderBranches().size(), 5u);
  EXPECT_EQ(model->workers().size(), 1u);
  EXPECT_EQ(model->mirrors().size(), 1u);
  EXPECT_TRUE(model->pluginDirectories().empty());

  auto fork = model->repository(idOf("SELECT id FROM pefnos.repository WHERE name = 'demo-fork'"));
  ASSERT_TRUE(fork);
  EXPECT_EQ(fork->parent_id, idOf("SELECT id FROM pefnos.repository WHERE name = 'demo'"));
  EXPECT_EQ(fork->poll_interval, 300);
  EXPECT_FALSE(fork->trusted);
  auto test = model->builder(idOf("SELECT id FROM pefnos.builder WHERE name = 'test'"));
  ASSERT_TRUE(test);
  EXPECT_EQ(test->requires_tags, json({{"os", "debian"}}));
  EXPECT_EQ(test->steps.size(), 2u);
  EXPECT_EQ(model->worker(idOf("SELECT id FROM pefnos.worker"))->secret_hash, std::nullopt);
  EXPECT_EQ(model->repository(9999), nullptr);
}

TEST_F(ConfigModel, UpdatedRowArrivesAloneAndOtherSnapshotsKeepTheirIdentity) {
  startListening();
  int demo = idOf("SELECT id FROM pefnos.repository WHERE name = 'demo'");
  int fork = idOf("SELECT id FROM pefnos.repository WHERE name = 'demo-fork'");
  auto old_demo = model->repository(demo);
  auto old_fork = model->repository(fork);
  auto old_branches = model->branches();

  db.scalar("UPDATE pefnos.repository SET poll_interval = 120 WHERE name = 'demo'");
  ASSERT_TRUE(runUntil([&] { return !changes.empty(); })) << "the NOTIFY never arrived";
  EXPECT_EQ(reloadAndWait(), 0);  // nothing else differs from the rows

  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].table, "repository");
  EXPECT_EQ(changes[0].id, demo);
  EXPECT_EQ(changes[0].kind, Change::Kind::updated);
  EXPECT_NE(model->repository(demo), old_demo);
  EXPECT_EQ(model->repository(demo)->poll_interval, 120);
  EXPECT_EQ(old_demo->poll_interval, 60);  // the old snapshot is untouched
  EXPECT_EQ(model->repository(fork), old_fork);
  for (const auto& [id, branch] : old_branches) EXPECT_EQ(model->branch(id), branch);
}

TEST_F(ConfigModel, DeactivatedRowIsReflected) {
  startListening();
  int main = idOf("SELECT id FROM pefnos.branch WHERE name = 'main' ORDER BY id LIMIT 1");
  auto before = model->branch(main);
  db.scalar("UPDATE pefnos.branch SET active = false WHERE id = " + std::to_string(main));
  ASSERT_TRUE(runUntil([&] { return !model->branch(main)->active; }));
  EXPECT_TRUE(before->active);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].table, "branch");
}

TEST_F(ConfigModel, InsertedAndDeletedRowsArriveIncrementally) {
  startListening();
  int worker =
      idOf("INSERT INTO pefnos.worker (name, tags) VALUES ('w9', '{\"a\": 1}') RETURNING id");
  ASSERT_TRUE(runUntil([&] { return model->worker(worker) != nullptr; }));
  EXPECT_EQ(model->worker(worker)->tags, json({{"a", 1}}));
  int link = idOf(
      "DELETE FROM pefnos.builder_branch WHERE id = (SELECT min(id) FROM "
      "pefnos.builder_branch) RETURNING id");
  ASSERT_TRUE(runUntil([&] { return model->builderBranch(link) == nullptr; }));
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0].kind, Change::Kind::added);
  EXPECT_EQ(changes[1].kind, Change::Kind::removed);
  EXPECT_EQ(changes[1].table, "builder_branch");
  EXPECT_EQ(model->builderBranches().size(), 4u);
}

TEST_F(ConfigModel, ReloadFindsExactlyTheChangesMadeWhileNotListening) {
  // The listener is never started: no NOTIFY reaches the model.
  EXPECT_EQ(reloadAndWait(), 21);
  EXPECT_TRUE(model->loaded());
  auto workers_before = model->workers();
  changes.clear();

  int fork = idOf("SELECT id FROM pefnos.repository WHERE name = 'demo-fork'");
  int link = idOf("SELECT min(id) FROM pefnos.builder_branch");
  db.scalar("UPDATE pefnos.repository SET url = 'file:///elsewhere.git' WHERE id = " +
            std::to_string(fork));
  db.scalar("DELETE FROM pefnos.builder_branch WHERE id = " + std::to_string(link));
  int project = idOf("INSERT INTO pefnos.project (name) VALUES ('second') RETURNING id");
  db.scalar("UPDATE pefnos.worker SET slots = slots");  // a write that changes no value

  EXPECT_EQ(reloadAndWait(), 3);
  ASSERT_EQ(changes.size(), 3u);
  auto kindOf = [&](const std::string& table, int id) -> std::optional<Change::Kind> {
    for (const auto& c : changes) {
      if (c.table == table && c.id == id) return c.kind;
    }
    return std::nullopt;
  };
  EXPECT_EQ(kindOf("repository", fork), Change::Kind::updated);
  EXPECT_EQ(kindOf("builder_branch", link), Change::Kind::removed);
  EXPECT_EQ(kindOf("project", project), Change::Kind::added);
  EXPECT_EQ(model->repository(fork)->url, "file:///elsewhere.git");
  EXPECT_EQ(model->workers().begin()->second, workers_before.begin()->second);
}

TEST_F(ConfigModel, MalformedNotificationIsRecordedAndTheModelKeepsWorking) {
  startListening();
  db.scalar("SELECT pg_notify('pefnos_config', 'garbage')");
  db.scalar(R"(SELECT pg_notify('pefnos_config', '{"table": "pg_authid", "id": 1}'))");
  ASSERT_TRUE(runUntil([&] {
    return db.scalar("SELECT count(*) FROM pefnos.event WHERE source = 'config'") == "2";
  })) << "no event recorded";
  EXPECT_EQ(db.scalar("SELECT level FROM pefnos.event WHERE details->>'payload' = 'garbage'"),
            "warning");

  db.scalar("UPDATE pefnos.worker SET slots = 5");
  ASSERT_TRUE(runUntil([&] { return model->workers().begin()->second->slots == 5; }));
  EXPECT_EQ(changes.size(), 1u);
}

TEST_F(ConfigModel, ARowNestedTooDeepIsSkippedWithItsReasonAndKeepsItsLastGoodSnapshot) {
  startListening();
  const int test = idOf("SELECT id FROM pefnos.builder WHERE name = 'test'");
  auto before = model->builder(test);
  // An array, as the CHECK asks, 10,000 deep: written by hand, past any import.
  db.scalar("UPDATE pefnos.builder SET steps = '" + std::string(10000, '[') + std::string(10000, ']') +
            "' WHERE id = " + std::to_string(test));
  ASSERT_TRUE(runUntil([&] {
    return db.scalar("SELECT count(*) FROM pefnos.event WHERE source = 'config' AND level = 'warning'") == "1";
  })) << "no event recorded";
  EXPECT_EQ(db.scalar("SELECT message || ': ' || (details->>'table') || ' ' || (details->>'id') || ': ' || "
                      "(details->>'error') FROM pefnos.event WHERE source = 'config'"),
            "skipped an unreadable configuration row: builder " + std::to_string(test) +
                ": the row is nested more than 256 deep");
  EXPECT_EQ(model->builder(test), before) << "the last good snapshot is kept";
  EXPECT_EQ(model->builder(test)->steps.size(), 2u);
  // Mended, the row is taken again.
  db.scalar("UPDATE pefnos.builder SET steps = '[{\"type\": \"shell\", \"argv\": [\"true\"]}]' WHERE id = " +
            std::to_string(test));
  ASSERT_TRUE(runUntil([&] { return model->builder(test)->steps.size() == 1u; }));
}

TEST_F(ConfigModel, PluginDirectoryRowsAreModelledAndSaidToWaitForARestart) {
  startListening();
  testing::internal::CaptureStderr();
  int dir = idOf("INSERT INTO pefnos.plugin_directory (path) VALUES ('/opt/p') RETURNING id");
  ASSERT_TRUE(runUntil([&] { return model->pluginDirectory(dir) != nullptr; }));
  db.scalar("UPDATE pefnos.plugin_directory SET active = false");
  ASSERT_TRUE(runUntil([&] { return !model->pluginDirectory(dir)->active; }));
  std::string logged = testing::internal::GetCapturedStderr();

  EXPECT_EQ(model->pluginDirectory(dir)->path, "/opt/p");
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0].table, "plugin_directory");
  EXPECT_EQ(changes[0].kind, Change::Kind::added);
  EXPECT_NE(logged.find("plugin directory /opt/p added: plugin directories are read when the "
                        "master starts; the change takes effect when it restarts"),
            std::string::npos)
      << logged;
  EXPECT_NE(logged.find("plugin directory /opt/p deactivated"), std::string::npos) << logged;
  // Not an error: nothing was recorded as one.
  EXPECT_EQ(db.scalar("SELECT count(*) FROM pefnos.event WHERE source = 'config'"), "0");
}

TEST_F(ConfigModel, ReconnectedListenerCatchesUpOnChangesItMissed) {
  startListening();
  int worker = idOf("SELECT id FROM pefnos.worker");
  // The NOTIFY of this UPDATE is sent at COMMIT, when the LISTEN connection is
  // already gone: only the reload after reconnecting can see the change.
  {
    pqxx::work tx(db.conn());
    tx.exec("UPDATE pefnos.worker SET slots = 7");
    pqxx::result killed = tx.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
        "current_database() AND query LIKE 'LISTEN%'");
    ASSERT_EQ(killed.size(), 1u);
    tx.commit();
  }
  ASSERT_TRUE(runUntil([&] { return model->worker(worker)->slots == 7; }));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].table, "worker");
}

TEST_F(ConfigModel, DestroyingTheModelDuringAReadIsSafe) {
  bool called = false;
  model->reload([&](Result<int>) { called = true; });
  model.reset();
  ASSERT_TRUE(runUntil([&] { return database->pending() == 0; }));
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace pefnos::config
