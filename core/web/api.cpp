// The read side of /api/v1: one table of listings (their SELECT, filters and
// paging), single rows by id, log ranges and the console grid.
//
// A listing is `SELECT * FROM (<its select>) x WHERE <filters> ORDER BY x.id
// LIMIT n OFFSET o`: PostgreSQL flattens the subquery, so filters and the
// limit reach the tables (and their indexes) directly. Filter values are
// always bound parameters, checked on the loop first (a malformed one is a
// 400 before any query runs).
#include "core/web/api.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <tuple>
#include <variant>
#include <set>
#include <unordered_map>

#include "core/base/json_text.h"

namespace pefnos::web::api {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

http::Response error(int status, const std::string& message) {
  return http::Response::json(status, dump(json{{"error", message}}));
}

std::optional<long long> number(const std::string& text) {
  long long value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 0) return std::nullopt;
  return value;
}

namespace {

constexpr unsigned kInt2 = 21, kInt4 = 23, kInt8 = 20, kBool = 16, kJson = 114, kJsonb = 3802,
                   kTimestamptz = 1184, kFloat4 = 700, kFloat8 = 701;

// "2024-05-01 10:00:00.123+00" (TimeZone UTC) -> "2024-05-01T10:00:00.123Z".
std::string isoTime(std::string text) {
  if (text.size() > 10 && text[10] == ' ') text[10] = 'T';
  if (text.size() > 3 && text.compare(text.size() - 3, 3, "+00") == 0) text.replace(text.size() - 3, 3, "Z");
  return text;
}

}  // namespace

json rowJson(const pqxx::row& row) {
  json out = json::object();
  for (const auto& field : row) {
    if (field.is_null()) {
      out[field.name()] = nullptr;
      continue;
    }
    switch (field.type()) {
      case kJson:
      case kJsonb:
        // A command's args may nest deeper than a dump can recurse: said, not shown.
        if (auto value = parseJson(field.c_str()))
          out[field.name()] = std::move(value.value());
        else
          out[field.name()] = "(JSON " + value.error().message + ", not shown)";
        break;
      case kInt2:
      case kInt4:
      case kInt8: out[field.name()] = field.as<long long>(); break;
      case kBool: out[field.name()] = field.as<bool>(); break;
      case kFloat4:
      case kFloat8: out[field.name()] = field.as<double>(); break;
      case kTimestamptz: out[field.name()] = isoTime(field.c_str()); break;
      default: out[field.name()] = field.c_str();
    }
  }
  return out;
}

json rowsJson(const pqxx::result& rows) {
  json out = json::array();
  for (const auto& r : rows) out.push_back(rowJson(r));
  return out;
}

