#include "core/commands/commands.h"

#include <charconv>

#include "core/base/json_text.h"
#include "core/base/log.h"

namespace pefnos::commands {
namespace {

// Commands whose leases ran out too often fail instead of looping forever
// (a command that kills its master would otherwise kill every master).
constexpr const char* kAbandon = R"(
  UPDATE pefnos.command
     SET state = 'failed', lease_until = NULL, finished_at = now(),
         error = 'abandoned after ' || attempts || ' attempts whose masters did not finish it'
   WHERE state = 'running' AND lease_until < now() AND attempts >= $1)";

constexpr const char* kClaim = R"(
  UPDATE pefnos.command c
     SET state = 'running', claimed_by = $1, claimed_at = now(),
         lease_until = now() + make_interval(secs => $2), attempts = attempts + 1
   WHERE id IN (SELECT id FROM pefnos.command
                 WHERE state = 'queued' OR (state = 'running' AND lease_until < now())
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
  RETURNING id, kind, args::text, attempts)";

// Only the claim holder may write the outcome: a master whose lease ran out
// and whose command was taken over must not overwrite the new run.
constexpr const char* kFinish = R"(
  UPDATE pefnos.command
     SET state = $2, result = $3::jsonb, error = $4, finished_at = now(), lease_until = NULL
   WHERE id = $1 AND claimed_by = $5 AND state = 'running')";

// A command whose handler lost the database connection under it did not
// fail: it goes back to the queue and runs again once the server is back.
constexpr const char* kRequeue = R"(
  UPDATE pefnos.command SET state = 'queued', claimed_by = NULL, lease_until = NULL
   WHERE id = $1 AND claimed_by = $2 AND state = 'running')";

constexpr const char* kGiveBack = R"(
  UPDATE pefnos.command SET state = 'queued', claimed_by = NULL, lease_until = NULL
   WHERE state = 'running' AND claimed_by = $1)";

constexpr const char* kRenew = R"(
  UPDATE pefnos.command SET lease_until = now() + make_interval(secs => $2)
   WHERE state = 'running' AND claimed_by = $1)";

// Commands whose NOTIFY time is remembered; a command claimed by another
// master never runs here, so the map is cleared rather than allowed to grow.
constexpr size_t kMaxNotified = 4096;

}  // namespace

void LatencyHistogram::observe(double seconds) {
  size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  ++counts[i];
  sum_seconds += seconds;
  ++count;
}

Runner::Runner(db::Database& db, db::Listener& listener, Options options)
    : db_(db), listener_(listener), options_(std::move(options)) {}

void Runner::handle(const std::string& kind, Handler handler) {
  handlers_[kind] = std::move(handler);
}

void Runner::start() {
  listener_.subscribe("pefnos_command", [this](const std::string& payload) {
    long long id = 0;
    auto [end, ec] = std::from_chars(payload.data(), payload.data() + payload.size(), id);
    if (ec == std::errc() && end == payload.data() + payload.size()) {
      if (notified_at_.size() >= kMaxNotified) notified_at_.clear();
      notified_at_.emplace(id, std::chrono::steady_clock::now());
    }
    claim();
  });
  // Ours from an earlier life of this master: it died before finishing them.
  db_.transact<int>(
      [master = options_.master](pqxx::work& tx) {
        return static_cast<int>(tx.exec_params(kGiveBack, master).affected_rows());
      },
      [this](Result<int> given) {
        if (given && *given > 0) {
          log::info("commands", "took back ", *given, " commands left running by an earlier run");
        }
        // Catch up on every (re)connection of the listener, the first included.
        listener_.onListening([this] { claim(); });
        if (listener_.listening()) claim();
      },
      db::Retry::on_reconnect);
}

void Runner::renewLeases() {
  if (in_flight_ == 0) return;
  db_.transact<int>(
      [o = options_](pqxx::work& tx) {
        return static_cast<int>(tx.exec_params(kRenew, o.master, o.lease_seconds).affected_rows());
      },
      [](Result<int> r) {
        if (!r) log::warning("commands", "renewing command leases: ", r.error().message);
      });
}

