#include "core/builds/builds.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <deque>
#include <map>
#include <set>

#include "core/base/log.h"
#include "core/builds/logs.h"
#include "core/loop/loop.h"
#include "core/protocol/auth.h"
#include "core/protocol/protocol.h"

namespace pefnos::builds {
namespace {
using nlohmann::json;

constexpr uint32_t kStderrBit = 0x80000000u;
constexpr const char* kBuilderFull = "the builder became full meanwhile";
constexpr uint64_t kHandshakeMs = 10000;  // hello to welcome, at most
constexpr size_t kHighWater = 1u << 20;  // bytes queued to a worker before a source export pauses

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

const char* stateName(StepState s) {
  switch (s) {
    case StepState::succeeded: return "succeeded";
    case StepState::warnings: return "warnings";
    case StepState::failed: return "failed";
    case StepState::error: return "error";
  }
  return "error";
}
int severity(const std::string& state) {
  if (state == "succeeded") return 0;
  if (state == "warnings") return 1;
  if (state == "failed") return 2;
  return 3;
}

bool commandOk(const CommandOutcome& o) {
  return !o.not_started && !o.timed_out && !o.output_limited && o.signal == 0 && o.exit_code == 0;
}

// What a claim brings back from the database: everything the build needs.
struct Claimed {
  long long request = 0, build = 0;
  int builder = 0, number = 0;
  bool repository_trusted = true;
  int repository_id = 0;
  struct StepRow {
    long long id = 0;
    int position = 0;
    std::string type, params;
  };
  std::vector<StepRow> steps;
  StepContext context;  // without params_json (per step) and worker tags
  std::map<int, std::vector<std::string>> previous;  // position → summaries, newest first
};

// A step's end as its row records it.
struct StepEnd {
  long long step = 0;
  std::string state;
  int exit_code = 0;
  std::string summary;
};

}  // namespace

struct Session;

// One build running on one worker.
struct Run {
  Claimed claimed;
  std::weak_ptr<Session> session;
  size_t step = 0;  // index into claimed.steps
  StepContext context;  // of the current step: what plan() saw, interpret() sees
  std::vector<StepCommand> commands;
  std::vector<CommandOutcome> outcomes;
  size_t command = 0;
  bool failed_command = false;
  uint32_t channel = 0;  // the running command's
  std::shared_ptr<Running> export_running;
  std::shared_ptr<Step> plugin;
  std::string worst = "succeeded";
  bool stopping = false;  // stop-build asked for it
  bool started = false;   // the worker made its directory
  bool over = false;
};

// One connection from a worker.
struct Session : std::enable_shared_from_this<Session> {
  std::unique_ptr<loop::TcpStream> stream;
  protocol::Decoder decoder;
  enum class State { hello, auth, ready, closed } state = State::hello;
  std::string peer, name, auth_message;
  protocol::Verifier verifier;
  int worker_id = 0;
  bool trusted = false;
  int slots = 1;
  json tags = json::object();
  std::map<long long, std::shared_ptr<Run>> runs;  // by build id
  std::map<uint32_t, std::shared_ptr<Run>> channels;
  uint32_t next_channel = 1;
  uint64_t last_heard = 0;
  bool claiming = false, claim_again = false, reading_paused = false;
  std::vector<std::function<void()>> on_drain;  // source exports waiting for the socket

  size_t freeSlots() const { return runs.size() >= static_cast<size_t>(slots) ? 0 : slots - runs.size(); }
};

struct Builds::Impl {
  Impl(uv_loop_t* l, db::Database& d, config::Model& m, plugin::Registry& p, scheduler::Scheduler& s,
       Options o)
      : loop(l), db(d), model(m), plugins(p), scheduler(s), options(std::move(o)),
        logs(l, d, options.log_budget), dispatch_timer(l), heartbeat(l) {}

  uv_loop_t* loop;
  db::Database& db;
  config::Model& model;
  plugin::Registry& plugins;
  scheduler::Scheduler& scheduler;
  Options options;
  LogWriter logs;
  std::unique_ptr<loop::TcpServer> server;
  std::set<std::shared_ptr<Session>> sessions;
  loop::Timer dispatch_timer, heartbeat;
  Counters counters;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);

  // ---------------------------------------------------------------- start
  void start(std::function<void(Status)> started) {
    // What this master held before it (re)started is given back first:
    // builds interrupted, requests queued again. Only then is anything claimed.
    db.transact<int>(
        [name = options.master_name](pqxx::work& tx) {
          tx.exec_params(
              "UPDATE pefnos.step SET state = CASE WHEN state = 'running' THEN 'interrupted' ELSE 'skipped' END, "
              "finished_at = now() WHERE state IN ('pending', 'running') AND build_id IN "
              "(SELECT id FROM pefnos.build WHERE master = $1 AND state IN ('pending', 'running'))",
              name);
          auto r = tx.exec_params(
              "UPDATE pefnos.build SET state = 'interrupted', finished_at = now() "
              "WHERE master = $1 AND state IN ('pending', 'running') RETURNING id",
              name);
          tx.exec_params(
              "UPDATE pefnos.build_request SET state = 'queued', claimed_by = NULL, lease_until = NULL, "
              "claimed_at = NULL WHERE state = 'claimed' AND claimed_by = $1",
              name);
          return static_cast<int>(r.size());
        },
        [this, started = std::move(started), alive = std::weak_ptr<bool>(alive)](Result<int> r) {
          if (alive.expired()) return;
          if (!r) return started(r.error());
          if (*r > 0) {
            log::warning("builds", *r, " builds this master left running before it restarted were "
                         "interrupted; their requests are queued again");
          }
          started(listen());
        },
        db::Retry::on_reconnect);
  }