namespace {

enum class Kind { integer, text, boolean, choice };

struct Filter {
  std::string param;
  Kind kind;
  std::string condition;  // on the listing's columns (alias x); {} is the value
  std::vector<std::string> choices = {};
};

struct Listing {
  std::string name;    // the path segment and the JSON key of the page
  std::string select;  // its columns are the answer; one of them is id
  std::vector<Filter> filters;
  bool ascending = false;  // newest first pages with before=ID, oldest first with after=ID
  // Added to a single row (GET /api/v1/NAME/ID): what a list leaves out.
  std::function<void(pqxx::work&, json&)> detail = nullptr;
};

Filter integer(const std::string& param, const std::string& column) {
  return {param, Kind::integer, "x." + column + " = {}"};
}
Filter text(const std::string& param, const std::string& column) {
  return {param, Kind::text, "x." + column + " = {}"};
}
Filter boolean(const std::string& param, const std::string& column) {
  return {param, Kind::boolean, "x." + column + " = {}"};
}
Filter choice(const std::string& param, const std::string& column, std::vector<std::string> choices) {
  return {param, Kind::choice, "x." + column + " = {}", std::move(choices)};
}

const std::vector<std::string> kBuildStates = {"pending", "running",     "succeeded", "warnings",
                                               "failed",  "error", "interrupted", "cancelled"};
const std::vector<std::string> kStepStates = {"pending", "running", "succeeded",   "warnings", "failed",
                                              "error",   "skipped", "interrupted", "cancelled"};

// The head of each branch of a repository, at most 50 (the branches
// listing has them all).
constexpr const char* kRepositoryHeads =
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', b.id, 'name', b.name, 'revision', h.revision,"
    "  'updated_at', h.updated_at) ORDER BY b.name), '[]')"
    " FROM (SELECT id, name FROM pefnos.branch b WHERE b.repository_id = r.id AND b.active AND NOT b.pattern"
    "  ORDER BY b.name LIMIT 50) b LEFT JOIN pefnos.branch_head h ON h.branch_id = b.id)";

// The concrete branches a builder builds (those a pattern discovered too):
// what a force-build button offers.
constexpr const char* kBuilderBranches =
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', br.id, 'name', br.name, 'repository', r.name)"
    "  ORDER BY r.name, br.name), '[]')"
    " FROM (SELECT DISTINCT br.id, br.name, br.repository_id FROM pefnos.builder_branch bb"
    "  JOIN pefnos.branch br ON (br.id = bb.branch_id OR br.origin_id = bb.branch_id) AND br.active AND NOT br.pattern"
    "  WHERE bb.builder_id = bl.id AND bb.active LIMIT 100) br JOIN pefnos.repository r ON r.id = br.repository_id)";

const std::vector<Listing>& listings() {
  static const std::vector<Listing> all = {
      {"projects",
       "SELECT p.id, p.name, p.description, p.active, p.created_at, p.updated_at,"
       " (SELECT count(*) FROM pefnos.repository r WHERE r.project_id = p.id AND r.active) AS repositories,"
       " (SELECT count(*) FROM pefnos.builder b WHERE b.project_id = p.id AND b.active) AS builders"
       " FROM pefnos.project p",
       {boolean("active", "active"), text("name", "name")},
       true},
      {"repositories",
       std::string("SELECT r.id, r.project_id, p.name AS project, r.name, r.vcs, r.url, r.parent_id, r.poll_interval,"
                   " r.trusted, r.active, rp.last_poll_at, rp.last_success_at, rp.last_error, rp.duration_ms,"
                   " coalesce(rp.polls, 0) AS polls, (rp.last_error IS NOT NULL) AS failing,"
                   " (SELECT count(*) FROM pefnos.branch b WHERE b.repository_id = r.id AND b.active"
                   "  AND NOT b.pattern) AS branch_count, ") +
           kRepositoryHeads +
           " AS heads FROM pefnos.repository r JOIN pefnos.project p ON p.id = r.project_id"
           " LEFT JOIN pefnos.repository_poll rp ON rp.repository_id = r.id",
       {integer("project", "project_id"), boolean("active", "active"), boolean("failing", "failing"),
        text("vcs", "vcs"), text("name", "name"), integer("parent", "parent_id")},
       true},
      {"branches",
       "SELECT b.id, b.repository_id, r.name AS repository, b.name, b.pattern, b.origin_id, b.active,"
       " h.revision AS head, h.commit_id AS head_commit_id, h.updated_at AS head_updated_at, b.created_at"
       " FROM pefnos.branch b JOIN pefnos.repository r ON r.id = b.repository_id"
       " LEFT JOIN pefnos.branch_head h ON h.branch_id = b.id",
       {integer("repository", "repository_id"), boolean("active", "active"), boolean("pattern", "pattern"),
        text("name", "name"), integer("origin", "origin_id")},
       true},
      {"commits",
       "SELECT c.id, c.network_id, c.revision, c.author, c.author_date, c.committer, c.committer_date, c.message,"
       " to_jsonb(c.parents) AS parents, cardinality(c.files) AS file_count, c.tree, c.created_at"
       " FROM pefnos.commit c",
       {integer("network", "network_id"), text("revision", "revision"), text("author", "author"),
        // A repository's commits are those of its fork network (the root of its parent chain).
        {"repository", Kind::integer,
         "x.network_id = (WITH RECURSIVE up(id, parent_id, depth) AS (SELECT id, parent_id, 0"
         " FROM pefnos.repository WHERE id = {} UNION ALL SELECT r.id, r.parent_id, up.depth + 1"
         " FROM pefnos.repository r JOIN up ON r.id = up.parent_id WHERE up.depth < 1000)"
         " SELECT id FROM up WHERE parent_id IS NULL LIMIT 1)"}},
       false,
       [](pqxx::work& tx, json& commit) {
         commit["files"] = json::parse(
             tx.exec_params("SELECT to_jsonb(files)::text FROM pefnos.commit WHERE id = $1",
                            commit["id"].get<long long>())[0][0]
                 .c_str());
       }},
      {"builders",
       std::string("SELECT bl.id, bl.project_id, p.name AS project, bl.name, bl.description, bl.steps,"
                   " bl.requires_tags, bl.trusted, bl.max_concurrent, bl.active,"
                   " (SELECT count(*) FROM pefnos.build b WHERE b.builder_id = bl.id"
                   "  AND b.state IN ('pending', 'running')) AS running,"
                   " (SELECT count(*) FROM pefnos.build_request q WHERE q.builder_id = bl.id"
                   "  AND q.state = 'queued') AS queued,"
                   " (SELECT jsonb_build_object('id', b.id, 'number', b.number, 'state', b.state)"
                   "  FROM pefnos.build b WHERE b.builder_id = bl.id ORDER BY b.id DESC LIMIT 1) AS last_build, ") +
           kBuilderBranches + " AS branches FROM pefnos.builder bl JOIN pefnos.project p ON p.id = bl.project_id",
       {integer("project", "project_id"), boolean("active", "active"), text("name", "name")},
       true},
      {"requests",
       "SELECT q.id, q.builder_id, bl.name AS builder, q.branch_id, br.name AS branch, q.commit_id, q.revision,"
       " q.reason, q.priority, q.state, q.claimed_by, q.created_at, q.claimed_at, q.finished_at,"
       " (SELECT b.id FROM pefnos.build b WHERE b.request_id = q.id ORDER BY b.id DESC LIMIT 1) AS build_id"
       " FROM pefnos.build_request q JOIN pefnos.builder bl ON bl.id = q.builder_id"
       " LEFT JOIN pefnos.branch br ON br.id = q.branch_id",
       {integer("builder", "builder_id"), integer("branch", "branch_id"),
        choice("state", "state", {"queued", "claimed", "done", "cancelled"}),
        choice("reason", "reason", {"poll", "force", "retry", "rebuild"})}},
      {"builds",
       "SELECT b.id, b.number, b.builder_id, bl.name AS builder, b.state, b.summary, q.revision, q.reason,"
       " q.branch_id, br.name AS branch, br.repository_id, w.name AS worker, b.master, b.created_at,"
       " b.started_at, b.finished_at"
       " FROM pefnos.build b JOIN pefnos.builder bl ON bl.id = b.builder_id"
       " JOIN pefnos.build_request q ON q.id = b.request_id LEFT JOIN pefnos.branch br ON br.id = q.branch_id"
       " LEFT JOIN pefnos.worker w ON w.id = b.worker_id",
       {integer("builder", "builder_id"), integer("branch", "branch_id"), integer("repository", "repository_id"),
        choice("state", "state", kBuildStates), text("revision", "revision"), text("worker", "worker")},
       false,
       [](pqxx::work& tx, json& build) {
         build["steps"] = rowsJson(tx.exec_params(
             "SELECT s.id, s.position, s.name, s.type, s.state, s.exit_code, s.summary, s.started_at,"
             " s.finished_at, (SELECT coalesce(sum(length(data)), 0) FROM pefnos.log l WHERE l.step_id = s.id)"
             " AS log_bytes FROM pefnos.step s WHERE s.build_id = $1 ORDER BY s.position",
             build["id"].get<long long>()));
       }},
      {"steps",
       "SELECT s.id, s.build_id, s.position, s.name, s.type, s.state, s.exit_code, s.summary, s.started_at,"
       " s.finished_at, (SELECT coalesce(sum(length(l.data)), 0) FROM pefnos.log l WHERE l.step_id = s.id)"
       " AS log_bytes FROM pefnos.step s",
       {integer("build", "build_id"), choice("state", "state", kStepStates)},
       true},
      {"workers",
       "SELECT w.id, w.name, w.tags, w.trusted, w.slots, w.active, w.created_at,"
       " (SELECT count(*) FROM pefnos.build b WHERE b.worker_id = w.id AND b.state IN ('pending', 'running'))"
       " AS running_builds FROM pefnos.worker w",
       {boolean("active", "active"), boolean("trusted", "trusted"), text("name", "name")},
       true},
      {"mirrors",
       "SELECT m.id, m.name, m.kind, m.collection, m.source_branch_id, sb.name AS source_branch,"
       " sr.id AS source_repository_id, sr.name AS source_repository, sr.vcs AS source_vcs,"
       " m.target_repository_id, tr.name AS target_repository, tr.vcs AS target_vcs, m.target_branch, m.delay,"
       " m.verify, m.active, m.updated_at, lr.run AS last_run,"
       // The verification state of the last run that verified anything.
       " coalesce((SELECT CASE WHEN count(*) = 0 THEN NULL WHEN bool_and(v.ok) THEN 'verified' ELSE 'mismatch' END"
       "  FROM pefnos.mirror_verify v WHERE v.mirror_id = m.id AND v.run_id IS NOT DISTINCT FROM"
       "  (SELECT v2.run_id FROM pefnos.mirror_verify v2 WHERE v2.mirror_id = m.id ORDER BY v2.id DESC LIMIT 1)),"
       "  'unverified') AS verification,"
       " (SELECT jsonb_build_object('source_revision', v.source_revision, 'target_revision', v.target_revision,"
       "  'differences', v.differences, 'verified_at', v.verified_at, 'run_id', v.run_id)"
       "  FROM pefnos.mirror_verify v WHERE v.mirror_id = m.id AND NOT v.ok ORDER BY v.id DESC LIMIT 1)"
       " AS last_mismatch"
       " FROM pefnos.mirror m JOIN pefnos.branch sb ON sb.id = m.source_branch_id"
       " JOIN pefnos.repository sr ON sr.id = sb.repository_id"
       " JOIN pefnos.repository tr ON tr.id = m.target_repository_id"
       " LEFT JOIN LATERAL (SELECT jsonb_build_object('id', mr.id, 'state', mr.state, 'revisions', mr.revisions,"
       "  'error', mr.error, 'source_head', mr.source_head, 'target_head', mr.target_head,"
       "  'started_at', mr.started_at, 'finished_at', mr.finished_at) AS run, mr.state"
       "  FROM pefnos.mirror_run mr WHERE mr.mirror_id = m.id ORDER BY mr.id DESC LIMIT 1) lr ON true",
       {boolean("active", "active"), choice("kind", "kind", {"branch", "collection"}), text("name", "name"),
        choice("verification", "verification", {"verified", "mismatch", "unverified"})},
       true,
       [](pqxx::work& tx, json& mirror) {
         mirror["runs"] = rowsJson(tx.exec_params(
             "SELECT mr.id, mr.state, mr.revisions, mr.error, mr.source_head, mr.target_head, mr.started_at,"
             " mr.finished_at FROM pefnos.mirror_run mr WHERE mr.mirror_id = $1 ORDER BY mr.id DESC LIMIT 10",
             mirror["id"].get<long long>()));
       }},
      {"mirror-runs",
       "SELECT mr.id, mr.mirror_id, m.name AS mirror, mr.state, mr.claimed_by, mr.source_head, mr.target_head,"
       " mr.revisions, mr.error, mr.started_at, mr.finished_at,"
       " (SELECT jsonb_build_object('checked', count(*), 'failed', count(*) FILTER (WHERE NOT v.ok))"
       "  FROM pefnos.mirror_verify v WHERE v.run_id = mr.id) AS verification"
       " FROM pefnos.mirror_run mr JOIN pefnos.mirror m ON m.id = mr.mirror_id",
       {integer("mirror", "mirror_id"), choice("state", "state", {"running", "succeeded", "failed", "interrupted"})}},
      {"mirror-verifications",
       "SELECT v.id, v.mirror_id, v.run_id, v.source_revision, v.target_revision, v.source_tree, v.target_tree,"
       " v.ok, v.differences, v.verified_at FROM pefnos.mirror_verify v",
       {integer("mirror", "mirror_id"), integer("run", "run_id"), boolean("ok", "ok")}},
      {"commands",
       "SELECT c.id, c.kind, c.args, c.state, c.result, c.error, c.requested_by, c.claimed_by, c.attempts,"
       " c.created_at, c.claimed_at, c.finished_at FROM pefnos.command c",
       {choice("state", "state", {"queued", "running", "done", "failed", "cancelled"}), text("kind", "kind"),
        text("requested_by", "requested_by")}},
      // pefnos.event: what went wrong (or notably right), where a user looks.
      {"event-log",
       "SELECT e.id, e.at, e.level, e.source, e.message, e.details FROM pefnos.event e",
       {choice("level", "level", {"info", "warning", "error"}), text("source", "source")}},
  };
  return all;
}

// Validates a query value for its kind; the reason when it is malformed.
std::optional<std::string> malformed(const Filter& f, std::string& value) {
  switch (f.kind) {
    case Kind::integer:
      if (!number(value) || *number(value) > 2147483647ll * 1000)
        return "'" + f.param + "' must be a non-negative integer";
      return std::nullopt;
    case Kind::boolean:
      if (value == "true" || value == "1") value = "true";
      else if (value == "false" || value == "0") value = "false";
      else return "'" + f.param + "' must be true or false";
      return std::nullopt;
    case Kind::choice: {
      for (const auto& c : f.choices)
        if (c == value) return std::nullopt;
      std::string known;
      for (const auto& c : f.choices) known += (known.empty() ? "" : ", ") + c;
      return "'" + f.param + "' must be one of: " + known;
    }
    case Kind::text:
      if (value.empty() || value.size() > 255) return "'" + f.param + "' must be 1 to 255 characters";
      for (char c : value)
        if (static_cast<unsigned char>(c) < 0x20) return "'" + f.param + "' holds a control character";
      return std::nullopt;
  }
  return std::nullopt;
}

const char* cast(Kind kind) {
  switch (kind) {
    case Kind::integer: return "::bigint";
    case Kind::boolean: return "::boolean";
    default: return "::text";
  }
}

// Every parameter of the query string must be known: a misspelt filter is
// an error, not a silently unfiltered list.
std::optional<std::string> unknownParameter(const http::Request& request, const std::set<std::string>& known) {
  size_t start = 0;
  const std::string& q = request.query;
  while (start < q.size()) {
    size_t end = q.find('&', start);
    if (end == std::string::npos) end = q.size();
    std::string pair = q.substr(start, end - start);
    start = end + 1;
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    auto name = http::percentDecode(pair.substr(0, eq), true);
    if (!name || (eq != std::string::npos && !http::percentDecode(pair.substr(eq + 1), true)))
      return "malformed query string (a bad %-escape)";
    if (!known.count(*name)) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      return "unknown parameter '" + name->substr(0, 64) + "' (known here: " + list + ")";
    }
  }
  return std::nullopt;
}

