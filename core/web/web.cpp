#include "core/web/web.h"

#include <pqxx/pqxx>

#include <charconv>
#include <sstream>

#include "core/base/log.h"
#include "core/protocol/auth.h"

namespace pefnos::web {
namespace {
using nlohmann::json;

constexpr long long kMaxPage = 200;
constexpr long long kMaxLogRange = 1 << 20;  // bytes per log read
// Queries of the API at once: the database connections are shared with the
// dispatcher and the log writer, which must never wait behind a crowd of readers.
constexpr int kMaxQueries = 4;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

http::Response error(int status, const std::string& message) {
  return http::Response::json(status, dump(json{{"error", message}}));
}

// A non-negative integer from a path segment or a query value.
std::optional<long long> number(const std::string& text) {
  long long value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 0) return std::nullopt;
  return value;
}

std::vector<std::string> segments(const std::string& path) {
  std::vector<std::string> out;
  std::istringstream in(path);
  for (std::string part; std::getline(in, part, '/');)
    if (!part.empty()) out.push_back(part);
  return out;
}

// Query values that must be numbers, with a clear 400 when they are not.
struct Params {
  const http::Request& request;
  std::string problem;
  std::optional<long long> get(const std::string& name, std::optional<long long> fallback = std::nullopt) {
    auto raw = request.queryParamIf(name);
    if (!raw) return fallback;
    auto n = number(*raw);
    if (!n) problem = "'" + name + "' must be a non-negative integer";
    return n;
  }
};

json rowJson(const pqxx::row& row) {
  json out = json::object();
  for (const auto& field : row) {
    if (field.is_null()) {
      out[field.name()] = nullptr;
      continue;
    }
    // jsonb and json columns come back as text: keep them as JSON.
    const auto type = field.type();
    if (type == 3802 || type == 114) {
      out[field.name()] = json::parse(field.c_str(), nullptr, false);
    } else if (type == 20 || type == 21 || type == 23) {
      out[field.name()] = field.as<long long>();
    } else if (type == 16) {
      out[field.name()] = field.as<bool>();
    } else {
      out[field.name()] = field.c_str();
    }
  }
  return out;
}

json rowsJson(const pqxx::result& rows) {
  json out = json::array();
  for (const auto& r : rows) out.push_back(rowJson(r));
  return out;
}

}  // namespace

json status(pqxx::work& tx) {
  json builds = json::object();
  for (const auto& r : tx.exec("SELECT state, count(*) FROM pefnos.build GROUP BY state ORDER BY state")) {
    builds[r[0].c_str()] = r[1].as<long long>();
  }
  auto row = tx.exec(
      "SELECT (SELECT count(*) FROM pefnos.build_request WHERE state = 'queued'),"
      " (SELECT count(*) FROM pefnos.repository WHERE active)")[0];
  json failing = json::array();
  for (const auto& r : tx.exec(
           "SELECT r.name, p.last_error FROM pefnos.repository_poll p JOIN pefnos.repository r"
           " ON r.id = p.repository_id WHERE p.last_error IS NOT NULL AND r.active ORDER BY r.name")) {
    failing.push_back({{"name", r[0].c_str()}, {"error", r[1].c_str()}});
  }
  json masters = json::array();
  for (const auto& r : tx.exec("SELECT name, extract(epoch FROM now() - heartbeat_at)::int FROM pefnos.master"
                               " ORDER BY name")) {
    masters.push_back({{"name", r[0].c_str()}, {"heartbeat_age_s", r[1].as<long long>()}});
  }
  return json{{"builds", builds},
              {"queue", row[0].as<long long>()},
              {"repositories", {{"active", row[1].as<long long>()}, {"failing", failing.size()}}},
              {"failing", failing},
              {"masters", masters}};
}

Web::Web(uv_loop_t* loop, db::Database& db, const builds::Builds* builds,
         const scheduler::Scheduler& scheduler, Options options)
    : loop_(loop), db_(db), builds_(builds), scheduler_(scheduler), options_(std::move(options)) {}

Web::~Web() { *alive_ = false; }

Status Web::start() {
  http::Options o;
  o.host = options_.host;
  o.port = options_.port;
  auto server = http::Server::listen(loop_, o, [this](const http::Request& r, http::Responder out) {
    handle(r, std::move(out));
  });
  if (!server) return server.error();
  server_ = std::move(server.value());
  log::info("web", "serving HTTP on http://", options_.host, ":", server_->port(), "/");
  return ok();
}

int Web::port() const { return server_ ? server_->port() : 0; }

