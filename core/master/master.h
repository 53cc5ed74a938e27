// The master: the daemon's rooms assembled on one loop. It owns the database
// connections, the configuration model and the command runner, registers
// itself in pefnos.master with a heartbeat, and stops in order.
#pragma once

#include <uv.h>

#include <chrono>
#include <functional>
#include <optional>
#include <memory>
#include <string>

#include "core/base/result.h"
#include "core/commands/commands.h"
#include "core/config/config.h"
#include "core/db/db.h"
#include "core/loop/loop.h"
#include "core/plugin/plugin.h"
#include "core/builds/builds.h"
#include "core/mirror/mirror.h"
#include "core/web/web.h"
#include "core/scheduler/scheduler.h"

namespace pefnos::master {

struct Options {
  std::string conninfo;
  std::string name;  // claims and leases carry it; unique per running master
  int db_connections = 2;
  int heartbeat_seconds = 10;
  std::string state_dir;                 // proxies of upstream repositories live below it
  std::vector<std::string> plugin_dirs;  // besides the built-in one and the configured ones
  // Where workers connect ("HOST:PORT"; port 0 picks one, logged); empty: no workers.
  std::string workers_listen = "127.0.0.1:7420";
  // The JSON API and metrics ("HOST:PORT"; port 0 picks one, logged); empty: none.
  std::string http_listen;
  // Mirrors run on this master (several masters share them through leases).
  bool mirrors = true;
};

// `hostname` of this machine: the default master name.
std::string defaultName();

class Master {
 public:
  Master(uv_loop_t* loop, Options options);
  ~Master();
  Master(const Master&) = delete;  // owns threads and handles
  Master& operator=(const Master&) = delete;

  // Connects (retrying while the server is away), checks the schema, then
  // serves. on_fatal runs if it cannot serve at all (a schema mismatch).
  void start(std::function<void(Error)> on_fatal);
  // Lets running commands finish (a few seconds at most), then closes everything.
  void stop(std::function<void()> done);

  const std::string& name() const { return options_.name; }
  // Once it listens for workers (0 before, or without workers).
  int workersPort() const { return builds_ ? builds_->port() : 0; }
  int httpPort() const { return web_ ? web_->port() : 0; }
  // Runs once the master serves: configuration loaded, workers listened for.
  void onServing(std::function<void()> fn) { on_serving_ = std::move(fn); }

 private:
  void serve(const std::vector<std::string>& configured_plugin_dirs);
  void loadPlugins(const std::vector<std::string>& configured_dirs);
  void heartbeat();
  void startWeb();
  void teardown();  // every room, in the order that keeps callbacks away from the dead
  // A row in pefnos.event: where a GUI user looks for what went wrong.
  void recordEvent(const std::string& level, const std::string& source, const std::string& message,
                   const nlohmann::json& details);

  uv_loop_t* loop_;
  Options options_;
  std::unique_ptr<db::Database> db_;
  std::unique_ptr<db::Listener> listener_;
  std::unique_ptr<config::Model> model_;
  std::unique_ptr<commands::Runner> runner_;
  std::unique_ptr<plugin::ProcessHost> host_;
  std::unique_ptr<plugin::Registry> plugins_;
  std::unique_ptr<scheduler::Scheduler> scheduler_;
  std::unique_ptr<builds::Builds> builds_;
  std::unique_ptr<mirror::Mirrors> mirrors_;
  std::unique_ptr<web::Web> web_;
  std::function<void()> on_serving_;
  loop::Timer heartbeat_timer_;
  loop::Timer stop_timer_;
  bool stopping_ = false;
  bool scheduler_started_ = false;
  std::optional<std::chrono::steady_clock::time_point> lost_at_;
  std::string lost_why_;
};

}  // namespace pefnos::master