  Status listen() {
    auto listening = loop::TcpServer::listen(loop, options.listen_host, options.listen_port,
                                             [this](std::unique_ptr<loop::TcpStream> s) { accept(std::move(s)); });
    if (!listening) return listening.error();
    server = std::move(listening.value());
    log::info("builds", "listening for workers on ", options.listen_host, ":", server->port());
    logs.onDrained([this] {
      for (const auto& s : sessions) {
        if (s->reading_paused && s->stream) {
          s->reading_paused = false;
          s->last_heard = uv_now(loop);
          (void)s->stream->resumeReading();
        }
      }
    });
    const uint64_t hb = static_cast<uint64_t>(options.heartbeat_seconds) * 1000;
    heartbeat.start(hb, hb, [this, hb] {
      for (auto s : std::vector<std::shared_ptr<Session>>(sessions.begin(), sessions.end())) {
        const uint64_t quiet = uv_now(loop) - s->last_heard;
        if (s->state != Session::State::ready && s->state != Session::State::closed && quiet > kHandshakeMs) {
          close(s, "no complete handshake in " + std::to_string(kHandshakeMs / 1000) + " s");
          continue;
        }
        // While we do not read from it (the logs are behind), its heartbeats wait unread.
        if (s->state == Session::State::ready && !s->reading_paused && quiet > 3 * hb) {
          close(s, "silent for " + std::to_string(3 * hb / 1000) + " s");
          continue;
        }
        if (s->state == Session::State::ready) send(*s, {{"type", "heartbeat"}});
      }
      takeOverExpired();
      dispatchSoon();
    });
    dispatchSoon();
    return ok();
  }

  // Requests claimed by a master whose lease ran out (it died): interrupted
  // and queued again, here.
  void takeOverExpired() {
    db.transact<int>(
        [name = options.master_name](pqxx::work& tx) {
          // Our own claims are ours whatever their lease says (it lapses while
          // the database is away); a restart gives them back.
          auto expired = tx.exec_params(
              "SELECT id FROM pefnos.build_request WHERE state = 'claimed' AND lease_until < now() "
              "AND claimed_by <> $1 FOR UPDATE SKIP LOCKED",
              name);
          for (const auto& row : expired) {
            long long id = row[0].as<long long>();
            tx.exec_params(
                "UPDATE pefnos.step SET state = CASE WHEN state = 'running' THEN 'interrupted' ELSE 'skipped' END, "
                "finished_at = now() WHERE state IN ('pending', 'running') AND build_id IN "
                "(SELECT id FROM pefnos.build WHERE request_id = $1 AND state IN ('pending', 'running'))",
                id);
            tx.exec_params(
                "UPDATE pefnos.build SET state = 'interrupted', finished_at = now() "
                "WHERE request_id = $1 AND state IN ('pending', 'running')",
                id);
            tx.exec_params(
                "UPDATE pefnos.build_request SET state = 'queued', claimed_by = NULL, lease_until = NULL, "
                "claimed_at = NULL WHERE id = $1",
                id);
          }
          return static_cast<int>(expired.size());
        },
        [this](Result<int> r) {
          if (r && *r > 0) {
            log::warning("builds", "took over ", *r, " requests whose master's lease ran out");
            dispatchSoon();
          }
        });
  }

  // ---------------------------------------------------------------- sessions
  void accept(std::unique_ptr<loop::TcpStream> stream) {
    auto s = std::make_shared<Session>();
    s->peer = stream->peer();
    s->stream = std::move(stream);
    s->last_heard = uv_now(loop);
    std::weak_ptr<Session> weak = s;
    sessions.insert(s);
    auto reading = s->stream->read(
        [this, weak](std::string_view bytes) {
          if (auto s = weak.lock()) onBytes(s, bytes);
        },
        [this, weak](Status end) {
          if (auto s = weak.lock()) close(s, end ? "disconnected" : end.error().message);
        });
    if (!reading) close(s, reading.error().message);
  }

  void close(const std::shared_ptr<Session>& s, const std::string& why) {
    if (s->state == Session::State::closed) return;
    const bool was_ready = s->state == Session::State::ready;
    s->state = Session::State::closed;
    if (was_ready) log::warning("builds", "worker '", s->name, "' (", s->peer, ") lost: ", why);
    else log::warning("builds", "connection from ", s->peer, " closed: ", why);
    auto runs = std::move(s->runs);
    s->runs.clear();
    s->channels.clear();
    for (auto& [id, run] : runs) interrupt(run, "worker '" + s->name + "' lost: " + why);
    s->stream.reset();
    sessions.erase(s);
    counters.workers = readyCount();
  }

  size_t readyCount() const {
    return std::count_if(sessions.begin(), sessions.end(),
                         [](const auto& s) { return s->state == Session::State::ready; });
  }

  void send(Session& s, const json& message) { write(s, protocol::encodeControl(message)); }
  void write(Session& s, std::string bytes) {
    if (!s.stream) return;
    std::weak_ptr<Session> weak = s.weak_from_this();
    (void)s.stream->write(std::move(bytes), [weak](Status) {
      auto s = weak.lock();
      if (!s || !s->stream || s->stream->writeQueueSize() > kHighWater / 4) return;
      auto waiting = std::move(s->on_drain);
      s->on_drain.clear();
      for (auto& fn : waiting) fn();
    });
  }

