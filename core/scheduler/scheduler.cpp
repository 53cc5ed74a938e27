#include "core/scheduler/scheduler.h"

#include <fnmatch.h>

#include <algorithm>
#include <random>
#include <set>

#include "core/base/log.h"
#include "core/base/utf8.h"

namespace pefnos::scheduler {
namespace {

using json = nlohmann::json;

uint64_t nowMs(uv_loop_t* loop) {
  uv_update_time(loop);
  return uv_now(loop);
}

// +-10%: many repositories with one interval spread out instead of polling together.
uint64_t jittered(uint64_t ms) {
  static std::mt19937_64 rng{std::random_device{}()};
  std::uniform_real_distribution<double> f(0.9, 1.1);
  return static_cast<uint64_t>(static_cast<double>(ms) * f(rng));
}

std::string dumpJson(const json& j) {
  // Commit messages and names may not be UTF-8: replace, never throw.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// What a poll learned in its first transaction.
struct Tracked {
  int branch_id;
  std::string name, old_revision, new_revision;
};
struct Reconciled {
  std::vector<Tracked> changed;
  std::vector<std::string> known_heads;  // of the whole fork network: commits below them are known
  // Every tracked branch the upstream has, moved or not: another master
  // sharing the database may have recorded a move that this master's proxy
  // (its own state directory) has not fetched yet.
  std::vector<std::string> fetch;
  int discovered = 0, vanished = 0;
};

constexpr const char* kBranches =
    "SELECT b.id, b.name, b.pattern, b.origin_id IS NOT NULL, b.active, h.revision "
    "FROM pefnos.branch b LEFT JOIN pefnos.branch_head h ON h.branch_id = b.id "
    "WHERE b.repository_id = $1";

constexpr const char* kNetworkHeads =
    "SELECT DISTINCT h.revision FROM pefnos.branch_head h "
    "JOIN pefnos.branch b ON b.id = h.branch_id WHERE b.repository_id = ANY($1::int[])";

// A discovered branch that reappears is made active again; a configured
// branch of the same name is left as it is.
constexpr const char* kDiscover =
    "INSERT INTO pefnos.branch (repository_id, name, origin_id) VALUES ($1, $2, $3) "
    "ON CONFLICT (repository_id, name) DO UPDATE SET active = true "
    "WHERE pefnos.branch.origin_id IS NOT NULL AND NOT pefnos.branch.active "
    "RETURNING id";

constexpr const char* kVanish =
    "UPDATE pefnos.branch SET active = false WHERE id = $1 AND active";

constexpr const char* kRecordCommits = R"(
  INSERT INTO pefnos.commit (network_id, revision, author, author_date, committer,
                             committer_date, message, parents, files)
  SELECT $1, c.revision, c.author, c.author_date, c.committer, c.committer_date, c.message,
         ARRAY(SELECT jsonb_array_elements_text(c.parents)),
         ARRAY(SELECT jsonb_array_elements_text(c.files))
    FROM jsonb_to_recordset($2::jsonb) AS c(revision text, author text, author_date timestamptz,
         committer text, committer_date timestamptz, message text, parents jsonb, files jsonb)
  ON CONFLICT (network_id, revision) DO NOTHING)";

constexpr const char* kMoveHead = R"(
  INSERT INTO pefnos.branch_head (branch_id, revision, commit_id)
  VALUES ($1, $2, (SELECT id FROM pefnos.commit WHERE network_id = $3 AND revision = $2))
  ON CONFLICT (branch_id) DO UPDATE
     SET revision = EXCLUDED.revision, commit_id = EXCLUDED.commit_id, updated_at = now()
   WHERE pefnos.branch_head.revision = $4)";

// Builders follow a branch directly or through the pattern that discovered it.
constexpr const char* kRequestBuilds = R"(
  INSERT INTO pefnos.build_request (builder_id, branch_id, commit_id, revision, reason)
  SELECT bb.builder_id, $1,
         (SELECT id FROM pefnos.commit WHERE network_id = $3 AND revision = $2), $2, 'poll'
    FROM pefnos.builder_branch bb JOIN pefnos.builder bl ON bl.id = bb.builder_id
   WHERE bb.active AND bl.active
     AND bb.branch_id IN (SELECT id FROM pefnos.branch WHERE id = $1
                          UNION SELECT origin_id FROM pefnos.branch WHERE id = $1))";

