// The command room: rows in pefnos.command are how a GUI (psql, Odoo, the web
// page, `pefnos ctl`) tells the daemon what to do.
//
// A row is inserted (state 'queued'), its trigger NOTIFYs `pefnos_command`,
// and the runner claims it with FOR UPDATE SKIP LOCKED and a lease (several
// masters may share a database), runs the handler of its kind and writes the
// outcome back ('done' with a JSON result, or 'failed' with an error). The
// row is the truth: on start and after every reconnection the runner claims
// whatever is queued or whose lease ran out, so nothing inserted while it was
// away is lost. It never decides what a command does: handlers do.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <unordered_map>
#include <nlohmann/json.hpp>
#include <string>

#include "core/base/result.h"
#include "core/db/db.h"

namespace pefnos::commands {

struct Command {
  long long id = 0;
  std::string kind;
  nlohmann::json args;
  int attempts = 0;
  std::string refused;  // set when the row cannot be run (its args): it fails with this
};

using Reply = std::function<void(Result<nlohmann::json>)>;

// Seconds from a command's NOTIFY reaching this master to its handler
// starting: a Prometheus histogram (bucket counts not cumulative here; the
// exporter sums them). Commands claimed without a NOTIFY of ours (catch-up
// after a reconnection) are not counted.
struct LatencyHistogram {
  static constexpr std::array<double, 12> kBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                     0.05,   0.1,   0.25,   0.5,   1,    5};
  std::array<uint64_t, kBounds.size() + 1> counts{};  // the last one: above every bound
  double sum_seconds = 0;
  uint64_t count = 0;
  void observe(double seconds);
};
using Handler = std::function<void(const Command&, Reply)>;

class Runner {
 public:
  struct Options {
    std::string master;            // claimed_by
    int lease_seconds = 300;       // a claim not renewed for this long is taken over
    int max_attempts = 5;          // then the command fails instead of being retried
    int batch = 64;                // commands claimed per query
  };
  Runner(db::Database& db, db::Listener& listener, Options options);
  Runner(const Runner&) = delete;  // handlers hold references to it
  Runner& operator=(const Runner&) = delete;

  void handle(const std::string& kind, Handler handler);
  // Subscribes, gives back our own claims from an earlier life, and claims.
  void start();
  // Extends the leases of the commands running here (the master's heartbeat
  // calls it): a command that runs longer than a lease (a mirror-now) is not
  // taken over by another master while this one still works on it.
  void renewLeases();
  // Claims what is queued or whose lease ran out. The heartbeat calls it: the
  // commands of a master that died send no NOTIFY when their leases lapse.
  void claimDue() { claim(); }
  // Commands claimed and not yet written back.
  int inFlight() const { return in_flight_; }
  const LatencyHistogram& notifyToAction() const { return notify_to_action_; }

 private:
  void claim();
  void run(Command command);
  void finish(long long id, Result<nlohmann::json> outcome);
  std::string knownKinds() const;

  db::Database& db_;
  db::Listener& listener_;
  Options options_;
  std::map<std::string, Handler> handlers_;
  bool claiming_ = false;
  bool claim_again_ = false;
  int in_flight_ = 0;
  // When the NOTIFY of each command id arrived; bounded (cleared when full).
  std::unordered_map<long long, std::chrono::steady_clock::time_point> notified_at_;
  LatencyHistogram notify_to_action_;
};

}  // namespace pefnos::commands