  void onBytes(const std::shared_ptr<Session>& s, std::string_view bytes) {
    s->last_heard = uv_now(loop);
    if (auto fed = s->decoder.feed(bytes); !fed) return close(s, fed.error().message);  // says "protocol error"
    while (auto frame = s->decoder.next()) {
      if (s->state == Session::State::closed) return;
      if (frame->kind == protocol::Kind::data) {
        if (s->state != Session::State::ready) return close(s, "data before authentication");
        onOutput(s, frame->channel, frame->payload);
        continue;
      }
      auto m = protocol::parseControl(frame->payload);
      if (!m) return close(s, m.error().message);
      try {
        onControl(s, *m);
      } catch (const json::exception& e) {
        return close(s, "malformed " + m->value("type", std::string("?")) + " message: " + e.what());
      }
    }
  }

  void onControl(const std::shared_ptr<Session>& s, const json& m) {
    const std::string type = m["type"];
    if (type == "heartbeat") return;
    switch (s->state) {
      case Session::State::hello: return hello(s, m);
      case Session::State::auth: return auth(s, m);
      case Session::State::ready:
        if (type == "build-ready") return buildReady(s, m);
        if (type == "finished") return finished(s, m);
        return close(s, "unexpected message '" + type + "'");
      case Session::State::closed: return;
    }
  }

  void refuse(const std::shared_ptr<Session>& s, const std::string& reason, const std::string& logged) {
    log::warning("builds", "refused worker from ", s->peer, ": ", logged);
    send(*s, {{"type", "refused"}, {"reason", reason}});
    // Closed once the refusal is written; reading stops now.
    s->state = Session::State::closed;
    s->stream->stopReading();
    std::weak_ptr<Session> weak = s;
    auto written = s->stream->write("", [this, weak](Status) {
      if (auto s = weak.lock()) {
        s->stream.reset();
        sessions.erase(s);
      }
    });
    if (!written) {
      s->stream.reset();
      sessions.erase(s);
    }
  }

  void hello(const std::shared_ptr<Session>& s, const json& m) {
    if (m["type"] != "hello") return close(s, "expected hello");
    if (m.at("version").get<int>() != protocol::kVersion) {
      return refuse(s, "this master speaks protocol version " + std::to_string(protocol::kVersion),
                    "protocol version " + std::to_string(m.at("version").get<int>()));
    }
    s->name = m.at("name").get<std::string>();
    s->slots = std::max(1, m.value("slots", 1));
    s->tags = m.value("tags", json::object());
    if (!s->tags.is_object()) return close(s, "tags must be an object");
    std::shared_ptr<const config::Worker> row;
    for (const auto& [id, w] : model.workers())
      if (w->name == s->name) row = w;
    // A stranger gets a challenge it cannot answer, like a wrong secret: no
    // way to tell names that exist from names that do not.
    if (row && row->active && row->secret_hash) {
      auto v = protocol::parseVerifier(*row->secret_hash);
      if (!v) {
        log::error("builds", "worker '", s->name, "' has an unusable secret_hash: ", v.error().message);
        s->verifier = protocol::decoyVerifier(s->name);
      } else {
        s->verifier = *v;
        s->worker_id = row->id;
        s->trusted = row->trusted;
        s->slots = std::min(s->slots, row->slots);
        for (auto& [k, v] : row->tags.items()) s->tags[k] = v;  // the configuration wins
      }
    } else {
      s->verifier = protocol::decoyVerifier(s->name);
    }
    const std::string nonce = protocol::newNonce();
    s->auth_message = protocol::authMessage(s->name, nonce);
    send(*s, {{"type", "challenge"}, {"nonce", nonce}, {"salt", protocol::base64(s->verifier.salt)},
              {"iterations", s->verifier.iterations}});
    s->state = Session::State::auth;
    for (const auto& b : m.value("interrupted", json::array())) {
      log::info("builds", "worker '", s->name, "' reports build ", b.dump(), " interrupted by its lost connection");
    }
  }

  void auth(const std::shared_ptr<Session>& s, const json& m) {
    if (m["type"] != "auth") return close(s, "expected auth");
    if (s->worker_id == 0 || !protocol::proofValid(s->verifier, s->auth_message, m.at("proof").get<std::string>())) {
      return refuse(s, "unknown worker or wrong secret",
                    "'" + s->name + "': unknown worker or wrong secret");
    }
    // The same worker again (it lost its connection before we noticed): it
    // proved its secret, so the old session is the stale one.
    for (auto other : std::vector<std::shared_ptr<Session>>(sessions.begin(), sessions.end())) {
      if (other != s && other->state == Session::State::ready && other->worker_id == s->worker_id) {
        close(other, "replaced by a new connection from " + s->peer);
      }
    }
    send(*s, {{"type", "welcome"},
              {"server_signature", protocol::serverSignature(s->verifier, s->auth_message)},
              {"heartbeat_s", options.heartbeat_seconds}});
    s->state = Session::State::ready;
    counters.workers = readyCount();
    log::info("builds", "worker '", s->name, "' connected from ", s->peer, " (", s->slots, " slots, ",
              s->trusted ? "trusted" : "untrusted", ", tags ", s->tags.dump(), ")");
    dispatchSoon();
  }

  // ---------------------------------------------------------------- dispatch
  void dispatchSoon() {
    if (!dispatch_timer.active()) dispatch_timer.start(0, 0, [this] { dispatch(); });
  }

  void dispatch() {
    for (const auto& s : sessions) {
      if (s->state != Session::State::ready || s->freeSlots() == 0) continue;
      // A claim already running may have looked before the newest request
      // was committed: it claims once more when it is done.
      if (s->claiming) s->claim_again = true;
      else claim(s);
    }
  }

