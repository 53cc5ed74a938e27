// The Bazaar VCS plugin (Breezy). A repository URL is a bzr location: a
// branch (one head, "trunk") or a directory holding branches (heads named by
// their paths below it). The proxy is a shared repository without working
// trees; a repository's branches live at <proxy>/<ref_prefix><branch>, so
// forks in one proxy share revisions.
//
// Where the work happens:
//  - listHeads of a local location reads .bzr/branch/last-revision in this
//    file: no process at all for the common poll of unchanged branches.
//  - Everything else Breezy answers, through helper.py beside this library:
//    one long-lived server per plugin object (JSON lines on its pipes) for
//    listings, pulls, commits, digests, forget and publish; a one-shot
//    process per export, fast-export and fast-import (a stream of its own).
//
// Mirroring: fast-export is the helper's own exporter (Breezy's drops
// parents incrementally); fast-import is Breezy's, run by the helper into a
// branch of the proxy kept for imports, <proxy>/mirror/<ref_prefix><branch>,
// on ref refs/heads/master. Known revisions and marks travel on the
// processes' stdin, ahead of the stream: no file is written here.
//
// Safety: names and revisions are validated (bzr_parse.h) before use and
// reach Breezy as argv elements or JSON fields, never through a shell.
// Nothing here blocks the loop beyond the bounded walk of a local location.
#include <dlfcn.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "bzr_parse.h"
#include "pefnos/plugin.h"
#include "pefnos/plugin_support.h"

namespace pefnos::bzr {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kPython = "/usr/bin/python3";  // Debian's, which has breezy
constexpr int kPullTimeout = 3600;     // a first pull of a big upstream is slow
constexpr int kExportTimeout = 3600;
constexpr int kStreamTimeout = 6 * 3600;  // a first mirror of a long history, at the reader's pace
constexpr size_t kMaxMarksOutput = 256u << 20;  // ":MARK REVID" lines of one import
// The ref of import streams: brz fast-import puts the trunk ref on the
// destination branch (and would make sister branches for any other).
constexpr const char* kImportRef = "refs/heads/master";
constexpr int kHeadsTimeout = 120;     // seconds, per request to the helper
constexpr int kLocalTimeout = 600;     // commits, digest, forget: the proxy is local
constexpr int kOverdueGrace = 30;      // the helper kills itself first; this is the backstop
constexpr auto kStartFailureHold = std::chrono::seconds(30);
constexpr size_t kMaxLine = 256u << 20;  // a longer answer means the protocol is broken
// Bounds of the walk of a local directory of branches (the helper has the same).
constexpr int kMaxDepth = 8;
constexpr size_t kMaxEntries = 20000;
constexpr size_t kMaxControlFile = 4096;

// --------------------------------------------------------------------------
// Local locations

std::optional<std::string> readSmallFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string text(kMaxControlFile, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

bool isBranchDirectory(const fs::path& dir) {
  std::error_code ec;
  return fs::is_directory(dir / ".bzr" / "branch", ec);
}

// The head of the branch at dir: its revision id, "" for an empty branch;
// nullopt when only Breezy can tell (a branch reference, an older format).
std::optional<std::string> readBranchHead(const fs::path& dir) {
  fs::path branch = dir / ".bzr" / "branch";
  auto format = readSmallFile(branch / "format");
  if (!format || !hasLastRevisionFile(*format)) return std::nullopt;
  auto text = readSmallFile(branch / "last-revision");
  if (!text) return std::nullopt;
  return parseLastRevision(*text);
}

struct LocalScan {
  enum class Outcome { heads, needs_breezy, error };
  Outcome outcome = Outcome::heads;
  std::vector<Head> heads;
  std::vector<std::string> refused;  // branch names we will not use
  std::string error;
};

// The heads of a local location, read from the branches' control files. The
// walk never enters a branch, never follows a symlink below the location, and
// is bounded in depth and in entries looked at.
LocalScan scanLocal(const std::string& location, const fs::path& root) {
  LocalScan scan;
  auto fail = [&scan](std::string message) {
    scan.outcome = LocalScan::Outcome::error;
    scan.error = std::move(message);
    return scan;
  };
  auto breezy = [&scan] {
    scan.outcome = LocalScan::Outcome::needs_breezy;
    return scan;
  };
  std::error_code ec;
  auto status = fs::status(root, ec);
  if (ec || !fs::exists(status)) return fail(location + " does not exist");
  if (!fs::is_directory(status))
    return fail(location + " is not a directory, so neither a branch nor a directory of branches");
  if (isBranchDirectory(root)) {
    auto head = readBranchHead(root);
    if (!head) return breezy();
    if (!head->empty()) scan.heads.push_back(Head{"trunk", *head});
    return scan;
  }
  bool is_repository = fs::is_directory(root / ".bzr" / "repository", ec);
  bool found = false;
  size_t entries = 0;
  struct Pending {
    fs::path dir;
    std::string name;
    int depth;
  };
  std::deque<Pending> queue{{root, "", 0}};
  while (!queue.empty()) {
    Pending at = std::move(queue.front());
    queue.pop_front();
    std::vector<fs::directory_entry> children;
    for (fs::directory_iterator it(at.dir, fs::directory_options::skip_permission_denied, ec), end;
         !ec && it != end; it.increment(ec)) {
      if (++entries > kMaxEntries) {
        return fail(location + ": more than " + std::to_string(kMaxEntries) +
                    " entries to search for branches; point the URL at a narrower directory");
      }
      children.push_back(*it);
    }
    if (ec && at.depth == 0) return fail("cannot read " + location + ": " + ec.message());
    ec.clear();
    std::sort(children.begin(), children.end());
    for (const auto& child : children) {
      std::string leaf = child.path().filename().string();
      // directory_entry caches the type readdir gave: no stat per entry.
      if (leaf == ".bzr" || child.is_symlink(ec) || !child.is_directory(ec)) continue;
      std::string name = at.name.empty() ? leaf : at.name + "/" + leaf;
      if (!isBranchDirectory(child.path())) {
        if (at.depth + 1 < kMaxDepth) queue.push_back({child.path(), name, at.depth + 1});
        continue;
      }
      found = true;
      auto head = readBranchHead(child.path());
      if (!head) return breezy();
      if (head->empty()) continue;  // an empty branch has no head
      if (isValidBranchName(name))
        scan.heads.push_back(Head{name, *head});
      else
        scan.refused.push_back(name);
    }
  }
  if (!found) {
    if (is_repository) {
      return fail(location +
                  " is a Bazaar repository with no branches; point the URL at a branch or at a "
                  "directory of branches");
    }
    return fail(location + " is not a Bazaar branch and holds no branches");
  }
  return scan;
}

// --------------------------------------------------------------------------
// Helpers

// Where helper.py is installed: beside this library, whatever directory it was loaded from.
std::string helperPath() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&helperPath), &info) == 0 || !info.dli_fname) return "";
  return (fs::path(info.dli_fname).parent_path() / "vcs-bzr-helper.py").string();
}

