#include "tests/support/testdb.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "core/cluster/cluster.h"
#include "core/db/migrate.h"

namespace pefnos::test {
namespace {
std::string testHome() {
  const char* home = std::getenv("PEFNOS_TEST_HOME");
  if (home == nullptr || *home == '\0') {
    throw std::runtime_error("PEFNOS_TEST_HOME is not set: run the test through ctest");
  }
  return home;
}
}  // namespace

std::string clusterConninfo(const std::string& dbname) {
  return cluster::conninfo(cluster::layoutFor(testHome()), dbname);
}

std::string pefnosBinary() { return PEFNOS_BINARY; }

TestDatabase::TestDatabase(bool migrated) {
  static std::atomic<int> counter{0};
  name_ = "t_" + std::to_string(getpid()) + "_" + std::to_string(counter++);
  conninfo_ = clusterConninfo(name_);
  {
    pqxx::connection admin(clusterConninfo("postgres"));
    pqxx::nontransaction tx(admin);
    tx.exec("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
    tx.exec("CREATE DATABASE " + name_ + " TEMPLATE template0");
  }
  if (migrated) {
    pqxx::connection c(conninfo_);
    auto applied = db::migrate(c);
    if (!applied) throw std::runtime_error(applied.error().message);
  }
}

TestDatabase::~TestDatabase() {
  conn_.reset();
  try {
    pqxx::connection admin(clusterConninfo("postgres"));
    pqxx::nontransaction tx(admin);
    tx.exec("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  } catch (const std::exception&) {
    // The cluster is removed at the end of the run anyway.
  }
}

pqxx::connection& TestDatabase::conn() {
  if (!conn_ || !conn_->is_open()) conn_ = std::make_unique<pqxx::connection>(conninfo_);
  return *conn_;
}

std::string TestDatabase::scalar(const std::string& sql) {
  pqxx::work tx(conn());
  auto r = tx.exec(sql);
  tx.commit();
  if (r.empty() || r[0].empty() || r[0][0].is_null()) return "";
  return r[0][0].as<std::string>();
}

}  // namespace pefnos::test