  void claim(const std::shared_ptr<Session>& s) {
    s->claiming = true;
    std::weak_ptr<Session> weak = s;
    db.transact<std::optional<Claimed>>(
        [tags = s->tags.dump(), trusted = s->trusted, worker = s->worker_id, name = options.master_name,
         lease = options.lease_seconds](pqxx::work& tx) { return claimOne(tx, tags, trusted, worker, name, lease); },
        [this, weak, alive = std::weak_ptr<bool>(alive)](Result<std::optional<Claimed>> r) {
          if (alive.expired()) return;
          auto s = weak.lock();
          bool again = false;
          if (s) {
            s->claiming = false;
            again = s->claim_again;
            s->claim_again = false;
          }
          if (!r) {
            if (r.error().message.find(kBuilderFull) == std::string::npos) {
              log::error("builds", "claiming a build request: ", r.error().message);
            }
            if (again || r.error().message.find(kBuilderFull) != std::string::npos) dispatchSoon();
            return;
          }
          if (!*r) {  // nothing this worker may run (unless something came meanwhile)
            if (again && s && s->state == Session::State::ready) claim(s);
            return;
          }
          if (!s || s->state != Session::State::ready) {
            // The worker went away meanwhile: the claim goes back.
            auto run = std::make_shared<Run>();
            run->claimed = std::move(**r);
            return interrupt(run, "the worker left before the build started");
          }
          begin(s, std::move(**r));
          if (s->freeSlots() > 0) claim(s);
        });
  }

  static std::optional<Claimed> claimOne(pqxx::work& tx, const std::string& tags, bool trusted, int worker,
                                         const std::string& master, int lease) {
    auto picked = tx.exec_params(
        "WITH c AS ("
        " SELECT r.id FROM pefnos.build_request r"
        " JOIN pefnos.builder b ON b.id = r.builder_id"
        " LEFT JOIN pefnos.branch br ON br.id = r.branch_id"
        " LEFT JOIN pefnos.repository repo ON repo.id = br.repository_id"
        " WHERE r.state = 'queued' AND b.active"
        "  AND b.requires_tags <@ $1::jsonb"
        "  AND (NOT b.trusted OR $2::boolean)"                    // needs a trusted worker
        "  AND (repo.trusted IS NOT FALSE OR NOT $2::boolean)"    // untrusted code: untrusted workers only
        "  AND (SELECT count(*) FROM pefnos.build x WHERE x.builder_id = b.id"
        "       AND x.state IN ('pending', 'running')) < b.max_concurrent"
        " ORDER BY r.priority DESC, r.id LIMIT 1 FOR UPDATE OF r SKIP LOCKED)"
        " UPDATE pefnos.build_request r SET state = 'claimed', claimed_by = $3, claimed_at = now(),"
        "  lease_until = now() + make_interval(secs => $4)"
        " FROM c WHERE r.id = c.id"
        " RETURNING r.id, r.builder_id, r.branch_id, r.commit_id, r.revision, r.properties::text",
        tags, trusted, master, lease);
    if (picked.empty()) return std::nullopt;
    Claimed c;
    const auto& row = picked[0];
    c.request = row[0].as<long long>();
    c.builder = row[1].as<int>();
    // Two masters claiming for one builder: its row lock makes the count and
    // the number exact.
    tx.exec_params("SELECT 1 FROM pefnos.builder WHERE id = $1 FOR UPDATE", c.builder);
    auto running = tx.exec_params(
        "SELECT count(x.id) < max(b.max_concurrent) FROM pefnos.builder b LEFT JOIN pefnos.build x"
        " ON x.builder_id = b.id AND x.state IN ('pending', 'running') WHERE b.id = $1",
        c.builder);
    // Rolled back: another claim filled the builder between our two looks.
    if (!running[0][0].as<bool>()) throw std::runtime_error(kBuilderFull);
    auto build = tx.exec_params(
        "INSERT INTO pefnos.build (request_id, builder_id, number, worker_id, master, state, started_at)"
        " SELECT $1, $2, coalesce(max(number), 0) + 1, $3, $4, 'running', now() FROM pefnos.build WHERE builder_id = $2"
        " RETURNING id, number",
        c.request, c.builder, worker, master);
    c.build = build[0][0].as<long long>();
    c.number = build[0][1].as<int>();
    tx.exec_params(
        "INSERT INTO pefnos.step (build_id, position, name, type)"
        " SELECT $1, o - 1, left(coalesce(s->>'name', s->>'type', 'step'), 200),"
        "  CASE WHEN s->>'type' ~ '^[a-z][a-z0-9-]{0,31}$' THEN s->>'type' ELSE 'invalid' END"
        " FROM pefnos.builder b, jsonb_array_elements(CASE WHEN jsonb_typeof(b.steps) = 'array' THEN b.steps"
        "  ELSE '[]'::jsonb END) WITH ORDINALITY AS t(s, o) WHERE b.id = $2",
        c.build, c.builder);
    // The first step runs from now: one transaction less on the way to the worker.
    tx.exec_params("UPDATE pefnos.step SET state = 'running', started_at = now() WHERE build_id = $1 AND position = 0",
                   c.build);
    for (const auto& st : tx.exec_params(
             "SELECT st.id, st.position, st.type, (b.steps -> st.position)::text FROM pefnos.step st"
             " JOIN pefnos.builder b ON b.id = $2 WHERE st.build_id = $1 ORDER BY st.position",
             c.build, c.builder)) {
      c.steps.push_back({st[0].as<long long>(), st[1].as<int>(), st[2].as<std::string>(), st[3].as<std::string>()});
    }
    auto ctx = tx.exec_params(
        "SELECT coalesce(repo.name, ''), coalesce(repo.vcs, ''), coalesce(br.name, ''), coalesce(repo.id, 0),"
        " coalesce(repo.trusted, true), (b.properties || r.properties)::text,"
        " coalesce(array_to_string(cm.files, E'\\x1f'), ''), r.revision, coalesce(r.branch_id, 0)"
        " FROM pefnos.build_request r JOIN pefnos.builder b ON b.id = r.builder_id"
        " LEFT JOIN pefnos.branch br ON br.id = r.branch_id"
        " LEFT JOIN pefnos.repository repo ON repo.id = br.repository_id"
        " LEFT JOIN pefnos.commit cm ON cm.id = r.commit_id WHERE r.id = $1",
        c.request);
    const auto& x = ctx[0];
    c.context.repository = x[0].as<std::string>();
    c.context.vcs = x[1].as<std::string>();
    c.context.branch = x[2].as<std::string>();
    c.repository_id = x[3].as<int>();
    c.repository_trusted = x[4].as<bool>();
    c.context.properties_json = x[5].as<std::string>();
    for (std::string files = x[6].as<std::string>(); !files.empty();) {
      size_t sep = files.find('\x1f');
      c.context.changed_files.push_back(files.substr(0, sep));
      files = sep == std::string::npos ? "" : files.substr(sep + 1);
    }
    c.context.revision = x[7].as<std::string>();
    // The last five finished builds of this builder and branch, newest
    // first: walked backwards on build (builder_id, id), not sorted whole.
    for (const auto& p : tx.exec_params(
             "SELECT st.position, st.summary::text FROM (SELECT bb.id FROM pefnos.build bb"
             "  JOIN pefnos.build_request rr ON rr.id = bb.request_id WHERE bb.builder_id = $1"
             "  AND rr.branch_id IS NOT DISTINCT FROM nullif($2, 0) AND bb.state NOT IN ('pending', 'running')"
             "  ORDER BY bb.id DESC LIMIT 5) last JOIN pefnos.step st ON st.build_id = last.id"
             " ORDER BY last.id DESC",
             c.builder, x[8].as<int>())) {
      c.previous[p[0].as<int>()].push_back(p[1].as<std::string>());
    }
    tx.exec_params("SELECT pg_notify('pefnos_build', $1::text)", c.build);
    return c;
  }