std::vector<std::string> helperEnvironment() {
  return {
      "BRZ_LOG=/dev/null",             // no brz.log in the daemon's $HOME
      "BRZ_PLUGIN_PATH=-site:-user",   // only Breezy's own code runs in the helper
      "SSH_ASKPASS=/bin/false",        // bzr+ssh never asks (the helper has no terminal either)
      "PYTHONDONTWRITEBYTECODE=1",
      "PYTHONUNBUFFERED=1",
  };
}

using support::failure;

Status checkRepo(const Repo& repo, bool needs_url) {
  std::string name = "repository " + std::to_string(repo.id);
  if (needs_url && repo.url.empty()) return Error{name + " has no URL"};
  if (repo.proxy.empty() || repo.proxy.front() != '/')
    return Error{name + " has no absolute proxy path ('" + repo.proxy + "')"};
  if (!isValidRefPrefix(repo.ref_prefix))
    return Error{name + " has an invalid ref prefix '" + repo.ref_prefix + "' (want refs/…/)"};
  return ok();
}

Status checkRevision(const std::string& revision) {
  if (isValidRevisionId(revision)) return ok();
  return Error{"'" + revision + "' is not a Bazaar revision id"};
}

std::string dumpLine(const json& message) {
  // Invalid UTF-8 (a URL with stray bytes) is replaced rather than thrown.
  return message.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

// What the BzrVcs shares with the callbacks of the processes it started, which
// may fire after it is gone: they hold it weakly and then do nothing.
class State : public std::enable_shared_from_this<State> {
 public:
  explicit State(Host& host) : host_(host), helper_path_(helperPath()), processes_(host) {}

  Host& host() { return host_; }

  // A one-shot `python3 helper.py ARGS…`; done unless the BzrVcs is gone first.
  // With on_out, stdout is streamed to it instead of collected.
  // With stdin_pipe, the process reads what is written to the Running.
  std::shared_ptr<Running> oneShot(std::vector<std::string> args, int timeout,
                                   std::function<void(ProcessResult)> done,
                                   std::function<void(std::string_view)> on_out = nullptr,
                                   bool stdin_pipe = false) {
    ProcessSpec spec;
    spec.argv = {kPython, helper_path_};
    spec.argv.insert(spec.argv.end(), args.begin(), args.end());
    spec.env = helperEnvironment();
    spec.timeout_seconds = timeout;
    spec.stdin_pipe = stdin_pipe;
    return processes_.start(std::move(spec), std::move(done), std::move(on_out));
  }

  // Sends one request to the long-lived helper, starting it if need be.
  // done gets the result or an Error that begins with `what`.
  void request(json message, int timeout, std::string what,
               std::function<void(Result<json>)> done) {
    auto answerLater = [this, &done](Error e) {
      support::later(host_, weak_from_this(), std::move(done), std::move(e));
    };
    if (helper_path_.empty()) return answerLater(Error{what + ": cannot locate the Breezy helper"});
    if (!helper_ && start_failed_at_ && Clock::now() - *start_failed_at_ < kStartFailureHold)
      return answerLater(Error{what + ": " + start_failure_});
    killIfOverdue();
    if (!helper_) startHelper();
    uint64_t id = ++last_request_;
    message["id"] = id;
    message["timeout"] = timeout;
    pending_[id] = PendingRequest{std::move(what), std::move(done),
                                  Clock::now() + std::chrono::seconds(timeout + kOverdueGrace)};
    outbox_ += dumpLine(message);
    pump();
  }

  void killAll() {
    if (helper_) helper_->kill();
    helper_.reset();
    processes_.killAll();
  }

  // Jobs that write to one proxy (pull, forget) run one after the other:
  // Breezy's repository lock would make a concurrent writer fail (a lost
  // poll), and forget must not remove a branch a pull is writing.
  void serialise(const std::string& proxy, support::SerialJobs::Job job) {
    jobs_.serialise(support::proxyKey(proxy), std::move(job));
  }

 private:
  struct PendingRequest {
    std::string what;
    std::function<void(Result<json>)> done;
    Clock::time_point overdue;
  };

  void startHelper() {
    ProcessSpec spec;
    spec.argv = {kPython, helper_path_, "serve"};
    spec.env = helperEnvironment();
    spec.stdin_pipe = true;
    spec.timeout_seconds = 0;  // it lives as long as we do; each request has its own deadline
    uint64_t generation = ++generation_;
    helper_ready_ = false;
    std::weak_ptr<State> weak = weak_from_this();
    helper_ = host_.stream(
        std::move(spec),
        [weak, generation](std::string_view chunk) {
          if (auto self = weak.lock(); self && self->generation_ == generation)
            self->onHelperOutput(chunk);
        },
        [weak, generation](ProcessResult r) {
          if (auto self = weak.lock(); self && self->generation_ == generation)
            self->onHelperExit(std::move(r));
        });
  }

  // Writes whatever is queued in one write, then waits for it (back-pressure).
  void pump() {
    if (writing_ || outbox_.empty() || !helper_) return;
    writing_ = true;
    std::weak_ptr<State> weak = weak_from_this();
    uint64_t generation = generation_;
    helper_->write(std::exchange(outbox_, std::string()), [weak, generation](bool) {
      auto self = weak.lock();
      if (!self || self->generation_ != generation) return;
      self->writing_ = false;  // on failure the exit callback fails what is pending
      self->pump();
    });
  }

  void onHelperOutput(std::string_view chunk) {
    buffer_.append(chunk);
    size_t start = 0;
    for (size_t nl; (nl = buffer_.find('\n', start)) != std::string::npos; start = nl + 1) {
      json message = json::parse(buffer_.begin() + static_cast<std::ptrdiff_t>(start),
                                 buffer_.begin() + static_cast<std::ptrdiff_t>(nl), nullptr, false);
      if (message.is_discarded() || !message.is_object()) {
        host_.log(LogLevel::warning, "vcs-bzr: the Breezy helper printed a line that is not JSON; "
                                     "restarting it");
        buffer_.clear();
        if (helper_) helper_->kill();
        return;
      }
      onHelperMessage(message);
    }
    buffer_.erase(0, start);
    if (buffer_.size() > kMaxLine && helper_) helper_->kill();
  }

  void onHelperMessage(const json& message) {
    if (message.value("ready", false)) {
      helper_ready_ = true;
      start_failed_at_.reset();
      return;
    }
    if (!message.contains("id") || !message["id"].is_number_unsigned()) return;
    auto it = pending_.find(message["id"].get<uint64_t>());
    if (it == pending_.end()) return;  // failed already
    PendingRequest request = std::move(it->second);
    pending_.erase(it);
    if (message.value("ok", false))
      request.done(message.contains("result") ? message["result"] : json());
    else
      request.done(Error{request.what + ": " + message.value("error", std::string("failed"))});
  }

  // Its pending requests fail; the next request starts a new helper, unless
  // this one died before it was ready (then requests fail for a while rather
  // than starting a helper that cannot run, over and over).
  void onHelperExit(ProcessResult r) {
    helper_.reset();
    ++generation_;  // late writes' callbacks of the dead helper are ignored
    writing_ = false;
    outbox_.clear();
    buffer_.clear();
    Error why = failure("the Breezy helper (" + helper_path_ + ")", std::move(r));
    if (!helper_ready_) {
      start_failed_at_ = Clock::now();
      start_failure_ = why.message + " (at start)";
    }
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [id, request] : pending) request.done(Error{request.what + ": " + why.message});
  }

  // The helper ends itself when a request overruns; if it could not, we do.
  void killIfOverdue() {
    auto now = Clock::now();
    for (const auto& [id, request] : pending_) {
      if (request.overdue < now && helper_) {
        host_.log(LogLevel::warning, "vcs-bzr: " + request.what +
                                         " is long overdue; killing the Breezy helper");
        helper_->kill();
        return;
      }
    }
  }

  Host& host_;
  std::string helper_path_;
  support::Processes processes_;  // one-shot processes
  support::SerialJobs jobs_;      // by proxy
  // The long-lived helper.
  std::shared_ptr<Running> helper_;
  uint64_t generation_ = 0;  // which helper callbacks belong to
  bool helper_ready_ = false;
  std::optional<Clock::time_point> start_failed_at_;
  std::string start_failure_;
  std::string outbox_, buffer_;
  bool writing_ = false;
  uint64_t last_request_ = 0;
  std::map<uint64_t, PendingRequest> pending_;
};

