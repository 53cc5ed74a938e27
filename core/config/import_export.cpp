// Import and export of the configuration as JSON (format: config/examples/README.md).
//
// Import runs in three stages so that a bad document writes nothing:
//   1. DocumentReader: the document's shape (types, required and unknown fields,
//      duplicate names), without the database; every error is collected.
//   2. checkReferences: parents, builder branches and mirror ends must name
//      rows of the document or of the database; no fork cycles.
//   3. PlanWriter: one upsert per entry, each in a savepoint so that a row the
//      database refuses is reported with its entry's path and the rest is
//      still checked; any error at all and the transaction is not committed.
#include <algorithm>
#include <climits>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <tuple>

#include "core/base/json_text.h"
#include "core/config/config.h"
#include "core/config/sql.h"

namespace pefnos::config {
namespace {

using json = nlohmann::json;
using Errors = std::vector<std::string>;
using RepoKey = std::pair<std::string, std::string>;                  // project, repository
using BranchKey = std::tuple<std::string, std::string, std::string>;  // project, repository, branch

// --- Stage 1: reading the document

std::string describe(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_float:
      return "a fractional number";
    default:
      return "a number";
  }
}

// A JSON-pointer reference token: '~' and '/' escaped.
std::string pointerToken(const std::string& key) {
  std::string out;
  for (char c : key) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}

std::string inQuotes(const std::string& s) { return json(s).dump(); }

// Reads the fields of one object of the document. Each accessor marks its key
// as known; a missing optional field gives its default, a mistyped one an error
// (and the default, so that reading goes on). finish() reports unknown keys.
class Fields {
 public:
  Fields(const json& value, std::string path, Errors& errors)
      : value_(value), path_(std::move(path)), errors_(errors) {
    if (!value_.is_object()) error(path_, "expected an object, got " + describe(value_));
  }
  bool isObject() const { return value_.is_object(); }
  const std::string& path() const { return path_; }
  std::string path(const std::string& key) const { return path_ + "/" + pointerToken(key); }

  // Required when fallback is nullopt.
  std::string text(const std::string& key, std::optional<std::string> fallback = std::nullopt) {
    const json* v = find(key, !fallback);
    if (v == nullptr) return fallback.value_or("");
    if (v->is_string()) return withoutNul(key, v->get<std::string>());
    expected(key, "a string", *v);
    return fallback.value_or("");
  }
  std::optional<std::string> nullableText(const std::string& key) {
    const json* v = find(key, false);
    if (v == nullptr || v->is_null()) return std::nullopt;
    if (v->is_string()) return withoutNul(key, v->get<std::string>());
    expected(key, "a string or null", *v);
    return std::nullopt;
  }
  bool flag(const std::string& key, bool fallback) {
    const json* v = find(key, false);
    if (v == nullptr) return fallback;
    if (v->is_boolean()) return v->get<bool>();
    expected(key, "a boolean", *v);
    return fallback;
  }
  int integer(const std::string& key, int fallback) {
    const json* v = find(key, false);
    if (v == nullptr) return fallback;
    if (!v->is_number_integer()) {
      expected(key, "an integer", *v);
      return fallback;
    }
    if (v->is_number_unsigned() ? v->get<uint64_t>() > uint64_t(INT_MAX)
                                : v->get<int64_t>() < INT_MIN || v->get<int64_t>() > INT_MAX) {
      error(path(key), "integer out of range");
      return fallback;
    }
    return v->get<int>();
  }
  // A value of the given JSON type; an empty one if absent or mistyped.
  json value(const std::string& key, json::value_t type) {
    const json* v = find(key, false);
    if (v == nullptr) return json(type);
    if (v->type() == type) return *v;
    expected(key, describe(json(type)), *v);
    return json(type);
  }
  // The array at key, or nullptr if absent or mistyped.
  const json* array(const std::string& key) {
    const json* v = find(key, false);
    if (v == nullptr || v->is_array()) return v;
    expected(key, "an array", *v);
    return nullptr;
  }
  const json* find(const std::string& key, bool required) {
    known_.push_back(key);
    if (!isObject()) return nullptr;
    auto it = value_.find(key);
    if (it != value_.end()) return &*it;
    if (required) error(path_, "missing required field " + inQuotes(key));
    return nullptr;
  }
  void finish() {
    if (!isObject()) return;
    for (const auto& [key, v] : value_.items()) {
      if (std::find(known_.begin(), known_.end(), key) == known_.end()) {
        error(path(key), "unknown field");
      }
    }
  }
  void error(const std::string& at, const std::string& message) {
    errors_.push_back((at.empty() ? "/" : at) + ": " + message);
  }

