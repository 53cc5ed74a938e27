// core/db against a real PostgreSQL: the loop is never blocked, NOTIFY reaches
// subscribers, errors are values, migrations behave, bad rows are refused.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "core/db/db.h"
#include "core/db/migrate.h"
#include "core/loop/loop.h"
#include "tests/support/testdb.h"

namespace pefnos {
namespace {

using namespace std::chrono;

class DbTest : public ::testing::Test {
 protected:
  void SetUp() override { uv_loop_init(&loop_); }
  void TearDown() override {
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was leaked";
  }
  // Runs the loop until done() or the timeout; returns done().
  bool runUntil(const std::function<bool()>& done, milliseconds timeout = seconds(10)) {
    loop::Timer guard(&loop_);
    auto deadline = steady_clock::now() + timeout;
    guard.start(5, 5, [&] {
      if (done() || steady_clock::now() > deadline) uv_stop(&loop_);
    });
    uv_run(&loop_, UV_RUN_DEFAULT);
    return done();
  }

  uv_loop_t loop_;
  test::TestDatabase tdb_;
};

TEST_F(DbTest, SlowQueryDoesNotDelayTimer) {
  db::Database db(&loop_, {tdb_.conninfo(), 1, "db"});
  bool finished = false;
  db.transact<int>([](pqxx::work& tx) { return tx.exec("SELECT 1 FROM pg_sleep(1.0)").size(); },
                   [&](Result<int> r) {
                     ASSERT_TRUE(r.ok()) << r.error().message;
                     finished = true;
                   });
  int ticks = 0;
  auto last = steady_clock::now();
  milliseconds longest{0};
  loop::Timer tick(&loop_);
  tick.start(10, 10, [&] {
    auto now = steady_clock::now();
    if (!finished) {
      ++ticks;
      longest = std::max(longest, duration_cast<milliseconds>(now - last));
    }
    last = now;
  });
  ASSERT_TRUE(runUntil([&] { return finished; }));
  // A blocked loop would show one tick and a gap of a whole second.
  EXPECT_GE(ticks, 20);
  EXPECT_LT(longest.count(), 500);
}

TEST_F(DbTest, ListenerDeliversNotifyToSubscribers) {
  db::Database db(&loop_, {tdb_.conninfo(), 1, "db"});
  db::Listener listener(&loop_, tdb_.conninfo());
  std::vector<std::string> got;
  listener.subscribe("test_channel", [&](const std::string& p) { got.push_back(p); });
  listener.onListening([&] {
    db.transact<int>(
        [](pqxx::work& tx) {
          tx.exec("SELECT pg_notify('test_channel', 'one'), pg_notify('other', 'x')");
          tx.exec("SELECT pg_notify('test_channel', 'two')");
          return 0;
        },
        [](Result<int>) {});
  });
  listener.start();
  ASSERT_TRUE(runUntil([&] { return got.size() >= 2; }));
  EXPECT_EQ(got, (std::vector<std::string>{"one", "two"}));
}

TEST_F(DbTest, ChannelSubscribedLaterIsListened) {
  db::Database db(&loop_, {tdb_.conninfo(), 1, "db"});
  db::Listener listener(&loop_, tdb_.conninfo());
  listener.subscribe("first", [](const std::string&) {});
  listener.start();
  ASSERT_TRUE(runUntil([&] { return listener.listening(); }));
  std::string got;
  listener.subscribe("late", [&](const std::string& p) { got = p; });
  // LISTEN happens on the listener's thread: notify until it is heard.
  loop::Timer again(&loop_);
  again.start(0, 50, [&] {
    db.transact<int>([](pqxx::work& tx) { tx.exec("NOTIFY late, 'heard'"); return 0; },
                     [](Result<int>) {});
  });
  ASSERT_TRUE(runUntil([&] { return !got.empty(); }));
  EXPECT_EQ(got, "heard");
}

TEST_F(DbTest, ListenerHoldsABoundedBacklogWhileTheLoopIsBusyAndLosesNothing) {
  // 3,000 notifications of 1 kB while the loop does not run: the listener
  // reads up to its bound (64 kB here), then leaves the rest with the server.
  db::Listener listener(&loop_, tdb_.conninfo(), {.notifications = 10000, .bytes = 64 << 10});
  std::vector<std::string> got;
  listener.subscribe("burst", [&](const std::string& p) { got.push_back(p); });
  listener.start();
  ASSERT_TRUE(runUntil([&] { return listener.listening(); }));
  constexpr int kSent = 3000;
  {
    pqxx::connection conn(tdb_.conninfo());
    for (int batch = 0; batch < kSent / 100; ++batch) {
      pqxx::work tx(conn);
      tx.exec("SELECT count(pg_notify('burst', lpad(g::text, 1000, '-'))) FROM generate_series(" +
              std::to_string(batch * 100 + 1) + ", " + std::to_string(batch * 100 + 100) + ") g");
      tx.commit();
    }
  }
  const auto deadline = steady_clock::now() + seconds(10);
  while (listener.pauses() == 0 && steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(10));
  std::this_thread::sleep_for(milliseconds(200));  // a listener without a bound would read on meanwhile
  EXPECT_GE(listener.pauses(), 1u);
  // At most the bound and what one read of the socket brings with it.
  EXPECT_LT(listener.queuedHighWater(), 1000u) << "of " << kSent;
  EXPECT_TRUE(got.empty()) << "the loop did not run";
  ASSERT_TRUE(runUntil([&] { return got.size() >= kSent; }, seconds(30))) << got.size();
  ASSERT_EQ(got.size(), static_cast<size_t>(kSent));
  for (int i = 0; i < kSent; ++i) {
    ASSERT_EQ(got[i].substr(got[i].find_first_not_of('-')), std::to_string(i + 1)) << "in order, none lost";
  }
  EXPECT_EQ(listener.queued(), 0u);
  EXPECT_EQ(listener.queuedBytes(), 0u);
}

TEST_F(DbTest, QueryErrorIsAValueAndTheConnectionGoesOn) {
  db::Database db(&loop_, {tdb_.conninfo(), 1, "db"});
  std::optional<Result<int>> first, second;
  db.transact<int>([](pqxx::work& tx) { return tx.exec("SELECT 1/0")[0][0].as<int>(); },
                   [&](Result<int> r) { first = std::move(r); });
  db.transact<int>([](pqxx::work& tx) { return tx.exec("SELECT 41 + 1")[0][0].as<int>(); },
                   [&](Result<int> r) { second = std::move(r); });
  ASSERT_TRUE(runUntil([&] { return second.has_value(); }));
  ASSERT_FALSE(first->ok());
  EXPECT_NE(first->error().message.find("division by zero"), std::string::npos);
  ASSERT_TRUE(second->ok());
  EXPECT_EQ(second->value(), 42);
}

TEST_F(DbTest, RolledBackOnError) {
  db::Database db(&loop_, {tdb_.conninfo(), 1, "db"});
  bool done = false;
  db.transact<int>(
      [](pqxx::work& tx) -> int {
        tx.exec("INSERT INTO pefnos.project (name) VALUES ('half')");
        throw std::runtime_error("changed my mind");
      },
      [&](Result<int> r) {
        EXPECT_EQ(r.error().message, "changed my mind");
        done = true;
      });
  ASSERT_TRUE(runUntil([&] { return done; }));
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.project"), "0");
}

TEST(Migrate, AppliesOnceAndRecordsVersion) {
  test::TestDatabase tdb(false);
  auto first = db::migrate(tdb.conn());
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(first->size(), db::migrations().size());
  auto second = db::migrate(tdb.conn());
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->empty());
  EXPECT_EQ(tdb.scalar("SELECT max(version) FROM pefnos.schema_migration"),
            std::to_string(db::latestSchemaVersion()));
  auto status = db::schemaStatus(tdb.conn());
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->current, status->latest);
  EXPECT_TRUE(status->applied.at(0).checksum_matches);
}