// limit, offset, before/after: the page.
struct Page {
  long long limit = 50, offset = 0;
  std::optional<long long> cursor;
};

std::variant<Page, std::string> page(const http::Request& request, const char* cursor_name) {
  Page p;
  for (const auto& [name, target, low, high] :
       {std::tuple{"limit", &p.limit, 1ll, kMaxPage}, std::tuple{"offset", &p.offset, 0ll, 100000ll}}) {
    auto raw = request.queryParamIf(name);
    if (!raw) continue;
    auto n = number(*raw);
    if (!n || *n < low || *n > high)
      return "'" + std::string(name) + "' must be " + std::to_string(low) + " to " + std::to_string(high);
    *target = *n;
  }
  if (auto raw = request.queryParamIf(cursor_name)) {
    auto n = number(*raw);
    if (!n) return "'" + std::string(cursor_name) + "' must be a non-negative integer (an id)";
    p.cursor = *n;
  }
  return p;
}

Read listing(const Listing& l, const http::Request& request, Live live) {
  const char* cursor = l.ascending ? "after" : "before";
  std::set<std::string> known = {"limit", "offset", cursor};
  for (const auto& f : l.filters) known.insert(f.param);
  if (auto bad = unknownParameter(request, known)) return {error(400, *bad), nullptr};
  auto paged = page(request, cursor);
  if (auto* bad = std::get_if<std::string>(&paged)) return {error(400, *bad), nullptr};
  const Page p = std::get<Page>(paged);

  std::string sql = "SELECT * FROM (" + l.select + ") AS x WHERE true";
  std::vector<std::string> values;
  auto bind = [&](std::string value, Kind kind) {
    values.push_back(std::move(value));
    return "$" + std::to_string(values.size()) + cast(kind);
  };
  for (const auto& f : l.filters) {
    auto raw = request.queryParamIf(f.param);
    if (!raw) continue;
    std::string value = *raw;
    if (auto bad = malformed(f, value)) return {error(400, *bad), nullptr};
    std::string condition = f.condition;
    condition.replace(condition.find("{}"), 2, bind(value, f.kind));
    sql += " AND " + condition;
  }
  if (p.cursor) sql += std::string(" AND x.id ") + (l.ascending ? "> " : "< ") + bind(std::to_string(*p.cursor), Kind::integer);
  sql += std::string(" ORDER BY x.id") + (l.ascending ? "" : " DESC");
  sql += " LIMIT " + bind(std::to_string(p.limit), Kind::integer);
  sql += " OFFSET " + bind(std::to_string(p.offset), Kind::integer);

  const std::string name = l.name;
  const bool workers = name == "workers";
  return {std::nullopt, [sql, values, name, p, cursor, workers, live](pqxx::work& tx) {
            auto rows = tx.exec_params(sql, pqxx::prepare::make_dynamic_params(values));
            json list = rowsJson(rows);
            if (workers) {  // the rows, with what this master knows of their connections
              std::unordered_map<std::string, const builds::WorkerInfo*> connected;
              for (const auto& w : live.workers) connected[w.name] = &w;
              for (auto& w : list) {
                auto it = connected.find(w["name"].get<std::string>());
                w["connected"] = it != connected.end();
                if (it == connected.end()) continue;
                w["peer"] = it->second->peer;
                w["running"] = it->second->running;
                w["connected_slots"] = it->second->slots;
              }
            }
            json out{{name, list}, {"limit", p.limit}, {"offset", p.offset}};
            if (static_cast<long long>(rows.size()) == p.limit)
              out[std::string("next_") + cursor] = list.back()["id"];
            return http::Response::json(200, dump(out));
          }};
}