constexpr const char* kPollOk = R"(
  INSERT INTO pefnos.repository_poll (repository_id, last_poll_at, last_success_at, last_error,
                                     duration_ms, polls)
  VALUES ($1, now(), now(), NULL, $2, 1)
  ON CONFLICT (repository_id) DO UPDATE
     SET last_poll_at = now(), last_success_at = now(), last_error = NULL, duration_ms = $2,
         polls = pefnos.repository_poll.polls + 1)";

// Returns the previous error so that an event is written only when it changes.
constexpr const char* kPollFailed = R"(
  WITH before AS (SELECT last_error FROM pefnos.repository_poll WHERE repository_id = $1)
  INSERT INTO pefnos.repository_poll (repository_id, last_poll_at, last_error, duration_ms, polls)
  VALUES ($1, now(), $2, $3, 1)
  ON CONFLICT (repository_id) DO UPDATE
     SET last_poll_at = now(), last_error = $2, duration_ms = $3,
         polls = pefnos.repository_poll.polls + 1
  RETURNING (SELECT last_error FROM before) IS DISTINCT FROM $2)";

size_t hashHeads(const std::vector<Head>& heads) {
  size_t h = heads.size();
  for (const auto& head : heads) {
    h = h * 1000003 ^ std::hash<std::string>{}(head.branch);
    h = h * 1000003 ^ std::hash<std::string>{}(head.revision);
  }
  return h;
}

std::string intArray(const std::vector<int>& ids) {
  std::string s = "{";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "}";
}


// The branch rows of a repository against its upstream heads: patterns
// discover branches, vanished discovered branches become inactive, and the
// tracked branches whose head moved are returned.
Reconciled reconcileBranches(pqxx::work& tx, int repository_id, const std::vector<Head>& heads,
                             const std::vector<int>& network) {
  Reconciled out;
  std::map<std::string, std::string> upstream;
  for (const auto& h : heads) upstream[h.branch] = h.revision;
  struct Row {
    int id;
    std::string name;
    bool pattern, discovered, active;
    std::string head;
  };
  std::vector<Row> rows;
  for (const auto& r : tx.exec_params(kBranches, repository_id)) {
    rows.push_back({r[0].as<int>(), r[1].as<std::string>(), r[2].as<bool>(), r[3].as<bool>(),
                    r[4].as<bool>(), r[5].is_null() ? "" : r[5].as<std::string>()});
  }
  std::map<std::string, const Row*> by_name;
  for (const auto& r : rows) by_name[r.name] = &r;
  std::set<std::string> wanted;  // upstream names that an active pattern matches
  for (const auto& p : rows) {
    if (!p.pattern || !p.active) continue;
    for (const auto& [name, rev] : upstream) {
      if (!branchMatches(p.name, name)) continue;
      wanted.insert(name);
      auto known = by_name.find(name);
      if (known != by_name.end() && (known->second->active || !known->second->discovered)) continue;
      auto created = tx.exec_params(kDiscover, repository_id, name, p.id);
      if (created.empty()) continue;
      ++out.discovered;
      if (known == by_name.end()) {
        out.changed.push_back({created[0][0].as<int>(), name, "", rev});
        out.fetch.push_back(name);
      }
    }
  }
  for (const auto& r : rows) {
    if (r.discovered && r.active && !wanted.count(r.name)) {
      out.vanished += static_cast<int>(tx.exec_params(kVanish, r.id).affected_rows());
      continue;
    }
    bool tracked = !r.pattern && (r.active || (r.discovered && wanted.count(r.name)));
    auto up = upstream.find(r.name);
    if (tracked && up != upstream.end()) {
      out.fetch.push_back(r.name);
      if (up->second != r.head) out.changed.push_back({r.id, r.name, r.head, up->second});
    }
  }
  for (const auto& r : tx.exec_params(kNetworkHeads, intArray(network))) {
    out.known_heads.push_back(r[0].as<std::string>());
  }
  return out;
}

