#include "core/master/master.h"

#include <malloc.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <unistd.h>

#include "core/base/hostport.h"
#include "core/base/log.h"
#include "core/db/migrate.h"

namespace pefnos::master {

std::string defaultName() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') return "master";
  return host;
}

Master::Master(uv_loop_t* loop, Options options)
    : loop_(loop), options_(std::move(options)), heartbeat_timer_(loop), stop_timer_(loop) {
  db_ = std::make_unique<db::Database>(
      loop, db::Database::Options{options_.conninfo, options_.db_connections, "db"});
}

Master::~Master() { teardown(); }

void Master::teardown() {
  // Users of the database first: a delivery must never reach a dead room.
  web_.reset();
  builds_.reset();
  mirrors_.reset();
  scheduler_.reset();
  runner_.reset();
  model_.reset();
  listener_.reset();
  db_.reset();
  host_.reset();     // its callbacks may hold plugin code
  plugins_.reset();  // after every object a plugin made
}

void Master::start(std::function<void(Error)> on_fatal) {
  log::info("master", "starting master '", options_.name, "'");
  // The schema must match before anything else reads a row; the plugin
  // directories that the configuration names come with it.
  db_->withConnection<std::vector<std::string>>(
      [](pqxx::connection& c) {
        if (auto s = db::checkSchema(c); !s) throw std::runtime_error(s.error().message);
        pqxx::read_transaction tx(c);
        return config::activePluginDirectories(tx);
      },
      [this, on_fatal = std::move(on_fatal)](Result<std::vector<std::string>> checked) {
        if (stopping_) return;
        if (!checked) return on_fatal(checked.error());
        serve(*checked);
      },
      db::Retry::on_reconnect);
}

void Master::loadPlugins(const std::vector<std::string>& configured_dirs) {
  host_ = std::make_unique<plugin::ProcessHost>(loop_);
  plugins_ = std::make_unique<plugin::Registry>(*host_);
  std::vector<std::string> dirs = {plugin::builtinPluginDir()};
  dirs.insert(dirs.end(), options_.plugin_dirs.begin(), options_.plugin_dirs.end());
  dirs.insert(dirs.end(), configured_dirs.begin(), configured_dirs.end());
  for (const auto& d : dirs) plugins_->loadDirectory(d);
  // What was loaded and refused, where a user looks: pefnos.plugin.
  db_->transact<Done>(
      [name = options_.name, outcomes = plugins_->outcomes()](pqxx::work& tx) {
        tx.exec_params("DELETE FROM pefnos.plugin WHERE master = $1", name);
        for (const auto& o : outcomes) {
          const char* reason = o.loaded ? nullptr : o.reason.c_str();
          const char* kind = o.kind.empty() ? nullptr : o.kind.c_str();
          tx.exec_params("INSERT INTO pefnos.plugin (master, path, state, name, kind, version, "
                         "description, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                         "ON CONFLICT (master, path) DO NOTHING",
                         name, o.path, o.loaded ? "loaded" : "refused", o.name, kind, o.version,
                         o.description, reason);
          if (!o.loaded) {
            tx.exec_params("INSERT INTO pefnos.event (level, source, message, details) VALUES "
                           "('error', 'plugin', $1, $2::jsonb)",
                           "refused plugin " + o.path + ": " + o.reason,
                           nlohmann::json{{"path", o.path}}.dump());
          }
        }
        return Done{};
      },
      [](Result<Done> r) {
        if (!r) log::warning("master", "cannot record the plugins: ", r.error().message);
      },
      db::Retry::on_reconnect);
}