Read single(const Listing& l, long long id) {
  return {std::nullopt, [sql = "SELECT * FROM (" + l.select + ") AS x WHERE x.id = $1", id, name = l.name,
                         detail = l.detail](pqxx::work& tx) {
            auto rows = tx.exec_params(sql, id);
            if (rows.empty()) return error(404, "no " + name + " row with id " + std::to_string(id));
            json row = rowJson(rows[0]);
            if (detail) detail(tx, row);
            return http::Response::json(200, dump(row));
          }};
}

// GET /api/v1/steps/ID/log?offset=&limit=: a range of the step's output, as stored.
Read logRange(long long id, const http::Request& request) {
  if (auto bad = unknownParameter(request, {"offset", "limit", "follow"})) return {error(400, *bad), nullptr};
  long long offset = 0, limit = kMaxLogRange;
  for (auto [name, target] : {std::pair{"offset", &offset}, std::pair{"limit", &limit}}) {
    if (auto raw = request.queryParamIf(name)) {
      auto n = number(*raw);
      if (!n) return {error(400, "'" + std::string(name) + "' must be a non-negative integer"), nullptr};
      *target = *n;
    }
  }
  const long long take = std::min(limit, kMaxLogRange);
  return {std::nullopt, [id, offset, take](pqxx::work& tx) {
            auto size = tx.exec_params(
                "SELECT (SELECT count(*) FROM pefnos.step WHERE id = $1), coalesce(sum(length(data)), 0)"
                " FROM pefnos.log WHERE step_id = $1",
                id)[0];
            if (size[0].as<long long>() == 0) return error(404, "no step " + std::to_string(id));
            const long long total = size[1].as<long long>();
            if (offset > total) {
              http::Response r = error(416, "offset " + std::to_string(offset) + " is beyond the end (" +
                                                std::to_string(total) + " bytes)");
              r.headers.push_back({"X-Log-Size", std::to_string(total)});
              return r;
            }
            // The chunks that overlap the range, cut to it in SQL: only the range travels.
            auto rows = tx.exec_params(
                "SELECT substring(data FROM greatest($2 - start, 0)::int + 1 FOR"
                " (least(start + length(data), $2 + $3) - greatest(start, $2))::int)"
                " FROM (SELECT data, coalesce(sum(length(data)) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED"
                "  PRECEDING AND 1 PRECEDING), 0) AS start FROM pefnos.log WHERE step_id = $1) c"
                " WHERE start + length(data) > $2 AND start < $2 + $3 ORDER BY start",
                id, offset, take);
            std::string body;
            for (const auto& r : rows) body.append(pqxx::binarystring(r[0]).str());
            http::Response r = http::Response::text(200, std::move(body));
            r.headers.push_back({"X-Log-Size", std::to_string(total)});
            r.headers.push_back({"X-Log-Offset", std::to_string(offset)});
            return r;
          }};
}