// --------------------------------------------------------------------------
// Answers of the helper

Result<std::vector<Head>> headsFrom(const json& result, std::vector<std::string>& refused) {
  if (!result.is_array()) return Error{"the Breezy helper answered heads with no list"};
  std::vector<Head> heads;
  for (const auto& h : result) {
    std::string branch = h.value("branch", std::string());
    std::string revision = h.value("revision", std::string());
    if (!isValidBranchName(branch) || !isValidRevisionId(revision)) {
      refused.push_back(branch);
      continue;
    }
    heads.push_back(Head{std::move(branch), std::move(revision)});
  }
  return heads;
}

Result<std::vector<CommitInfo>> commitsFrom(const json& result) {
  if (!result.is_array()) return Error{"the Breezy helper answered commits with no list"};
  std::vector<CommitInfo> commits;
  commits.reserve(result.size());
  try {
    for (const auto& c : result) {
      CommitInfo info;
      info.revision = c.at("revision").get<std::string>();
      info.parents = c.at("parents").get<std::vector<std::string>>();
      info.author = c.at("author").get<std::string>();
      info.author_date = c.at("author_date").get<std::string>();
      info.committer = c.at("committer").get<std::string>();
      info.committer_date = c.at("committer_date").get<std::string>();
      info.message = c.at("message").get<std::string>();
      info.files = c.at("files").get<std::vector<std::string>>();
      commits.push_back(std::move(info));
    }
  } catch (const json::exception& e) {
    return Error{std::string("the Breezy helper answered commits oddly: ") + e.what()};
  }
  return commits;
}