  // ---------------------------------------------------------------- a build
  void begin(const std::shared_ptr<Session>& s, Claimed claimed) {
    auto run = std::make_shared<Run>();
    run->claimed = std::move(claimed);
    run->session = s;
    for (auto& [k, v] : s->tags.items()) {
      run->claimed.context.worker_tags[k] = v.is_string() ? v.get<std::string>() : v.dump();
    }
    s->runs[run->claimed.build] = run;
    ++counters.builds_started;
    counters.running = runningCount();
    send(*s, {{"type", "build-start"}, {"build", run->claimed.build}});
  }

  size_t runningCount() const {
    size_t n = 0;
    for (const auto& s : sessions) n += s->runs.size();
    return n;
  }

  void buildReady(const std::shared_ptr<Session>& s, const json& m) {
    auto it = s->runs.find(m.at("build").get<long long>());
    if (it == s->runs.end()) return;
    auto run = it->second;
    if (run->started) return close(s, "build-ready twice for build " + std::to_string(run->claimed.build));
    run->started = true;
    if (m.contains("error") && m["error"].is_string()) {
      return finishBuild(run, "error", "the worker could not start the build: " + m["error"].get<std::string>());
    }
    startStep(run);
  }

  // Plans the current step and runs its first command; the row says running first.
  void startStep(const std::shared_ptr<Run>& run) {
    if (run->over) return;
    if (run->step >= run->claimed.steps.size()) return finishBuild(run, run->worst, "");
    const auto& row = run->claimed.steps[run->step];
    run->context = run->claimed.context;
    StepContext& ctx = run->context;  // interpret() gets the very same
    ctx.params_json = row.params;
    ctx.previous_summaries_json = run->claimed.previous[row.position];
    run->commands.clear();
    run->outcomes.clear();
    run->command = 0;
    run->failed_command = false;
    run->plugin = plugins.makeStep(row.type);
    std::string problem;
    if (!run->plugin) {
      std::string known;
      for (const auto& n : plugins.stepNames()) known += (known.empty() ? "" : ", ") + n;
      problem = "no step plugin named '" + row.type + "' (loaded: " + (known.empty() ? "none" : known) + ")";
    } else {
      auto planned = run->plugin->plan(ctx);
      if (!planned) problem = planned.error().message;
      else run->commands = std::move(*planned);
    }
    auto s = run->session.lock();
    if (problem.empty() && s && !s->trusted) {
      for (const auto& c : run->commands) {
        if (!c.secret_env.empty()) {
          problem = "the step needs secrets, and worker '" + s->name + "' is not trusted";
          break;
        }
      }
    }
    if (problem.empty() && !run->claimed.repository_trusted && s && s->trusted) {
      problem = "refusing to run an untrusted repository's build on trusted worker '" + s->name + "'";
    }
    // The step's row already says running (the claim or the previous step's end wrote it).
    if (!problem.empty()) {
      run->worst = "error";
      return finishBuild(run, "error", problem, StepEnd{row.id, "error", -1, dump(json{{"message", problem}})});
    }
    nextCommand(run);
  }

  void nextCommand(const std::shared_ptr<Run>& run) {
    auto s = run->session.lock();
    if (!s || run->over) return;
    while (run->command < run->commands.size() && run->failed_command && !run->commands[run->command].always) {
      ++run->command;
    }
    if (run->command >= run->commands.size() || run->stopping) return endStep(run);
    const StepCommand& c = run->commands[run->command];
    run->channel = s->next_channel++;
    if (s->next_channel >= kStderrBit) s->next_channel = 1;
    s->channels[run->channel] = run;
    if (c.unpack_source) return sendSource(s, run, c);
    std::vector<std::string> env = c.env;
    env.insert(env.end(), c.secret_env.begin(), c.secret_env.end());  // trusted: checked when planned
    send(*s, {{"type", "run"}, {"build", run->claimed.build}, {"channel", run->channel}, {"argv", c.argv},
              {"env", env}, {"cwd", c.cwd}, {"timeout", c.timeout_seconds}, {"max_output", c.max_output},
              {"collect_regex", c.collect_regex}});
  }