// GET /api/v1/console: builders × recent revisions, each cell the newest
// build of that builder for that revision. Three queries whatever the size:
// the builders, their latest builds (walked backwards on build (builder_id,
// id)), and the commits those builds name; the grid is put together here.
Read console(const http::Request& request) {
  if (auto bad = unknownParameter(request, {"revisions", "per_builder", "project"})) return {error(400, *bad), nullptr};
  long long revisions = 30, per_builder = 50, project = 0;
  for (const auto& [name, target, high] : {std::tuple{"revisions", &revisions, 200ll},
                                           std::tuple{"per_builder", &per_builder, 200ll},
                                           std::tuple{"project", &project, 2147483647ll}}) {
    if (auto raw = request.queryParamIf(name)) {
      auto n = number(*raw);
      if (!n || *n > high || (*n == 0 && std::string(name) != "project"))
        return {error(400, "'" + std::string(name) + "' must be 1 to " + std::to_string(high)), nullptr};
      *target = *n;
    }
  }
  return {std::nullopt, [revisions, per_builder, project](pqxx::work& tx) {
            json builders = rowsJson(tx.exec_params(
                std::string("SELECT bl.id, bl.name, p.name AS project, ") + kBuilderBranches +
                    " AS branches FROM pefnos.builder bl JOIN pefnos.project p ON p.id = bl.project_id"
                    " WHERE bl.active AND ($1::int = 0 OR bl.project_id = $1::int) ORDER BY p.name, bl.name",
                project));
            auto builds = tx.exec_params(
                "SELECT b.builder_id, b.id, b.number, b.state, q.revision, q.branch_id, q.commit_id"
                " FROM pefnos.builder bl CROSS JOIN LATERAL (SELECT b.builder_id, b.id, b.number, b.state,"
                "  b.request_id FROM pefnos.build b WHERE b.builder_id = bl.id ORDER BY b.id DESC LIMIT $2) b"
                " JOIN pefnos.build_request q ON q.id = b.request_id"
                " WHERE bl.active AND ($1::int = 0 OR bl.project_id = $1::int)",
                project, per_builder);
            struct Cell {
              long long id = 0, number = 0, count = 0;
              std::string state;
            };
            struct Revision {
              long long newest = 0;  // the newest build id: the row order
              long long commit_id = 0, branch_id = 0;
              std::unordered_map<long long, Cell> cells;  // by builder
            };
            std::unordered_map<std::string, Revision> by_revision;
            for (const auto& r : builds) {
              auto& rev = by_revision[r[4].c_str()];
              const long long id = r[1].as<long long>();
              if (id > rev.newest) {
                rev.newest = id;
                if (!r[5].is_null()) rev.branch_id = r[5].as<long long>();
              }
              if (!r[6].is_null() && rev.commit_id == 0) rev.commit_id = r[6].as<long long>();
              Cell& cell = rev.cells[r[0].as<long long>()];
              ++cell.count;
              if (cell.id < id) {
                cell.id = id;
                cell.number = r[2].as<long long>();
                cell.state = r[3].c_str();
              }
            }
            std::vector<std::pair<std::string, Revision*>> order;
            for (auto& [revision, rev] : by_revision) order.emplace_back(revision, &rev);
            std::sort(order.begin(), order.end(),
                      [](const auto& a, const auto& b) { return a.second->newest > b.second->newest; });
            if (static_cast<long long>(order.size()) > revisions) order.resize(static_cast<size_t>(revisions));
            std::vector<std::string> commit_ids, branch_ids;
            for (const auto& [revision, rev] : order) {
              if (rev->commit_id) commit_ids.push_back(std::to_string(rev->commit_id));
              if (rev->branch_id) branch_ids.push_back(std::to_string(rev->branch_id));
            }
            auto joined = [](const std::vector<std::string>& ids) {
              std::string s = "{";
              for (const auto& id : ids) s += (s.size() > 1 ? "," : "") + id;
              return s + "}";
            };
            std::unordered_map<long long, json> commits, branches;
            for (const auto& r : tx.exec_params(
                     "SELECT id, author, coalesce(committer_date, author_date) AS date,"
                     " left(split_part(message, E'\\n', 1), 200) AS title FROM pefnos.commit WHERE id = ANY($1::bigint[])",
                     joined(commit_ids)))
              commits[r[0].as<long long>()] = rowJson(r);
            for (const auto& r : tx.exec_params(
                     "SELECT b.id, b.name, r.name AS repository FROM pefnos.branch b"
                     " JOIN pefnos.repository r ON r.id = b.repository_id WHERE b.id = ANY($1::int[])",
                     joined(branch_ids)))
              branches[r[0].as<long long>()] = rowJson(r);
            json rows = json::array();
            for (const auto& [revision, rev] : order) {
              json cells = json::object();
              for (const auto& [builder, cell] : rev->cells) {
                cells[std::to_string(builder)] = {
                    {"id", cell.id}, {"number", cell.number}, {"state", cell.state}, {"count", cell.count}};
              }
              json row{{"revision", revision}, {"builds", std::move(cells)}};
              if (auto c = commits.find(rev->commit_id); c != commits.end()) {
                row["author"] = c->second["author"];
                row["date"] = c->second["date"];
                row["title"] = c->second["title"];
              }
              if (auto b = branches.find(rev->branch_id); b != branches.end()) {
                row["branch_id"] = b->second["id"];
                row["branch"] = b->second["name"];
                row["repository"] = b->second["repository"];
              }
              rows.push_back(std::move(row));
            }
            return http::Response::json(200, dump(json{{"builders", builders}, {"revisions", rows}}));
          }};
}

}  // namespace

Read route(const std::vector<std::string>& path, const http::Request& request, Live live) {
  if (path.empty()) return {error(404, "no such path"), nullptr};
  if (path.size() == 1 && path[0] == "console") return console(request);
  if (path.size() == 3 && path[0] == "steps" && path[2] == "log") {
    auto id = number(path[1]);
    if (!id) return {error(400, "a step id is a number"), nullptr};
    return logRange(*id, request);
  }
  for (const auto& l : listings()) {
    if (path[0] != l.name) continue;
    if (path.size() == 1) return listing(l, request, std::move(live));
    if (path.size() == 2) {
      auto id = number(path[1]);
      if (!id) return {error(400, "an id is a number"), nullptr};
      if (auto bad = unknownParameter(request, {})) return {error(400, *bad), nullptr};
      return single(l, *id);
    }
  }
  return {error(404, "no such path"), nullptr};
}

}  // namespace pefnos::web::api