// Runs fn in a read transaction; its Response (or the error as 500) goes back.
void Web::query(http::Responder responder, std::function<http::Response(pqxx::work&)> fn) {
  if (in_flight_ >= kMaxQueries) {
    http::Response busy = error(503, "busy: too many API requests at once; try again");
    busy.headers.push_back({"Retry-After", "1"});
    return responder.send(std::move(busy));
  }
  ++in_flight_;
  db_.transact<http::Response>(
      std::move(fn),
      [this, responder, alive = std::weak_ptr<bool>(alive_)](Result<http::Response> r) mutable {
        if (alive.expired()) return;
        --in_flight_;
        if (!r) {  // the details go to the log, not to whoever asked
          log::warning("web", "a query failed: ", r.error().message);
          return responder.send(error(500, "the database could not answer; see the master's log"));
        }
        responder.send(std::move(r.value()));
      });
}

// POST /api/v1/commands {"kind": K, "args": {...}} with a bearer token: a
// command row through the same SQL function any GUI uses; 202 and its id.
void Web::command(const http::Request& request, http::Responder out) {
  const std::string auth = request.header("authorization");
  if (auth.rfind("Bearer ", 0) != 0 || auth.size() <= 7) {
    http::Response r = error(401, "a write needs a token: Authorization: Bearer <token> (pefnos ctl token create NAME)");
    r.headers.push_back({"WWW-Authenticate", "Bearer"});
    return out.send(std::move(r));
  }
  const std::string hash = protocol::apiTokenHash(auth.substr(7));
  json body = json::parse(request.body, nullptr, false);
  if (!body.is_object() || !body.contains("kind") || !body["kind"].is_string()) {
    return out.send(error(400, "the body is {\"kind\": \"force-build\", \"args\": {...}}"));
  }
  json args = body.value("args", json::object());
  if (!args.is_object()) return out.send(error(400, "'args' must be an object"));
  // Each kind a GUI may ask for, through its SQL function, with typed arguments.
  static const std::map<std::string, std::pair<std::string, std::vector<std::string>>> kinds = {
      {"ping", {"SELECT pefnos.ping()", {}}},
      {"reload", {"SELECT pefnos.reload()", {}}},
      {"force-build", {"SELECT pefnos.force_build($1::int, $2::int, nullif($3, ''))", {"builder", "branch", "revision?"}}},
      {"stop-build", {"SELECT pefnos.stop_build($1::bigint)", {"build"}}},
      {"poll-now", {"SELECT pefnos.poll_now($1::int)", {"repository"}}},
      {"mirror-now", {"SELECT pefnos.mirror_now($1::int)", {"mirror"}}},
  };
  auto kind = kinds.find(body["kind"].get<std::string>());
  if (kind == kinds.end()) {
    std::string known;
    for (const auto& [k, v] : kinds) known += (known.empty() ? "" : ", ") + k;
    return out.send(error(400, "no command kind '" + body["kind"].get<std::string>() + "' (known: " + known + ")"));
  }
  std::vector<std::string> values;
  for (std::string name : kind->second.second) {
    const bool optional = name.back() == '?';
    if (optional) name.pop_back();
    if (!args.contains(name) || args[name].is_null()) {
      if (!optional) return out.send(error(400, "'" + name + "' is required for " + kind->first));
      values.emplace_back();
      continue;
    }
    const auto& v = args[name];
    if (optional ? !v.is_string() : !v.is_number_integer()) {
      return out.send(error(400, "'" + name + "' must be " + (optional ? "a string" : "an integer")));
    }
    values.push_back(v.is_string() ? v.get<std::string>() : std::to_string(v.get<long long>()));
  }
  query(std::move(out), [hash, sql = kind->second.first, values](pqxx::work& tx) {
    auto who = tx.exec_params(
        "UPDATE pefnos.api_token SET last_used_at = now() WHERE hash = $1 AND active RETURNING name", hash);
    if (who.empty()) return error(401, "unknown or inactive token");
    // The function refuses what does not exist (RAISE): the caller's mistake, said as it is.
    tx.exec("SAVEPOINT command");
    pqxx::result id;
    try {
      switch (values.size()) {
        case 0: id = tx.exec(sql); break;
        case 1: id = tx.exec_params(sql, values[0]); break;
        default: id = tx.exec_params(sql, values[0], values[1], values[2]); break;
      }
    } catch (const pqxx::sql_error& e) {
      if (e.sqlstate() != "P0001" && e.sqlstate() != "22P02" && e.sqlstate() != "22003") throw;
      tx.exec("ROLLBACK TO SAVEPOINT command");
      std::string message = e.what();
      message = message.substr(0, message.find('\n'));
      if (message.rfind("ERROR:  ", 0) == 0) message.erase(0, 8);
      return error(400, message);
    }
    const long long command = id[0][0].as<long long>();
    tx.exec_params("UPDATE pefnos.command SET requested_by = 'api:' || $2 WHERE id = $1", command,
                   who[0][0].as<std::string>());
    return http::Response::json(202, dump(json{{"command", command}}));
  });
}

