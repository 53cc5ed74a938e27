// The web room: the JSON API (/api/v1), live events (SSE), Prometheus
// metrics (/metrics) and the status page (/, its files compiled in), served
// by core/http on the daemon's loop. Every answer is read from the rows (the
// database is the truth), plus the few live counters only this master knows
// (connected workers, bytes of log, command latency).
//
// Reads: listings under /api/v1 page (limit, offset, before/after an id) and
// filter (?builder=, ?state=, ...); a malformed or unknown parameter is a
// 400. At most 4 API queries run at once, a few more wait, then 503.
// Live: GET /api/v1/events fans one subscription to the master's NOTIFYs out
// to every client; GET /api/v1/steps/ID/log?follow=1 tails a running step.
// Writes are commands: POST /api/v1/commands with a bearer token (stored
// hashed in pefnos.api_token) inserts the row through the same SQL function
// as any GUI and answers its id.
#pragma once

#include <uv.h>

#include <deque>
#include <memory>
#include <string>

#include "core/base/result.h"
#include "core/builds/builds.h"
#include "core/commands/commands.h"
#include "core/db/db.h"
#include "core/http/http.h"
#include "core/scheduler/scheduler.h"

namespace pefnos::web {

// The summary of the whole installation, from the rows: builds by state, the
// queue, repositories (and which fail, why), masters and their heartbeats.
// What /api/v1/status answers and `pefnos ctl status` prints.
nlohmann::json status(pqxx::work& tx);

struct Options {
  std::string host = "127.0.0.1";
  int port = 7421;  // 0: any free port (logged)
  size_t max_event_clients = 1000;  // SSE clients at once; beyond: 503
};

class EventHub;
class LogTail;

class Web {
 public:
  // builds may be null (a master without workers); listener and runner
  // too (then no live events, no command latency).
  Web(uv_loop_t* loop, db::Database& db, const builds::Builds* builds,
      const scheduler::Scheduler& scheduler, Options options, db::Listener* listener = nullptr,
      const commands::Runner* runner = nullptr);
  ~Web();
  Web(const Web&) = delete;
  Web& operator=(const Web&) = delete;

  Status start();
  int port() const;

 private:
  void handle(const http::Request& request, http::Responder responder);
  void command(const http::Request& request, http::Responder responder);
  void metrics(http::Responder responder);
  void asset(const std::string& name, http::Responder responder);
  void query(http::Responder responder, std::function<http::Response(pqxx::work&)> fn);
  void runQuery(http::Responder responder, std::function<http::Response(pqxx::work&)> fn);

  uv_loop_t* loop_;
  db::Database& db_;
  const builds::Builds* builds_;
  const scheduler::Scheduler& scheduler_;
  Options options_;
  db::Listener* listener_;
  const commands::Runner* runner_;
  std::unique_ptr<EventHub> events_;
  std::unique_ptr<LogTail> tail_;
  int in_flight_ = 0;  // queries the API has running
  std::deque<std::pair<http::Responder, std::function<http::Response(pqxx::work&)>>> waiting_;
  std::unique_ptr<http::Server> server_;  // last: destroyed first, before what its handlers use
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pefnos::web
