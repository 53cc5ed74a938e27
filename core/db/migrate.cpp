#include "core/db/migrate.h"

#include <algorithm>

namespace pefnos::db {
namespace {

// Serialises concurrent `db migrate` runs (and masters starting at once).
constexpr long long kMigrationLock = 0x7065666e6f73;  // "pefnos"

const char* kVersionTable = R"(
  CREATE SCHEMA IF NOT EXISTS pefnos;
  CREATE TABLE IF NOT EXISTS pefnos.schema_migration (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
  ))";

int currentVersion(pqxx::transaction_base& tx) {
  auto exists = tx.exec("SELECT to_regclass('pefnos.schema_migration') IS NOT NULL");
  if (!exists[0][0].as<bool>()) return 0;
  return tx.exec("SELECT coalesce(max(version), 0) FROM pefnos.schema_migration")[0][0].as<int>();
}

std::string newerMessage(int current, int latest) {
  return "the database schema is version " + std::to_string(current) +
         ", newer than this pefnos binary knows (" + std::to_string(latest) +
         "): upgrade pefnos, or use a database that matches it";
}

}  // namespace

int latestSchemaVersion() { return migrations().empty() ? 0 : migrations().back().version; }

Result<std::vector<int>> migrate(pqxx::connection& conn) {
  const int latest = latestSchemaVersion();
  try {
    pqxx::work tx(conn);
    tx.exec("SELECT pg_advisory_xact_lock(" + std::to_string(kMigrationLock) + ")");
    tx.exec(kVersionTable);
    const int current = currentVersion(tx);
    if (current > latest) return Error{newerMessage(current, latest)};
    std::vector<int> applied;
    for (const Migration& m : migrations()) {
      if (m.version <= current) continue;
      try {
        tx.exec(m.sql);
      } catch (const pqxx::sql_error& e) {
        return Error{"migration " + std::to_string(m.version) + " (" + m.name +
                     ") failed, nothing was applied: " + e.what()};
      }
      tx.exec_params("INSERT INTO pefnos.schema_migration (version, name, checksum) "
                     "VALUES ($1, $2, md5($3))",
                     m.version, std::string(m.name), std::string(m.sql));
      applied.push_back(m.version);
    }
    tx.commit();
    return applied;
  } catch (const std::exception& e) {
    return Error{std::string("migration failed, nothing was applied: ") + e.what()};
  }
}

Result<SchemaStatus> schemaStatus(pqxx::connection& conn) {
  SchemaStatus status;
  status.latest = latestSchemaVersion();
  try {
    pqxx::read_transaction tx(conn);
    status.current = currentVersion(tx);
    if (status.current == 0) return status;
    auto rows = tx.exec(
        "SELECT version, name, to_char(applied_at, 'YYYY-MM-DD HH24:MI:SS TZ'), checksum "
        "FROM pefnos.schema_migration ORDER BY version");
    for (const auto& row : rows) {
      AppliedMigration a{row[0].as<int>(), row[1].as<std::string>(), row[2].as<std::string>(),
                         true};
      auto it = std::find_if(migrations().begin(), migrations().end(),
                             [&](const Migration& m) { return m.version == a.version; });
      if (it != migrations().end()) {
        auto sum = tx.exec_params("SELECT md5($1)", std::string(it->sql));
        a.checksum_matches = sum[0][0].as<std::string>() == row[3].as<std::string>();
      }
      status.applied.push_back(std::move(a));
    }
    return status;
  } catch (const std::exception& e) {
    return Error{std::string("cannot read the schema version: ") + e.what()};
  }
}

Status checkSchema(pqxx::connection& conn) {
  auto status = schemaStatus(conn);
  if (!status) return status.error();
  if (status->current > status->latest) return Error{newerMessage(status->current, status->latest)};
  if (status->current < status->latest) {
    return Error{"the database schema is version " + std::to_string(status->current) +
                 ", this pefnos needs " + std::to_string(status->latest) +
                 ": run `pefnos db migrate`"};
  }
  return ok();
}

}  // namespace pefnos::db