void Runner::claim() {
  if (claiming_) {
    claim_again_ = true;
    return;
  }
  claiming_ = true;
  claim_again_ = false;
  db_.transact<std::vector<Command>>(
      [o = options_](pqxx::work& tx) {
        tx.exec_params(kAbandon, o.max_attempts);
        std::vector<Command> claimed;
        for (const auto& row : tx.exec_params(kClaim, o.master, o.lease_seconds, o.batch)) {
          Command c;
          c.id = row[0].as<long long>();
          c.kind = row[1].as<std::string>();
          // jsonb is valid JSON, but may nest deeper than anything here can
          // copy or print without overflowing the stack: such a row fails.
          auto args = parseJson(row[2].c_str());
          if (args)
            c.args = std::move(args.value());
          else
            c.refused = "the arguments are " + args.error().message;
          c.attempts = row[3].as<int>();
          claimed.push_back(std::move(c));
        }
        return claimed;
      },
      [this](Result<std::vector<Command>> claimed) {
        claiming_ = false;
        if (!claimed) {
          // Nothing was claimed; the next wake-up or reconnection claims again.
          log::warning("commands", "cannot claim commands: ", claimed.error().message);
          return;
        }
        const bool full = claimed->size() == size_t(options_.batch);
        for (auto& c : *claimed) run(std::move(c));
        if (full || claim_again_) claim();
      });
}

void Runner::run(Command command) {
  ++in_flight_;
  auto it = handlers_.find(command.kind);
  if (auto at = notified_at_.find(command.id); at != notified_at_.end()) {
    if (it != handlers_.end()) {
      notify_to_action_.observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - at->second).count());
    }
    notified_at_.erase(at);
  }
  if (it == handlers_.end()) {
    finish(command.id, Error{"unknown command kind '" + command.kind +
                             "'; this master runs: " + knownKinds()});
    return;
  }
  if (!command.refused.empty()) return finish(command.id, Error{command.kind + ": " + command.refused});
  log::debug("commands", "running command ", command.id, " (", command.kind, ")");
  const long long id = command.id;
  it->second(command, [this, id](Result<nlohmann::json> outcome) { finish(id, std::move(outcome)); });
}

void Runner::finish(long long id, Result<nlohmann::json> outcome) {
  const bool requeue = !outcome && outcome.error().message.rfind("lost the database connection", 0) == 0;
  if (requeue) {
    log::warning("commands", "command ", id, " lost the database connection while it ran; queued again");
  } else if (!outcome) {
    log::warning("commands", "command ", id, " failed: ", outcome.error().message);
  }
  db_.transact<int>(
      [id, requeue, master = options_.master, outcome = std::move(outcome)](pqxx::work& tx) {
        if (requeue) return static_cast<int>(tx.exec_params(kRequeue, id, master).affected_rows());
        // libpqxx 6.4 binds a null const char* as SQL NULL.
        const std::string text = outcome ? outcome.value().dump() : outcome.error().message;
        const char* result = outcome ? text.c_str() : nullptr;
        const char* error = outcome ? nullptr : text.c_str();
        return static_cast<int>(
            tx.exec_params(kFinish, id, outcome ? "done" : "failed", result, error, master)
                .affected_rows());
      },
      [this, id, requeue](Result<int> written) {
        --in_flight_;
        if (requeue && written && *written > 0) claim();  // the server is back: run it again
        if (!written) {
          log::error("commands", "cannot record the outcome of command ", id, ": ",
                     written.error().message);
        } else if (*written == 0) {
          log::warning("commands", "command ", id,
                       " was taken over by another master before it finished here");
        }
      },
      db::Retry::on_reconnect);
}

std::string Runner::knownKinds() const {
  std::string out;
  for (const auto& [kind, handler] : handlers_) out += (out.empty() ? "" : ", ") + kind;
  return out;
}

}  // namespace pefnos::commands
