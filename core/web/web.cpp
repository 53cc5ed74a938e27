#include "core/web/web.h"

#include <pqxx/pqxx>

#include <charconv>
#include <sstream>

#include "core/base/json_text.h"
#include "core/base/log.h"
#include "core/protocol/auth.h"
#include "core/web/api.h"
#include "core/web/assets.h"
#include "core/web/events.h"

namespace pefnos::web {
namespace {
using nlohmann::json;
using api::dump;
using api::error;
using api::number;

// Queries of the API at once: the database connections are shared with the
// dispatcher and the log writer, which must never wait behind a crowd of
// readers. A few more wait their turn (a page loads several lists at once);
// beyond that, 503.
constexpr int kMaxQueries = 4;
constexpr size_t kMaxWaiting = 64;

std::vector<std::string> segments(const std::string& path) {
  std::vector<std::string> out;
  std::istringstream in(path);
  for (std::string part; std::getline(in, part, '/');)
    if (!part.empty()) out.push_back(part);
  return out;
}

// Prometheus histogram lines from a LatencyHistogram (cumulative buckets).
void histogram(std::ostringstream& m, const std::string& name, const commands::LatencyHistogram& h) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.kBounds.size(); ++i) {
    cumulative += h.counts[i];
    m << name << "_bucket{le=\"" << h.kBounds[i] << "\"} " << cumulative << "\n";
  }
  cumulative += h.counts.back();
  m << name << "_bucket{le=\"+Inf\"} " << cumulative << "\n"
    << name << "_sum " << h.sum_seconds << "\n"
    << name << "_count " << h.count << "\n";
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
         const scheduler::Scheduler& scheduler, Options options, db::Listener* listener,
         const commands::Runner* runner)
    : loop_(loop),
      db_(db),
      builds_(builds),
      scheduler_(scheduler),
      options_(std::move(options)),
      listener_(listener),
      runner_(runner) {
  EventHub::Options eo;
  eo.max_clients = options_.max_event_clients;
  events_ = std::make_unique<EventHub>(loop_, db_, eo);
  tail_ = std::make_unique<LogTail>(loop_, db_, LogTail::Options{});
  events_->onBuild([this] { tail_->wake(); });  // a build's end ends its steps
}

Web::~Web() {
  *alive_ = false;
  server_.reset();  // first: no handler runs into what follows
}

Status Web::start() {
  http::Options o;
  o.host = options_.host;
  o.port = options_.port;
  // Room for every event client and for the API beside them.
  o.max_connections = std::max<size_t>(o.max_connections, options_.max_event_clients + 256);
  auto server = http::Server::listen(loop_, o, [this](const http::Request& r, http::Responder out) {
    handle(r, std::move(out));
  });
  if (!server) return server.error();
  server_ = std::move(server.value());
  if (listener_) events_->start(*listener_);
  log::info("web", "serving HTTP on http://", options_.host, ":", server_->port(), "/");
  return ok();
}

int Web::port() const { return server_ ? server_->port() : 0; }

// Runs fn in a read transaction (in UTC: timestamps are ISO 8601 with Z);
// its Response (or the error as 500) goes back.
void Web::query(http::Responder responder, std::function<http::Response(pqxx::work&)> fn) {
  if (in_flight_ < kMaxQueries) return runQuery(std::move(responder), std::move(fn));
  if (waiting_.size() >= kMaxWaiting) {
    http::Response busy = error(503, "busy: too many API requests at once; try again");
    busy.headers.push_back({"Retry-After", "1"});
    return responder.send(std::move(busy));
  }
  waiting_.emplace_back(std::move(responder), std::move(fn));
}

