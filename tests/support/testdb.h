// Test harness: the private PostgreSQL that the CTest fixture `pg` starts once
// per run (its home is in PEFNOS_TEST_HOME), and a fresh database per test.
#pragma once

#include <memory>
#include <pqxx/pqxx>
#include <string>

namespace pefnos::test {

// The connection string of a database of the test cluster.
std::string clusterConninfo(const std::string& dbname);

// A fresh database, migrated to the binary's schema unless told otherwise;
// dropped (with its connections) when the object dies.
class TestDatabase {
 public:
  explicit TestDatabase(bool migrated = true);
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;  // owns a database
  TestDatabase& operator=(const TestDatabase&) = delete;

  const std::string& name() const { return name_; }
  const std::string& conninfo() const { return conninfo_; }
  // A connection for the test's own queries.
  pqxx::connection& conn();
  // Runs one statement in its own transaction and returns the first field, if any.
  std::string scalar(const std::string& sql);

 private:
  std::string name_, conninfo_;
  std::unique_ptr<pqxx::connection> conn_;
};

// The pefnos binary under test.
std::string pefnosBinary();

}  // namespace pefnos::test
