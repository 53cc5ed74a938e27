// Schema migrations: config/schema/NNNN_name.sql, embedded in the binary.
// Applied in one transaction under an advisory lock, recorded in
// pefnos.schema_migration; a database newer than the binary is refused.
#pragma once

#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "core/base/result.h"

namespace pefnos::db {

struct Migration {
  int version;
  const char* name;
  const char* sql;
};

// Every migration this binary carries, in version order.
const std::vector<Migration>& migrations();
int latestSchemaVersion();

struct AppliedMigration {
  int version;
  std::string name;
  std::string applied_at;
  bool checksum_matches;  // false: the file changed after it was applied
};

struct SchemaStatus {
  int current = 0;  // 0: no pefnos schema yet
  int latest = 0;   // what this binary carries
  std::vector<AppliedMigration> applied;
};

// Returns the versions applied by this call (empty when already up to date).
Result<std::vector<int>> migrate(pqxx::connection& conn);
Result<SchemaStatus> schemaStatus(pqxx::connection& conn);
// Ok when the schema is exactly the binary's; otherwise an error saying what to do.
Status checkSchema(pqxx::connection& conn);

}  // namespace pefnos::db