  void sendSource(const std::shared_ptr<Session>& s, const std::shared_ptr<Run>& run, const StepCommand& c) {
    const uint32_t channel = run->channel;
    send(*s, {{"type", "unpack"}, {"build", run->claimed.build}, {"channel", channel}, {"cwd", c.cwd},
              {"timeout", c.timeout_seconds}});
    if (run->claimed.repository_id == 0) {
      write(*s, protocol::encodeEnd(channel));
      return;
    }
    std::weak_ptr<Session> weak_s = s;
    std::weak_ptr<Run> weak_run = run;
    auto on_chunk = [this, weak_s, weak_run, channel](std::string_view chunk) {
      auto s = weak_s.lock();
      auto run = weak_run.lock();
      if (!s || !run || run->channel != channel) return;
      write(*s, protocol::encodeData(channel, chunk));
      // Back-pressure: the export waits while the worker's socket is full.
      if (s->stream && s->stream->writeQueueSize() > kHighWater && run->export_running) {
        run->export_running->pause();
        s->on_drain.push_back([weak_run] {
          if (auto run = weak_run.lock(); run && run->export_running) run->export_running->resume();
        });
      }
    };
    auto done = [this, weak_s, weak_run, channel](Status status) {
      auto s = weak_s.lock();
      auto run = weak_run.lock();
      if (!s || !run || run->channel != channel || run->over) return;
      run->export_running.reset();
      if (!status) {
        // The worker's tar sees a truncated stream and fails; say why in the log.
        auto& step = run->claimed.steps[run->step];
        logs.append(step.id, "info", "pefnos: exporting the source failed: " + status.error().message + "\n");
      }
      write(*s, protocol::encodeEnd(channel));
    };
    run->export_running =
        scheduler.exportTree(run->claimed.repository_id, run->claimed.context.revision, on_chunk, done);
  }

  void onOutput(const std::shared_ptr<Session>& s, uint32_t channel, const std::string& payload) {
    auto it = s->channels.find(channel & ~kStderrBit);
    if (it == s->channels.end() || payload.empty()) return;
    auto& run = it->second;
    counters.log_bytes += payload.size();
    const long long step_id = run->claimed.steps[run->step].id;
    if (!logs.append(step_id, (channel & kStderrBit) ? "err" : "out", payload) && !s->reading_paused) {
      // The database is behind: this worker waits (its socket fills, its
      // commands block on their pipes) until the logs are written.
      s->reading_paused = true;
      s->stream->stopReading();
    }
  }

  void finished(const std::shared_ptr<Session>& s, const json& m) {
    const uint32_t channel = m.at("channel").get<uint32_t>();
    auto it = s->channels.find(channel);
    if (it == s->channels.end()) return;
    auto run = it->second;
    s->channels.erase(it);
    if (run->export_running) {  // tar ended before the export: the rest is not wanted
      run->export_running->kill();
      run->export_running.reset();
    }
    CommandOutcome o;
    o.exit_code = m.value("exit_code", -1);
    o.signal = m.value("signal", 0);
    o.timed_out = m.value("timed_out", false);
    o.output_limited = m.value("output_limited", false);
    o.not_started = m.value("not_started", false);
    o.message = m.value("message", std::string());
    o.output_tail = m.value("tail", std::string());
    o.collected = m.value("collected", std::vector<std::string>{});
    if (!commandOk(o)) run->failed_command = true;
    if (o.not_started || o.timed_out || o.output_limited) {
      std::string why = o.not_started ? "not started: " + o.message
                        : o.timed_out ? "timed out after " + std::to_string(run->commands[run->command].timeout_seconds) + " s; killed"
                                      : "printed more than " + std::to_string(run->commands[run->command].max_output) + " bytes; killed";
      logs.append(run->claimed.steps[run->step].id, "info", "pefnos: " + why + "\n");
    }
    run->outcomes.push_back(std::move(o));
    ++run->command;
    nextCommand(run);
  }

  void endStep(const std::shared_ptr<Run>& run) {
    const auto& row = run->claimed.steps[run->step];
    StepResult result = run->plugin->interpret(run->context, run->outcomes);
    if (run->stopping) {
      result.state = StepState::error;
      result.message = "stopped";
    }
    json summary = json::parse(result.summary_json, nullptr, false);
    if (!summary.is_object()) summary = json::object();
    if (!result.message.empty()) summary["message"] = result.message;
    const std::string state = run->stopping ? "cancelled" : stateName(result.state);
    const int exit_code = run->outcomes.empty() ? 0 : run->outcomes.back().exit_code;
    if (severity(state) > severity(run->worst)) run->worst = state == "cancelled" ? "cancelled" : state;
    StepEnd end{row.id, state, exit_code, dump(summary)};
    std::weak_ptr<Run> weak = run;
    // The step's output is stored before the step is said to be over.
    logs.flushStep(row.id, [this, weak, end](Status) {
      auto run = weak.lock();
      if (!run || run->over) return;
      const bool go_on = !run->stopping && (end.state == "succeeded" || end.state == "warnings") &&
                         run->step + 1 < run->claimed.steps.size();
      if (!go_on) return finishBuild(run, run->stopping ? "cancelled" : run->worst, run->stopping ? "stopped" : "", end);
      const long long next = run->claimed.steps[run->step + 1].id;
      db.transact<int>(
          [end, next](pqxx::work& tx) {
            recordStepEnd(tx, end);
            tx.exec_params("UPDATE pefnos.step SET state = 'running', started_at = now()"
                           " WHERE id = $1 AND state = 'pending'", next);
            return 0;
          },
          [this, weak](Result<int> r) {
            auto run = weak.lock();
            if (!run || run->over) return;
            if (!r) return finishBuild(run, "error", "recording a step: " + r.error().message);
            ++run->step;
            startStep(run);
          },
          db::Retry::on_reconnect);
    });
  }