void logRefused(Host& host, const std::string& url, const std::vector<std::string>& refused) {
  if (refused.empty()) return;
  std::string names;
  for (const auto& n : refused) names += (names.empty() ? "'" : ", '") + n + "'";
  host.log(LogLevel::warning, url + ": ignoring branches whose names pefnos refuses: " + names);
}

// --------------------------------------------------------------------------
// Mirroring

Status checkExportSpec(const ExportSpec& spec) {
  if (auto s = checkRevision(spec.revision); !s) return s;
  if (!isValidStreamRef(spec.ref))
    return Error{"'" + spec.ref + "' is not a ref a fast-import stream can write to"};
  if (spec.first_mark == 0) return Error{"the marks of a stream start at 1, not 0"};
  for (const auto& [revision, mark] : spec.known) {
    if (auto s = checkRevision(revision); !s)
      return Error{"a known revision: " + s.error().message};
    if (mark == 0 || mark >= spec.first_mark)
      return Error{
          "known revision " + revision + " has mark :" + std::to_string(mark) +
          ", which is not below the stream's first mark :" + std::to_string(spec.first_mark)};
  }
  return ok();
}

Status checkImportSpec(const ImportSpec& spec) {
  if (!isValidBranchName(spec.branch))
    return Error{"refusing to import into branch '" + spec.branch + "': not a valid branch name"};
  for (const auto& [mark, revision] : spec.known) {
    if (auto s = checkRevision(revision); !s)
      return Error{"a known revision: " + s.error().message};
    if (mark == 0) return Error{"known revision " + revision + " has mark :0 (marks start at 1)"};
  }
  return ok();
}