void Master::serve(const std::vector<std::string>& configured_plugin_dirs) {
  loadPlugins(configured_plugin_dirs);
  listener_ = std::make_unique<db::Listener>(loop_, options_.conninfo);
  model_ = std::make_unique<config::Model>(*db_, *listener_);
  // Every lease of this master (commands, build requests) is renewed by its
  // heartbeat and lapses after six missed ones, never sooner than a minute.
  const int lease_seconds = std::max(60, 6 * options_.heartbeat_seconds);
  runner_ = std::make_unique<commands::Runner>(
      *db_, *listener_, commands::Runner::Options{.master = options_.name, .lease_seconds = lease_seconds});

  runner_->handle("ping", [this](const commands::Command&, commands::Reply reply) {
    reply(nlohmann::json{{"pong", true}, {"master", options_.name}});
  });
  scheduler::Scheduler::Options sopts;
  sopts.proxy_root = options_.state_dir + "/proxy";
  scheduler_ = std::make_unique<scheduler::Scheduler>(loop_, *db_, *model_, *plugins_, sopts);
  // An id argument: an integer within what the column holds (int, or bigint
  // for builds), so that a larger number never wraps around to another row.
  auto intArg = [](const commands::Command& c, const char* key,
                   long long max = std::numeric_limits<int>::max()) -> std::optional<long long> {
    if (!c.args.contains(key) || !c.args[key].is_number_integer()) return std::nullopt;
    const auto& v = c.args[key];
    if (v.is_number_unsigned() && v.get<unsigned long long>() > static_cast<unsigned long long>(max)) return std::nullopt;
    const long long n = v.get<long long>();
    if (n > max || n < -max - 1) return std::nullopt;
    return n;
  };
  runner_->handle("poll-now", [this, intArg](const commands::Command& c, commands::Reply reply) {
    const auto repository = intArg(c, "repository");
    if (!repository) return reply(Error{"poll-now needs {\"repository\": ID}"});
    const int id = static_cast<int>(*repository);
    auto poll = [this, id, reply] {
      scheduler_->pollNow(id, [reply](Result<scheduler::PollReport> r) {
        if (!r) return reply(r.error());
        reply(nlohmann::json{{"heads", r->heads}, {"changed", r->changed}, {"commits", r->commits},
                             {"requests", r->requests}, {"discovered", r->discovered},
                             {"vanished", r->vanished}});
      });
    };
    // A row inserted just before the command may not have reached the model yet.
    if (model_->repository(id)) return poll();
    model_->reload([poll](Result<int>) { poll(); });
  });
  if (!options_.workers_listen.empty()) {
    builds::Options bopts;
    auto listen = parseHostPort(options_.workers_listen);  // checked by the CLI; a default otherwise
    bopts.master_name = options_.name;
    bopts.heartbeat_seconds = options_.heartbeat_seconds;
    bopts.lease_seconds = lease_seconds;
    if (listen) {
      bopts.listen_host = listen->host;
      bopts.listen_port = listen->port;
    } else {
      log::error("master", "--workers: ", listen.error().message, "; using 127.0.0.1:7420");
    }
    builds_ = std::make_unique<builds::Builds>(loop_, *db_, *model_, *plugins_, *scheduler_, bopts);
    listener_->subscribe("pefnos_request", [this](const std::string&) { builds_->dispatchSoon(); });
    listener_->onListening([this] { builds_->dispatchSoon(); });  // requests queued while away
  }
  if (options_.mirrors) {
    mirror::Mirrors::Options mopts;
    mopts.master = options_.name;
    mirrors_ = std::make_unique<mirror::Mirrors>(loop_, *db_, *model_, *scheduler_, mopts);
  }
  // A mirror row inserted just before its command may not have reached the model yet.
  auto withMirror = [this, intArg](const commands::Command& c, commands::Reply reply,
                                   std::function<void(int)> fn) {
    auto id = intArg(c, "mirror");
    if (!id) return reply(Error{c.kind + " needs {\"mirror\": ID}"});
    if (!mirrors_) return reply(Error{"this master runs no mirrors"});
    if (model_->mirror(static_cast<int>(*id))) return fn(static_cast<int>(*id));
    model_->reload([fn, id](Result<int>) { fn(static_cast<int>(*id)); });
  };
  runner_->handle("mirror-now", [this, withMirror](const commands::Command& c, commands::Reply reply) {
    withMirror(c, reply, [this, reply](int id) { mirrors_->runNow(id, reply); });
  });
  runner_->handle("mirror-verify", [this, withMirror](const commands::Command& c, commands::Reply reply) {
    withMirror(c, reply, [this, reply](int id) { mirrors_->verifyAll(id, reply); });
  });
  runner_->handle("force-build", [this, intArg](const commands::Command& c, commands::Reply reply) {
    auto builder = intArg(c, "builder"), branch = intArg(c, "branch");
    if (!builder || !branch) return reply(Error{"force-build needs {\"builder\": ID, \"branch\": ID}"});
    if (!builds_) return reply(Error{"this master runs no builds (started without workers)"});
    std::string revision = c.args.contains("revision") && c.args["revision"].is_string()
                               ? c.args["revision"].get<std::string>() : "";
    builds_->forceBuild(static_cast<int>(*builder), static_cast<int>(*branch), revision, c.id, reply);
  });
  runner_->handle("stop-build", [this, intArg](const commands::Command& c, commands::Reply reply) {
    auto build = intArg(c, "build", std::numeric_limits<long long>::max());
    if (!build) return reply(Error{"stop-build needs {\"build\": ID}"});
    if (!builds_) return reply(Error{"this master runs no builds (started without workers)"});
    builds_->stopBuild(*build, reply);
  });
  runner_->handle("reload", [this](const commands::Command&, commands::Reply reply) {
    model_->reload([reply](Result<int> changed) {
      if (!changed) return reply(changed.error());
      reply(nlohmann::json{{"changed", *changed}});
    });
  });

  // An outage is recorded where a GUI user looks, once the database is back.
  listener_->onLost([this](const std::string& why) {
    if (!lost_at_) lost_at_ = std::chrono::steady_clock::now();
    lost_why_ = why;
  });
  listener_->onListening([this] {
    if (!lost_at_) return;
    auto seconds = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::steady_clock::now() - *lost_at_).count();
    lost_at_.reset();
    recordEvent("warning", "db",
                "lost the database connection for " + std::to_string(seconds) +
                    " s; reconnected and caught up",
                nlohmann::json{{"error", lost_why_}});
  });

  model_->start();
  // Commands and polls need the configuration: they start once the model is loaded.
  model_->reload([this](Result<int>) {
    if (scheduler_ && !scheduler_started_) {
      scheduler_started_ = true;
      scheduler_->start();
      if (mirrors_) mirrors_->start();
      runner_->start();
      startWeb();
      if (!builds_) {
        if (on_serving_) on_serving_();
        return;
      }
      builds_->start([this](Status s) {
        if (!s) {
          log::error("master", "cannot serve workers: ", s.error().message);
          recordEvent("error", "builds", "cannot serve workers: " + s.error().message, {});
        }
        if (on_serving_) on_serving_();
      });
    }
  });
  listener_->start();

  db_->transact<Done>(
      [name = options_.name](pqxx::work& tx) {
        tx.exec_params(
            "INSERT INTO pefnos.master (name, host, pid, version) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (name) DO UPDATE SET host = $2, pid = $3, version = $4, "
            "started_at = now(), heartbeat_at = now()",
            name, defaultName(), static_cast<int>(getpid()), std::string(PEFNOS_VERSION));
        return Done{};
      },
      [](Result<Done> r) {
        if (!r) log::warning("master", "cannot register this master: ", r.error().message);
      },
      db::Retry::on_reconnect);
  recordEvent("info", "master", "master " + options_.name + " started", {});
  heartbeat_timer_.start(options_.heartbeat_seconds * 1000, options_.heartbeat_seconds * 1000,
                         [this] { heartbeat(); });
  log::info("master", "serving");
}