 private:
  // PostgreSQL text cannot hold a NUL: the string would be cut there, silently.
  std::string withoutNul(const std::string& key, std::string s) {
    if (s.find('\0') != std::string::npos) error(path(key), "NUL characters are not allowed");
    return s;
  }
  void expected(const std::string& key, const std::string& what, const json& got) {
    error(path(key), "expected " + what + ", got " + describe(got));
  }
  const json& value_;
  std::string path_;
  Errors& errors_;
  std::vector<std::string> known_;
};

// Calls read(element, path) for each element of fields[key], an optional array.
template <class F>
void forEachIn(Fields& fields, const std::string& key, F read) {
  const json* list = fields.array(key);
  for (size_t i = 0; list != nullptr && i < list->size(); ++i) {
    read((*list)[i], fields.path(key) + "/" + std::to_string(i));
  }
}

struct ProjectEntry {
  std::string path, name, description;
  bool active;
};
struct RepositoryEntry {
  std::string path, project, name, vcs, url;
  std::optional<RepoKey> parent;
  int poll_interval;
  bool trusted, active;
};
struct BranchEntry {
  std::string path, project, repository, name;
  bool pattern, active;
};
struct BuilderEntry {
  std::string path, project, name, description;
  json steps, requires_tags, properties;
  bool trusted;
  int max_concurrent;
  bool active;
};
struct BuilderBranchEntry {
  std::string path, project, builder;
  RepoKey repository;
  std::string branch;
  bool active;
};
struct WorkerEntry {
  std::string path, name;
  std::optional<std::string> secret_hash;
  json tags;
  bool trusted;
  int slots;
  bool active;
};
struct PluginDirectoryEntry {
  std::string path, directory;  // the entry's JSON pointer, the directory's path
  bool active;
};
struct MirrorEntry {
  std::string path, name, kind;
  std::optional<std::string> collection;
  BranchKey source;
  std::string source_path;  // empty when the source could not be read
  RepoKey target;
  std::string target_branch, target_path;
  int delay = 30;
  std::string verify;
  bool active = true;
};

// The document as entries to upsert, in the order of the document.
struct Plan {
  std::vector<ProjectEntry> projects;
  std::vector<RepositoryEntry> repositories;
  std::vector<BranchEntry> branches;
  std::vector<BuilderEntry> builders;
  std::vector<BuilderBranchEntry> builder_branches;
  std::vector<WorkerEntry> workers;
  std::vector<MirrorEntry> mirrors;
  std::vector<PluginDirectoryEntry> plugin_directories;
};

// "repo" (in the given project) or "project/repo".
std::optional<RepoKey> parseRepositoryReference(const std::string& text,
                                                const std::string& project) {
  auto slash = text.find('/');
  if (slash == std::string::npos)
    return text.empty() ? std::nullopt : std::optional(RepoKey{project, text});
  RepoKey key{text.substr(0, slash), text.substr(slash + 1)};
  if (key.first.empty() || key.second.empty() || key.second.find('/') != std::string::npos)
    return {};
  return key;
}
std::string repositoryReference(const std::string& project, const std::string& repo_project,
                                const std::string& repo) {
  return repo_project == project ? repo : repo_project + "/" + repo;
}

// Reports a name seen twice in the document; key is what makes it unique.
template <class Key>
void checkUnique(std::map<Key, std::string>& seen, const Key& key, const std::string& what,
                 const std::string& name, Fields& fields, const std::string& field = "name") {
  auto [it, inserted] = seen.emplace(key, fields.path());
  if (!inserted) {
    fields.error(fields.path(field),
                 "duplicate " + what + " " + inQuotes(name) + " (also at " + it->second + ")");
  }
}

class DocumentReader {
 public:
  explicit DocumentReader(Errors& errors) : errors_(errors) {}