// Whether an upstream's branch name can be a branch row: UTF-8 (PostgreSQL's
// text) and what the CHECK on pefnos.branch.name allows. A VCS may allow more
// (git takes any bytes, at any length); one such branch must not stop the poll
// of all the others.
bool recordableBranchName(const std::string& name) {
  if (name.empty() || name.front() == '-') return false;
  size_t characters = 0;
  for (size_t i = 0; i < name.size(); ++characters) {
    const Utf8Step c = decodeUtf8(name, i);
    if (!c.valid) return false;
    if (c.code < 0x20 || (c.code >= 0x7f && c.code < 0xa0)) return false;  // control characters
    i += c.length;
  }
  return characters <= 255 && ("/" + name + "/").find("/../") == std::string::npos;
}

}  // namespace

Result<Scheduler::Resolved> Scheduler::resolve(int repository_id) {
  auto row = model_.repository(repository_id);
  if (!row) return Error{"no repository with id " + std::to_string(repository_id)};
  auto root = networkRoot(*row);
  if (!root) return root.error();
  auto& vcs = vcs_[row->vcs];
  if (!vcs) vcs = plugins_.makeVcs(row->vcs);
  if (!vcs) return Error{"no VCS plugin named '" + row->vcs + "' is loaded"};
  return Resolved{vcs, repoFor(*row, *root)};
}

std::shared_ptr<Running> Scheduler::exportTree(int repository_id, const std::string& revision,
                                               std::function<void(std::string_view)> on_chunk,
                                               std::function<void(Status)> done) {
  auto r = resolve(repository_id);
  if (!r) {
    done(r.error());
    return nullptr;
  }
  return r->vcs->exportTree(r->repo, revision, std::move(on_chunk), std::move(done));
}

