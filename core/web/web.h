// The web room: the JSON API (/api/v1) and Prometheus metrics (/metrics)
// served by core/http on the daemon's loop. Every answer is read from the
// rows (the database is the truth) in one query, plus the few live counters
// only this master knows (connected workers, bytes of log).
//
// Writes are commands: POST /api/v1/commands with a bearer token (stored
// hashed in pefnos.api_token) inserts the row through the same SQL function
// as any GUI and answers its id. The page and live streams follow.
#pragma once

#include <uv.h>

#include <memory>
#include <string>

#include "core/base/result.h"
#include "core/builds/builds.h"
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
};

class Web {
 public:
  // builds may be null (a master without workers).
  Web(uv_loop_t* loop, db::Database& db, const builds::Builds* builds,
      const scheduler::Scheduler& scheduler, Options options);
  ~Web();
  Web(const Web&) = delete;
  Web& operator=(const Web&) = delete;

  Status start();
  int port() const;

 private:
  void handle(const http::Request& request, http::Responder responder);
  void command(const http::Request& request, http::Responder responder);
  void query(http::Responder responder, std::function<http::Response(pqxx::work&)> fn);

  uv_loop_t* loop_;
  db::Database& db_;
  const builds::Builds* builds_;
  const scheduler::Scheduler& scheduler_;
  Options options_;
  std::unique_ptr<http::Server> server_;
  int in_flight_ = 0;  // queries the API has running
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pefnos::web
