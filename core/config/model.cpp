// The in-memory model of the configuration rows.
//
// Reads run on a database thread (rows come as row_to_json and are parsed
// there); the loop thread only swaps entries. One read is in flight at a time:
// a NOTIFY that arrives meanwhile is queued (coalesced per row), so results
// always apply in the order they were read and a later read sees every commit
// that an earlier NOTIFY announced.
#include <limits>

#include "core/base/json_text.h"
#include "core/base/log.h"
#include "core/config/config.h"
#include "core/config/sql.h"
#include "core/db/db.h"

namespace pefnos::config {
namespace {

using json = nlohmann::json;

// Reads the columns of a row_to_json object into a struct's fields; a missing or
// mistyped column throws (json::exception).
class Columns {
 public:
  explicit Columns(const json& row) : row_(row) {}
  template <class T>
  Columns& operator()(const char* key, T& field) {
    row_.at(key).get_to(field);
    return *this;
  }
  template <class T>
  Columns& operator()(const char* key, std::optional<T>& field) {
    const json& v = row_.at(key);
    field = v.is_null() ? std::nullopt : std::optional<T>(v.get<T>());
    return *this;
  }

 private:
  const json& row_;
};

void parse(const json& j, Project& p) {
  Columns{j}("id", p.id)("name", p.name)("description", p.description)("active", p.active);
}
void parse(const json& j, Repository& r) {
  Columns{j}("id", r.id)("project_id", r.project_id)("name", r.name)("vcs", r.vcs)("url", r.url)(
      "parent_id", r.parent_id)("poll_interval", r.poll_interval)("trusted", r.trusted)("active",
                                                                                        r.active);
}
void parse(const json& j, Branch& b) {
  Columns{j}("id", b.id)("repository_id", b.repository_id)("name", b.name)("pattern", b.pattern)(
      "origin_id", b.origin_id)("active", b.active);
}
void parse(const json& j, Builder& b) {
  Columns{j}("id", b.id)("project_id", b.project_id)("name", b.name)("description", b.description)(
      "steps", b.steps)("requires_tags", b.requires_tags)("properties", b.properties)(
      "trusted", b.trusted)("max_concurrent", b.max_concurrent)("active", b.active);
}
void parse(const json& j, BuilderBranch& b) {
  Columns{j}("id", b.id)("builder_id", b.builder_id)("branch_id", b.branch_id)("active", b.active);
}
void parse(const json& j, Worker& w) {
  Columns{j}("id", w.id)("name", w.name)("secret_hash", w.secret_hash)("tags", w.tags)(
      "trusted", w.trusted)("slots", w.slots)("active", w.active);
}
void parse(const json& j, Mirror& m) {
  Columns{j}("id", m.id)("name", m.name)("kind", m.kind)("collection", m.collection)(
      "source_branch_id", m.source_branch_id)("target_repository_id", m.target_repository_id)(
      "target_branch", m.target_branch)("delay", m.delay)("verify", m.verify)("active", m.active);
}
void parse(const json& j, PluginDirectory& d) {
  Columns{j}("id", d.id)("path", d.path)("active", d.active);
}

// Calls f(table name, rows of that table in each of tables...): the one list
// of tables the model knows, and so the whitelist for notification payloads.
template <class F, class... T>
void forEachTable(F&& f, T&... tables) {
  f("project", tables.projects...);
  f("repository", tables.repositories...);
  f("branch", tables.branches...);
  f("builder", tables.builders...);
  f("builder_branch", tables.builder_branches...);
  f("worker", tables.workers...);
  f("mirror", tables.mirrors...);
  f("plugin_directory", tables.plugin_directories...);
}

// The table's name as the model spells it, or nullptr if it is not one of them.
const char* knownTable(const std::string& name) {
  const char* found = nullptr;
  Tables none;
  forEachTable(
      [&](const char* table, auto&) {
        if (name == table) found = table;
      },
      none);
  return found;
}

template <class T>
std::shared_ptr<const T> find(const Rows<T>& rows, int id) {
  auto it = rows.find(id);
  return it == rows.end() ? nullptr : it->second;
}

}  // namespace

// What one read brought back, parsed on the database thread.
struct Model::Loaded {
  struct BadRow {
    std::string table;
    int id;
    std::string error, row;
  };
  Tables tables;
  std::set<RowKey> asked;  // a read of some rows: those asked and not found are gone
  std::vector<BadRow> bad;