  static void recordStepEnd(pqxx::work& tx, const StepEnd& end) {
    tx.exec_params("UPDATE pefnos.step SET state = $2, exit_code = $3, summary = $4::jsonb, finished_at = now()"
                   " WHERE id = $1",
                   end.step, end.state, end.exit_code, end.summary);
  }

  // The build ends (with its last step's end, if given) in one transaction.
  void finishBuild(const std::shared_ptr<Run>& run, const std::string& state, const std::string& message,
                   std::optional<StepEnd> last = std::nullopt) {
    if (run->over) return;
    run->over = true;
    if (run->export_running) run->export_running->kill();
    auto s = run->session.lock();
    if (s) {
      s->runs.erase(run->claimed.build);
      if (s->state == Session::State::ready) send(*s, {{"type", "build-end"}, {"build", run->claimed.build}});
    }
    counters.running = runningCount();
    ++counters.builds_finished;
    json summary = json::object();
    if (!message.empty()) summary["message"] = message;
    const long long build = run->claimed.build, request = run->claimed.request;
    db.transact<int>(
        [build, request, state, last, master = options.master_name, summary = dump(summary)](pqxx::work& tx) {
          if (last) recordStepEnd(tx, *last);
          // A step still running here was cut short (an error before its end).
          tx.exec_params("UPDATE pefnos.step SET state = CASE WHEN state = 'running' THEN 'error' ELSE 'skipped' END,"
                         " finished_at = now() WHERE build_id = $1 AND state IN ('pending', 'running')",
                         build);
          // Only while the build is still ours: an interruption (a lost lease
          // taken over elsewhere) is never overwritten.
          tx.exec_params("UPDATE pefnos.build SET state = $2, summary = $3::jsonb, finished_at = now()"
                         " WHERE id = $1 AND state IN ('pending', 'running')",
                         build, state, summary);
          tx.exec_params("UPDATE pefnos.build_request SET state = 'done', claimed_by = NULL, lease_until = NULL,"
                         " finished_at = now() WHERE id = $1 AND state = 'claimed' AND claimed_by = $2",
                         request, master);
          tx.exec_params("SELECT pg_notify('pefnos_build', $1::text)", build);
          return 0;
        },
        [this, build, alive = std::weak_ptr<bool>(alive)](Result<int> r) {
          if (alive.expired()) return;
          if (!r) log::error("builds", "recording the end of build ", build, ": ", r.error().message);
          dispatchSoon();  // after the commit: a claim now sees the builder's freed place
        },
        db::Retry::on_reconnect);
  }

  // The build stops where it is; its request is queued again (another worker runs it).
  void interrupt(const std::shared_ptr<Run>& run, const std::string& why) {
    if (run->over) return;
    run->over = true;
    if (run->export_running) run->export_running->kill();
    if (run->step < run->claimed.steps.size()) logs.flushStep(run->claimed.steps[run->step].id, [](Status) {});
    ++counters.builds_finished;
    const long long build = run->claimed.build, request = run->claimed.request;
    db.transact<int>(
        [build, request, why](pqxx::work& tx) {
          tx.exec_params("UPDATE pefnos.step SET state = CASE WHEN state = 'running' THEN 'interrupted'"
                         " ELSE 'skipped' END, finished_at = now() WHERE build_id = $1 AND state IN ('pending', 'running')",
                         build);
          if (build) {
            tx.exec_params("UPDATE pefnos.build SET state = 'interrupted', finished_at = now(),"
                           " summary = jsonb_build_object('message', $2::text) WHERE id = $1 AND state IN ('pending', 'running')",
                           build, why);
          }
          tx.exec_params("UPDATE pefnos.build_request SET state = 'queued', claimed_by = NULL, lease_until = NULL,"
                         " claimed_at = NULL WHERE id = $1 AND state = 'claimed'",
                         request);
          tx.exec_params("SELECT pg_notify('pefnos_build', $1::text)", build);
          return 0;
        },
        [this, build](Result<int> r) {
          if (!r) log::error("builds", "recording that build ", build, " was interrupted: ", r.error().message);
          dispatchSoon();
        },
        db::Retry::on_reconnect);
  }

