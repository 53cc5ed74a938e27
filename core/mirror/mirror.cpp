#include "core/mirror/mirror.h"

#include <algorithm>
#include <ctime>
#include <unordered_map>
#include <unordered_set>

#include "core/base/log.h"
#include "core/base/utf8.h"
#include "core/mirror/fast_stream.h"
#include "core/mirror/tree_diff.h"

namespace pefnos::mirror {

using json = nlohmann::json;

// ---------------------------------------------------------------------------
// Comparisons

std::string normalText(const std::string& s) {
  // Invalid UTF-8 becomes one U+FFFD per maximal subpart (what Python's
  // 'replace' does, and so what Breezy stores).
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') {
      ++i;
      continue;
    }
    const Utf8Step c = decodeUtf8(s, i);
    if (c.valid) {
      out.append(s, i, c.length);
    } else {
      out += "\xef\xbf\xbd";
    }
    i += c.length;
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ' || out.back() == '\t' ||
                          out.back() == '\r')) {
    out.pop_back();
  }
  return out;
}

std::pair<std::string, std::string> splitIdentity(const std::string& s) {
  std::string first = s;
  if (auto comma = first.find(">, "); comma != std::string::npos) first.resize(comma + 1);
  std::string name = first, email;
  if (auto lt = first.rfind(" <"); lt != std::string::npos && first.back() == '>') {
    name = first.substr(0, lt);
    email = first.substr(lt + 2, first.size() - lt - 3);
  } else if (auto lt2 = first.find('<'); lt2 == 0 && first.back() == '>') {
    name.clear();
    email = first.substr(1, first.size() - 2);
  }
  return {normalText(name), email};
}

std::optional<long long> isoSeconds(const std::string& s) {
  std::tm tm{};
  int y, mo, d, h, mi, sec;
  char t;
  if (s.size() < 19 || std::sscanf(s.c_str(), "%4d-%2d-%2d%c%2d:%2d:%2d", &y, &mo, &d, &t, &h, &mi, &sec) != 7) {
    return std::nullopt;
  }
  tm.tm_year = y - 1900, tm.tm_mon = mo - 1, tm.tm_mday = d, tm.tm_hour = h, tm.tm_min = mi, tm.tm_sec = sec;
  long long at = static_cast<long long>(timegm(&tm));
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  }
  while (i < s.size() && s[i] == ' ') ++i;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    int oh = 0, om = 0;
    std::string off = s.substr(i + 1);
    off.erase(std::remove(off.begin(), off.end(), ':'), off.end());
    if (off.size() < 4 || std::sscanf(off.c_str(), "%2d%2d", &oh, &om) != 2) return std::nullopt;
    long long o = oh * 3600 + om * 60;
    at += s[i] == '+' ? -o : o;
  }
  return at;
}

namespace {

// What differs between the metadata of a source and a target revision.
json metadataDifferences(const CommitInfo& s, const CommitInfo& t, const std::vector<std::string>& parents_expected) {
  json out = json::array();
  auto differ = [&](const char* field, const std::string& a, const std::string& b) {
    out.push_back({{"field", field}, {"source", a}, {"target", b}});
  };
  if (normalText(s.message) != normalText(t.message)) differ("message", s.message, t.message);
  auto sa = splitIdentity(s.author), ta = splitIdentity(t.author);
  if (sa.first != ta.first || (!sa.second.empty() && sa.second != ta.second)) differ("author", s.author, t.author);
  auto sc = splitIdentity(s.committer), tc = splitIdentity(t.committer);
  if (sc.first != tc.first || (!sc.second.empty() && sc.second != tc.second)) {
    differ("committer", s.committer, t.committer);
  }
  auto scd = isoSeconds(s.committer_date), tcd = isoSeconds(t.committer_date);
  if (!scd || !tcd || *scd != *tcd) differ("committer_date", s.committer_date, t.committer_date);
  // A VCS that keeps one date per revision (Bazaar) cannot hold a separate
  // author date: there the committer's date is what must correspond.
  auto sd = isoSeconds(s.author_date), td = isoSeconds(t.author_date);
  const bool one_date = t.author_date == t.committer_date;
  if ((!sd || !td || *sd != *td) && !(one_date && scd && tcd && *scd == *tcd)) {
    differ("author_date", s.author_date, t.author_date);
  }
  if (parents_expected != t.parents) {
    json a = parents_expected, b = t.parents;
    differ("parents", a.dump(), b.dump());
  }
  return out;
}

// Revisions of one side that are the same revision on the other, through the
// marks of a collection: union-find over (repository, revision).
class Equivalence {
 public:
  void join(const std::string& a, const std::string& b) { parent_[find(a)] = find(b); }
  std::string find(const std::string& x) {
    auto it = parent_.find(x);
    if (it == parent_.end()) {
      parent_[x] = x;
      return x;
    }
    if (it->second == x) return x;
    std::string root = find(it->second);
    parent_[x] = root;
    return root;
  }
  const std::unordered_map<std::string, std::string>& nodes() const { return parent_; }