  Plan read(const json& doc) {
    Fields top(doc, "", errors_);
    forEachIn(top, "projects", [&](const json& v, const std::string& p) { readProject(v, p); });
    forEachIn(top, "workers", [&](const json& v, const std::string& p) { readWorker(v, p); });
    forEachIn(top, "mirrors", [&](const json& v, const std::string& p) { readMirror(v, p); });
    forEachIn(top, "plugin_directories",
              [&](const json& v, const std::string& p) { readPluginDirectory(v, p); });
    top.finish();
    return std::move(plan_);
  }

 private:
  void readProject(const json& value, const std::string& path) {
    Fields f(value, path, errors_);
    ProjectEntry e{path, f.text("name"), f.text("description", ""), f.flag("active", true)};
    if (f.isObject()) checkUnique(projects_, e.name, "project", e.name, f);
    forEachIn(f, "repositories",
              [&](const json& v, const std::string& p) { readRepository(v, p, e.name); });
    forEachIn(f, "builders",
              [&](const json& v, const std::string& p) { readBuilder(v, p, e.name); });
    f.finish();
    plan_.projects.push_back(std::move(e));
  }

  void readRepository(const json& value, const std::string& path, const std::string& project) {
    Fields f(value, path, errors_);
    RepositoryEntry e{path,
                      project,
                      f.text("name"),
                      f.text("vcs"),
                      f.text("url"),
                      std::nullopt,
                      f.integer("poll_interval", 60),
                      f.flag("trusted", true),
                      f.flag("active", true)};
    if (auto parent = f.nullableText("parent")) {
      e.parent = parseRepositoryReference(*parent, project);
      if (!e.parent) f.error(f.path("parent"), "expected \"repository\" or \"project/repository\"");
    }
    if (f.isObject()) checkUnique(repositories_, RepoKey{project, e.name}, "repository", e.name, f);
    forEachIn(f, "branches", [&](const json& v, const std::string& p) {
      Fields b(v, p, errors_);
      BranchEntry branch{
          p, project, e.name, b.text("name"), b.flag("pattern", false), b.flag("active", true)};
      if (b.isObject()) {
        checkUnique(branches_, BranchKey{project, e.name, branch.name}, "branch", branch.name, b);
      }
      b.finish();
      plan_.branches.push_back(std::move(branch));
    });
    f.finish();
    plan_.repositories.push_back(std::move(e));
  }

  void readBuilder(const json& value, const std::string& path, const std::string& project) {
    Fields f(value, path, errors_);
    BuilderEntry e{path,
                   project,
                   f.text("name"),
                   f.text("description", ""),
                   f.value("steps", json::value_t::array),
                   f.value("requires_tags", json::value_t::object),
                   f.value("properties", json::value_t::object),
                   f.flag("trusted", true),
                   f.integer("max_concurrent", 1),
                   f.flag("active", true)};
    if (f.isObject()) checkUnique(builders_, RepoKey{project, e.name}, "builder", e.name, f);
    std::map<std::pair<RepoKey, std::string>, std::string> seen;
    forEachIn(f, "branches", [&](const json& v, const std::string& p) {
      Fields b(v, p, errors_);
      std::string repository = b.text("repository");
      BuilderBranchEntry bb{p, project, e.name, {}, b.text("branch"), b.flag("active", true)};
      b.finish();
      if (!b.isObject() || repository.empty()) return;
      auto key = parseRepositoryReference(repository, project);
      if (!key) {
        b.error(b.path("repository"), "expected \"repository\" or \"project/repository\"");
        return;
      }
      bb.repository = *key;
      if (auto [it, inserted] = seen.emplace(std::pair(*key, bb.branch), p); !inserted) {
        b.error(p, "duplicate branch " + inQuotes(bb.branch) + " of repository " +
                       inQuotes(repository) + " (also at " + it->second + ")");
      }
      plan_.builder_branches.push_back(std::move(bb));
    });
    f.finish();
    plan_.builders.push_back(std::move(e));
  }