  // ---------------------------------------------------------------- commands
  void forceBuild(int builder, int branch, const std::string& revision, long long command,
                  std::function<void(Result<json>)> done) {
    // The request is queued and, in the same transaction, claimed for a free
    // worker: one commit less between the command and the worker. It names
    // its command: a command run again (its master died before writing the
    // outcome) finds the request it already made.
    std::shared_ptr<Session> free;
    for (const auto& s : sessions) {
      if (s->state == Session::State::ready && !s->claiming && s->freeSlots() > 0) {
        free = s;
        break;
      }
    }
    if (free) free->claiming = true;
    struct Forced {
      json reply;
      std::optional<Claimed> claimed;
    };
    db.transact<Forced>(
        [builder, branch, revision, command, free = free ? std::optional<std::tuple<std::string, bool, int>>(
                                                      std::make_tuple(free->tags.dump(), free->trusted, free->worker_id))
                                                : std::nullopt,
         name = options.master_name, lease = options.lease_seconds](pqxx::work& tx) {
          // What force_build() checks, for a command row written by hand.
          if (tx.exec_params("SELECT 1 FROM pefnos.builder WHERE id = $1 AND active", builder).empty()) {
            throw std::runtime_error("no active builder with id " + std::to_string(builder));
          }
          auto head = tx.exec_params(
              "SELECT coalesce(nullif($2, ''), h.revision) FROM pefnos.branch br"
              " LEFT JOIN pefnos.branch_head h ON h.branch_id = br.id WHERE br.id = $1",
              branch, revision);
          if (head.empty()) throw std::runtime_error("no branch with id " + std::to_string(branch));
          if (head[0][0].is_null()) {
            throw std::runtime_error("branch " + std::to_string(branch) +
                                     " has no head yet (not polled?) and no revision was given");
          }
          const std::optional<long long> command_id = command ? std::optional(command) : std::nullopt;
          auto r = tx.exec_params(
              "INSERT INTO pefnos.build_request (builder_id, branch_id, commit_id, revision, reason, priority, command_id)"
              " SELECT $1, $2, (SELECT c.id FROM pefnos.commit c JOIN pefnos.branch_head h ON h.commit_id = c.id"
              "  WHERE h.branch_id = $2 AND h.revision = $3), $3, 'force', 10, $4"
              " ON CONFLICT (command_id) DO NOTHING RETURNING id, revision",
              builder, branch, head[0][0].as<std::string>(), command_id);
          const bool made = !r.empty();
          if (!made) {
            r = tx.exec_params("SELECT id, revision FROM pefnos.build_request WHERE command_id = $1", command);
          }
          Forced f{json{{"request", r[0][0].as<long long>()}, {"revision", r[0][1].as<std::string>()}}, {}};
          if (!made) f.reply["again"] = true;
          if (free && made) {
            // A savepoint: a claim that loses a race leaves the request queued.
            tx.exec("SAVEPOINT claim");
            try {
              f.claimed = claimOne(tx, std::get<0>(*free), std::get<1>(*free), std::get<2>(*free), name, lease);
              tx.exec("RELEASE SAVEPOINT claim");
            } catch (const std::exception&) {
              tx.exec("ROLLBACK TO SAVEPOINT claim");
            }
          }
          return f;
        },
        [this, free, alive = std::weak_ptr<bool>(alive), done = std::move(done)](Result<Forced> r) {
          if (alive.expired()) return;
          if (free) free->claiming = false;
          if (r && r->claimed) {
            if (free->state == Session::State::ready) {
              begin(free, std::move(*r->claimed));
            } else {
              auto run = std::make_shared<Run>();
              run->claimed = std::move(*r->claimed);
              interrupt(run, "the worker left before the build started");
            }
          }
          dispatch();  // the other workers, and this one's other slots
          if (!r) return done(r.error());
          done(std::move(r->reply));
        });
  }

  void stopBuild(long long build, std::function<void(Result<json>)> done) {
    for (const auto& s : sessions) {
      auto it = s->runs.find(build);
      if (it == s->runs.end()) continue;
      it->second->stopping = true;
      send(*s, {{"type", "stop"}, {"build", build}});
      return done(json{{"build", build}, {"stopping", true}});
    }
    done(Error{"build " + std::to_string(build) + " is not running on this master"});
  }

  void renewLeases() {
    std::vector<long long> requests;
    for (const auto& s : sessions)
      for (const auto& [id, run] : s->runs) requests.push_back(run->claimed.request);
    if (requests.empty()) return;
    std::string ids = "{";
    for (size_t i = 0; i < requests.size(); ++i) ids += (i ? "," : "") + std::to_string(requests[i]);
    ids += "}";
    db.transact<int>(
        [ids, name = options.master_name, lease = options.lease_seconds](pqxx::work& tx) {
          tx.exec_params("UPDATE pefnos.build_request SET lease_until = now() + make_interval(secs => $3)"
                         " WHERE id = ANY($1::bigint[]) AND claimed_by = $2",
                         ids, name, lease);
          return 0;
        },
        [](Result<int> r) {
          if (!r) log::error("builds", "renewing leases: ", r.error().message);
        });
  }
};

Builds::Builds(uv_loop_t* loop, db::Database& db, config::Model& model, plugin::Registry& plugins,
               scheduler::Scheduler& scheduler, Options options)
    : impl_(std::make_unique<Impl>(loop, db, model, plugins, scheduler, std::move(options))) {}

Builds::~Builds() {
  *impl_->alive = false;
  for (const auto& s : impl_->sessions)
    for (const auto& [id, run] : s->runs)
      if (run->export_running) run->export_running->kill();
}

void Builds::start(std::function<void(Status)> started) { impl_->start(std::move(started)); }
int Builds::port() const { return impl_->server ? impl_->server->port() : 0; }
void Builds::dispatchSoon() { impl_->dispatchSoon(); }
void Builds::forceBuild(int builder, int branch, const std::string& revision, long long command,
                        std::function<void(Result<nlohmann::json>)> done) {
  impl_->forceBuild(builder, branch, revision, command, std::move(done));
}
void Builds::stopBuild(long long build, std::function<void(Result<nlohmann::json>)> done) {
  impl_->stopBuild(build, std::move(done));
}
void Builds::renewLeases() { impl_->renewLeases(); }
Counters Builds::counters() const { return impl_->counters; }

std::vector<WorkerInfo> Builds::workers() const {
  std::vector<WorkerInfo> out;
  for (const auto& s : impl_->sessions) {
    if (s->state != Session::State::ready) continue;
    out.push_back({s->name, s->peer, s->slots, s->runs.size(), s->trusted, s->tags});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

}  // namespace pefnos::builds
