#include "core/master/master.h"

#include <unistd.h>

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

Master::~Master() {
  // Users of the database first: a delivery must never reach a dead room.
  runner_.reset();
  model_.reset();
  listener_.reset();
  db_.reset();
}

void Master::start(std::function<void(Error)> on_fatal) {
  log::info("master", "starting master '", options_.name, "'");
  db_->withConnection<Done>(
      [](pqxx::connection& c) -> Done {
        if (auto s = db::checkSchema(c); !s) throw std::runtime_error(s.error().message);
        return {};
      },
      [this, on_fatal = std::move(on_fatal)](Result<Done> checked) {
        if (stopping_) return;
        if (!checked) return on_fatal(checked.error());
        serve();
      },
      db::Retry::on_reconnect);
}

void Master::serve() {
  listener_ = std::make_unique<db::Listener>(loop_, options_.conninfo);
  model_ = std::make_unique<config::Model>(*db_, *listener_);
  runner_ = std::make_unique<commands::Runner>(
      *db_, *listener_, commands::Runner::Options{.master = options_.name});

  runner_->handle("ping", [this](const commands::Command&, commands::Reply reply) {
    reply(nlohmann::json{{"pong", true}, {"master", options_.name}});
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
  runner_->start();
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
  if (db_->pending() > 0 && !db_->connected()) return;  // no pile-up while the server is away
  db_->transact<Done>(
      [name = options_.name](pqxx::work& tx) {
        tx.exec_params("UPDATE pefnos.master SET heartbeat_at = now() WHERE name = $1", name);
        return Done{};
      },
      [](Result<Done>) {});
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
    runner_.reset();
    model_.reset();
    listener_.reset();
    db_.reset();
    log::info("master", "stopped");
    done();
  });
}

}  // namespace pefnos::master