bool branchMatches(const std::string& pattern, const std::string& name) {
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

struct Scheduler::RepoState {
  RepoState(uv_loop_t* loop, int id) : id(id), timer(loop) {}
  int id;
  loop::Timer timer;
  int interval_s = 60;
  bool polling = false;
  bool queued = false;  // in ready_, waiting for a poll slot
  bool again = false;  // a poll was asked for while one ran
  // The upstream heads of the last successful poll, hashed: when they and the
  // branch rows are unchanged, a poll has nothing to reconcile.
  size_t heads_hash = 0;
  uint64_t reconciled_generation = 0;  // config_generation_ at its last successful poll
  std::optional<Repo> last_repo;  // as last polled: what to forget when it goes
  std::string left_out;  // the branches it last could not record, warned about once
  std::string vcs_name;
  int failures = 0;
  std::vector<std::function<void(Result<PollReport>)>> waiters;  // of the next poll to end
  std::vector<std::function<void(Result<PollReport>)>> running_waiters;
};

// One poll in flight: what it knows so far.
struct Scheduler::Poll {
  int repository_id = 0;
  int network_id = 0;
  std::vector<int> network;  // every repository of the fork network
  Repo repo;
  std::shared_ptr<Vcs> vcs;
  uint64_t started_ms = 0;
  std::vector<Head> heads;
  size_t heads_hash = 0;
  uint64_t generation = 0;  // of the configuration it reconciled against
  Reconciled reconciled;
  std::vector<std::string> commits;  // per changed branch, a JSON array
  PollReport report;
};

Scheduler::Scheduler(uv_loop_t* loop, db::Database& db, config::Model& model,
                     plugin::Registry& plugins, Options options)
    : loop_(loop), db_(db), model_(model), plugins_(plugins), options_(std::move(options)) {}

Scheduler::~Scheduler() { *alive_ = false; }

void Scheduler::start() {
  for (const auto& [id, repo] : model_.repositories()) schedule(id);
  model_.onChange([this](const config::Change& c) {
    if (c.table == "repository") schedule(c.id);
    if (c.table == "branch" || c.table == "builder_branch" || c.table == "builder") {
      // Cheap and always right: the next poll of every repository reconciles.
      ++config_generation_;
    }
  });
}

// (Re)arms a repository after a configuration change; a poll in flight goes on.
void Scheduler::schedule(int id) {
  auto repo = model_.repository(id);
  auto it = repos_.find(id);
  if (!repo || !repo->active) {
    if (it == repos_.end()) return;
    forget(*it->second);
    if (!it->second->polling) repos_.erase(it);
    else it->second->timer.stop();
    return;
  }
  if (it == repos_.end()) {
    it = repos_.emplace(id, std::make_unique<RepoState>(loop_, id)).first;
    it->second->interval_s = repo->poll_interval;
    // The first poll comes soon, spread over a few seconds.
    arm(*it->second, jittered(std::min<uint64_t>(repo->poll_interval, 5) * 500));
    return;
  }
  RepoState& state = *it->second;
  if (state.interval_s != repo->poll_interval || !state.timer.active()) {
    state.interval_s = repo->poll_interval;
    if (!state.polling) arm(state, jittered(static_cast<uint64_t>(state.interval_s) * 1000));
  }
}

// A repository that is gone or inactive leaves the shared proxy: its refs go,
// the objects its siblings share stay.
void Scheduler::forget(RepoState& state) {
  if (!state.last_repo) return;
  auto vcs = vcs_.find(state.vcs_name);
  if (vcs == vcs_.end() || !vcs->second) return;
  Repo repo = *state.last_repo;
  state.last_repo.reset();
  vcs->second->forget(repo, [repo](Status s) {
    if (!s) log::warning("scheduler", "cannot drop repository ", repo.id, " from its proxy: ", s.error().message);
    else log::info("scheduler", "repository ", repo.id, " dropped from its proxy");
  });
}

void Scheduler::arm(RepoState& state, uint64_t delay_ms) {
  state.timer.start(delay_ms, 0, [this, id = state.id] { enqueue(id, false); });
}

void Scheduler::enqueue(int id, bool urgent) {
  auto it = repos_.find(id);
  if (it == repos_.end() || it->second->polling || it->second->queued) return;
  it->second->queued = true;
  if (urgent) ready_.push_front(id);
  else ready_.push_back(id);
  pump();
}

void Scheduler::pump() {
  while (active_polls_ < options_.max_parallel_polls && !ready_.empty()) {
    int id = ready_.front();
    ready_.pop_front();
    auto it = repos_.find(id);
    if (it == repos_.end() || !it->second->queued) continue;
    it->second->queued = false;
    ++active_polls_;
    beginPoll(id);
  }
}

void Scheduler::pollNow(int repository_id, std::function<void(Result<PollReport>)> done) {
  auto repo = model_.repository(repository_id);
  if (!repo) return done(Error{"no repository with id " + std::to_string(repository_id)});
  if (!repo->active) return done(Error{"repository " + repo->name + " is not active"});
  auto it = repos_.find(repository_id);
  if (it == repos_.end()) {
    schedule(repository_id);
    it = repos_.find(repository_id);
  }
  RepoState& state = *it->second;
  state.waiters.push_back(std::move(done));
  if (state.polling) {
    state.again = true;  // the running poll may have listed heads before the push
    return;
  }
  state.timer.stop();
  if (state.queued) {  // already waiting for a slot: move it to the front
    state.queued = false;
    ready_.erase(std::remove(ready_.begin(), ready_.end(), repository_id), ready_.end());
  }
  enqueue(repository_id, true);
}

std::vector<int> Scheduler::networkOf(int root_id) const {
  std::vector<int> ids;
  for (const auto& [id, repo] : model_.repositories()) {
    int r = id;
    for (int depth = 0; depth < 1000; ++depth) {
      auto row = model_.repository(r);
      if (!row || !row->parent_id) break;
      r = *row->parent_id;
    }
    if (r == root_id) ids.push_back(id);
  }
  return ids;
}

// The root of the fork network: the parent of the parent of ... of row.
Result<int> Scheduler::networkRoot(const config::Repository& row) const {
  int root = row.id;
  std::set<int> seen{root};
  for (auto r = model_.repository(root); r && r->parent_id; r = model_.repository(root)) {
    root = *r->parent_id;
    if (!seen.insert(root).second) return Error{"repository " + row.name + " is part of a fork cycle"};
  }
  return root;
}

Repo Scheduler::repoFor(const config::Repository& row, int root) const {
  Repo repo;
  repo.id = row.id;
  repo.url = row.url;
  repo.proxy = options_.proxy_root + "/" + row.vcs + "/" + std::to_string(root);
  repo.ref_prefix = "refs/pefnos/" + std::to_string(row.id) + "/";
  for (const auto& [id, b] : model_.branches()) {
    if (b->repository_id == row.id && b->active && !b->origin_id) repo.branches.push_back({b->name, b->pattern});
  }
  return repo;
}

void Scheduler::beginPoll(int id) {
  auto it = repos_.find(id);
  auto row = model_.repository(id);
  if (it == repos_.end()) return;
  RepoState& state = *it->second;
  state.polling = true;
  state.again = false;
  state.running_waiters = std::move(state.waiters);
  state.waiters.clear();
  const uint64_t started = nowMs(loop_);
  auto failEarly = [this, id, started](Error e) { endPoll(id, std::move(e), started); };
  if (!row || !row->active) return failEarly(Error{"repository " + std::to_string(id) + " is not active"});

  auto root = networkRoot(*row);
  if (!root) return failEarly(root.error());
  auto repo = repoFor(*row, *root);
  auto& vcs = vcs_[row->vcs];
  if (!vcs) vcs = plugins_.makeVcs(row->vcs);
  if (!vcs) {
    std::string loaded;
    for (const auto& n : plugins_.vcsNames()) loaded += (loaded.empty() ? "" : ", ") + n;
    return failEarly(Error{"no VCS plugin named '" + row->vcs + "' is loaded (loaded: " +
                      (loaded.empty() ? "none" : loaded) + ")"});
  }
  state.last_repo = repo;
  state.vcs_name = row->vcs;
  auto poll = std::make_shared<Poll>();
  poll->repository_id = id;
  poll->repo = repo;
  poll->vcs = vcs;
  poll->network_id = *root;
  poll->network = networkOf(poll->network_id);
  poll->started_ms = started;
  poll->generation = config_generation_;
  // Step 1: every head of the upstream, in one call.
  vcs->listHeads(poll->repo, [this, poll, alive = std::weak_ptr<bool>(alive_)](
                                 Result<std::vector<Head>> heads) {
    if (alive.expired()) return;
    if (!heads) return fail(poll, heads.error().message);
    std::string left_out;
    std::erase_if(heads.value(), [&left_out](const Head& h) {
      if (recordableBranchName(h.branch)) return false;
      left_out += (left_out.empty() ? "" : ", ") + json(h.branch).dump(-1, ' ', true, json::error_handler_t::replace);
      return true;
    });
    auto it = repos_.find(poll->repository_id);
    // Warned once, and again only when the list changes: not on every poll.
    if (!left_out.empty() && (it == repos_.end() || it->second->left_out != left_out)) {
      log::warning("scheduler", poll->repo.url, ": ignoring branches whose names cannot be recorded "
                   "(not UTF-8, over 255 characters, control characters, a leading '-' or a '..'): ", left_out);
    }
    if (it != repos_.end()) it->second->left_out = left_out;
    poll->heads = std::move(heads.value());
    poll->report.heads = static_cast<int>(poll->heads.size());
    poll->heads_hash = hashHeads(poll->heads);
    if (it != repos_.end() && it->second->reconciled_generation == config_generation_ &&
        it->second->heads_hash == poll->heads_hash) {
      return endPoll(poll->repository_id, poll->report, poll->started_ms);  // nothing moved
    }
    reconcile(poll);
  });
}

// Step 2: the branch rows against what the upstream has.
void Scheduler::reconcile(std::shared_ptr<Poll> poll) {
  db_.transact<Reconciled>(
      [poll](pqxx::work& tx) {
        return reconcileBranches(tx, poll->repository_id, poll->heads, poll->network);
      },
      [this, poll, alive = std::weak_ptr<bool>(alive_)](Result<Reconciled> r) {
        if (alive.expired()) return;
        if (!r) return fail(poll, "reconciling branches: " + r.error().message);
        poll->reconciled = std::move(r.value());
        poll->report.changed = static_cast<int>(poll->reconciled.changed.size());
        poll->report.discovered = poll->reconciled.discovered;
        poll->report.vanished = poll->reconciled.vanished;
        fetch(poll);
      });
}

// Step 3: what moved comes into the proxy, once for every builder and fork.
void Scheduler::fetch(std::shared_ptr<Poll> poll) {
  if (poll->reconciled.fetch.empty()) return record(poll);
  const std::vector<std::string>& names = poll->reconciled.fetch;
  poll->vcs->updateProxy(poll->repo, names,
                         [this, poll, alive = std::weak_ptr<bool>(alive_)](Status s) {
                           if (alive.expired()) return;
                           if (!s) return fail(poll, "updating the proxy: " + s.error().message);
                           listCommits(poll, 0);
                         });
}

// Step 4: the new commits of each changed branch, one branch after the other.
void Scheduler::listCommits(std::shared_ptr<Poll> poll, size_t i) {
  if (i == poll->reconciled.changed.size()) return record(poll);
  poll->vcs->listCommits(
      poll->repo, poll->reconciled.changed[i].new_revision, poll->reconciled.known_heads,
      options_.max_new_commits,
      [this, poll, i, alive = std::weak_ptr<bool>(alive_)](Result<std::vector<CommitInfo>> commits) {
        if (alive.expired()) return;
        if (!commits) {
          return fail(poll, "listing the commits of " + poll->reconciled.changed[i].name + ": " +
                                commits.error().message);
        }
        json list = json::array();
        for (const auto& c : *commits) {
          auto date = [](const std::string& d) { return d.empty() ? json() : json(d); };
          list.push_back({{"revision", c.revision}, {"parents", c.parents}, {"author", c.author},
                          {"author_date", date(c.author_date)}, {"committer", c.committer},
                          {"committer_date", date(c.committer_date)}, {"message", c.message},
                          {"files", c.files}});
        }
        poll->commits.push_back(dumpJson(list));
        listCommits(poll, i + 1);
      });
}

// Step 5: commits, heads and build requests, in one transaction.
void Scheduler::record(std::shared_ptr<Poll> poll) {
  db_.transact<PollReport>(
      [poll](pqxx::work& tx) {
        PollReport report = poll->report;
        for (size_t i = 0; i < poll->reconciled.changed.size(); ++i) {
          const Tracked& t = poll->reconciled.changed[i];
          report.commits += static_cast<int>(
              tx.exec_params(kRecordCommits, poll->network_id, poll->commits[i]).affected_rows());
          // Only from the head this poll saw: another master sharing the
          // database may have moved it meanwhile (the row lock orders us after
          // it), and its requests stand; a stale poll never moves it back.
          if (tx.exec_params(kMoveHead, t.branch_id, t.new_revision, poll->network_id, t.old_revision)
                  .affected_rows() == 0) {
            continue;
          }
          report.requests += static_cast<int>(
              tx.exec_params(kRequestBuilds, t.branch_id, t.new_revision, poll->network_id)
                  .affected_rows());
        }
        return report;
      },
      [this, poll, alive = std::weak_ptr<bool>(alive_)](Result<PollReport> report) {
        if (alive.expired()) return;
          if (report) {
          if (auto it = repos_.find(poll->repository_id); it != repos_.end()) {
            it->second->heads_hash = poll->heads_hash;
            it->second->reconciled_generation = poll->generation;
          }
        }
        endPoll(poll->repository_id, std::move(report), poll->started_ms);
      });
}

void Scheduler::fail(const std::shared_ptr<Poll>& poll, const std::string& message) {
  endPoll(poll->repository_id, Error{message}, poll->started_ms);
}

void Scheduler::endPoll(int id, Result<PollReport> outcome, uint64_t started_ms) {
  ++polls_done_;
  --active_polls_;
  const int duration = static_cast<int>(nowMs(loop_) - started_ms);
  auto it = repos_.find(id);
  auto row = model_.repository(id);
  const std::string name = row ? row->name : std::to_string(id);
  // Whoever waits (poll-now) hears of the poll once its row says so.
  auto waiters = std::make_shared<std::vector<std::function<void(Result<PollReport>)>>>();
  if (it != repos_.end()) {
    *waiters = std::move(it->second->running_waiters);
    it->second->running_waiters.clear();
  }
  auto tell = [waiters, outcome, alive = std::weak_ptr<bool>(alive_)](Result<Done>) {
    if (alive.expired()) return;
    for (auto& w : *waiters) w(outcome);
  };
  if (outcome) {
    const PollReport& r = *outcome;
    if (r.changed || r.discovered || r.vanished) {
      log::info("scheduler", "polled ", name, ": ", r.changed, " branches moved, ", r.commits,
                " new commits, ", r.requests, " build requests, ", r.discovered, " discovered, ",
                r.vanished, " vanished (", duration, " ms)");
    }
    db_.transact<Done>(
        [id, duration](pqxx::work& tx) {
          tx.exec_params(kPollOk, id, duration);
          return Done{};
        },
        tell);
  } else {
    const std::string message = outcome.error().message;
    const int failures = it != repos_.end() ? it->second->failures + 1 : 1;
    if (failures == 1 || failures % 10 == 0) {
      log::warning("scheduler", "polling ", name, " failed (", failures, " in a row): ", message);
    }
    db_.transact<Done>(
        [id, duration, message, name](pqxx::work& tx) {
          bool changed = tx.exec_params(kPollFailed, id, message, duration)[0][0].as<bool>();
          if (changed) {
            tx.exec_params("INSERT INTO pefnos.event (level, source, message, details) "
                           "VALUES ('error', 'scheduler', $1, $2::jsonb)",
                           "polling repository " + name + " failed: " + message,
                           json{{"repository", id}}.dump());
          }
          return Done{};
        },
        tell);
  }
  if (it == repos_.end()) return pump();
  RepoState& state = *it->second;
  state.polling = false;
  state.failures = outcome ? 0 : state.failures + 1;
  if (!row || !row->active) {
    repos_.erase(it);
  } else if (state.again) {
    state.timer.start(0, 0, [this, id] { enqueue(id, true); });
  } else {
    // Failures back off: twice the interval per failure in a row, up to the cap.
    uint64_t delay = static_cast<uint64_t>(state.interval_s) * 1000;
    for (int i = 0; i < std::min(state.failures, 16); ++i) delay *= 2;
    delay = std::min<uint64_t>(delay, std::max<uint64_t>(static_cast<uint64_t>(state.interval_s),
                                                         options_.max_backoff_seconds) * 1000);
    arm(state, jittered(delay));
  }
  pump();
}

}  // namespace pefnos::scheduler
