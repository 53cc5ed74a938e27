// The config room: the configuration rows (project, repository, branch,
// builder, builder_branch, worker, mirror, plugin_directory) as JSON in and
// out of the database, and as an in-memory model that the master keeps
// current from NOTIFYs.
//
// Import/export are synchronous (for the CLI, never on the loop thread). The
// Model is asynchronous: it only reads, through db::Database, and never writes
// configuration; the rows stay the truth.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/base/result.h"

namespace pefnos::db {
class Database;
class Listener;
}  // namespace pefnos::db

namespace pefnos::config {

// --- Import / export of the JSON format (see config/examples/README.md)

struct ImportReport {
  int created = 0, updated = 0, unchanged = 0;
  std::vector<std::string> errors;  // "JSON-pointer: message"; non-empty: nothing was written
};

// Validates the whole document, then upserts it by names (plugin directories
// by path) in one transaction; rows absent from the document are left alone,
// unchanged rows are not touched.
ImportReport importConfig(pqxx::connection& conn, const nlohmann::json& doc);
// Only the document's own shape (types, required and unknown fields, duplicate
// names), without the database: references are left to importConfig.
std::vector<std::string> checkDocument(const nlohmann::json& doc);
// Reads and parses the file, then importConfig; a file or syntax error is an Error.
Result<ImportReport> importFile(pqxx::connection& conn, const std::string& path);
// The canonical form: every field present, lists sorted by name (plugin
// directories by path); discovered branches are left out. A row whose jsonb
// nests deeper than any import takes (written by hand) is an Error.
Result<nlohmann::json> exportConfig(pqxx::connection& conn);
// The paths of the active plugin_directory rows, in the order they were added:
// where a master (and `pefnos plugins list`) loads plugins from besides its own.
std::vector<std::string> activePluginDirectories(pqxx::transaction_base& tx);

// --- The in-memory model: immutable snapshots of rows (timestamps left out,
// so a row equals its previous snapshot unless a configured value changed).

struct Project {
  int id = 0;
  std::string name, description;
  bool active = true;
  bool operator==(const Project&) const = default;
};

struct Repository {
  int id = 0, project_id = 0;
  std::string name, vcs, url;
  std::optional<int> parent_id;  // the repository this one is a fork of
  int poll_interval = 60;        // seconds
  bool trusted = true, active = true;
  bool operator==(const Repository&) const = default;
};

struct Branch {
  int id = 0, repository_id = 0;
  std::string name;
  bool pattern = false;          // name is a glob that discovers branches
  std::optional<int> origin_id;  // set: discovered by that pattern branch
  bool active = true;
  bool operator==(const Branch&) const = default;
};

struct Builder {
  int id = 0, project_id = 0;
  std::string name, description;
  nlohmann::json steps = nlohmann::json::array();
  nlohmann::json requires_tags = nlohmann::json::object();
  nlohmann::json properties = nlohmann::json::object();
  bool trusted = true;  // needs a trusted worker
  int max_concurrent = 1;
  bool active = true;
  bool operator==(const Builder&) const = default;
};

struct BuilderBranch {
  int id = 0, builder_id = 0, branch_id = 0;
  bool active = true;
  bool operator==(const BuilderBranch&) const = default;
};

struct Worker {
  int id = 0;
  std::string name;
  std::optional<std::string> secret_hash;
  nlohmann::json tags = nlohmann::json::object();
  bool trusted = true;
  int slots = 1;
  bool active = true;
  bool operator==(const Worker&) const = default;
};

struct Mirror {
  int id = 0;
  std::string name, kind = "branch";
  std::optional<std::string> collection;
  int source_branch_id = 0, target_repository_id = 0;
  std::string target_branch;
  int delay = 30;  // seconds
  std::string verify = "all";
  bool active = true;
  bool operator==(const Mirror&) const = default;
};

// A directory the master loads plugins from, besides the built-in one. Read
// when a master starts: a change takes effect at its next start.
struct PluginDirectory {
  int id = 0;
  std::string path;  // absolute
  bool active = true;
  bool operator==(const PluginDirectory&) const = default;
};

template <class T>
using Rows = std::map<int, std::shared_ptr<const T>>;

// Every configuration table, as the model holds it.
struct Tables {
  Rows<Project> projects;
  Rows<Repository> repositories;
  Rows<Branch> branches;
  Rows<Builder> builders;
  Rows<BuilderBranch> builder_branches;
  Rows<Worker> workers;
  Rows<Mirror> mirrors;
  Rows<PluginDirectory> plugin_directories;
};

struct Change {
  enum class Kind { added, updated, removed };
  std::string table;  // the SQL table name: "repository", "builder_branch", ...
  int id;
  Kind kind;
};

// Lives on the loop thread. Work that holds a snapshot (a shared_ptr) keeps it
// unchanged; the model only ever swaps entries. Reads are queued one at a
// time, so results apply in the order they were read.
class Model {
 public:
  Model(db::Database& database, db::Listener& listener);
  ~Model();
  Model(const Model&) = delete;  // callbacks of the database and listener point at it
  Model& operator=(const Model&) = delete;

  // Subscribes to pefnos_config; each (re)established LISTEN triggers a full,
  // diffing reload. Call before Listener::start().
  void start();
  // A full reload applied as a difference; done gets the number of changed entries.
  void reload(std::function<void(Result<int>)> done);
  // Fired after each real change has been applied.
  void onChange(std::function<void(const Change&)> callback);
  bool loaded() const { return loaded_; }

  const Rows<Project>& projects() const { return tables_.projects; }
  const Rows<Repository>& repositories() const { return tables_.repositories; }
  const Rows<Branch>& branches() const { return tables_.branches; }
  const Rows<Builder>& builders() const { return tables_.builders; }
  const Rows<BuilderBranch>& builderBranches() const { return tables_.builder_branches; }
  const Rows<Worker>& workers() const { return tables_.workers; }
  const Rows<Mirror>& mirrors() const { return tables_.mirrors; }
  const Rows<PluginDirectory>& pluginDirectories() const { return tables_.plugin_directories; }

  std::shared_ptr<const Project> project(int id) const;
  std::shared_ptr<const Repository> repository(int id) const;
  std::shared_ptr<const Branch> branch(int id) const;
  std::shared_ptr<const Builder> builder(int id) const;
  std::shared_ptr<const BuilderBranch> builderBranch(int id) const;
  std::shared_ptr<const Worker> worker(int id) const;
  std::shared_ptr<const Mirror> mirror(int id) const;
  std::shared_ptr<const PluginDirectory> pluginDirectory(int id) const;

 private:
  using RowKey = std::pair<std::string, int>;  // table, id
  struct Loaded;
  void handleNotification(const std::string& payload);
  void readNext();
  int applyLoaded(Loaded& loaded, bool full);  // returns the number of changes
  void reportPluginDirectoryChange(const Change& change, const Rows<PluginDirectory>& before);
  void recordEvent(const std::string& level, const std::string& message, nlohmann::json details);

  db::Database& database_;
  db::Listener& listener_;
  Tables tables_;
  bool loaded_ = false;
  std::vector<std::function<void(const Change&)>> on_change_;

  bool reading_ = false;  // one read in flight at a time
  bool full_wanted_ = false;
  std::vector<std::function<void(Result<int>)>> reload_waiters_;  // of the next full read
  std::set<RowKey> rows_wanted_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // callbacks hold a weak_ptr
};

}  // namespace pefnos::config
