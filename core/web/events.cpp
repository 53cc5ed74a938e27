#include "core/web/events.h"

#include <algorithm>
#include <charconv>
#include <unordered_map>

#include "core/base/json_text.h"
#include "core/base/log.h"
#include "core/web/api.h"

namespace pefnos::web {
namespace {

using nlohmann::json;

// Ids turned into events per query; the rest wait for the next one.
constexpr size_t kIdsPerQuery = 500;
// Log chunks (at most 256 KiB each) read per tick, shared by the followed steps.
constexpr size_t kChunksPerTick = 64;

std::optional<long long> idOf(const std::string& payload) {
  long long id = 0;
  auto [end, ec] = std::from_chars(payload.data(), payload.data() + payload.size(), id);
  if (ec != std::errc() || end != payload.data() + payload.size()) return std::nullopt;
  return id;
}

std::string arrayLiteral(const std::vector<long long>& ids) {
  std::string s = "{";
  for (long long id : ids) s += (s.size() > 1 ? "," : "") + std::to_string(id);
  return s + "}";
}

// The rows behind each kind of event, read once for every client.
json buildEvents(pqxx::work& tx, const std::vector<long long>& ids) {
  tx.exec("SET LOCAL TIME ZONE 'UTC'");
  return api::rowsJson(tx.exec_params(
      "SELECT b.id, b.number, b.builder_id, bl.name AS builder, b.state, b.summary, q.revision, q.branch_id,"
      " br.name AS branch, w.name AS worker, b.created_at, b.started_at, b.finished_at,"
      " (SELECT coalesce(jsonb_agg(jsonb_build_object('id', s.id, 'position', s.position, 'name', s.name,"
      "   'state', s.state) ORDER BY s.position), '[]') FROM pefnos.step s WHERE s.build_id = b.id) AS steps"
      " FROM pefnos.build b JOIN pefnos.builder bl ON bl.id = b.builder_id"
      " JOIN pefnos.build_request q ON q.id = b.request_id LEFT JOIN pefnos.branch br ON br.id = q.branch_id"
      " LEFT JOIN pefnos.worker w ON w.id = b.worker_id WHERE b.id = ANY($1::bigint[]) ORDER BY b.id",
      arrayLiteral(ids)));
}

json commandEvents(pqxx::work& tx, const std::vector<long long>& ids) {
  tx.exec("SET LOCAL TIME ZONE 'UTC'");
  return api::rowsJson(tx.exec_params(
      "SELECT id, kind, args, state, result, error, requested_by, created_at, finished_at FROM pefnos.command"
      " WHERE id = ANY($1::bigint[]) ORDER BY id",
      arrayLiteral(ids)));
}

json queueEvent(pqxx::work& tx) {
  json builders = json::object();
  long long total = 0;
  for (const auto& r : tx.exec("SELECT builder_id, count(*) FROM pefnos.build_request WHERE state = 'queued'"
                               " GROUP BY builder_id")) {
    builders[r[0].c_str()] = r[1].as<long long>();
    total += r[1].as<long long>();
  }
  return json::array({json{{"queued", total}, {"builders", builders}}});
}

}  // namespace

// ------------------------------------------------------------------ EventHub

EventHub::EventHub(uv_loop_t* loop, db::Database& db, Options options)
    : loop_(loop), db_(db), options_(options), heartbeat_(loop) {}

EventHub::~EventHub() { *alive_ = false; }

void EventHub::start(db::Listener& listener) {
  std::weak_ptr<bool> alive = alive_;
  // The Listener cannot unsubscribe: every handler checks that the hub lives.
  listener.subscribe("pefnos_build", [this, alive](const std::string& payload) {
    if (alive.expired()) return;
    if (auto id = idOf(payload)) builds_.ids.insert(*id);
    builds_.waiting = true;
    run(builds_, "build");
    if (on_build_) on_build_();
  });
  listener.subscribe("pefnos_request", [this, alive](const std::string&) {
    if (alive.expired()) return;
    queue_.waiting = true;
    run(queue_, "queue");
  });
  for (const char* channel : {"pefnos_command", "pefnos_command_done"}) {
    listener.subscribe(channel, [this, alive](const std::string& payload) {
      if (alive.expired()) return;
      if (auto id = idOf(payload)) {
        commands_.ids.insert(*id);
        commands_.waiting = true;
        run(commands_, "command");
      }
    });
  }
  // Configuration and mirrors: the payload says which row; pages re-read it.
  for (auto [channel, type] : {std::pair{"pefnos_config", "config"}, std::pair{"pefnos_mirror", "mirror"}}) {
    listener.subscribe(channel, [this, alive, type = std::string(type)](const std::string& payload) {
      if (alive.expired()) return;
      // Anyone with the database may NOTIFY: what is not a sound object is passed on as text.
      auto parsed = parseJson(payload);
      json data = parsed && parsed.value().is_object() ? std::move(parsed.value()) : json{{"payload", payload}};
      publish(type, data);
    });
  }
  // NOTIFYs sent while the connection was down are lost: pages read again.
  listener.onLost([this, alive](const std::string&) {
    if (!alive.expired()) lost_ = true;
  });
  listener.onListening([this, alive] {
    if (alive.expired() || !lost_) return;
    lost_ = false;
    publish("resync", json::object());
  });
  heartbeat_.start(static_cast<uint64_t>(options_.heartbeat_ms), static_cast<uint64_t>(options_.heartbeat_ms),
                   [this] { broadcast(": ping\n\n"); });
}

void EventHub::run(Feed& feed, const std::string& type) {
  if (feed.running || !feed.waiting) return;
  feed.running = true;
  feed.waiting = false;
  std::vector<long long> ids;
  while (!feed.ids.empty() && ids.size() < kIdsPerQuery) {
    ids.push_back(*feed.ids.begin());
    feed.ids.erase(feed.ids.begin());
  }
  if (!feed.ids.empty()) feed.waiting = true;
  db_.transact<json>(
      [type, ids](pqxx::work& tx) {
        if (type == "build") return buildEvents(tx, ids);
        if (type == "command") return commandEvents(tx, ids);
        return queueEvent(tx);
      },
      [this, &feed, type, alive = std::weak_ptr<bool>(alive_)](Result<json> events) {
        if (alive.expired()) return;
        feed.running = false;
        if (!events) {
          log::warning("web", "cannot read the rows of ", type, " events: ", events.error().message);
        } else {
          for (const auto& e : *events) publish(type, e);
        }
        run(feed, type);
      });
}

void EventHub::publish(const std::string& type, const json& data) {
  ++serial_;
  broadcast("id: " + std::to_string(serial_) + "\nevent: " + type + "\ndata: " + api::dump(data) + "\n\n");
}

void EventHub::broadcast(const std::string& text) {
  compact();
  // A copy: a write that fails closes its client, whose callback runs now.
  const auto clients = clients_;
  for (const auto& c : clients) {
    if (c->gone) continue;
    if (!c->stream.write(text)) {
      c->gone = true;
    } else if (c->stream.writeQueueSize() > options_.max_queued_bytes) {
      // It does not read: dropped, with what it had queued.
      c->gone = true;
      ++dropped_;
      c->stream.abort();
    }
  }
  compact();
}

void EventHub::compact() {
  std::erase_if(clients_, [](const auto& c) { return c->gone; });
}

size_t EventHub::clients() {
  compact();
  return clients_.size();
}

void EventHub::serve(const http::Request&, http::Responder out) {
  compact();
  if (clients_.size() >= options_.max_clients) {
    http::Response busy = api::error(503, "too many event clients (" + std::to_string(options_.max_clients) +
                                              "); try again later");
    busy.headers.push_back({"Retry-After", "5"});
    return out.send(std::move(busy));
  }
  http::Stream stream = out.stream(200, {{"Content-Type", "text/event-stream"},
                                         {"Cache-Control", "no-store"},
                                         {"X-Accel-Buffering", "no"}});
  if (!stream.open()) return;  // HEAD, or gone already
  auto client = std::make_shared<Client>();
  client->stream = stream;
  stream.onClose([weak = std::weak_ptr<Client>(client)] {
    if (auto c = weak.lock()) c->gone = true;
  });
  stream.write("retry: 3000\n: pefnos events\n\n");
  clients_.push_back(std::move(client));
}

// ------------------------------------------------------------------ LogTail

namespace {

struct Start {
  bool found = false;
  std::string state;
  long long total = 0;
  int last_seq = -1;  // the chunk before the offset
  long long skip = 0;
};

struct Tail {
  std::string state;
  std::vector<std::pair<int, std::string>> chunks;  // in order
  bool complete = true;                             // every chunk there is was read
};

bool over(const std::string& state) { return state != "pending" && state != "running"; }

}  // namespace

LogTail::LogTail(uv_loop_t* loop, db::Database& db, Options options)
    : loop_(loop), db_(db), options_(options), timer_(loop) {}

LogTail::~LogTail() { *alive_ = false; }

void LogTail::follow(long long step, long long offset, http::Responder out) {
  std::erase_if(followers_, [](const auto& f) { return f->gone; });
  if (followers_.size() + starting_ >= options_.max_followers) {
    http::Response busy = api::error(503, "too many logs followed at once; try again later");
    busy.headers.push_back({"Retry-After", "5"});
    return out.send(std::move(busy));
  }
  ++starting_;
  db_.transact<Start>(
      [step, offset](pqxx::work& tx) {
        Start s;
        auto r = tx.exec_params(
            "SELECT s.state, (SELECT coalesce(sum(length(data)), 0) FROM pefnos.log WHERE step_id = s.id),"
            " (SELECT coalesce(max(seq), -1) FROM pefnos.log WHERE step_id = s.id), c.seq, c.start"
            " FROM pefnos.step s LEFT JOIN LATERAL (SELECT seq, start FROM (SELECT seq, length(data) AS len,"
            "  coalesce(sum(length(data)) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)"
            "  AS start FROM pefnos.log WHERE step_id = $1) c WHERE c.start + c.len > $2 ORDER BY seq LIMIT 1) c"
            " ON true WHERE s.id = $1",
            step, offset);
        if (r.empty()) return s;
        s.found = true;
        s.state = r[0][0].as<std::string>();
        s.total = r[0][1].as<long long>();
        s.last_seq = r[0][2].as<int>();
        if (!r[0][3].is_null()) {
          s.last_seq = r[0][3].as<int>() - 1;
          s.skip = offset - r[0][4].as<long long>();
        }
        return s;
      },
      [this, step, offset, out, alive = std::weak_ptr<bool>(alive_)](Result<Start> r) mutable {
        if (alive.expired()) return;
        --starting_;
        if (!r) {
          log::warning("web", "a log query failed: ", r.error().message);
          return out.send(api::error(500, "the database could not answer; see the master's log"));
        }
        if (!r->found) return out.send(api::error(404, "no step " + std::to_string(step)));
        if (offset > r->total) {
          http::Response beyond = api::error(416, "offset " + std::to_string(offset) + " is beyond the end (" +
                                                      std::to_string(r->total) + " bytes)");
          beyond.headers.push_back({"X-Log-Size", std::to_string(r->total)});
          return out.send(std::move(beyond));
        }
        http::Stream stream = out.stream(200, {{"Content-Type", "text/plain; charset=utf-8"},
                                               {"X-Content-Type-Options", "nosniff"},
                                               {"Cache-Control", "no-store"},
                                               {"X-Log-Size", std::to_string(r->total)},
                                               {"X-Log-Offset", std::to_string(offset)},
                                               {"X-Step-State", r->state}});
        if (!stream.open()) return;
        auto f = std::make_shared<Follower>(Follower{step, r->last_seq, r->skip, stream});
        stream.onClose([weak = std::weak_ptr<Follower>(f)] {
          if (auto alive_f = weak.lock()) alive_f->gone = true;
        });
        followers_.push_back(std::move(f));
        if (!timer_.active()) {
          timer_.start(static_cast<uint64_t>(options_.tick_ms), static_cast<uint64_t>(options_.tick_ms),
                       [this] { tick(); });
        }
        tick();
      });
}

void LogTail::wake() {
  if (!followers_.empty()) tick();
}

void LogTail::tick() {
  if (ticking_) {
    again_ = true;
    return;
  }
  std::erase_if(followers_, [](const auto& f) { return f->gone; });
  if (followers_.empty()) {
    timer_.stop();
    return;
  }
  // Per step, from the chunk the furthest-behind reader needs; a reader whose
  // socket is full waits for the next tick (it is not buffered for).
  std::map<long long, int> after;
  for (const auto& f : followers_) {
    if (f->stream.writeQueueSize() > options_.max_queued_bytes) continue;
    auto [it, inserted] = after.emplace(f->step, f->last_seq);
    if (!inserted) it->second = std::min(it->second, f->last_seq);
  }
  if (after.empty()) return;
  std::vector<long long> steps, seqs;
  for (const auto& [step, seq] : after) {
    steps.push_back(step);
    seqs.push_back(seq);
  }
  const long long per_step = static_cast<long long>(std::max<size_t>(1, kChunksPerTick / steps.size()));
  ticking_ = true;
  db_.transact<std::map<long long, Tail>>(
      [steps = arrayLiteral(steps), seqs = arrayLiteral(seqs), per_step](pqxx::work& tx) {
        std::map<long long, Tail> tails;
        for (const auto& r : tx.exec_params(
                 "SELECT f.step_id, s.state, l.seq, l.data FROM unnest($1::bigint[], $2::int[]) AS f(step_id, after_seq)"
                 " JOIN pefnos.step s ON s.id = f.step_id LEFT JOIN LATERAL (SELECT seq, data FROM pefnos.log"
                 "  WHERE step_id = f.step_id AND seq > f.after_seq ORDER BY seq LIMIT $3) l ON true"
                 " ORDER BY f.step_id, l.seq",
                 steps, seqs, per_step)) {
          Tail& t = tails[r[0].as<long long>()];
          t.state = r[1].as<std::string>();
          if (r[2].is_null()) continue;
          t.chunks.emplace_back(r[2].as<int>(), pqxx::binarystring(r[3]).str());
          t.complete = static_cast<long long>(t.chunks.size()) < per_step;
        }
        return tails;
      },
      [this, alive = std::weak_ptr<bool>(alive_)](Result<std::map<long long, Tail>> tails) {
        if (alive.expired()) return;
        ticking_ = false;
        if (!tails) {
          log::warning("web", "cannot read followed logs: ", tails.error().message);
          return;  // the next tick tries again
        }
        bool more = false;
        const auto followers = followers_;
        for (const auto& f : followers) {
          if (f->gone || f->stream.writeQueueSize() > options_.max_queued_bytes) continue;
          auto t = tails->find(f->step);
          if (t == tails->end()) continue;  // skipped in the query (backed up then)
          for (const auto& [seq, data] : t->second.chunks) {
            if (seq <= f->last_seq) continue;
            std::string bytes = data;
            if (f->skip > 0) {
              bytes.erase(0, static_cast<size_t>(std::min<long long>(f->skip, static_cast<long long>(bytes.size()))));
              f->skip = 0;
            }
            f->last_seq = seq;
            if (!bytes.empty() && !f->stream.write(std::move(bytes))) f->gone = true;
          }
          if (!t->second.complete) more = true;
          if (!f->gone && t->second.complete && over(t->second.state)) {
            f->stream.close();  // the step ended and everything it printed was sent
            f->gone = true;
          }
        }
        if (more || again_) {
          again_ = false;
          tick();
        }
      });
}

}  // namespace pefnos::web
