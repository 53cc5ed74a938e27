// The builds room: the master's side of the workers. It listens for workers
// (core/protocol), authenticates them against pefnos.worker, claims build
// requests for the free slots of connected workers (FOR UPDATE SKIP LOCKED,
// tags, trust, builder concurrency, priority then age), turns each step into
// commands through its step plugin, drives the commands on the worker one by
// one, streams source trees from the proxies to it, stores output in
// pefnos.log while it runs, and writes steps, builds and requests back.
//
// Every state change is a row (and a NOTIFY on pefnos_build) before anything
// else happens. A worker lost mid-build: the build is interrupted and its
// request queued again. Claims carry this master's name and a lease that the
// master renews; a master that starts gives back what it held before.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>

#include "core/base/result.h"
#include "core/config/config.h"
#include "core/db/db.h"
#include "core/plugin/plugin.h"
#include "core/scheduler/scheduler.h"

namespace pefnos::builds {

struct Options {
  std::string master_name;
  std::string listen_host = "127.0.0.1";
  int listen_port = 7420;  // 0: any free port (tests)
  int lease_seconds = 60;
  int heartbeat_seconds = 10;
  size_t log_budget = 8u << 20;  // bytes of output buffered before workers are slowed down
};

// A connected, authenticated worker as this master sees it.
struct WorkerInfo {
  std::string name, peer;
  int slots = 0;
  size_t running = 0;
  bool trusted = false;
  nlohmann::json tags;
};

struct Counters {
  uint64_t builds_started = 0, builds_finished = 0, log_bytes = 0;
  size_t workers = 0, running = 0;
};

class Builds {
 public:
  Builds(uv_loop_t* loop, db::Database& db, config::Model& model, plugin::Registry& plugins,
         scheduler::Scheduler& scheduler, Options options);
  ~Builds();
  Builds(const Builds&) = delete;
  Builds& operator=(const Builds&) = delete;

  // Gives back this master's earlier claims, then listens for workers;
  // started runs with the outcome (a port already taken, say).
  void start(std::function<void(Status)> started);
  int port() const;

  // A request may be waiting (NOTIFY pefnos_request, a command, a timer).
  void dispatchSoon();
  // The command kinds: force-build {builder, branch, revision?} and stop-build {build}.
  // A force-build makes one request per command (command_id, 0 for none),
  // however often the command is run.
  void forceBuild(int builder_id, int branch_id, const std::string& revision, long long command_id,
                  std::function<void(Result<nlohmann::json>)> done);
  void stopBuild(long long build_id, std::function<void(Result<nlohmann::json>)> done);
  // Renews the leases of what runs here (the master's heartbeat calls it).
  void renewLeases();

  Counters counters() const;
  std::vector<WorkerInfo> workers() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace pefnos::builds