  void readWorker(const json& value, const std::string& path) {
    Fields f(value, path, errors_);
    WorkerEntry e{path,
                  f.text("name"),
                  f.nullableText("secret_hash"),
                  f.value("tags", json::value_t::object),
                  f.flag("trusted", true),
                  f.integer("slots", 1),
                  f.flag("active", true)};
    if (f.isObject()) checkUnique(workers_, e.name, "worker", e.name, f);
    f.finish();
    plan_.workers.push_back(std::move(e));
  }

  void readMirror(const json& value, const std::string& path) {
    Fields f(value, path, errors_);
    MirrorEntry e;
    e.path = path;
    e.name = f.text("name");
    e.kind = f.text("kind", "branch");
    e.collection = f.nullableText("collection");
    if (const json* source = f.find("source", true)) {
      Fields s(*source, f.path("source"), errors_);
      e.source = {s.text("project"), s.text("repository"), s.text("branch")};
      if (s.isObject()) e.source_path = s.path();  // empty: nothing to check further
      s.finish();
    }
    if (const json* target = f.find("target", true)) {
      Fields t(*target, f.path("target"), errors_);
      e.target = {t.text("project"), t.text("repository")};
      e.target_branch = t.text("branch");
      if (t.isObject()) e.target_path = t.path();
      t.finish();
    }
    e.delay = f.integer("delay", 30);
    e.verify = f.text("verify", "all");
    e.active = f.flag("active", true);
    if (f.isObject()) checkUnique(mirrors_, e.name, "mirror", e.name, f);
    f.finish();
    plan_.mirrors.push_back(std::move(e));
  }

  // The same rule as the table's CHECK, said with the entry's path.
  void readPluginDirectory(const json& value, const std::string& path) {
    Fields f(value, path, errors_);
    PluginDirectoryEntry e{path, f.text("path"), f.flag("active", true)};
    const json* given = f.isObject() ? f.find("path", false) : nullptr;
    if (given != nullptr && given->is_string()) {  // else already reported
      if (e.directory.empty() || e.directory.front() != '/') {
        f.error(f.path("path"), "expected an absolute path, got " + inQuotes(e.directory));
      } else if (std::any_of(e.directory.begin(), e.directory.end(),
                             [](unsigned char c) { return c < 0x20 || c == 0x7f; })) {
        f.error(f.path("path"), "control characters are not allowed");
      } else {
        checkUnique(plugin_directories_, e.directory, "plugin directory", e.directory, f, "path");
      }
    }
    f.finish();
    plan_.plugin_directories.push_back(std::move(e));
  }