 private:
  std::unordered_map<std::string, std::string> parent_;
};

// What the web page follows: {"mirror", "run", "state"} on pefnos_mirror.
void notifyRun(pqxx::work& tx, int mirror_id, long long run_id, const std::string& state) {
  tx.exec_params("SELECT pg_notify('pefnos_mirror', $1)",
                 json{{"mirror", mirror_id}, {"run", run_id}, {"state", state}}.dump());
}

std::string node(int repository, const std::string& revision) {
  return std::to_string(repository) + ":" + revision;
}

// Failures worth retrying: a process killed or timed out, a repository lock
// still held (by an importer that outlived a killed master, say).
bool retryable(const std::string& message) {
  for (const char* what : {"killed by signal", "timed out", "LockContention", "Could not acquire lock",
                           "lock is held", "Unable to create", ".lock': File exists"}) {
    if (message.find(what) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

// ---------------------------------------------------------------------------
// A run

struct Mirrors::Run {
  config::Mirror cfg;
  bool forced = false;
  std::function<void(Result<json>)> done;
  std::vector<std::function<void(Result<json>)>> also_done;  // mirror-now commands that joined it
  long long id = 0;
  scheduler::Scheduler::Resolved source, target;
  int source_repository = 0;
  std::string source_branch, source_head;
  // Revisions both sides have: marks 1..K are known[0..K-1] (source, target).
  std::vector<std::pair<std::string, std::string>> known;
  std::unordered_map<std::string, uint64_t> known_source, known_target;
  std::string target_before;  // the target upstream's head at the start ("": none)
  std::vector<std::string> published;  // where this mirror may have left the target (plain mirrors)

  std::unique_ptr<StreamFilter> filter;
  std::shared_ptr<Running> exporter;
  std::shared_ptr<Import> importer;
  size_t buffered = 0;
  bool paused = false;
  int streams_open = 0;
  bool export_ended = false;
  std::optional<Error> stream_error;
  std::optional<Imported> imported;

  std::vector<std::pair<std::string, std::string>> fresh;  // new (source, target) revisions
  std::string target_head;                                 // what the target becomes
  json verified = json::array();                           // mirror_verify rows
  bool finished = false;
  // When each phase ended (ms of the loop's clock), for the log line that ends the run.
  uint64_t started_ms = 0, streamed_ms = 0, verified_ms = 0, recorded_ms = 0;
};

struct Mirrors::Check {
  // One verification job: pairs of (source, target) revisions, with the
  // metadata of both sides when it was read.
  int mirror_id = 0;
  long long run_id = 0;
  scheduler::Scheduler::Resolved source, target;
  std::vector<std::pair<std::string, std::string>> pairs;
  std::unordered_map<std::string, CommitInfo> source_info, target_info;
  std::unordered_map<std::string, std::string> to_target;  // every known source -> target
  size_t next = 0, in_flight = 0;
  json rows = json::array();
  bool read_metadata = true;     // false: trees only (the metadata could not be listed)
  std::optional<json> mismatch;  // the first failing row
  std::optional<std::string> unverified;  // why the first revision could not be checked
  size_t unverified_count = 0;
  std::function<void(size_t done_count)> progress;
};

Mirrors::Mirrors(uv_loop_t* loop, db::Database& db, config::Model& model,
                 scheduler::Scheduler& scheduler, Options options)
    : loop_(loop), db_(db), model_(model), scheduler_(scheduler), options_(std::move(options)),
      tick_timer_(loop), lease_timer_(loop) {}

Mirrors::~Mirrors() {
  *alive_ = false;
  for (auto& [id, run] : runs_) {
    if (run->exporter) run->exporter->kill();
    if (run->importer) run->importer->kill();
  }
}

void Mirrors::start() {
  auto alive = alive_;
  db_.transact<std::vector<int>>(
      [master = options_.master](pqxx::work& tx) {
        std::vector<int> ids;
        for (const auto& r : tx.exec_params(
                 "UPDATE pefnos.mirror_run SET state = 'interrupted', finished_at = now(), "
                 "error = 'the master running it stopped' "
                 "WHERE claimed_by = $1 AND state = 'running' RETURNING mirror_id",
                 master)) {
          ids.push_back(r[0].as<int>());
        }
        return ids;
      },
      [this, alive](Result<std::vector<int>> given_back) {
        if (!*alive) return;
        if (given_back) {
          for (int id : *given_back) {
            log::info("mirror", "mirror ", id, ": resuming the run an earlier life left");
            begin(id, false, nullptr);
          }
        }
        tick_timer_.start(options_.tick_ms, options_.tick_ms, [this] { tick(); });
      },
      db::Retry::on_reconnect);
  const uint64_t every = std::max(1, options_.lease_seconds / 4) * 1000ull;
  lease_timer_.start(every, every, [this] { renewLeases(); });
}

void Mirrors::tick() {
  if (ticking_ || runs_.size() >= options_.max_runs) return;
  ticking_ = true;
  auto alive = alive_;
  db_.transact<std::vector<int>>(
      [retry = options_.retry_seconds](pqxx::work& tx) {
        std::vector<int> ids;
        for (const auto& r : tx.exec_params(R"(
SELECT m.id FROM pefnos.mirror m
JOIN pefnos.branch_head h ON h.branch_id = m.source_branch_id
JOIN pefnos.branch sb ON sb.id = m.source_branch_id
LEFT JOIN LATERAL (SELECT r.state, r.finished_at, r.lease_until FROM pefnos.mirror_run r
                   WHERE r.mirror_id = m.id ORDER BY r.id DESC LIMIT 1) last ON true
WHERE m.active
AND NOT EXISTS (SELECT 1 FROM pefnos.mirror_run r2 JOIN pefnos.mirror o2 ON o2.id = r2.mirror_id
                WHERE r2.state = 'running' AND r2.lease_until >= now()
                  AND (o2.id = m.id OR (m.collection IS NOT NULL AND o2.collection = m.collection)))
AND (
  (last.state = 'running' AND last.lease_until < now())
  OR (last.state = 'interrupted' AND last.finished_at < now() - make_interval(secs => $1))
  OR ((last.state IS NULL OR last.state = 'succeeded')
      AND h.updated_at <= now() - make_interval(secs => m.delay)
      AND NOT EXISTS (SELECT 1 FROM pefnos.mirror_mark k
                      WHERE k.mirror_id = m.id AND k.source_revision = h.revision)
      AND NOT EXISTS (SELECT 1 FROM pefnos.mirror_mark k JOIN pefnos.mirror o ON o.id = k.mirror_id
                      WHERE m.collection IS NOT NULL AND o.collection = m.collection
                        AND o.target_repository_id = sb.repository_id
                        AND k.target_revision = h.revision)))
ORDER BY m.id LIMIT 16)",
                                             retry)) {
          ids.push_back(r[0].as<int>());
        }
        return ids;
      },
      [this, alive](Result<std::vector<int>> due) {
        if (!*alive) return;
        ticking_ = false;
        if (!due) return;
        for (int id : *due) {
          if (runs_.size() >= options_.max_runs) break;
          if (!runs_.count(id)) begin(id, false, nullptr);
        }
      });
}

void Mirrors::renewLeases() {
  std::vector<long long> ids;
  for (const auto& [mid, run] : runs_) {
    if (run->id && !run->finished) ids.push_back(run->id);
  }
  if (ids.empty()) return;
  json j = ids;
  auto alive = alive_;
  db_.transact<std::vector<long long>>(
      [j, master = options_.master, lease = options_.lease_seconds](pqxx::work& tx) {
        std::vector<long long> held;
        for (const auto& r : tx.exec_params(
                 "UPDATE pefnos.mirror_run SET lease_until = now() + make_interval(secs => $3) "
                 "WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb)::bigint) "
                 "AND state = 'running' AND claimed_by = $2 RETURNING id",
                 j.dump(), master, lease)) {
          held.push_back(r[0].as<long long>());
        }
        return held;
      },
      [this, alive, ids](Result<std::vector<long long>> held) {
        if (!*alive || !held) return;  // the database is away: the next renewal tries again
        // A run whose row is no longer ours (another master took it over after
        // our lease lapsed) stops here rather than streaming on for nothing.
        for (long long id : ids) {
          if (std::find(held->begin(), held->end(), id) != held->end()) continue;
          for (auto& [mid, run] : runs_) {
            if (run->id == id && !run->finished) {
              auto keep = run;
              finish(keep, "interrupted", "the run lost its lease to another master");
              break;
            }
          }
        }
      });
}

void Mirrors::runNow(int mirror_id, std::function<void(Result<json>)> done) {
  // A run of it is going here: the command follows that run to its end.
  if (auto it = runs_.find(mirror_id); it != runs_.end()) return it->second->also_done.push_back(std::move(done));
  begin(mirror_id, true, std::move(done));
}

// ---------------------------------------------------------------------------
// claim

namespace {
struct Claim {
  long long run_id = 0;
  bool busy = false;
  std::string why_busy;
  int source_repository = 0;
  std::string source_branch, source_head;
  std::vector<std::pair<std::string, std::string>> known;
  std::vector<std::string> published;
};

// The revisions both ends of a mirror share, as (source, target): its own
// marks, or for a collection every revision the collection's marks make
// equal across its members (union-find over (repository, revision)).
std::vector<std::pair<std::string, std::string>> knownPairs(pqxx::work& tx, const config::Mirror& cfg,
                                                            int source_repository) {
  std::vector<std::pair<std::string, std::string>> known;
  if (!cfg.collection) {
    for (const auto& r : tx.exec_params(
             "SELECT source_revision, target_revision FROM pefnos.mirror_mark WHERE mirror_id = $1", cfg.id)) {
      known.emplace_back(r[0].as<std::string>(), r[1].as<std::string>());
    }
    return known;
  }
  Equivalence eq;
  for (const auto& r : tx.exec_params(
           "SELECT sb.repository_id, k.source_revision, m.target_repository_id, k.target_revision "
           "FROM pefnos.mirror_mark k JOIN pefnos.mirror m ON m.id = k.mirror_id "
           "JOIN pefnos.branch sb ON sb.id = m.source_branch_id WHERE m.collection = $1",
           *cfg.collection)) {
    eq.join(node(r[0].as<int>(), r[1].as<std::string>()), node(r[2].as<int>(), r[3].as<std::string>()));
  }
  std::unordered_map<std::string, std::string> source_of, target_of;  // class -> revision
  const std::string sp = std::to_string(source_repository) + ":";
  const std::string tp = std::to_string(cfg.target_repository_id) + ":";
  std::vector<std::string> all;
  for (const auto& [n, p] : eq.nodes()) all.push_back(n);
  for (const auto& n : all) {
    if (n.rfind(sp, 0) == 0) source_of[eq.find(n)] = n.substr(sp.size());
    if (n.rfind(tp, 0) == 0) target_of[eq.find(n)] = n.substr(tp.size());
  }
  for (const auto& [cls, src] : source_of) {
    if (auto t = target_of.find(cls); t != target_of.end()) known.emplace_back(src, t->second);
  }
  return known;
}
}  // namespace

void Mirrors::begin(int mirror_id, bool forced, std::function<void(Result<json>)> done) {
  auto cfg = model_.mirror(mirror_id);
  if (!cfg || !cfg->active) {
    if (done) done(Error{"no active mirror with id " + std::to_string(mirror_id)});
    return;
  }
  auto run = std::make_shared<Run>();
  run->cfg = *cfg;
  run->forced = forced;
  run->done = std::move(done);
  runs_[mirror_id] = run;
  auto alive = alive_;
  db_.transact<Claim>(
      [cfg = *cfg, master = options_.master, lease = options_.lease_seconds](pqxx::work& tx) {
        Claim c;
        // Runs of one collection take turns: its rows are locked while claiming.
        if (cfg.collection) {
          tx.exec_params("SELECT id FROM pefnos.mirror WHERE collection = $1 ORDER BY id FOR UPDATE",
                         *cfg.collection);
        } else {
          tx.exec_params("SELECT id FROM pefnos.mirror WHERE id = $1 FOR UPDATE", cfg.id);
        }
        tx.exec_params(
            "UPDATE pefnos.mirror_run r SET state = 'interrupted', finished_at = now(), "
            "error = 'the master running it stopped renewing its lease' "
            "FROM pefnos.mirror m WHERE r.mirror_id = m.id AND r.state = 'running' "
            "AND r.lease_until < now() AND (m.id = $1 OR m.collection = $2)",
            cfg.id, cfg.collection ? *cfg.collection : std::string());
        auto busy = tx.exec_params(
            "SELECT m.name, r.claimed_by FROM pefnos.mirror_run r JOIN pefnos.mirror m ON m.id = r.mirror_id "
            "WHERE r.state = 'running' AND (m.id = $1 OR m.collection = $2) LIMIT 1",
            cfg.id, cfg.collection ? *cfg.collection : std::string());
        if (!busy.empty()) {
          c.busy = true;
          c.why_busy = "mirror " + busy[0][0].as<std::string>() + " is running on " +
                       busy[0][1].as<std::string>();
          return c;
        }
        auto head = tx.exec_params(
            "SELECT b.repository_id, b.name, h.revision FROM pefnos.branch b "
            "LEFT JOIN pefnos.branch_head h ON h.branch_id = b.id WHERE b.id = $1",
            cfg.source_branch_id);
        if (head.empty() || head[0][2].is_null()) {
          c.busy = true;
          c.why_busy = "the source branch has not been polled yet";
          return c;
        }
        c.source_repository = head[0][0].as<int>();
        c.source_branch = head[0][1].as<std::string>();
        c.source_head = head[0][2].as<std::string>();
        c.run_id = tx.exec_params(
                         "INSERT INTO pefnos.mirror_run (mirror_id, claimed_by, lease_until, source_head) "
                         "VALUES ($1, $2, now() + make_interval(secs => $3), $4) RETURNING id",
                         cfg.id, master, lease, c.source_head)[0][0]
                       .as<long long>();
        notifyRun(tx, cfg.id, c.run_id, "running");
        c.known = knownPairs(tx, cfg, c.source_repository);
        // Where this mirror left the target: the last succeeded run's head,
        // and the heads of the runs after it that recorded one (they may have
        // published before they died).
        for (const auto& r : tx.exec_params(
                 "SELECT target_head FROM pefnos.mirror_run WHERE mirror_id = $1 AND target_head IS NOT NULL "
                 "AND id >= (SELECT max(id) FROM pefnos.mirror_run WHERE mirror_id = $1 AND state = 'succeeded')",
                 cfg.id)) {
          c.published.push_back(r[0].as<std::string>());
        }
        return c;
      },
      [this, alive, run](Result<Claim> c) {
        if (!*alive) return;
        if (!c || c->busy) {
          runs_.erase(run->cfg.id);
          std::string why = c ? c->why_busy : c.error().message;
          if (!c) log::warning("mirror", run->cfg.name, ": cannot claim a run: ", why);
          if (run->done) run->done(Error{why});
          for (auto& d : run->also_done) d(Error{why});
          return;
        }
        run->id = c->run_id;
        run->started_ms = uv_now(loop_);
        run->source_repository = c->source_repository;
        run->source_branch = c->source_branch;
        run->source_head = c->source_head;
        run->known = std::move(c->known);
        run->published = std::move(c->published);
        claimed(run);
      });
}

void Mirrors::claimed(std::shared_ptr<Run> run) {
  auto source = scheduler_.resolve(run->source_repository);
  if (!source) return finish(run, "failed", "source: " + source.error().message);
  auto target = scheduler_.resolve(run->cfg.target_repository_id);
  if (!target) return finish(run, "failed", "target: " + target.error().message);
  run->source = *source;
  run->target = *target;
  for (size_t i = 0; i < run->known.size(); ++i) {
    run->known_source[run->known[i].first] = i + 1;
    run->known_target[run->known[i].second] = i + 1;
  }
  log::info("mirror", run->cfg.name, ": run ", run->id, " of ", run->source_branch, " at ",
            run->source_head, " (", run->known.size(), " revisions known)");
  // The head may have been recorded by another master's poll: this master's
  // proxy must hold it before anything is exported (a no-op when it does).
  auto alive = alive_;
  run->source.vcs->updateProxy(run->source.repo, {run->source_branch}, [this, alive, run](Status s) {
    if (!*alive || run->finished) return;
    if (!s) return finish(run, "interrupted", "source: " + s.error().message);
    targetHead(run);
  });
}

// ---------------------------------------------------------------------------
// the target's head: where it must be for the mirror to write

void Mirrors::targetHead(std::shared_ptr<Run> run) {
  auto alive = alive_;
  run->target.vcs->listHeads(run->target.repo, [this, alive, run](Result<std::vector<Head>> heads) {
    if (!*alive || run->finished) return;
    if (!heads) {
      // An empty target (a new Bazaar directory, say) lists nothing: that is
      // only acceptable before the first mark; publish checks it again.
      if (!run->known.empty()) return finish(run, "interrupted", "target: " + heads.error().message);
    } else {
      for (const auto& h : *heads) {
        if (h.branch == run->cfg.target_branch) run->target_before = h.revision;
      }
    }
    // A plain mirror's target is where it left it, or someone else moved it
    // (back included, or deleted). A collection's target moves with its
    // members: any revision the collection shares will do.
    const bool moved = !run->cfg.collection && !run->published.empty() &&
                       std::find(run->published.begin(), run->published.end(), run->target_before) ==
                           run->published.end();
    if (moved) {
      return finish(run, "failed",
                    "diverged: the target branch " + run->cfg.target_branch + " is " +
                        (run->target_before.empty() ? "gone" : "at " + run->target_before) +
                        ", not where this mirror left it (" + run->published.back() + "); nothing was overwritten",
                    json{{"target_head", run->target_before}});
    }
    if (!run->target_before.empty() && !run->known_target.count(run->target_before)) {
      return finish(run, "failed",
                    "diverged: the target branch " + run->cfg.target_branch + " is at " +
                        run->target_before +
                        ", which this mirror did not write; nothing was overwritten",
                    json{{"target_head", run->target_before}});
    }
    auto go = [this, alive, run] {
      if (!*alive || run->finished) return;
      forgetUnpublished(run, [this, alive, run] {
        if (!*alive || run->finished) return;
        carry(run);
      });
    };
    // The target's proxy holds the branch as the upstream has it (and exists:
    // a first run into a repository nobody polls creates it).
    std::vector<std::string> fetch;
    if (!run->target_before.empty()) fetch.push_back(run->cfg.target_branch);
    run->target.vcs->updateProxy(run->target.repo, fetch,
                                 [this, alive, run, go](Status s) {
                                   if (!*alive || run->finished) return;
                                   if (!s) return finish(run, "interrupted", "target: " + s.error().message);
                                   go();
                                 });
  });
}

// Marks that a run recorded and then never published (it died, here or on
// another master) name target revisions the upstream does not have, and that
// this master's proxy may not have either: they are forgotten, and what they
// covered is carried again. A run whose head is the target's is published,
// and so is every run before it: each run starts by forgetting what was not
// published before it, so what it publishes holds all the marks it kept.
// (Forgetting those too lost marks: a run that published and died, then a
// later one that did the same, and the third forgot the first one's marks,
// whose commits the exporter then took as carried.)
void Mirrors::forgetUnpublished(std::shared_ptr<Run> run, std::function<void()> then) {
  auto alive = alive_;
  db_.transact<std::vector<std::string>>(
      [id = run->id, mirror_id = run->cfg.id, before = run->target_before](pqxx::work& tx) {
        std::vector<std::string> forgotten;
        for (const auto& r : tx.exec_params(
                 "DELETE FROM pefnos.mirror_mark k USING pefnos.mirror_run r "
                 "WHERE k.mirror_id = $1 AND k.run_id = r.id AND r.id <> $2 AND r.state <> 'succeeded' "
                 "AND r.target_head IS DISTINCT FROM NULLIF($3, '') "
                 "AND r.id > coalesce((SELECT max(p.id) FROM pefnos.mirror_run p "
                 "WHERE p.mirror_id = $1 AND p.target_head = NULLIF($3, '')), 0) "
                 "RETURNING k.source_revision",
                 mirror_id, id, before)) {
          forgotten.push_back(r[0].as<std::string>());
        }
        return forgotten;
      },
      [this, alive, run, then](Result<std::vector<std::string>> forgotten) {
        if (!*alive || run->finished) return;
        if (!forgotten) return finish(run, "interrupted", "cannot read the marks: " + forgotten.error().message);
        if (forgotten->empty()) return then();
        log::info("mirror", run->cfg.name, ": forgetting ", forgotten->size(),
                  " marks an unfinished run recorded and never published");
        std::unordered_set<std::string> gone(forgotten->begin(), forgotten->end());
        std::vector<std::pair<std::string, std::string>> kept;
        for (auto& k : run->known) {
          if (!gone.count(k.first)) kept.push_back(std::move(k));
        }
        run->known = std::move(kept);
        run->known_source.clear();
        run->known_target.clear();
        for (size_t i = 0; i < run->known.size(); ++i) {
          run->known_source[run->known[i].first] = i + 1;
          run->known_target[run->known[i].second] = i + 1;
        }
        then();
      });
}

// Carries what the target lacks, or only publishes (a run that died after
// recording and before publishing ends here), or nothing.
void Mirrors::carry(std::shared_ptr<Run> run) {
  auto known = run->known_source.find(run->source_head);
  if (known == run->known_source.end()) return stream(run);
  run->target_head = run->known[known->second - 1].second;
  if (run->target_head == run->target_before) return finish(run, "succeeded", "");
  record(run);
}

// ---------------------------------------------------------------------------
// the stream: exporter -> filter -> importer

void Mirrors::stream(std::shared_ptr<Run> run) {
  auto alive = alive_;
  ImportSpec ispec;
  ispec.branch = run->cfg.target_branch;
  for (size_t i = 0; i < run->known.size(); ++i) ispec.known.emplace_back(i + 1, run->known[i].second);
  run->streams_open = 2;
  auto closed = [this, alive, run] {
    if (!*alive || run->finished) return;
    if (--run->streams_open == 0) streamed(run);
  };
  run->importer = run->target.vcs->fastImport(
      run->target.repo, ispec, [this, alive, run, closed](Result<Imported> r) {
        if (!*alive || run->finished) return;
        if (!r) {
          if (!run->stream_error) run->stream_error = Error{"fast-import: " + r.error().message};
          if (!run->export_ended && run->exporter) run->exporter->kill();
        } else {
          run->imported = std::move(*r);
        }
        closed();
      });
  if (!run->importer) {
    if (run->finished) return;
    run->streams_open = 0;
    return finish(run, "failed", run->stream_error ? run->stream_error->message : "fast-import did not start");
  }
  ExportSpec espec;
  espec.branch = run->source_branch;
  espec.revision = run->source_head;
  espec.ref = run->importer->ref();
  for (size_t i = 0; i < run->known.size(); ++i) espec.known.emplace_back(run->known[i].first, i + 1);
  espec.first_mark = run->known.size() + 1;
  run->filter = std::make_unique<StreamFilter>(run->known.size(), espec.ref);

  auto failStream = [run](Error e) {
    if (!run->stream_error) run->stream_error = std::move(e);
    if (run->exporter && !run->export_ended) run->exporter->kill();
    if (run->importer) run->importer->kill();
  };
  auto endInput = [run] {
    if (run->export_ended && run->buffered == 0 && !run->stream_error && run->importer) run->importer->finish();
  };
  run->exporter = run->source.vcs->fastExport(
      run->source.repo, espec,
      [this, alive, run, failStream, endInput](std::string_view chunk) {
        if (!*alive || run->finished || run->stream_error) return;
        std::string out;
        out.reserve(chunk.size() + 64);
        if (auto s = run->filter->feed(chunk, out); !s) return failStream(Error{"fast-export: " + s.error().message});
        if (out.empty()) return;
        const size_t n = out.size();
        run->buffered += n;
        run->importer->write(std::move(out), [this, alive, run, n, failStream, endInput](bool written) {
          if (!*alive || run->finished) return;
          run->buffered -= n;
          if (!written) return failStream(Error{"fast-import stopped reading its input"});
          if (run->paused && run->buffered < options_.max_buffered / 4 && run->exporter) {
            run->paused = false;
            run->exporter->resume();
          }
          endInput();
        });
        if (!run->paused && run->buffered > options_.max_buffered && run->exporter) {
          run->paused = true;
          run->exporter->pause();
        }
      },
      [this, alive, run, closed, failStream, endInput](Status s) {
        if (!*alive || run->finished) return;
        run->export_ended = true;
        if (!s) {
          failStream(Error{"fast-export: " + s.error().message});
        } else if (auto f = run->filter->finish(); !f) {
          failStream(Error{"fast-export: " + f.error().message});
        } else {
          endInput();
        }
        closed();
      });
}

void Mirrors::streamed(std::shared_ptr<Run> run) {
  run->exporter.reset();
  run->importer.reset();
  if (run->stream_error) {
    const std::string& m = run->stream_error->message;
    return finish(run, retryable(m) ? "interrupted" : "failed", m);
  }
  std::unordered_map<uint64_t, std::string> to_target;
  for (const auto& [mark, rev] : run->imported->marks) to_target[mark] = rev;
  const auto& commits = run->filter->commits();
  for (const auto& c : commits) {
    auto t = to_target.find(c.mark);
    if (t == to_target.end()) {
      return finish(run, "failed", "fast-import did not report commit :" + std::to_string(c.mark) + " (" + c.source + ")");
    }
    run->fresh.emplace_back(c.source, t->second);
  }
  if (commits.empty() || commits.back().source != run->source_head) {
    return finish(run, "failed", "fast-export did not end with the source head " + run->source_head);
  }
  run->target_head = run->fresh.back().second;
  run->streamed_ms = uv_now(loop_);
  log::info("mirror", run->cfg.name, ": streamed ", commits.size(), " revisions (",
            run->filter->bytes(), " bytes)");
  verify(run);
}

// ---------------------------------------------------------------------------
// verification

void Mirrors::verify(std::shared_ptr<Run> run) {
  if (run->cfg.verify == "none") return record(run);
  auto c = std::make_shared<Check>();
  c->mirror_id = run->cfg.id;
  c->run_id = run->id;
  c->source = run->source;
  c->target = run->target;
  const size_t n = run->fresh.size();
  for (size_t i = 0; i < n; ++i) {
    // 'sample': every tenth revision and the head.
    if (run->cfg.verify == "all" || i % 10 == 0 || i + 1 == n) c->pairs.push_back(run->fresh[i]);
  }
  for (const auto& [s, t] : run->known) c->to_target[s] = t;
  for (const auto& [s, t] : run->fresh) c->to_target[s] = t;
  // The metadata of every new revision, one call per side: what the new ones
  // build on is the boundary.
  std::vector<std::string> source_exclude, target_exclude;
  for (uint64_t m : run->filter->knownParents()) {
    source_exclude.push_back(run->known[m - 1].first);
    target_exclude.push_back(run->known[m - 1].second);
  }
  auto alive = alive_;
  auto pending = std::make_shared<int>(2);
  auto failed = std::make_shared<std::optional<Error>>();
  auto both = [this, alive, run, c, pending, failed] {
    if (!*alive || run->finished || --*pending > 0) return;
    if (*failed) return finish(run, "interrupted", "verification: " + (*failed)->message);
    // The new history the source lists is what the stream carried: a
    // revision it left out (a dropped merge parent) is a difference.
    for (const auto& [rev, info] : c->source_info) {
      if (!c->to_target.count(rev)) {
        return finish(run, "failed",
                      "verification failed: the source revision " + rev +
                          " is in the new history but the stream did not carry it",
                      json{{"revision", rev}});
      }
    }
    check(c, [this, alive, run, c] {
      if (!*alive || run->finished) return;
      run->verified = std::move(c->rows);
      if (c->mismatch) {
        std::string what = (*c->mismatch)["summary"].get<std::string>();
        return finish(run, "failed", "verification failed: " + what, *c->mismatch);
      }
      if (c->unverified) return finish(run, "interrupted", "verification could not run: " + *c->unverified);
      record(run);
    });
  };
  run->source.vcs->listCommits(run->source.repo, run->source_head, source_exclude, n + 1,
                               [c, both, failed](Result<std::vector<CommitInfo>> r) {
                                 if (!r) *failed = Error{"source: " + r.error().message};
                                 else for (auto& ci : *r) c->source_info[ci.revision] = std::move(ci);
                                 both();
                               });
  run->target.vcs->listCommits(run->target.repo, run->target_head, target_exclude, n + 1,
                               [c, both, failed](Result<std::vector<CommitInfo>> r) {
                                 if (!r) *failed = Error{"target: " + r.error().message};
                                 else for (auto& ci : *r) c->target_info[ci.revision] = std::move(ci);
                                 both();
                               });
}

// Verifies c->pairs, verify_parallel at a time; done runs once all are
// checked (c->rows) or the first mismatch is described (c->mismatch).
void Mirrors::check(std::shared_ptr<Check> c, std::function<void()> done) {
  if (c->mismatch || c->next >= c->pairs.size()) {
    if (c->in_flight == 0) done();
    return;
  }
  while (c->in_flight < options_.verify_parallel && c->next < c->pairs.size() && !c->mismatch) {
    auto [s, t] = c->pairs[c->next++];
    ++c->in_flight;
    checkOne(c, s, t, done);
  }
}

void Mirrors::checkOne(std::shared_ptr<Check> c, const std::string& s, const std::string& t,
                       std::function<void()> done) {
  auto alive = alive_;
  using Digest = std::optional<Result<std::string>>;
  auto digests = std::make_shared<std::pair<Digest, Digest>>();
  auto compared = [this, alive, c, s, t, digests, done] {
    if (!*alive || !digests->first || !digests->second) return;
    auto row = std::make_shared<json>(json{{"source_revision", s}, {"target_revision", t},
                                           {"differences", json::array()}});
    const auto& sd = *digests->first;
    const auto& td = *digests->second;
    // What could not be read is not a difference: the revision stays
    // unverified (a run ends 'interrupted' and is retried).
    auto unverified = [this, c, done](const std::string& why) {
      if (!c->unverified) c->unverified = why;
      ++c->unverified_count;
      --c->in_flight;
      check(c, done);
    };
    if (!sd) return unverified("source tree of " + s + ": " + sd.error().message);
    if (!td) return unverified("target tree of " + t + ": " + td.error().message);
    (*row)["source_tree"] = sd.value();
    (*row)["target_tree"] = td.value();
    auto si = c->source_info.find(s);
    auto ti = c->target_info.find(t);
    if (si == c->source_info.end() || ti == c->target_info.end()) {
      if (c->read_metadata) {
        return unverified(si == c->source_info.end() ? "source revision " + s + " was not listed"
                                                     : "target revision " + t + " was not listed");
      }
    } else {
      std::vector<std::string> expected;
      for (const auto& p : si->second.parents) {
        if (auto m = c->to_target.find(p); m != c->to_target.end()) expected.push_back(m->second);
      }
      for (auto& d : metadataDifferences(si->second, ti->second, expected)) (*row)["differences"].push_back(d);
    }
    if (!(sd && td && sd.value() != td.value())) return conclude(c, row, done);
    // The trees differ: list both and name the paths.
    auto a = std::make_shared<TarIndex>(), b = std::make_shared<TarIndex>();
    auto pending = std::make_shared<int>(2);
    auto err = std::make_shared<std::string>();
    auto listed = [this, alive, c, a, b, pending, err, row, done, digests](Status st) {
      if (!*alive) return;
      if (!st && err->empty()) *err = st.error().message;
      if (--*pending > 0) return;
      if (!err->empty()) {
        (*row)["differences"].push_back({{"field", "tree"}, {"error", "cannot list the trees: " + *err}});
      } else {
        for (const auto& d : diffTrees(*a, *b)) {
          (*row)["differences"].push_back({{"path", d.path}, {"source", d.source}, {"target", d.target}});
        }
        if (diffTrees(*a, *b, 1).empty()) {
          (*row)["differences"].push_back({{"field", "tree"}, {"source", digests->first->value()},
                                           {"target", digests->second->value()}});
        }
      }
      conclude(c, row, done);
    };
    auto list = [err](std::shared_ptr<TarIndex> index, const scheduler::Scheduler::Resolved& side,
                      const std::string& rev, std::function<void(Status)> then) {
      side.vcs->exportTree(
          side.repo, rev,
          [index, err](std::string_view chunk) {
            if (!err->empty()) return;
            if (auto st = index->feed(chunk); !st) *err = st.error().message;
          },
          [index, then](Status st) {
            if (st) {
              if (auto f = index->finish(); !f) st = f.error();
            }
            then(st);
          });
    };
    list(a, c->source, s, listed);
    list(b, c->target, t, listed);
  };
  c->source.vcs->treeDigest(c->source.repo, s, [digests, compared](Result<std::string> r) {
    digests->first = std::move(r);
    compared();
  });
  c->target.vcs->treeDigest(c->target.repo, t, [digests, compared](Result<std::string> r) {
    digests->second = std::move(r);
    compared();
  });
}

void Mirrors::conclude(std::shared_ptr<Check> c, std::shared_ptr<json> row, std::function<void()> done) {
  json& r = *row;
  r["ok"] = r["differences"].empty();
  if (!r["ok"].get<bool>() && !c->mismatch) {
    std::string fields;
    for (const auto& d : r["differences"]) {
      fields += (fields.empty() ? "" : ", ") + d.value("path", d.value("field", std::string("?")));
    }
    r["summary"] = "revision " + r["source_revision"].get<std::string>() + " (target " +
                   r["target_revision"].get<std::string>() + ") differs in " + fields;
    c->mismatch = r;
  }
  c->rows.push_back(std::move(r));
  --c->in_flight;
  if (c->progress) c->progress(c->rows.size());
  check(c, done);
}

// ---------------------------------------------------------------------------
// record, publish, finish

namespace {

// Rows of mirror_verify from the JSON the checks made.
void insertVerified(pqxx::work& tx, int mirror_id, long long run_id, const json& rows) {
  if (rows.empty()) return;
  tx.exec_params(
      "INSERT INTO pefnos.mirror_verify (mirror_id, run_id, source_revision, target_revision, "
      "source_tree, target_tree, ok, differences) "
      "SELECT $1, NULLIF($2, 0), x.source_revision, x.target_revision, x.source_tree, x.target_tree, "
      "x.ok, COALESCE(x.differences, '[]') "
      "FROM jsonb_to_recordset($3::jsonb) AS x(source_revision text, target_revision text, "
      "source_tree text, target_tree text, ok boolean, differences jsonb)",
      mirror_id, run_id, rows.dump(-1, ' ', false, json::error_handler_t::replace));
}

}  // namespace

void Mirrors::record(std::shared_ptr<Run> run) {
  run->verified_ms = uv_now(loop_);
  json marks = json::array();
  for (const auto& [s, t] : run->fresh) marks.push_back({{"s", s}, {"t", t}});
  if (run->fresh.empty()) marks.push_back({{"s", run->source_head}, {"t", run->target_head}});
  auto alive = alive_;
  db_.transact<Done>(
      [run, marks, master = options_.master, lease = options_.lease_seconds](pqxx::work& tx) {
        auto held = tx.exec_params(
            "UPDATE pefnos.mirror_run SET revisions = $2, target_head = $3, "
            "lease_until = now() + make_interval(secs => $5) "
            "WHERE id = $1 AND state = 'running' AND claimed_by = $4",
            run->id, static_cast<int>(run->fresh.size()), run->target_head, master, lease);
        if (held.affected_rows() != 1) throw std::runtime_error("the run lost its claim to another master");
        tx.exec_params(
            "INSERT INTO pefnos.mirror_mark (mirror_id, source_revision, target_revision, run_id) "
            "SELECT $1, x.s, x.t, $2 FROM jsonb_to_recordset($3::jsonb) AS x(s text, t text) "
            "ON CONFLICT DO NOTHING",
            run->cfg.id, run->id, marks.dump(-1, ' ', false, json::error_handler_t::replace));
        insertVerified(tx, run->cfg.id, run->id, run->verified);
        return Done{};
      },
      [this, alive, run](Result<Done> r) {
        if (!*alive || run->finished) return;
        if (!r) return finish(run, "interrupted", "cannot record the run: " + r.error().message);
        run->recorded_ms = uv_now(loop_);
        publish(run);
      });
}

void Mirrors::publish(std::shared_ptr<Run> run) {
  if (run->target_head == run->target_before) return finish(run, "succeeded", "");
  auto alive = alive_;
  run->target.vcs->publish(run->target.repo, run->cfg.target_branch, run->target_head, run->target_before,
                           [this, alive, run](Status s) {
                             if (!*alive || run->finished) return;
                             if (!s) {
                               const std::string& m = s.error().message;
                               bool diverged = m.find("diverged") != std::string::npos;
                               return finish(run, diverged ? "failed" : "interrupted", "publish: " + m);
                             }
                             finish(run, "succeeded", "");
                           });
}

void Mirrors::finish(std::shared_ptr<Run> run, const std::string& state, const std::string& error,
                     json details) {
  if (run->finished) return;
  run->finished = true;
  if (run->exporter) run->exporter->kill();
  if (run->importer) run->importer->kill();
  run->exporter.reset();
  run->importer.reset();
  const int revisions = static_cast<int>(run->fresh.size());
  if (state == "succeeded") {
    auto span = [](uint64_t from, uint64_t to) { return from && to >= from ? (to - from) / 1000.0 : 0.0; };
    const uint64_t now = uv_now(loop_);
    log::info("mirror", run->cfg.name, ": run ", run->id, " succeeded, ", revisions, " revisions in ",
              span(run->started_ms, now), " s (stream ", span(run->started_ms, run->streamed_ms), " s, verify ",
              span(run->streamed_ms, run->verified_ms), " s, record ", span(run->verified_ms, run->recorded_ms),
              " s, publish ", span(run->recorded_ms, now), " s)");
  } else {
    log::warning("mirror", run->cfg.name, ": run ", run->id, " ", state, ": ", error);
  }
  auto alive = alive_;
  auto reply = [this, alive, run, state, error, revisions] {
    if (!*alive) return;
    runs_.erase(run->cfg.id);
    ++runs_done_;
    if (run->done) run->also_done.insert(run->also_done.begin(), std::move(run->done));
    for (auto& d : run->also_done) {
      if (state == "succeeded") {
        d(json{{"run", run->id}, {"state", state}, {"revisions", revisions}});
      } else {
        d(Error{"run " + std::to_string(run->id) + " " + state + ": " + error});
      }
    }
  };
  json event_details{{"mirror", run->cfg.name}, {"run", run->id}};
  if (!details.is_null()) event_details["details"] = details;
  if (!run->id) {
    if (state != "succeeded") {
      event(state == "failed" ? "error" : "warning", "mirror " + run->cfg.name + " " + state + ": " + error,
            event_details);
    }
    return reply();
  }
  json failed_row = json::array();
  if (details.is_object() && details.contains("source_revision")) failed_row.push_back(details);
  db_.transact<Done>(
      [run, state, error, failed_row, event_details](pqxx::work& tx) {
        tx.exec_params(
            "UPDATE pefnos.mirror_run SET state = $2, error = NULLIF($3, ''), finished_at = now() "
            "WHERE id = $1 AND state = 'running'",
            run->id, state, error);
        // An event when something went wrong, once: a mirror retried every
        // 30 s against an unreachable target does not fill the table.
        if (state != "succeeded") {
          tx.exec_params(
              "INSERT INTO pefnos.event (level, source, message, details) "
              "SELECT $1, 'mirror', $2, $3::jsonb WHERE (SELECT ROW(r.state, r.error) FROM pefnos.mirror_run r "
              "WHERE r.mirror_id = $4 AND r.id < $5 ORDER BY r.id DESC LIMIT 1) IS DISTINCT FROM ROW($6::text, $7::text)",
              state == "failed" ? "error" : "warning", "mirror " + run->cfg.name + " " + state + ": " + error,
              event_details.dump(-1, ' ', false, json::error_handler_t::replace), run->cfg.id, run->id, state, error);
        }
        notifyRun(tx, run->cfg.id, run->id, state);
        insertVerified(tx, run->cfg.id, run->id, failed_row);
        return Done{};
      },
      [reply](Result<Done> r) {
        if (!r) log::warning("mirror", "cannot record the end of a run: ", r.error().message);
        reply();
      },
      db::Retry::on_reconnect);
}

void Mirrors::event(const std::string& level, const std::string& message, const json& details) {
  db_.transact<Done>(
      [=](pqxx::work& tx) {
        tx.exec_params("INSERT INTO pefnos.event (level, source, message, details) VALUES ($1, 'mirror', $2, $3::jsonb)",
                       level, message, details.dump(-1, ' ', false, json::error_handler_t::replace));
        return Done{};
      },
      [](Result<Done>) {}, db::Retry::on_reconnect);
}

// ---------------------------------------------------------------------------
// verify --all

namespace {
struct Mapping {
  std::vector<std::pair<std::string, std::string>> marks;  // what this mirror carried
  std::vector<std::pair<std::string, std::string>> known;  // every shared revision (collections)
  int source_repository = 0;
  std::string source_head, target_head;
};
}  // namespace

struct Mirrors::VerifyAll {
  std::shared_ptr<Check> c;
  std::function<void(Result<json>)> end;
  std::string name;
  size_t flushed = 0;
};

void Mirrors::verifyAll(int mirror_id, std::function<void(Result<json>)> done) {
  auto cfg = model_.mirror(mirror_id);
  if (!cfg) return done(Error{"no mirror with id " + std::to_string(mirror_id)});
  if (verifying_.count(mirror_id)) return done(Error{"mirror " + cfg->name + " is being verified already"});
  verifying_.insert(mirror_id);
  auto alive = alive_;
  auto v = std::make_shared<VerifyAll>();
  v->name = cfg->name;
  v->end = [this, alive, mirror_id, done](Result<json> r) {
    if (!*alive) return;
    verifying_.erase(mirror_id);
    done(std::move(r));
  };
  db_.transact<Mapping>(
      [cfg = *cfg](pqxx::work& tx) {
        Mapping m;
        for (const auto& r : tx.exec_params(
                 "SELECT k.source_revision, k.target_revision FROM pefnos.mirror_mark k "
                 "WHERE k.mirror_id = $1 ORDER BY k.run_id, k.source_revision",
                 cfg.id)) {
          m.marks.emplace_back(r[0].as<std::string>(), r[1].as<std::string>());
        }
        m.source_repository = tx.exec_params("SELECT repository_id FROM pefnos.branch WHERE id = $1",
                                             cfg.source_branch_id)[0][0].as<int>();
        m.known = knownPairs(tx, cfg, m.source_repository);
        auto last = tx.exec_params(
            "SELECT source_head, target_head FROM pefnos.mirror_run WHERE mirror_id = $1 "
            "AND target_head IS NOT NULL ORDER BY id DESC LIMIT 1",
            cfg.id);
        if (!last.empty()) {
          m.source_head = last[0][0].c_str();
          m.target_head = last[0][1].c_str();
        }
        return m;
      },
      [this, alive, cfg, v](Result<Mapping> m) {
        if (!*alive) return;
        if (!m) return v->end(m.error());
        auto source = scheduler_.resolve(m->source_repository);
        auto target = scheduler_.resolve(cfg->target_repository_id);
        if (!source) return v->end(Error{"source: " + source.error().message});
        if (!target) return v->end(Error{"target: " + target.error().message});
        auto c = std::make_shared<Check>();
        v->c = c;
        c->mirror_id = cfg->id;
        c->source = *source;
        c->target = *target;
        c->pairs = m->marks;
        for (const auto& [s, t] : m->known) c->to_target[s] = t;
        for (const auto& [s, t] : m->marks) c->to_target[s] = t;
        // Metadata is compared where both sides list it; trees always.
        c->read_metadata = false;
        log::info("mirror", cfg->name, ": verifying ", c->pairs.size(), " revisions");
        std::weak_ptr<VerifyAll> weak = v;
        c->progress = [this, weak](size_t n) {
          auto v = weak.lock();
          if (!v) return;
          flushVerified(*v, false);
          if (n % 500 == 0) log::info("mirror", v->name, ": verified ", n, " of ", v->c->pairs.size());
        };
        if (m->source_head.empty()) return verifyAllNext(v);
        auto pending = std::make_shared<int>(2);
        auto both = [this, v, pending] {
          if (--*pending == 0) verifyAllNext(v);
        };
        // Every revision of each side's history, however it got there (a
        // collection's branch holds revisions other members carried in).
        constexpr size_t kAll = 1u << 22;
        c->source.vcs->listCommits(c->source.repo, m->source_head, {}, kAll,
                                   [c, both](Result<std::vector<CommitInfo>> r) {
                                     if (r) for (auto& ci : *r) c->source_info[ci.revision] = std::move(ci);
                                     both();
                                   });
        c->target.vcs->listCommits(c->target.repo, m->target_head, {}, kAll,
                                   [c, both](Result<std::vector<CommitInfo>> r) {
                                     if (r) for (auto& ci : *r) c->target_info[ci.revision] = std::move(ci);
                                     both();
                                   });
      });
}

// Rows go to the database a hundred at a time: progress a GUI can follow.
void Mirrors::flushVerified(VerifyAll& v, bool all) {
  const auto& rows = v.c->rows;
  if (rows.size() - v.flushed < (all ? 1 : 100)) return;
  json batch(rows.begin() + static_cast<long>(v.flushed), rows.end());
  v.flushed = rows.size();
  db_.transact<Done>(
      [batch, mirror_id = v.c->mirror_id](pqxx::work& tx) {
        insertVerified(tx, mirror_id, 0, batch);
        return Done{};
      },
      [](Result<Done>) {}, db::Retry::on_reconnect);
}

// Every pair, even after a mismatch: --all reports them all.
void Mirrors::verifyAllNext(std::shared_ptr<VerifyAll> v) {
  auto alive = alive_;
  check(v->c, [this, alive, v] {
    if (!*alive) return;
    auto& c = *v->c;
    if (c.next < c.pairs.size()) {
      c.mismatch.reset();
      return verifyAllNext(v);
    }
    flushVerified(*v, true);
    c.progress = nullptr;
    size_t bad = 0;
    json first;
    for (const auto& r : c.rows) {
      if (!r.value("ok", false)) {
        if (!bad) first = r;
        ++bad;
      }
    }
    json out{{"verified", c.rows.size()}, {"failed", bad}, {"unverified", c.unverified_count},
             {"total", c.pairs.size()}};
    if (bad) out["first_failure"] = first;
    if (c.unverified) out["first_unverified"] = *c.unverified;
    v->end(out);
  });
}

}  // namespace pefnos::mirror