void Web::handle(const http::Request& request, http::Responder out) {
  if (request.method == "POST" && request.path == "/api/v1/commands") return command(request, std::move(out));
  if (request.method != "GET" && request.method != "HEAD") {
    http::Response r = error(405, "only GET and HEAD here; writes are POST /api/v1/commands");
    r.headers.push_back({"Allow", "GET, HEAD"});
    return out.send(std::move(r));
  }
  const auto parts = segments(request.path);
  Params params{request, ""};

  if (request.path == "/metrics") {
    const auto counters = builds_ ? builds_->counters() : builds::Counters{};
    const uint64_t polls = scheduler_.pollsDone();
    return query(std::move(out), [counters, polls](pqxx::work& tx) {
      std::ostringstream m;
      m << "# HELP pefnos_builds Builds by state.\n# TYPE pefnos_builds gauge\n";
      for (const auto& r : tx.exec("SELECT state, count(*) FROM pefnos.build GROUP BY state ORDER BY state")) {
        m << "pefnos_builds{state=\"" << r[0].c_str() << "\"} " << r[1].as<long long>() << "\n";
      }
      m << "# HELP pefnos_build_queue Build requests waiting for a worker.\n# TYPE pefnos_build_queue gauge\n"
        << "pefnos_build_queue "
        << tx.exec("SELECT count(*) FROM pefnos.build_request WHERE state = 'queued'")[0][0].as<long long>() << "\n";
      auto polls_row = tx.exec(
          "SELECT count(*), count(*) FILTER (WHERE last_error IS NOT NULL), coalesce(avg(duration_ms), 0) "
          "FROM pefnos.repository_poll")[0];
      m << "# HELP pefnos_repositories_polled Repositories polled at least once.\n"
        << "# TYPE pefnos_repositories_polled gauge\npefnos_repositories_polled " << polls_row[0].as<long long>()
        << "\n# HELP pefnos_repositories_failing Repositories whose last poll failed.\n"
        << "# TYPE pefnos_repositories_failing gauge\npefnos_repositories_failing " << polls_row[1].as<long long>()
        << "\n# HELP pefnos_poll_duration_ms_avg Average duration of the last poll of each repository.\n"
        << "# TYPE pefnos_poll_duration_ms_avg gauge\npefnos_poll_duration_ms_avg " << polls_row[2].as<double>()
        << "\n# HELP pefnos_polls_total Polls done by this master.\n# TYPE pefnos_polls_total counter\n"
        << "pefnos_polls_total " << polls
        << "\n# HELP pefnos_workers Workers connected to this master.\n# TYPE pefnos_workers gauge\n"
        << "pefnos_workers " << counters.workers
        << "\n# HELP pefnos_builds_running Builds running on this master's workers.\n"
        << "# TYPE pefnos_builds_running gauge\npefnos_builds_running " << counters.running
        << "\n# HELP pefnos_builds_started_total Builds this master started.\n"
        << "# TYPE pefnos_builds_started_total counter\npefnos_builds_started_total " << counters.builds_started
        << "\n# HELP pefnos_log_bytes_total Bytes of step output received.\n"
        << "# TYPE pefnos_log_bytes_total counter\npefnos_log_bytes_total " << counters.log_bytes << "\n";
      auto mirrors = tx.exec("SELECT state, count(*) FROM pefnos.mirror_run GROUP BY state ORDER BY state");
      m << "# HELP pefnos_mirror_runs Mirror runs by state.\n# TYPE pefnos_mirror_runs gauge\n";
      for (const auto& r : mirrors) {
        m << "pefnos_mirror_runs{state=\"" << r[0].c_str() << "\"} " << r[1].as<long long>() << "\n";
      }
      http::Response r = http::Response::text(200, m.str());
      for (auto& [name, value] : r.headers)
        if (name == "Content-Type") value = "text/plain; version=0.0.4; charset=utf-8";
      return r;
    });
  }

  if (parts.size() < 2 || parts[0] != "api" || parts[1] != "v1") return out.send(error(404, "no such path"));
  const std::vector<std::string> api(parts.begin() + 2, parts.end());

  if (api == std::vector<std::string>{"status"}) {
    const auto counters = builds_ ? builds_->counters() : builds::Counters{};
    return query(std::move(out), [counters](pqxx::work& tx) {
      json summary = status(tx);
      // What only this master knows: its connections.
      summary["workers"] = counters.workers;
      summary["running"] = counters.running;
      return http::Response::json(200, dump(summary));
    });
  }

  if (api == std::vector<std::string>{"workers"}) {
    json list = json::array();
    if (builds_) {
      for (const auto& w : builds_->workers()) {
        list.push_back({{"name", w.name}, {"peer", w.peer}, {"slots", w.slots}, {"running", w.running},
                        {"trusted", w.trusted}, {"tags", w.tags}});
      }
    }
    return out.send(http::Response::json(200, dump(json{{"workers", list}})));
  }

  if (!api.empty() && api[0] == "builds" && api.size() <= 2) {
    if (api.size() == 2) {
      auto id = number(api[1]);
      if (!id) return out.send(error(400, "a build id is a number"));
      return query(std::move(out), [id = *id](pqxx::work& tx) {
        auto b = tx.exec_params(
            "SELECT b.id, b.number, bl.name AS builder, b.state, b.summary, r.revision, r.reason,"
            " br.name AS branch, w.name AS worker, b.created_at::text, b.started_at::text, b.finished_at::text"
            " FROM pefnos.build b JOIN pefnos.builder bl ON bl.id = b.builder_id"
            " JOIN pefnos.build_request r ON r.id = b.request_id LEFT JOIN pefnos.branch br ON br.id = r.branch_id"
            " LEFT JOIN pefnos.worker w ON w.id = b.worker_id WHERE b.id = $1",
            id);
        if (b.empty()) return error(404, "no build " + std::to_string(id));
        json build = rowJson(b[0]);
        build["steps"] = rowsJson(tx.exec_params(
            "SELECT s.id, s.position, s.name, s.type, s.state, s.exit_code, s.summary, s.started_at::text,"
            " s.finished_at::text, (SELECT coalesce(sum(length(data)), 0) FROM pefnos.log l WHERE l.step_id = s.id)"
            " AS log_bytes FROM pefnos.step s WHERE s.build_id = $1 ORDER BY s.position",
            id));
        return http::Response::json(200, dump(build));
      });
    }
    auto limit = params.get("limit", 50);
    auto before = params.get("before", std::numeric_limits<long long>::max());
    auto builder = params.get("builder", 0);
    std::string state = request.queryParam("state");
    if (!params.problem.empty()) return out.send(error(400, params.problem));
    if (*limit == 0 || *limit > kMaxPage) return out.send(error(400, "'limit' must be 1 to " + std::to_string(kMaxPage)));
    return query(std::move(out), [limit = *limit, before = *before, builder = *builder, state](pqxx::work& tx) {
      auto rows = tx.exec_params(
          "SELECT b.id, b.number, bl.name AS builder, b.state, r.revision, br.name AS branch,"
          " b.created_at::text, b.finished_at::text FROM pefnos.build b"
          " JOIN pefnos.builder bl ON bl.id = b.builder_id JOIN pefnos.build_request r ON r.id = b.request_id"
          " LEFT JOIN pefnos.branch br ON br.id = r.branch_id"
          " WHERE b.id < $1::bigint AND ($2::bigint = 0 OR b.builder_id = $2::bigint)"
          " AND ($3 = '' OR b.state = $3) ORDER BY b.id DESC LIMIT $4::bigint",
          before, builder, state, limit);
      json page{{"builds", rowsJson(rows)}};
      if (static_cast<long long>(rows.size()) == limit) page["next_before"] = rows[rows.size() - 1][0].as<long long>();
      return http::Response::json(200, dump(page));
    });
  }

  // /api/v1/steps/ID/log?offset=&limit=: a range of the step's output, as stored.
  if (api.size() == 3 && api[0] == "steps" && api[2] == "log") {
    auto id = number(api[1]);
    if (!id) return out.send(error(400, "a step id is a number"));
    auto offset = params.get("offset", 0);
    auto limit = params.get("limit", kMaxLogRange);
    if (!params.problem.empty()) return out.send(error(400, params.problem));
    const long long take = std::min(*limit, kMaxLogRange);
    return query(std::move(out), [id = *id, offset = *offset, take](pqxx::work& tx) {
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
          " FROM (SELECT data, coalesce(sum(length(data)) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING"
          "  AND 1 PRECEDING), 0) AS start FROM pefnos.log WHERE step_id = $1) c"
          " WHERE start + length(data) > $2 AND start < $2 + $3 ORDER BY start",
          id, offset, take);
      std::string body;
      for (const auto& r : rows) {
        pqxx::binarystring bytes(r[0]);
        body.append(bytes.str());
      }
      http::Response r = http::Response::text(200, std::move(body));
      r.headers.push_back({"X-Log-Size", std::to_string(total)});
      r.headers.push_back({"X-Log-Offset", std::to_string(offset)});
      return r;
    });
  }

  out.send(error(404, "no such path"));
}

}  // namespace pefnos::web