TEST(Migrate, RefusesNewerSchema) {
  test::TestDatabase tdb;
  tdb.scalar("INSERT INTO pefnos.schema_migration (version, name, checksum) VALUES (999, 'future', 'x')");
  auto r = db::migrate(tdb.conn());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("newer than this pefnos binary"), std::string::npos);
  auto check = db::checkSchema(tdb.conn());
  ASSERT_FALSE(check.ok());
  EXPECT_EQ(tdb.scalar("SELECT count(*) FROM pefnos.schema_migration"),
            std::to_string(db::migrations().size() + 1));
}

TEST(Migrate, CheckSchemaAsksForMigrationOfEmptyDatabase) {
  test::TestDatabase tdb(false);
  auto check = db::checkSchema(tdb.conn());
  ASSERT_FALSE(check.ok());
  EXPECT_NE(check.error().message.find("pefnos db migrate"), std::string::npos);
}

// The database itself refuses bad rows: each statement must fail.
TEST(Schema, RefusesBadRows) {
  test::TestDatabase tdb;
  tdb.scalar("INSERT INTO pefnos.project (id, name) VALUES (1, 'p')");
  tdb.scalar("INSERT INTO pefnos.repository (id, project_id, name, vcs, url) VALUES (1, 1, 'r', 'git', '/x')");
  const std::vector<std::string> bad = {
      "INSERT INTO pefnos.project (name) VALUES ('-rf')",
      "INSERT INTO pefnos.project (name) VALUES ('a/b')",
      "INSERT INTO pefnos.project (name) VALUES ('p')",  // duplicate
      "INSERT INTO pefnos.repository (project_id, name, vcs, url) VALUES (99, 'x', 'git', '/x')",
      "INSERT INTO pefnos.repository (project_id, name, vcs, url, poll_interval) VALUES (1, 'x', 'git', '/x', 0)",
      "INSERT INTO pefnos.repository (project_id, name, vcs, url) VALUES (1, 'x', 'Git Hub', '/x')",
      "INSERT INTO pefnos.repository (project_id, name, vcs, url) VALUES (1, 'x', 'git', '--upload-pack=evil')",
      "UPDATE pefnos.repository SET parent_id = id",
      "INSERT INTO pefnos.branch (repository_id, name) VALUES (1, '--force')",
      "INSERT INTO pefnos.branch (repository_id, name) VALUES (1, 'a/../../etc')",
      "INSERT INTO pefnos.branch (repository_id, name) VALUES (1, E'evil\\nname')",
      "INSERT INTO pefnos.builder (project_id, name, steps) VALUES (1, 'b', '{}')",
      "INSERT INTO pefnos.builder (project_id, name, max_concurrent) VALUES (1, 'b', 0)",
      "INSERT INTO pefnos.worker (name, slots) VALUES ('w', 0)",
      "INSERT INTO pefnos.worker (name, tags) VALUES ('w', '[]')",
      "INSERT INTO pefnos.command (kind) VALUES ('Drop Table')",
      "INSERT INTO pefnos.command (kind, state) VALUES ('ping', 'exploded')",
      "INSERT INTO pefnos.command (kind, state) VALUES ('ping', 'running')",  // running needs a claim
      "INSERT INTO pefnos.command (kind, state, finished_at) VALUES ('ping', 'failed', now())",  // no error
      "INSERT INTO pefnos.command (kind, args) VALUES ('ping', '[1]')",
      "SELECT pefnos.poll_now(12345)",
      "SELECT pefnos.force_build(1, 1)",
  };
  for (const auto& sql : bad) {
    EXPECT_THROW(tdb.scalar(sql), pqxx::sql_error) << sql;
  }
  EXPECT_EQ(tdb.scalar("SELECT count(*) FROM pefnos.command"), "0");
}

TEST(Schema, GuiFunctionsInsertCommandsAndNotify) {
  test::TestDatabase tdb;
  tdb.scalar("INSERT INTO pefnos.project (id, name) VALUES (1, 'p')");
  tdb.scalar("INSERT INTO pefnos.repository (id, project_id, name, vcs, url) VALUES (7, 1, 'r', 'git', '/x')");
  pqxx::connection listener(tdb.conninfo());
  struct Rx : pqxx::notification_receiver {
    using notification_receiver::notification_receiver;
    std::vector<std::string> got;
    void operator()(const std::string& p, int) override { got.push_back(p); }
  } rx(listener, "pefnos_command");
  std::string id = tdb.scalar("SELECT pefnos.poll_now(7)");
  EXPECT_EQ(tdb.scalar("SELECT kind || ' ' || (args->>'repository') || ' ' || state FROM pefnos.command WHERE id = " + id),
            "poll-now 7 queued");
  listener.await_notification(5, 0);
  ASSERT_EQ(rx.got.size(), 1u);
  EXPECT_EQ(rx.got[0], id);
}

}  // namespace
}  // namespace pefnos