  Errors& errors_;
  Plan plan_;
  std::map<std::string, std::string> projects_, workers_, mirrors_;  // name -> path
  std::map<std::string, std::string> plugin_directories_;            // directory -> path
  std::map<RepoKey, std::string> repositories_, builders_;
  std::map<BranchKey, std::string> branches_;
};

// --- Stage 2: references, against the document and the database together

struct KnownRows {
  std::map<RepoKey, std::optional<RepoKey>> repositories;  // -> parent
  std::map<BranchKey, bool> branches;                      // -> pattern
};

KnownRows knownRows(pqxx::work& tx, const Plan& plan) {
  KnownRows known;
  for (const auto& row : tx.exec(sql::existing_repositories)) {
    std::optional<RepoKey> parent;
    if (!row[3].is_null()) parent = RepoKey{row[2].c_str(), row[3].c_str()};
    known.repositories[{row[0].c_str(), row[1].c_str()}] = parent;
  }
  for (const auto& row : tx.exec(sql::existing_branches)) {
    known.branches[{row[0].c_str(), row[1].c_str(), row[2].c_str()}] = row[3].as<bool>();
  }
  // The document wins over the database: it is what the rows will be.
  for (const auto& r : plan.repositories) known.repositories[{r.project, r.name}] = r.parent;
  for (const auto& b : plan.branches) known.branches[{b.project, b.repository, b.name}] = b.pattern;
  return known;
}

std::string unknownRepository(const RepoKey& key) {
  return "unknown repository " + inQuotes(key.second) + " of project " + inQuotes(key.first);
}

void checkReferences(const Plan& plan, const KnownRows& known, Errors& errors) {
  auto report = [&](const std::string& path, const std::string& message) {
    errors.push_back(path + ": " + message);
  };
  for (const auto& r : plan.repositories) {
    if (!r.parent || r.name.empty()) continue;
    if (!known.repositories.count(*r.parent)) {
      report(r.path + "/parent", unknownRepository(*r.parent));
      continue;
    }
    // A fork network must have a root: follow the parents, at most once around.
    std::optional<RepoKey> at = r.parent;
    for (size_t steps = 0; at && steps <= known.repositories.size(); ++steps) {
      if (*at == RepoKey{r.project, r.name}) {
        report(r.path + "/parent", "makes a cycle of forks");
        break;
      }
      auto it = known.repositories.find(*at);
      at = it == known.repositories.end() ? std::nullopt : it->second;
    }
  }
  for (const auto& bb : plan.builder_branches) {
    if (bb.branch.empty()) continue;  // already reported as missing
    if (!known.repositories.count(bb.repository)) {
      report(bb.path + "/repository", unknownRepository(bb.repository));
    } else if (!known.branches.count({bb.repository.first, bb.repository.second, bb.branch})) {
      report(bb.path, "unknown branch " + inQuotes(bb.branch) + " of repository " +
                          inQuotes(repositoryReference(bb.project, bb.repository.first,
                                                       bb.repository.second)));
    }
  }
  for (const auto& m : plan.mirrors) {
    const auto& [project, repository, branch] = m.source;
    if (!m.source_path.empty() && !project.empty() && !repository.empty() && !branch.empty()) {
      auto it = known.branches.find(m.source);
      if (!known.repositories.count({project, repository})) {
        report(m.source_path, unknownRepository({project, repository}));
      } else if (it == known.branches.end()) {
        report(m.source_path, "unknown branch " + inQuotes(branch) + " of repository " +
                                  inQuotes(repository) + " of project " + inQuotes(project));
      } else if (it->second) {
        report(m.source_path,
               "branch " + inQuotes(branch) + " is a pattern; a mirror needs one branch");
      }
    }
    if (!m.target_path.empty() && !m.target.first.empty() && !m.target.second.empty() &&
        !known.repositories.count(m.target)) {
      report(m.target_path, unknownRepository(m.target));
    }
  }
}

// --- Stage 3: applying

// Repositories ordered so that a parent in the document comes before its forks.
std::vector<const RepositoryEntry*> parentsFirst(const std::vector<RepositoryEntry>& repositories) {
  std::map<RepoKey, const RepositoryEntry*> by_key;
  for (const auto& r : repositories) by_key[{r.project, r.name}] = &r;
  std::vector<const RepositoryEntry*> order;
  std::set<const RepositoryEntry*> placed;
  std::function<void(const RepositoryEntry*)> place = [&](const RepositoryEntry* r) {
    if (!placed.insert(r).second) return;  // also stops at a cycle (reported before)
    if (r->parent && by_key.count(*r->parent)) place(by_key[*r->parent]);
    order.push_back(r);
  };
  for (const auto& r : repositories) place(&r);
  return order;
}

// The first line of a server error, without its "ERROR:" prefix.
std::string serverMessage(const std::exception& e) {
  std::string text = e.what();
  text = text.substr(0, text.find('\n'));
  if (text.rfind("ERROR:", 0) == 0) text.erase(0, 6);
  return text.erase(0, text.find_first_not_of(' '));
}

const char* orNull(const std::optional<std::string>& s) { return s ? s->c_str() : nullptr; }

class PlanWriter {
 public:
  PlanWriter(pqxx::work& tx, ImportReport& report) : tx_(tx), report_(report) {}