void Master::startWeb() {
  if (options_.http_listen.empty()) return;
  auto listen = parseHostPort(options_.http_listen);
  if (!listen) {
    log::error("master", "--http: ", listen.error().message);
    return;
  }
  web::Options wopts;
  wopts.host = listen->host;
  wopts.port = listen->port;
  web_ = std::make_unique<web::Web>(loop_, *db_, builds_.get(), *scheduler_, wopts, listener_.get(), runner_.get());
  if (auto s = web_->start(); !s) {
    log::error("master", "cannot serve HTTP: ", s.error().message);
    recordEvent("error", "web", "cannot serve HTTP: " + s.error().message, {});
    web_.reset();
  }
}

void Master::recordEvent(const std::string& level, const std::string& source,
                         const std::string& message, const nlohmann::json& details) {
  db_->transact<Done>(
      [=](pqxx::work& tx) {
        tx.exec_params("INSERT INTO pefnos.event (level, source, message, details) "
                       "VALUES ($1, $2, $3, $4::jsonb)",
                       level, source, message, details.is_null() ? "{}" : details.dump());
        return Done{};
      },
      [message](Result<Done> r) {
        if (!r) log::warning("master", "cannot record event '", message, "': ", r.error().message);
      },
      db::Retry::on_reconnect);
}

void Master::heartbeat() {
  // Memory freed by bursts (a first poll cycle, a big import) goes back to
  // the system instead of staying in malloc's per-thread arenas.
  malloc_trim(0);
  if (db_->pending() > 0 && !db_->connected()) return;  // no pile-up while the server is away
  db_->transact<Done>(
      [name = options_.name](pqxx::work& tx) {
        tx.exec_params("UPDATE pefnos.master SET heartbeat_at = now() WHERE name = $1", name);
        return Done{};
      },
      [](Result<Done>) {});
  if (builds_) builds_->renewLeases();
  if (runner_) {
    runner_->renewLeases();
    if (scheduler_started_) runner_->claimDue();
  }
}

void Master::stop(std::function<void()> done) {
  if (stopping_) return;
  stopping_ = true;
  heartbeat_timer_.stop();
  log::info("master", "stopping");
  auto waited_ms = std::make_shared<int>(0);
  stop_timer_.start(0, 20, [this, waited_ms, done = std::move(done)] {
    const bool busy = runner_ && runner_->inFlight() > 0;
    if (busy && (*waited_ms += 20) < 5000) return;
    if (busy) log::warning("master", "stopping with ", runner_->inFlight(), " commands unfinished");
    stop_timer_.stop();
    teardown();
    log::info("master", "stopped");
    done();
  });
}

}  // namespace pefnos::master
