// The scheduler room: turns upstream changes into rows.
//
// Each active repository is polled on its own interval (with jitter, so that
// many repositories do not poll at once) through its VCS plugin:
//
//   listHeads (one call per repository)
//     -> branches reconciled in the database: heads matching a pattern
//        branch appear as branch rows, vanished ones become inactive
//     -> changed heads fetched into the fork network's proxy, once
//     -> new commits listed and recorded once per fork network
//     -> branch heads moved, build requests created for the builders that
//        follow the branch (or the pattern that found it)
//
// A failing repository records its error and time in repository_poll (and an
// event when the error changes) and backs off; the others are unaffected.
// It never runs builds and never decides what a builder does.
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "core/base/result.h"
#include "core/config/config.h"
#include "core/db/db.h"
#include "core/loop/loop.h"
#include "core/plugin/plugin.h"

namespace pefnos::scheduler {

struct PollReport {
  int heads = 0;             // upstream heads seen
  int changed = 0;           // tracked branches whose head moved
  int commits = 0;           // commit rows created
  int requests = 0;          // build requests created
  int discovered = 0;        // branch rows created or re-activated from patterns
  int vanished = 0;          // discovered branch rows made inactive
};

class Scheduler {
 public:
  struct Options {
    std::string proxy_root;           // proxies live in proxy_root/<vcs>/<network root id>
    size_t max_new_commits = 500;     // per branch and poll: the newest ones
    int max_backoff_seconds = 3600;
    int max_parallel_polls = 8;       // the rest wait their turn: small machines, fd limits
  };
  Scheduler(uv_loop_t* loop, db::Database& db, config::Model& model, plugin::Registry& plugins,
            Options options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;  // owns timers that point at it
  Scheduler& operator=(const Scheduler&) = delete;

  // Schedules every active repository of the model and follows its changes.
  void start();
  // Polls at once (after the running poll, if one runs); done gets the report.
  void pollNow(int repository_id, std::function<void(Result<PollReport>)> done);

  // The tree of revision as a tar stream, from the repository's proxy,
  // through its VCS plugin: what a build's source step unpacks.
  std::shared_ptr<Running> exportTree(int repository_id, const std::string& revision,
                                      std::function<void(std::string_view)> on_chunk,
                                      std::function<void(Status)> done);

  // A repository's VCS plugin object (the one its polls use, so that the
  // plugin's per-proxy queue orders everything on a proxy) and its Repo.
  struct Resolved {
    std::shared_ptr<Vcs> vcs;
    Repo repo;
  };
  Result<Resolved> resolve(int repository_id);

  size_t scheduled() const { return repos_.size(); }
  uint64_t pollsDone() const { return polls_done_; }

 private:
  struct RepoState;
  struct Poll;
  void schedule(int repository_id);
  void arm(RepoState& state, uint64_t delay_ms);
  void forget(RepoState& state);
  void enqueue(int repository_id, bool urgent);
  void pump();
  void beginPoll(int repository_id);
  void reconcile(std::shared_ptr<Poll> poll);
  void fetch(std::shared_ptr<Poll> poll);
  void listCommits(std::shared_ptr<Poll> poll, size_t i);
  void record(std::shared_ptr<Poll> poll);
  void fail(const std::shared_ptr<Poll>& poll, const std::string& message);
  void endPoll(int repository_id, Result<PollReport> outcome, uint64_t started_ms);
  Result<int> networkRoot(const config::Repository& repo) const;
  Repo repoFor(const config::Repository& repo, int network_root) const;
  std::vector<int> networkOf(int root_id) const;

  uv_loop_t* loop_;
  db::Database& db_;
  config::Model& model_;
  plugin::Registry& plugins_;
  Options options_;
  std::map<std::string, std::shared_ptr<Vcs>> vcs_;  // one object per plugin
  std::map<int, std::unique_ptr<RepoState>> repos_;
  uint64_t polls_done_ = 0;
  std::deque<int> ready_;  // due repositories waiting for a free poll slot
  int active_polls_ = 0;
  uint64_t config_generation_ = 1;  // bumped by every change of branches and builders
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// fnmatch-style glob over a branch name; '*' matches across '/'.
bool branchMatches(const std::string& pattern, const std::string& name);

}  // namespace pefnos::scheduler