// What an import's process callbacks share with the Import the host holds.
struct ImportRun {
  // waiting: for its turn on the proxy (one writer at a time, as pulls).
  enum class Phase { waiting, running, ended };
  Phase phase = Phase::waiting;
  std::string what;   // "importing into <mirror branch>", for errors
  std::string known;  // "MARK REVID" lines, written ahead of the stream
  std::shared_ptr<Running> process;
  std::deque<std::pair<std::string, std::function<void(bool)>>> early;  // written while waiting
  bool finishing = false, abandoned = false;
  std::string marks;  // the helper's stdout
  bool marks_overflow = false;
  std::function<void(Result<Imported>)> done;
};

void endImport(ImportRun& run, ProcessResult r) {
  run.phase = ImportRun::Phase::ended;
  run.process.reset();
  auto done = std::exchange(run.done, nullptr);
  if (!done) return;
  if (run.abandoned)
    return done(Error{run.what + ": abandoned; the mirror branch was left as it was"});
  if (!r.ok()) return done(failure(run.what, std::move(r)));
  if (run.marks_overflow) return done(Error{run.what + ": the helper printed marks without end"});
  auto marks = parseMarks(run.marks);
  if (!marks)
    return done(
        Error{run.what + ": the helper printed marks that do not read as ':MARK REVID' lines"});
  done(Imported{std::move(*marks)});
}

class BzrImport final : public Import {
 public:
  BzrImport(std::weak_ptr<State> state, std::shared_ptr<ImportRun> run)
      : state_(std::move(state)), run_(std::move(run)) {}
  // Dropped before the end of its stream: the import is abandoned (its
  // process would otherwise wait for the rest until it timed out).
  ~BzrImport() override {
    if (!run_->finishing) kill();
  }
  BzrImport(const BzrImport&) = delete;  // one owner ends the stream
  BzrImport& operator=(const BzrImport&) = delete;

  const std::string& ref() const override { return ref_; }

  void write(std::string data, std::function<void(bool)> written) override {
    auto state = state_.lock();
    if (!state) return;  // the Vcs is gone: no callback runs any more
    bool open = !run_->abandoned && !run_->finishing;
    if (open && run_->phase == ImportRun::Phase::running)
      return run_->process->write(std::move(data), std::move(written));
    if (open && run_->phase == ImportRun::Phase::waiting) {
      run_->early.emplace_back(std::move(data), std::move(written));
      return;
    }
    if (written) support::later(state->host(), state_, std::move(written), false);
  }

  void finish() override {
    if (run_->finishing || run_->abandoned) return;
    run_->finishing = true;
    if (run_->phase == ImportRun::Phase::running) run_->process->closeInput();
  }

