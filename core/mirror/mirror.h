// The mirror room: carries a branch from one VCS to another.
//
// A run, for one mirror row (source branch -> target repository and branch):
//
//   claim        a mirror_run row (one running per mirror, enforced by a
//                unique index; per collection, the collection's mirror rows
//                are locked while claiming, so runs of a collection take turns);
//                the marks the target already has are read in the same
//                transaction (for a collection, every member's marks: a
//                revision carried A->B is known to B->A and to B->C as A's)
//   source head  updateProxy of the source branch (another master may have
//                recorded the head this master's proxy lacks)
//   target head  listHeads of the target: a head the mirror did not leave
//                there (moved by someone else, back included) is divergence,
//                and the run stops without touching anything
//   stream       source fastExport -> StreamFilter -> target fastImport,
//                chunk by chunk, pausing the exporter while the importer is
//                behind (memory stays bounded whatever the stream's size)
//   verify       for each new revision (or a sample): the source's tree
//                digest equals the target's, and author, dates, message and
//                parents correspond; on a mismatch both trees are listed and
//                the differing paths recorded (mirror_verify, event), the
//                run fails and the mirror stops until mirror-now
//   record       the new marks and the run's revisions and heads, in one
//                transaction, while the run still holds its lease
//   publish      the target upstream's branch moves, only from the head
//                seen at the start (a compare-and-swap in the plugin)
//
// A run that dies anywhere (a killed master, exporter or importer) leaves
// the marks as the last committed run wrote them and the upstream as it was
// or fully moved: the next run starts from the marks, and a run whose
// source head is already mapped only publishes. Marks that a dead run
// recorded but never published (the target does not show its head) are
// forgotten by the next run and carried again: they may name revisions that
// only the dead master's proxy holds. Infrastructure failures end
// 'interrupted' and are retried; verification failures and divergence end
// 'failed' and stop the mirror until someone runs mirror-now.
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "core/base/result.h"
#include "core/config/config.h"
#include "core/db/db.h"
#include "core/loop/loop.h"
#include "core/scheduler/scheduler.h"

namespace pefnos::mirror {

class Mirrors {
 public:
  struct Options {
    std::string master;               // claimed_by of runs
    int lease_seconds = 60;           // renewed every lease/4 while a run lives
    int tick_ms = 2000;               // how often due mirrors are looked for
    int retry_seconds = 30;           // an interrupted run is retried after this
    size_t max_runs = 2;              // runs at once on this master
    size_t verify_parallel = 4;       // digests asked for at once
    size_t max_buffered = 4u << 20;   // stream bytes queued to the importer before the exporter pauses
  };
  Mirrors(uv_loop_t* loop, db::Database& db, config::Model& model, scheduler::Scheduler& scheduler,
          Options options);
  ~Mirrors();
  Mirrors(const Mirrors&) = delete;  // timers and callbacks point at it
  Mirrors& operator=(const Mirrors&) = delete;

  // Gives back runs an earlier life of this master left running (and runs
  // them again), then looks for due mirrors every tick.
  void start();
  // The mirror-now command: a run at once, whatever its delay or last failure.
  // done gets {"run", "state", "revisions"} once the run ends.
  void runNow(int mirror_id, std::function<void(Result<nlohmann::json>)> done);
  // The mirror-verify command: every mark of the mirror verified again (trees,
  // and metadata), recorded in mirror_verify as it goes. done gets the counts.
  void verifyAll(int mirror_id, std::function<void(Result<nlohmann::json>)> done);

  size_t running() const { return runs_.size(); }
  uint64_t runsDone() const { return runs_done_; }

  struct Run;
  struct Check;
  struct VerifyAll;

 private:
  void tick();
  void renewLeases();
  void begin(int mirror_id, bool forced, std::function<void(Result<nlohmann::json>)> done);
  void claimed(std::shared_ptr<Run> run);
  void targetHead(std::shared_ptr<Run> run);
  void forgetUnpublished(std::shared_ptr<Run> run, std::function<void()> then);
  void carry(std::shared_ptr<Run> run);
  void stream(std::shared_ptr<Run> run);
  void streamed(std::shared_ptr<Run> run);
  void verify(std::shared_ptr<Run> run);
  void record(std::shared_ptr<Run> run);
  void publish(std::shared_ptr<Run> run);
  void finish(std::shared_ptr<Run> run, const std::string& state, const std::string& error,
              nlohmann::json details = nullptr);
  void check(std::shared_ptr<Check> c, std::function<void()> done);
  void checkOne(std::shared_ptr<Check> c, const std::string& source, const std::string& target,
                std::function<void()> done);
  void conclude(std::shared_ptr<Check> c, std::shared_ptr<nlohmann::json> row, std::function<void()> done);
  void event(const std::string& level, const std::string& message, const nlohmann::json& details);
  void verifyAllNext(std::shared_ptr<VerifyAll> v);
  void flushVerified(VerifyAll& v, bool all);

  uv_loop_t* loop_;
  db::Database& db_;
  config::Model& model_;
  scheduler::Scheduler& scheduler_;
  Options options_;
  loop::Timer tick_timer_;
  loop::Timer lease_timer_;
  bool ticking_ = false;
  std::map<int, std::shared_ptr<Run>> runs_;  // by mirror id
  std::set<int> verifying_;
  uint64_t runs_done_ = 0;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// Text compared as the mirror carries it: trailing white space dropped,
// CRLF as LF, bytes that are not UTF-8 as U+FFFD (Breezy stores only
// Unicode: a git author with Latin-1 bytes arrives replaced).
std::string normalText(const std::string& s);
// "Name <email>" -> {"Name", "email"}; the first of several ", "-joined authors.
std::pair<std::string, std::string> splitIdentity(const std::string& s);
// ISO 8601 with an offset (or Z) -> seconds since the epoch; nullopt if unreadable.
std::optional<long long> isoSeconds(const std::string& s);

}  // namespace pefnos::mirror