  void write(const Plan& plan) {
    for (const auto& p : plan.projects) {
      if (!upsert(p.path, sql::upsert_project, p.name, p.description, p.active)) {
        failed_projects_.insert(p.name);
      }
    }
    for (const RepositoryEntry* r : parentsFirst(plan.repositories)) {
      RepoKey key{r->project, r->name};
      bool ready = !failed_projects_.count(r->project) &&
                   !(r->parent && failed_repositories_.count(*r->parent));
      const char* parent_project = r->parent ? r->parent->first.c_str() : nullptr;
      const char* parent = r->parent ? r->parent->second.c_str() : nullptr;
      if (!ready || !upsert(r->path, sql::upsert_repository, r->project, r->name, r->vcs, r->url,
                            parent_project, parent, r->poll_interval, r->trusted, r->active)) {
        failed_repositories_.insert(key);
      }
    }
    for (const auto& b : plan.branches) {
      bool ready = !failed_repositories_.count({b.project, b.repository});
      if (!ready || !upsert(b.path, sql::upsert_branch, b.project, b.repository, b.name, b.pattern,
                            b.active)) {
        failed_branches_.insert({b.project, b.repository, b.name});
      }
    }
    for (const auto& b : plan.builders) {
      if (failed_projects_.count(b.project) ||
          !upsert(b.path, sql::upsert_builder, b.project, b.name, b.description, b.steps.dump(),
                  b.requires_tags.dump(), b.properties.dump(), b.trusted, b.max_concurrent,
                  b.active)) {
        failed_builders_.insert({b.project, b.name});
      }
    }
    for (const auto& bb : plan.builder_branches) {
      const auto& [repo_project, repository] = bb.repository;
      if (failed_builders_.count({bb.project, bb.builder}) ||
          failed_branches_.count({repo_project, repository, bb.branch})) {
        continue;
      }
      upsert(bb.path, sql::upsert_builder_branch, bb.project, bb.builder, repo_project, repository,
             bb.branch, bb.active);
    }
    for (const auto& w : plan.workers) {
      upsert(w.path, sql::upsert_worker, w.name, orNull(w.secret_hash), w.tags.dump(), w.trusted,
             w.slots, w.active);
    }
    for (const auto& m : plan.mirrors) {
      const auto& [source_project, source_repository, source_branch] = m.source;
      if (failed_branches_.count(m.source) || failed_repositories_.count(m.target)) continue;
      upsert(m.path, sql::upsert_mirror, m.name, m.kind, orNull(m.collection), source_project,
             source_repository, source_branch, m.target.first, m.target.second, m.target_branch,
             m.delay, m.verify, m.active);
    }
    for (const auto& d : plan.plugin_directories) {
      upsert(d.path, sql::upsert_plugin_directory, d.directory, d.active);
    }
  }