  void kill() override {
    auto state = state_.lock();
    if (!state || run_->abandoned || run_->phase == ImportRun::Phase::ended) return;
    run_->abandoned = true;
    if (run_->phase == ImportRun::Phase::running) return run_->process->kill();  // done follows
    // Still waiting for its turn: it never starts.
    run_->phase = ImportRun::Phase::ended;
    for (auto& [data, written] : std::exchange(run_->early, {}))
      if (written) support::later(state->host(), state_, std::move(written), false);
    if (auto done = std::exchange(run_->done, nullptr))
      support::later(state->host(), state_, std::move(done),
                     Result<Imported>(Error{run_->what + ": abandoned before it started"}));
  }

 private:
  std::weak_ptr<State> state_;
  std::shared_ptr<ImportRun> run_;
  std::string ref_ = kImportRef;
};

std::string knownLines(const std::vector<std::pair<std::string, uint64_t>>& known) {
  std::string lines;
  for (const auto& [revision, mark] : known) lines += std::to_string(mark) + " " + revision + "\n";
  return lines;
}

std::string knownLines(const std::vector<std::pair<uint64_t, std::string>>& known) {
  std::string lines;
  for (const auto& [mark, revision] : known) lines += std::to_string(mark) + " " + revision + "\n";
  return lines;
}

class BzrVcs final : public Vcs {
 public:
  explicit BzrVcs(Host& host) : host_(host), state_(std::make_shared<State>(host)) {}
  ~BzrVcs() override { state_->killAll(); }  // their callbacks find the State gone
  BzrVcs(const BzrVcs&) = delete;            // owns running processes
  BzrVcs& operator=(const BzrVcs&) = delete;

  // Errors found before any process ran: from the loop, unless the BzrVcs is gone.
  template <class Done, class Value>
  void later(Done done, Value value) {
    support::later(host_, std::weak_ptr<State>(state_), std::move(done), std::move(value));
  }

  void listHeads(const Repo& repo, std::function<void(Result<std::vector<Head>>)> done) override {
    if (repo.url.empty())
      return later(std::move(done), Error{"repository " + std::to_string(repo.id) + " has no URL"});
    if (auto path = localPath(repo.url)) {
      LocalScan scan = scanLocal(repo.url, *path);
      if (scan.outcome == LocalScan::Outcome::error) return later(std::move(done), Error{scan.error});
      if (scan.outcome == LocalScan::Outcome::heads) {
        logRefused(host_, repo.url, scan.refused);
        return later(std::move(done), std::move(scan.heads));
      }
      // A branch reference or an older format somewhere: Breezy reads the location.
    }
    std::weak_ptr<State> weak = state_;
    state_->request({{"op", "heads"}, {"url", repo.url}}, kHeadsTimeout,
                    "listing the branches of " + repo.url,
                    [weak, url = repo.url, done = std::move(done)](Result<json> r) {
                      if (!r) return done(r.error());
                      std::vector<std::string> refused;
                      auto heads = headsFrom(*r, refused);
                      if (auto self = weak.lock()) logRefused(self->host(), url, refused);
                      done(std::move(heads));
                    });
  }

  void updateProxy(const Repo& repo, const std::vector<std::string>& branches,
                   std::function<void(Status)> done) override {
    if (auto s = checkRepo(repo, true); !s) return later(std::move(done), s.error());
    for (const auto& b : branches) {
      if (!isValidBranchName(b))
        return later(std::move(done),
                     Error{"refusing to pull branch '" + b + "' of " + repo.url + ": not a valid branch name"});
    }
    if (branches.empty()) return later(std::move(done), ok());
    // In the long-lived helper: a pull then costs Breezy's work, not its
    // start-up (0.4 s of CPU per change otherwise). Writes to one proxy are
    // serialised here; the helper's other threads go on serving reads.
    json message = {{"op", "pull"}, {"proxy", repo.proxy}, {"prefix", repo.ref_prefix},
                    {"url", repo.url}, {"branches", branches}};
    std::string what = "pulling " + std::to_string(branches.size()) + " branch(es) of " + repo.url +
                       " into " + repo.proxy;
    std::weak_ptr<State> weak = state_;
    state_->serialise(repo.proxy, [weak, message = std::move(message), what = std::move(what),
                                   done = std::move(done)](std::function<void()> release) mutable {
      auto self = weak.lock();
      if (!self) return;
      self->request(std::move(message), kPullTimeout, what,
                    [release, done = std::move(done)](Result<json> r) {
                      release();
                      done(r ? ok() : Status(r.error()));
                    });
    });
  }