  // A row from the database is valid JSON, but written by hand (psql, a GUI)
  // its jsonb may nest deeper than the daemon can copy without recursing off
  // its stack: parseJson refuses that, and the row keeps its last good snapshot.
  template <class T>
  void add(const char* table, Rows<T>& rows, const pqxx::row& r) {
    const int id = r[0].as<int>();
    const std::string text = r[1].c_str();
    auto j = parseJson(text);
    if (!j) return bad.push_back({table, id, "the row is " + j.error().message, text});
    try {
      auto row = std::make_shared<T>();
      parse(j.value(), *row);
      rows[id] = std::move(row);
    } catch (const std::exception& e) {
      bad.push_back({table, id, e.what(), text});
    }
  }
  void readAll(pqxx::work& tx) {
    // One snapshot of every table, so that the rows agree with each other.
    tx.exec("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ");
    forEachTable(
        [&](const char* table, auto& rows) {
          for (const auto& r : tx.exec(sql::selectAllRows(table))) add(table, rows, r);
        },
        tables);
  }
  void readSome(pqxx::work& tx) {
    forEachTable(
        [&](const char* table, auto& rows) {
          std::string ids;
          for (const auto& [t, id] : asked) {
            if (t == table) ids += (ids.empty() ? "" : ",") + std::to_string(id);
          }
          if (ids.empty()) return;
          for (const auto& r : tx.exec_params(sql::selectRowsById(table), "{" + ids + "}")) add(table, rows, r);
        },
        tables);
  }
};

Model::Model(db::Database& database, db::Listener& listener)
    : database_(database), listener_(listener) {}

Model::~Model() = default;

void Model::start() {
  std::weak_ptr<bool> alive = alive_;
  listener_.subscribe("pefnos_config", [this, alive](const std::string& payload) {
    if (!alive.expired()) handleNotification(payload);
  });
  listener_.onListening([this, alive] {
    if (alive.expired()) return;
    full_wanted_ = true;  // NOTIFYs may have been missed while not listening
    readNext();
  });
  if (listener_.listening()) {
    full_wanted_ = true;
    readNext();
  }
}

void Model::reload(std::function<void(Result<int>)> done) {
  reload_waiters_.push_back(std::move(done));
  full_wanted_ = true;
  readNext();
}

void Model::onChange(std::function<void(const Change&)> callback) {
  on_change_.push_back(std::move(callback));
}

void Model::handleNotification(const std::string& payload) {
  auto parsed = parseJson(payload);  // anyone with the database may NOTIFY
  const json j = parsed ? std::move(parsed.value()) : json();
  const char* table = nullptr;
  if (j.is_object() && j.contains("table") && j["table"].is_string()) {
    table = knownTable(j["table"].get<std::string>());
  }
  const json* id = j.is_object() && j.contains("id") ? &j["id"] : nullptr;
  if (table == nullptr || id == nullptr || !id->is_number_integer() || *id < 1 ||
      *id > std::numeric_limits<int>::max()) {
    log::warning("config", "ignored a malformed pefnos_config notification: ", payload);
    recordEvent("warning", "ignored a malformed pefnos_config notification",
                {{"payload", payload}});
    return;
  }
  rows_wanted_.insert({table, id->get<int>()});
  readNext();
}

void Model::readNext() {
  if (reading_ || (!full_wanted_ && rows_wanted_.empty())) return;
  reading_ = true;
  bool full = full_wanted_;
  auto loaded = std::make_shared<Loaded>();
  std::vector<std::function<void(Result<int>)>> waiters;
  if (full) {
    // This read starts after every NOTIFY received so far: it covers them all.
    waiters.swap(reload_waiters_);
    full_wanted_ = false;
    rows_wanted_.clear();
  } else {
    loaded->asked.swap(rows_wanted_);
  }
  std::weak_ptr<bool> alive = alive_;
  database_.transact<bool>(
      [loaded, full](pqxx::work& tx) {
        if (full)
          loaded->readAll(tx);
        else
          loaded->readSome(tx);
        return true;
      },
      [this, alive, loaded, full, waiters = std::move(waiters)](Result<bool> read) {
        if (alive.expired()) return;
        reading_ = false;
        if (!read) {
          log::error("config", "cannot read the configuration: ", read.error().message);
          for (const auto& done : waiters) done(read.error());
          // A lost connection retries by itself; this is a real failure, which a
          // reconnection or the next reload tries again.
        } else {
          int changes = applyLoaded(*loaded, full);
          if (full) loaded_ = true;
          for (const auto& done : waiters) done(changes);
        }
        if (!alive.expired()) readNext();  // a callback may have destroyed the model
      },
      db::Retry::on_reconnect);
}

int Model::applyLoaded(Loaded& loaded, bool full) {
  std::set<RowKey> bad;
  for (const auto& b : loaded.bad) {
    bad.insert({b.table, b.id});
    log::warning("config", "skipped unreadable row ", b.table, " ", b.id, ": ", b.error);
    recordEvent("warning", "skipped an unreadable configuration row",
                {{"table", b.table}, {"id", b.id}, {"error", b.error}, {"row", b.row}});
  }
  const Rows<PluginDirectory> plugin_directories_before = tables_.plugin_directories;
  std::vector<Change> changes;
  forEachTable(
      [&](const char* table, auto& current, auto& fresh) {
        auto gone = [&](int id) {
          if (current.erase(id)) changes.push_back({table, id, Change::Kind::removed});
        };
        // A bad row keeps its last good snapshot.
        for (auto it = current.begin(); full && it != current.end();) {
          int id = (it++)->first;
          if (!fresh.count(id) && !bad.count({table, id})) gone(id);
        }
        for (const auto& [t, id] : loaded.asked) {
          if (t == table && !fresh.count(id) && !bad.count({table, id})) gone(id);
        }
        for (auto& [id, row] : fresh) {
          auto& slot = current[id];
          if (slot && *slot == *row) continue;  // unchanged: keep the old pointer
          changes.push_back({table, id, slot ? Change::Kind::updated : Change::Kind::added});
          slot = std::move(row);
        }
      },
      tables_, loaded.tables);
  // Changes found by the first load are what the master starts with.
  for (const auto& change : changes) {
    if (loaded_ && change.table == "plugin_directory") {
      reportPluginDirectoryChange(change, plugin_directories_before);
    }
  }
  std::weak_ptr<bool> alive = alive_;  // a subscriber may destroy the model
  for (const auto& change : changes) {
    for (size_t i = 0; i < on_change_.size() && !alive.expired(); ++i) on_change_[i](change);
  }
  return static_cast<int>(changes.size());
}

// The master reads its plugin directories once, when it starts, and loads
// every plugin of them then: a directory that appears or goes while it runs
// changes nothing until it restarts. Said where the operator looks.
void Model::reportPluginDirectoryChange(const Change& change, const Rows<PluginDirectory>& before) {
  auto old_row = find(before, change.id);
  auto row = change.kind == Change::Kind::removed ? old_row : pluginDirectory(change.id);
  const std::string path = row ? row->path : "#" + std::to_string(change.id);
  std::string what = change.kind == Change::Kind::added ? "added" : "removed";
  if (change.kind == Change::Kind::updated) {
    what = old_row && row && old_row->active != row->active
               ? (row->active ? "activated" : "deactivated")
               : "changed";
  }
  log::info("config", "plugin directory ", path, " ", what,
            ": plugin directories are read when the master starts; the change takes effect "
            "when it restarts");
}

void Model::recordEvent(const std::string& level, const std::string& message, json details) {
  // Needs nothing of the model: safe even if the model is gone when it runs.
  database_.transact<bool>(
      [level, message, details = details.dump()](pqxx::work& tx) {
        tx.exec_params(sql::insert_event, level, message, details);
        return true;
      },
      [](Result<bool> r) {
        if (!r) log::warning("config", "cannot record an event: ", r.error().message);
      },
      db::Retry::on_reconnect);
}

std::shared_ptr<const Project> Model::project(int id) const { return find(tables_.projects, id); }
std::shared_ptr<const Repository> Model::repository(int id) const {
  return find(tables_.repositories, id);
}
std::shared_ptr<const Branch> Model::branch(int id) const { return find(tables_.branches, id); }
std::shared_ptr<const Builder> Model::builder(int id) const { return find(tables_.builders, id); }
std::shared_ptr<const BuilderBranch> Model::builderBranch(int id) const {
  return find(tables_.builder_branches, id);
}
std::shared_ptr<const Worker> Model::worker(int id) const { return find(tables_.workers, id); }
std::shared_ptr<const Mirror> Model::mirror(int id) const { return find(tables_.mirrors, id); }
std::shared_ptr<const PluginDirectory> Model::pluginDirectory(int id) const {
  return find(tables_.plugin_directories, id);
}

}  // namespace pefnos::config