 private:
  // One row in a savepoint; a refused row becomes an error at path. False if refused.
  // Plain SAVEPOINTs: libpqxx 6.4's subtransaction issues no SAVEPOINT when its
  // first statement is exec_params, so its rollback would not happen.
  template <class... Args>
  bool upsert(const std::string& path, const char* statement, const Args&... args) {
    tx_.exec0("SAVEPOINT import_row");
    try {
      pqxx::result r = tx_.exec_params(statement, args...);
      tx_.exec0("RELEASE SAVEPOINT import_row");
      if (r.empty())
        ++report_.unchanged;
      else if (r[0][0].as<bool>())
        ++report_.created;
      else
        ++report_.updated;
      return true;
    } catch (const pqxx::sql_error& e) {
      tx_.exec0("ROLLBACK TO SAVEPOINT import_row");
      report_.errors.push_back(path + ": " + serverMessage(e));
      return false;
    }
  }

  pqxx::work& tx_;
  ImportReport& report_;
  std::set<std::string> failed_projects_;
  std::set<RepoKey> failed_repositories_, failed_builders_;
  std::set<BranchKey> failed_branches_;
};

bool boolean(const pqxx::field& f) { return f.as<bool>(); }
std::string text(const pqxx::field& f) { return f.c_str(); }
json nullableText(const pqxx::field& f) { return f.is_null() ? json(nullptr) : json(f.c_str()); }

// A jsonb column as stored. Nested too deep to import again, it is not
// exported: what (a builder's steps, a worker's tags) says which.
struct Unexportable {
  std::string message;
};
json stored(const pqxx::field& f, const std::string& what) {
  auto j = parseJson(f.c_str());
  if (!j) throw Unexportable{what + " are " + j.error().message};
  return std::move(j.value());
}

}  // namespace

std::vector<std::string> checkDocument(const json& doc) {
  Errors errors;
  DocumentReader(errors).read(doc);
  return errors;
}

ImportReport importConfig(pqxx::connection& conn, const json& doc) {
  ImportReport report;
  Plan plan = DocumentReader(report.errors).read(doc);
  try {
    pqxx::work tx(conn, "pefnos config import");
    checkReferences(plan, knownRows(tx, plan), report.errors);
    if (!report.errors.empty()) return report;
    PlanWriter(tx, report).write(plan);
    if (report.errors.empty()) tx.commit();
  } catch (const std::exception& e) {
    report.errors.push_back("/: database error: " + serverMessage(e));
  }
  if (!report.errors.empty()) report.created = report.updated = report.unchanged = 0;
  return report;
}

Result<ImportReport> importFile(pqxx::connection& conn, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error{"cannot read " + path + ": " + std::strerror(errno)};
  std::stringstream content;
  content << in.rdbuf();
  auto doc = parseJson(content.str());
  if (!doc) return Error{path + " is " + doc.error().message};
  return importConfig(conn, doc.value());
}