void Web::runQuery(http::Responder responder, std::function<http::Response(pqxx::work&)> fn) {
  ++in_flight_;
  db_.transact<http::Response>(
      [fn = std::move(fn)](pqxx::work& tx) {
        tx.exec("SET LOCAL TIME ZONE 'UTC'");
        return fn(tx);
      },
      [this, responder, alive = std::weak_ptr<bool>(alive_)](Result<http::Response> r) mutable {
        if (alive.expired()) return;
        --in_flight_;
        if (!r) {  // the details go to the log, not to whoever asked
          log::warning("web", "a query failed: ", r.error().message);
          responder.send(error(500, "the database could not answer; see the master's log"));
        } else {
          responder.send(std::move(r.value()));
        }
        while (in_flight_ < kMaxQueries && !waiting_.empty()) {
          auto [next, next_fn] = std::move(waiting_.front());
          waiting_.pop_front();
          if (next.connected()) runQuery(std::move(next), std::move(next_fn));  // gone: not asked for
        }
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
  auto parsed = parseJson(request.body);
  if (!parsed) return out.send(error(400, "the body is " + parsed.error().message));
  json body = std::move(parsed.value());
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
      {"mirror-verify", {"SELECT pefnos.verify_mirror($1::int)", {"mirror"}}},
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

void Web::asset(const std::string& name, http::Responder out) {
  const Asset* a = findAsset(name);
  if (!a) return out.send(error(404, "no such asset"));
  http::Response r{200, {{"Content-Type", std::string(a->content_type)}}, std::string(a->body)};
  r.headers.push_back({"Cache-Control", "no-cache"});
  r.headers.push_back({"X-Content-Type-Options", "nosniff"});
  r.headers.push_back({"Content-Security-Policy",
                       "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                       "connect-src 'self'; frame-ancestors 'none'"});
  out.send(std::move(r));
}

void Web::metrics(http::Responder out) {
  const auto counters = builds_ ? builds_->counters() : builds::Counters{};
  const uint64_t polls = scheduler_.pollsDone();
  const auto latency = runner_ ? runner_->notifyToAction() : commands::LatencyHistogram{};
  const size_t event_clients = events_->clients(), followers = tail_->followers();
  const uint64_t dropped = events_->dropped(), events = events_->published();
  const size_t connections = server_ ? server_->connections() : 0;
  query(std::move(out), [=](pqxx::work& tx) {
    std::ostringstream m;
    m << "# HELP pefnos_builds Builds by state.\n# TYPE pefnos_builds gauge\n";
    for (const auto& r : tx.exec("SELECT state, count(*) FROM pefnos.build GROUP BY state ORDER BY state")) {
      m << "pefnos_builds{state=\"" << r[0].c_str() << "\"} " << r[1].as<long long>() << "\n";
    }
    m << "# HELP pefnos_build_queue Build requests waiting for a worker.\n# TYPE pefnos_build_queue gauge\n"
      << "pefnos_build_queue "
      << tx.exec("SELECT count(*) FROM pefnos.build_request WHERE state = 'queued'")[0][0].as<long long>() << "\n";
    auto polls_row = tx.exec(
        "SELECT count(*), count(*) FILTER (WHERE last_error IS NOT NULL), coalesce(avg(duration_ms), 0),"
        " coalesce(max(duration_ms), 0), coalesce(sum(polls), 0) FROM pefnos.repository_poll")[0];
    m << "# HELP pefnos_repositories_polled Repositories polled at least once.\n"
      << "# TYPE pefnos_repositories_polled gauge\npefnos_repositories_polled " << polls_row[0].as<long long>()
      << "\n# HELP pefnos_repositories_failing Repositories whose last poll failed (poll errors).\n"
      << "# TYPE pefnos_repositories_failing gauge\npefnos_repositories_failing " << polls_row[1].as<long long>()
      << "\n# HELP pefnos_poll_duration_ms_avg Average duration of the last poll of each repository.\n"
      << "# TYPE pefnos_poll_duration_ms_avg gauge\npefnos_poll_duration_ms_avg " << polls_row[2].as<double>()
      << "\n# HELP pefnos_poll_duration_ms_max Longest last poll of a repository.\n"
      << "# TYPE pefnos_poll_duration_ms_max gauge\npefnos_poll_duration_ms_max " << polls_row[3].as<long long>()
      << "\n# HELP pefnos_repository_polls Polls recorded for all repositories, by every master.\n"
      << "# TYPE pefnos_repository_polls gauge\npefnos_repository_polls " << polls_row[4].as<long long>()
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
    m << "# HELP pefnos_mirror_runs Mirror runs by state.\n# TYPE pefnos_mirror_runs gauge\n";
    for (const auto& r : tx.exec("SELECT s.state, count(mr.id) FROM unnest(ARRAY['running', 'succeeded', 'failed',"
                                 " 'interrupted']) AS s(state) LEFT JOIN pefnos.mirror_run mr ON mr.state = s.state"
                                 " GROUP BY s.state ORDER BY s.state")) {
      m << "pefnos_mirror_runs{state=\"" << r[0].c_str() << "\"} " << r[1].as<long long>() << "\n";
    }
    m << "# HELP pefnos_notify_to_action_seconds From a command's NOTIFY reaching this master to its handler"
         " starting.\n# TYPE pefnos_notify_to_action_seconds histogram\n";
    histogram(m, "pefnos_notify_to_action_seconds", latency);
    m << "# HELP pefnos_http_connections Open HTTP connections.\n# TYPE pefnos_http_connections gauge\n"
      << "pefnos_http_connections " << connections
      << "\n# HELP pefnos_event_clients Clients of /api/v1/events.\n# TYPE pefnos_event_clients gauge\n"
      << "pefnos_event_clients " << event_clients
      << "\n# HELP pefnos_event_clients_dropped_total Event clients dropped for not reading.\n"
      << "# TYPE pefnos_event_clients_dropped_total counter\npefnos_event_clients_dropped_total " << dropped
      << "\n# HELP pefnos_events_total Events sent to the event clients.\n# TYPE pefnos_events_total counter\n"
      << "pefnos_events_total " << events
      << "\n# HELP pefnos_log_followers Live log tails open.\n# TYPE pefnos_log_followers gauge\n"
      << "pefnos_log_followers " << followers << "\n";
    http::Response r = http::Response::text(200, m.str());
    for (auto& [name, value] : r.headers)
      if (name == "Content-Type") value = "text/plain; version=0.0.4; charset=utf-8";
    return r;
  });
}

void Web::handle(const http::Request& request, http::Responder out) {
  if (request.method == "POST" && request.path == "/api/v1/commands") return command(request, std::move(out));
  if (request.method != "GET" && request.method != "HEAD") {
    http::Response r = error(405, "only GET and HEAD here; writes are POST /api/v1/commands");
    r.headers.push_back({"Allow", "GET, HEAD"});
    return out.send(std::move(r));
  }
  if (request.path == "/" || request.path == "/index.html") return asset("index.html", std::move(out));
  if (request.path.rfind("/assets/", 0) == 0) {
    auto name = http::safeRelativePath(request.path.substr(8));
    if (!name || name->find('/') != std::string::npos) return out.send(error(400, "refused asset name"));
    return asset(*name, std::move(out));
  }
  if (request.path == "/metrics") return metrics(std::move(out));

  const auto parts = segments(request.path);
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
  if (api == std::vector<std::string>{"events"}) {
    if (!request.query.empty()) return out.send(error(400, "/api/v1/events takes no parameters"));
    if (!listener_) return out.send(error(404, "this server has no live events"));
    return events_->serve(request, std::move(out));
  }
  // A live tail: the step's output from an offset, then as it is stored.
  if (api.size() == 3 && api[0] == "steps" && api[2] == "log" && request.queryParamIf("follow")) {
    const std::string follow = request.queryParam("follow");
    auto id = number(api[1]);
    if (!id) return out.send(error(400, "a step id is a number"));
    if (follow != "1" && follow != "true" && follow != "0" && follow != "false")
      return out.send(error(400, "'follow' must be 1 or 0"));
    if (follow == "1" || follow == "true") {
      if (request.queryParamIf("limit")) return out.send(error(400, "'limit' does not go with 'follow'"));
      auto offset = number(request.queryParam("offset").empty() ? "0" : request.queryParam("offset"));
      if (!offset) return out.send(error(400, "'offset' must be a non-negative integer"));
      return tail_->follow(*id, *offset, std::move(out));
    }
  }

  api::Live live;
  if (builds_ && !api.empty() && api[0] == "workers") live.workers = builds_->workers();
  api::Read read = api::route(api, request, std::move(live));
  if (read.now) return out.send(std::move(*read.now));
  query(std::move(out), std::move(read.query));
}

}  // namespace pefnos::web