  void listCommits(const Repo& repo, const std::string& to, const std::vector<std::string>& exclude,
                   size_t limit,
                   std::function<void(Result<std::vector<CommitInfo>>)> done) override {
    if (auto s = checkRepo(repo, false); !s) return later(std::move(done), s.error());
    if (auto s = checkRevision(to); !s) return later(std::move(done), s.error());
    for (const auto& x : exclude)
      if (auto s = checkRevision(x); !s) return later(std::move(done), s.error());
    if (limit == 0) return later(std::move(done), std::vector<CommitInfo>{});
    json message = {{"op", "commits"}, {"proxy", repo.proxy}, {"to", to},
                    {"exclude", exclude}, {"limit", limit}};
    state_->request(std::move(message), kLocalTimeout, "listing the commits of " + to,
                    [done = std::move(done)](Result<json> r) {
                      if (!r) return done(r.error());
                      done(commitsFrom(*r));
                    });
  }

  std::shared_ptr<Running> exportTree(const Repo& repo, const std::string& revision,
                                      std::function<void(std::string_view)> on_chunk,
                                      std::function<void(Status)> done) override {
    Status valid = checkRepo(repo, false);
    if (valid) valid = checkRevision(revision);
    if (!valid) {
      later(std::move(done), valid.error());
      return nullptr;
    }
    return state_->oneShot(
        {"export", repo.proxy, revision}, kExportTimeout,
        [revision, done = std::move(done)](ProcessResult r) {
          done(r.ok() ? ok() : Status(failure("exporting " + revision, std::move(r))));
        },
        std::move(on_chunk));
  }

  void treeDigest(const Repo& repo, const std::string& revision,
                  std::function<void(Result<std::string>)> done) override {
    if (auto s = checkRepo(repo, false); !s) return later(std::move(done), s.error());
    if (auto s = checkRevision(revision); !s) return later(std::move(done), s.error());
    state_->request({{"op", "digest"}, {"proxy", repo.proxy}, {"revision", revision}},
                    kLocalTimeout, "the tree digest of " + revision,
                    [revision, done = std::move(done)](Result<json> r) {
                      if (!r) return done(r.error());
                      if (!r->is_string() || r->get<std::string>().size() != 40)
                        return done(Error{"the Breezy helper gave no tree id for " + revision});
                      done(r->get<std::string>());
                    });
  }

  std::shared_ptr<Running> fastExport(const Repo& repo, const ExportSpec& spec,
                                      std::function<void(std::string_view)> on_chunk,
                                      std::function<void(Status)> done) override {
    Status valid = checkRepo(repo, false);
    if (valid) valid = checkExportSpec(spec);
    if (!valid) {
      later(std::move(done), valid.error());
      return nullptr;
    }
    std::string what = "the fast-export of " + spec.revision + " from " + repo.proxy;
    auto running = state_->oneShot(
        {"fast-export", repo.proxy, spec.revision, spec.ref, std::to_string(spec.first_mark)},
        kStreamTimeout,
        [what, done = std::move(done)](ProcessResult r) {
          done(r.ok() ? ok() : Status(failure(what, std::move(r))));
        },
        std::move(on_chunk), /*stdin_pipe=*/true);
    // The helper reads them all before it writes a byte of the stream.
    running->write(knownLines(spec.known));
    running->closeInput();
    return running;
  }