namespace {

json exportDocument(pqxx::connection& conn) {
  pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(conn, "pefnos config export");
  // Keyed by names: std::map orders bytes as COLLATE "C" does.
  std::map<std::string, json> projects;
  std::map<RepoKey, json> repositories, builders;
  for (const auto& row : tx.exec(sql::export_projects)) {
    projects[text(row[0])] = {{"name", text(row[0])},
                              {"description", text(row[1])},
                              {"active", boolean(row[2])},
                              {"repositories", json::array()},
                              {"builders", json::array()}};
  }
  for (const auto& row : tx.exec(sql::export_repositories)) {
    json parent = row[5].is_null()
                      ? json(nullptr)
                      : json(repositoryReference(text(row[0]), text(row[4]), text(row[5])));
    repositories[{text(row[0]), text(row[1])}] = {{"name", text(row[1])},
                                                  {"vcs", text(row[2])},
                                                  {"url", text(row[3])},
                                                  {"parent", parent},
                                                  {"poll_interval", row[6].as<int>()},
                                                  {"trusted", boolean(row[7])},
                                                  {"active", boolean(row[8])},
                                                  {"branches", json::array()}};
  }
  for (const auto& row : tx.exec(sql::export_branches)) {
    repositories[{text(row[0]), text(row[1])}]["branches"].push_back(
        {{"name", text(row[2])}, {"pattern", boolean(row[3])}, {"active", boolean(row[4])}});
  }
  for (const auto& row : tx.exec(sql::export_builders)) {
    const std::string builder = "builder '" + text(row[0]) + "/" + text(row[1]) + "'";
    builders[{text(row[0]), text(row[1])}] = {{"name", text(row[1])},
                                              {"description", text(row[2])},
                                              {"steps", stored(row[3], "the steps of " + builder)},
                                              {"requires_tags", stored(row[4], "the requires_tags of " + builder)},
                                              {"properties", stored(row[5], "the properties of " + builder)},
                                              {"trusted", boolean(row[6])},
                                              {"max_concurrent", row[7].as<int>()},
                                              {"active", boolean(row[8])},
                                              {"branches", json::array()}};
  }
  for (const auto& row : tx.exec(sql::export_builder_branches)) {
    builders[{text(row[0]), text(row[1])}]["branches"].push_back(
        {{"repository", repositoryReference(text(row[0]), text(row[2]), text(row[3]))},
         {"branch", text(row[4])},
         {"active", boolean(row[5])}});
  }
  for (auto& [key, builder] : builders) {
    auto& list = builder["branches"];
    std::sort(list.begin(), list.end(), [](const json& a, const json& b) {
      return std::tie(a["repository"].get_ref<const std::string&>(),
                      a["branch"].get_ref<const std::string&>()) <
             std::tie(b["repository"].get_ref<const std::string&>(),
                      b["branch"].get_ref<const std::string&>());
    });
    projects[key.first]["builders"].push_back(std::move(builder));
  }
  for (auto& [key, repository] : repositories) {
    projects[key.first]["repositories"].push_back(std::move(repository));
  }

  json doc = {{"projects", json::array()},
              {"workers", json::array()},
              {"mirrors", json::array()},
              {"plugin_directories", json::array()}};
  for (auto& [name, project] : projects) doc["projects"].push_back(std::move(project));
  for (const auto& row : tx.exec(sql::export_workers)) {
    doc["workers"].push_back({{"name", text(row[0])},
                              {"secret_hash", nullableText(row[1])},
                              {"tags", stored(row[2], "the tags of worker '" + text(row[0]) + "'")},
                              {"trusted", boolean(row[3])},
                              {"slots", row[4].as<int>()},
                              {"active", boolean(row[5])}});
  }
  for (const auto& row : tx.exec(sql::export_mirrors)) {
    doc["mirrors"].push_back(
        {{"name", text(row[0])},
         {"kind", text(row[1])},
         {"collection", nullableText(row[2])},
         {"source",
          {{"project", text(row[3])}, {"repository", text(row[4])}, {"branch", text(row[5])}}},
         {"target",
          {{"project", text(row[6])}, {"repository", text(row[7])}, {"branch", text(row[8])}}},
         {"delay", row[9].as<int>()},
         {"verify", text(row[10])},
         {"active", boolean(row[11])}});
  }
  for (const auto& row : tx.exec(sql::export_plugin_directories)) {
    doc["plugin_directories"].push_back({{"path", text(row[0])}, {"active", boolean(row[1])}});
  }
  return doc;
}

}  // namespace

Result<json> exportConfig(pqxx::connection& conn) {
  try {
    return exportDocument(conn);
  } catch (const Unexportable& u) {
    return Error{u.message};
  }
}

std::vector<std::string> activePluginDirectories(pqxx::transaction_base& tx) {
  std::vector<std::string> dirs;
  for (const auto& r : tx.exec("SELECT path FROM pefnos.plugin_directory WHERE active ORDER BY id")) {
    dirs.push_back(r[0].as<std::string>());
  }
  return dirs;
}

}  // namespace pefnos::config