  std::shared_ptr<Import> fastImport(const Repo& repo, const ImportSpec& spec,
                                     std::function<void(Result<Imported>)> done) override {
    Status valid = checkRepo(repo, false);
    if (valid) valid = checkImportSpec(spec);
    if (!valid) {
      later(std::move(done), Result<Imported>(valid.error()));
      return nullptr;
    }
    auto run = std::make_shared<ImportRun>();
    run->what = "importing into " + repo.proxy + "/mirror/" + repo.ref_prefix + spec.branch;
    run->known = knownLines(spec.known);
    run->done = std::move(done);
    std::vector<std::string> args{"fast-import", repo.proxy, repo.ref_prefix, spec.branch,
                                  std::to_string(spec.known.size())};
    std::weak_ptr<State> weak = state_;
    // A writer of the proxy, like a pull: Breezy's repository lock would fail one of them.
    state_->serialise(
        repo.proxy, [weak, run, args = std::move(args)](std::function<void()> release) mutable {
          auto self = weak.lock();
          if (!self) return;
          if (run->phase == ImportRun::Phase::ended) return release();  // abandoned while waiting
          std::weak_ptr<ImportRun> reader = run;  // the process's output must not keep the run
          run->process = self->oneShot(
              std::move(args), kStreamTimeout,
              [run, release](ProcessResult r) {
                release();
                endImport(*run, std::move(r));
              },
              [reader](std::string_view chunk) {
                auto r = reader.lock();
                if (!r || r->marks_overflow) return;
                if (r->marks.size() + chunk.size() > kMaxMarksOutput) {
                  r->marks_overflow = true;
                  r->marks.clear();
                  return;
                }
                r->marks.append(chunk);
              },
              /*stdin_pipe=*/true);
          run->phase = ImportRun::Phase::running;
          run->process->write(std::exchange(run->known, std::string()));
          for (auto& [data, written] : std::exchange(run->early, {}))
            run->process->write(std::move(data), std::move(written));
          if (run->finishing) run->process->closeInput();
        });
    return std::make_shared<BzrImport>(weak, run);
  }

  void publish(const Repo& repo, const std::string& branch, const std::string& revision,
               const std::string& expected, std::function<void(Status)> done) override {
    if (auto s = checkRepo(repo, true); !s) return later(std::move(done), s.error());
    if (!isValidBranchName(branch))
      return later(std::move(done), Error{"refusing to publish branch '" + branch + "' of " +
                                          repo.url + ": not a valid branch name"});
    if (auto s = checkRevision(revision); !s) return later(std::move(done), s.error());
    if (!expected.empty())
      if (auto s = checkRevision(expected); !s) return later(std::move(done), s.error());
    // In the long-lived helper, on the pool pulls use: it reads the proxy and
    // writes the upstream, where the branch's lock makes check-and-set one step.
    json message = {{"op", "publish"},  {"proxy", repo.proxy},  {"url", repo.url},
                    {"branch", branch}, {"revision", revision}, {"expected", expected}};
    state_->request(
        std::move(message), kPullTimeout,
        "publishing " + revision + " as branch '" + branch + "' of " + repo.url,
        [done = std::move(done)](Result<json> r) { done(r ? ok() : Status(r.error())); });
  }

  void forget(const Repo& repo, std::function<void(Status)> done) override {
    if (auto s = checkRepo(repo, false); !s) return later(std::move(done), s.error());
    std::weak_ptr<State> weak = state_;
    state_->serialise(repo.proxy, [weak, repo, done = std::move(done)](
                                      std::function<void()> release) mutable {
      auto self = weak.lock();
      if (!self) return;
      std::error_code ec;
      fs::path branches = fs::path(repo.proxy) / repo.ref_prefix;
      fs::path mirrors = fs::path(repo.proxy) / "mirror" / repo.ref_prefix;
      if (!fs::exists(branches, ec) && !fs::exists(mirrors, ec)) {  // nothing to forget
        release();
        return support::later(self->host(), weak, std::move(done), ok());
      }
      self->request({{"op", "forget"}, {"proxy", repo.proxy}, {"prefix", repo.ref_prefix}},
                    kLocalTimeout, "forgetting " + repo.ref_prefix + " in " + repo.proxy,
                    [release, done = std::move(done)](Result<json> r) {
                      release();
                      done(r ? ok() : Status(r.error()));
                    });
    });
  }

 private:
  Host& host_;
  std::shared_ptr<State> state_;
};

std::unique_ptr<Vcs> makeBzrVcs(Host& host) { return std::make_unique<BzrVcs>(host); }

}  // namespace

const PluginDescriptor& describe() {
  static const PluginDescriptor d{.abi_version = kPluginAbiVersion,
                                  .kind = PluginKind::vcs,
                                  .name = "bzr",
                                  .version = "1.0",
                                  .description = "Bazaar, through Breezy",
                                  .make_vcs = &makeBzrVcs,
                                  .make_step = nullptr};
  return d;
}

}  // namespace pefnos::bzr

PEFNOS_PLUGIN(pefnos::bzr::describe)
