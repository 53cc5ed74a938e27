// The git VCS plugin: every operation is one git process (two when a proxy is
// first used) that the host runs; this file only builds argv and reads output.
// Mirroring takes a few: fastExport (rev-list, update-ref, fast-export,
// update-ref), fastImport (rev-parse, update-ref, fast-import), publish
// (push); the streams themselves pass through git_stream.h's filters.
//
// Safety: names and revisions reach git as argv elements after validation
// (git_parse.h); URLs follow --end-of-options; git never prompts. Nothing
// here blocks the loop beyond a stat and a one-line write when a proxy is made.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <unordered_map>

#include "git_parse.h"
#include "git_stream.h"
#include "pefnos/plugin.h"
#include "pefnos/plugin_support.h"

namespace pefnos::git {
namespace {

constexpr int kNetworkTimeout = 3600;  // a first fetch of a big upstream is slow
constexpr int kLocalTimeout = 300;
// A mirror's fast-export and fast-import run at the pace of the other side
// (the host pauses one while the other is behind): a bound, not an estimate.
constexpr int kStreamTimeout = 24 * 3600;

std::vector<std::string> gitEnvironment() {
  std::vector<std::string> env = {
      "GIT_TERMINAL_PROMPT=0",   // a password prompt would hang the poll forever
      "GIT_ASKPASS=/bin/false",  // and so would a graphical one
      "SSH_ASKPASS=/bin/false",
      "LC_ALL=C",  // messages in one language, quoted to the user as they are
  };
  // BatchMode: ssh fails instead of asking for a passphrase or a new host key.
  if (!std::getenv("GIT_SSH_COMMAND") && !std::getenv("GIT_SSH")) {
    env.emplace_back("GIT_SSH_COMMAND=ssh -o BatchMode=yes");
  }
  return env;
}

using support::failure;

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

using support::proxyKey;

// ProcessSpec's members have no initialisers, so designated initialisers warn.
ProcessSpec spec(std::vector<std::string> argv, int timeout_seconds, std::string cwd = "") {
  ProcessSpec s;
  s.argv = std::move(argv);
  s.cwd = std::move(cwd);
  s.timeout_seconds = timeout_seconds;
  return s;
}

std::vector<std::string> inProxy(const Repo& repo, std::initializer_list<std::string> args) {
  std::vector<std::string> argv{"git", "--git-dir=" + repo.proxy};
  argv.insert(argv.end(), args);
  return argv;
}

Status checkRepo(const Repo& repo, bool needs_url) {
  if (needs_url && repo.url.empty())
    return Error{"repository " + std::to_string(repo.id) + " has no URL"};
  if (repo.proxy.empty())
    return Error{"repository " + std::to_string(repo.id) + " has no proxy path"};
  if (!isValidRefPrefix(repo.ref_prefix)) {
    return Error{"repository " + std::to_string(repo.id) + " has an invalid ref prefix '" +
                 repo.ref_prefix + "' (want refs/…/)"};
  }
  return ok();
}

Status checkRevision(const std::string& revision) {
  if (isObjectId(revision)) return ok();
  return Error{"'" + revision + "' is not a full git object id (40 or 64 lowercase hex digits)"};
}

// The plugin's own refs inside a repository's namespace, beside the upstream
// branches it keeps at ref_prefix + BRANCH. No branch name starts with '-'
// (isValidBranchName), so these never meet a branch of the upstream, and
// forget() drops them with the rest of the namespace.
//   -mirror/BRANCH  where fastImport builds the mirrored BRANCH (publish pushes from it)
//   -export/N       a revision fastExport is exporting, for the time of the export
std::string mirrorRef(const Repo& repo, const std::string& branch) {
  return repo.ref_prefix + "-mirror/" + branch;
}

// A process's stdin fed piece by piece, each once the last is in the pipe,
// then EOF. next() gives the next piece, "" at the end.
void feedInput(const std::shared_ptr<Running>& process, std::function<std::string()> next) {
  std::string piece = next();
  if (piece.empty()) return process->closeInput();
  std::weak_ptr<Running> weak = process;
  process->write(std::move(piece), [weak, next = std::move(next)](bool written) mutable {
    auto p = weak.lock();
    if (p && written) feedInput(p, std::move(next));  // else the process is gone: its done says why
  });
}

// Lines made from a list, in pieces of about 64 KiB, for feedInput.
template <class List, class Line>
std::function<std::string()> linesOf(std::shared_ptr<const List> list, Line line) {
  return [list, line, at = size_t{0}]() mutable {
    std::string piece;
    while (at < list->size() && piece.size() < (64u << 10)) piece += line((*list)[at++]);
    return piece;
  };
}

// The lines of a process's output as it streams: whole lines go to each.
class LineSplitter {
 public:
  template <class Each>
  void feed(std::string_view chunk, Each&& each) {
    while (!chunk.empty()) {
      size_t nl = chunk.find('\n');
      if (nl == std::string_view::npos) return partial_.append(chunk), void();
      partial_.append(chunk.substr(0, nl));
      each(std::string_view(partial_));
      partial_.clear();
      chunk.remove_prefix(nl + 1);
    }
  }

 private:
  std::string partial_;
};

// What the GitVcs shares with the callbacks of the processes it started, which
// may fire after it is gone: they hold it weakly and then do nothing.
class State {
 public:
  explicit State(Host& host) : host_(host), processes_(host), env_(gitEnvironment()) {}

  Host& host() { return host_; }

  // Runs git; done is called unless the GitVcs is destroyed first. With
  // on_out, stdout is streamed to it instead of collected.
  std::shared_ptr<Running> git(ProcessSpec spec, std::function<void(ProcessResult)> done,
                               std::function<void(std::string_view)> on_out = nullptr) {
    spec.env.insert(spec.env.end(), env_.begin(), env_.end());
    return processes_.start(std::move(spec), std::move(done), std::move(on_out));
  }

  void killAll() { processes_.killAll(); }

  // Jobs that write to one proxy (fetch, forget) run one after the other. git
  // would not corrupt the proxy, but concurrent writers fail on its lock files
  // (packed-refs.lock), and a failed fetch is a lost poll. A job calls release
  // when it is finished.
  void serialise(const std::string& proxy, support::SerialJobs::Job job) {
    jobs_.serialise(proxyKey(proxy), std::move(job));
  }

  // Whether these refused names are news for this URL: each list is warned about once.
  bool newlyRefused(const std::string& url, const std::string& names) {
    if (names.empty()) {
      refused_.erase(url);
      return false;
    }
    auto [it, added] = refused_.try_emplace(url, names);
    if (added) return true;
    if (it->second == names) return false;
    it->second = names;
    return true;
  }

  bool proxyReady(const std::string& proxy) const { return ready_.count(proxyKey(proxy)) > 0; }
  void setProxyReady(const std::string& proxy, bool ready) {
    if (ready)
      ready_.insert(proxyKey(proxy));
    else
      ready_.erase(proxyKey(proxy));
  }

 private:
  Host& host_;
  support::Processes processes_;
  support::SerialJobs jobs_;  // by proxy
  std::map<std::string, std::string> refused_;  // url -> the branch names git refused there, as last warned
  std::vector<std::string> env_;
  std::set<std::string> ready_;  // proxies made or seen by this object
};

// A run of several processes one after the other (fastExport): the caller's
// handle stays valid across them; pause and resume reach the one whose output
// the caller reads, kill whichever runs (and stops the ones not started).
class Chain : public Running {
 public:
  // Held weakly: the host keeps a process while it runs, and the process's
  // callbacks hold whoever holds this Chain.
  void attach(const std::shared_ptr<Running>& process, bool streaming) {
    current_ = process;
    streaming_ = streaming;
    if (!process) return;
    if (killed_)
      process->kill();
    else if (paused_ && streaming_)
      process->pause();
  }
  bool killed() const { return killed_; }

  void pause() override {
    paused_ = true;
    if (auto p = current_.lock(); p && streaming_) p->pause();
  }
  void resume() override {
    paused_ = false;
    if (auto p = current_.lock(); p && streaming_) p->resume();
  }
  void kill() override {
    killed_ = true;
    if (auto p = current_.lock()) p->kill();
  }
  void write(std::string, std::function<void(bool)> written) override {
    if (written) written(false);  // the caller feeds nothing: the plugin writes the inputs
  }
  void closeInput() override {}

 private:
  std::weak_ptr<Running> current_;
  bool streaming_ = false, paused_ = false, killed_ = false;
};

// One fastExport: which commits are new (rev-list), a ref naming the
// revision (fast-export names commits after the ref it exports), the export,
// and the ref's removal.
//
// fast-export skips the commits its imported marks name, but walks on into
// their parents: the known revisions must be exclusions too. They go to
// rev-list on stdin (there may be many), which answers with the boundary
// (the known parents of new commits); fast-export then gets only those, as
// exclusions and marks. Its new marks follow the largest mark it imported:
// a tree (never exported) carries first_mark - 1 when no boundary mark does.
class Export : public std::enable_shared_from_this<Export> {
 public:
  Export(std::weak_ptr<State> state, Repo repo, ExportSpec spec,
         std::function<void(std::string_view)> on_chunk, std::function<void(Status)> done)
      : state_(std::move(state)),
        repo_(std::move(repo)),
        spec_(std::move(spec)),
        on_chunk_(std::move(on_chunk)),
        done_(std::move(done)) {
    for (const auto& [revision, mark] : spec_.known) known_.emplace(revision, mark);
  }

  ~Export() { removeMarks(); }
  Export(const Export&) = delete;  // owns a marks file
  Export& operator=(const Export&) = delete;

  std::shared_ptr<Chain> chain() const { return chain_; }

  void start() {
    auto state = state_.lock();
    if (!state) return;
    // --ignore-missing applies to what follows it: the revision must exist,
    // a known revision the proxy lost (gc after a rewrite) cannot be an
    // ancestor of it and is dropped.
    auto argv = inProxy(repo_, {"rev-list", "--boundary", "--no-commit-header", "--format=%m %H %T",
                                spec_.revision + "^{commit}", "--ignore-missing", "--stdin", "--"});
    ProcessSpec p = spec(std::move(argv), kLocalTimeout);
    p.stdin_pipe = true;
    auto self = shared_from_this();
    auto lines = std::make_shared<LineSplitter>();
    auto process = state->git(
        std::move(p), [self](ProcessResult r) { self->listed(std::move(r)); },
        [self, lines](std::string_view chunk) {
          lines->feed(chunk, [&](std::string_view l) { self->revListLine(l); });
        });
    chain_->attach(process, false);
    // Aliasing self: the list stays where it is, alive while this Export is.
    std::shared_ptr<const std::vector<std::pair<std::string, uint64_t>>> known(self, &spec_.known);
    feedInput(process, linesOf(known, [](const auto& k) { return "^" + k.first + "\n"; }));
  }

 private:
  void revListLine(std::string_view line) {
    if (!listing_error_.empty()) return;
    auto entry = parseRevListLine(line);
    if (!entry) return void(listing_error_ = entry.error().message);
    if (entry->boundary) {
      boundary_.push_back(entry->commit);
    } else {
      ++new_commits_;
      if (tree_.empty()) tree_ = entry->tree;
    }
  }

  void listed(ProcessResult r) {
    if (!r.ok()) return finish(failure("git rev-list " + spec_.revision, std::move(r)));
    if (!listing_error_.empty()) return finish(Error{listing_error_});
    if (new_commits_ == 0)
      return finish(Error{spec_.revision + " is already in the target's history but has no mark "
                                           "there: the known marks are incomplete"});
    // The marks fast-export starts from: the boundary's, and first_mark - 1.
    uint64_t highest = 0;
    for (const auto& b : boundary_) {
      auto k = known_.find(b);
      if (k == known_.end())
        return finish(Error{"the known marks are incomplete: " + b + ", a parent of " +
                            spec_.revision + "'s new history, is in the target without a mark"});
      marks_ += ":" + std::to_string(k->second) + " " + b + "\n";
      highest = std::max(highest, k->second);
    }
    if (spec_.first_mark - 1 > highest)
      marks_ += ":" + std::to_string(spec_.first_mark - 1) + " " + tree_ + "\n";
    if (chain_->killed()) return finish(Error{"the export of " + spec_.revision + " was killed"});
    auto state = state_.lock();
    if (!state) return;
    // Random, not pid and counter: a master killed mid-export leaves its ref
    // (forget() drops it), and its next life often has the same pid.
    static std::mt19937_64 random{std::random_device{}()};
    char name[17];
    std::snprintf(name, sizeof name, "%016llx", static_cast<unsigned long long>(random()));
    temp_ref_ = repo_.ref_prefix + "-export/" + name;
    auto self = shared_from_this();
    // "": the ref must not exist yet.
    state->git(spec(inProxy(repo_, {"update-ref", temp_ref_, spec_.revision, ""}), kLocalTimeout),
               [self](ProcessResult r) {
                 if (!r.ok()) {
                   std::string ref = std::exchange(self->temp_ref_, "");  // not made
                   return self->finish(failure("git update-ref " + ref, std::move(r)));
                 }
                 self->exportCommits();
               });
  }

  void exportCommits() {
    if (chain_->killed()) return finish(Error{"the export of " + spec_.revision + " was killed"});
    auto state = state_.lock();
    if (!state) return;
    // --reference-excluded-parents: a parent that is neither new nor marked
    // would otherwise vanish silently (a wrong root); this way the stream
    // names it by id and the host refuses it.
    std::vector<std::string> argv = inProxy(
        repo_, {"fast-export", "--show-original-ids", "--reencode=yes", "--signed-tags=strip",
                "--tag-of-filtered-object=drop", "--reference-excluded-parents",
                "--refspec=" + temp_ref_ + ":" + spec_.ref});
    // A file: the host's pipes are sockets, which /dev/stdin cannot open. It
    // holds the boundary's marks only: a few lines.
    if (!marks_.empty()) {
      auto file = writeMarks();
      if (!file) return finish(file.error());
      argv.push_back("--import-marks=" + *file);
    }
    argv.push_back(temp_ref_);
    for (const auto& b : boundary_) argv.push_back("^" + b);
    argv.push_back("--");
    auto self = shared_from_this();
    auto process = state->git(
        spec(std::move(argv), kStreamTimeout),
        [self](ProcessResult r) { self->exported(std::move(r)); },
        [self](std::string_view chunk) { self->chunk(chunk); });
    chain_->attach(process, true);
  }

  Result<std::string> writeMarks() {
    std::string path =
        (std::filesystem::temp_directory_path() / "pefnos-git-marks-XXXXXX").string();
    int fd = mkstemp(path.data());
    if (fd < 0)
      return Error{"cannot make a marks file for git fast-export: " + std::string(strerror(errno))};
    marks_file_ = path;
    bool written = ::write(fd, marks_.data(), marks_.size()) == static_cast<ssize_t>(marks_.size());
    if (::close(fd) != 0 || !written) return Error{"cannot write the marks file " + path};
    return path;
  }

  void chunk(std::string_view chunk) {
    if (!stream_error_.empty()) return;
    std::string out;
    out.reserve(chunk.size());
    if (auto s = filter_.feed(chunk, out); !s) {
      stream_error_ = s.error().message;
      chain_->kill();
      return;
    }
    if (!out.empty()) on_chunk_(out);
  }

  void exported(ProcessResult r) {
    if (!stream_error_.empty())
      return finish(Error{"git fast-export " + spec_.revision + ": " + stream_error_});
    if (!r.ok()) return finish(failure("git fast-export " + spec_.revision, std::move(r)));
    if (auto s = filter_.finish(); !s)
      return finish(Error{"git fast-export " + spec_.revision + ": " + s.error().message});
    if (filter_.commits() != new_commits_ || filter_.lastOriginal() != spec_.revision)
      return finish(Error{"git fast-export " + spec_.revision + " wrote " +
                          std::to_string(filter_.commits()) + " commits ending with '" +
                          filter_.lastOriginal() + "' instead of " + std::to_string(new_commits_) +
                          " ending with the revision"});
    finish(ok());
  }

  // Removes the temporary ref (if made), then reports. A ref left behind
  // (the daemon stopped meanwhile) only keeps objects alive until forget().
  void finish(Status status) {
    removeMarks();
    auto state = state_.lock();
    if (!state) return;
    if (temp_ref_.empty()) return done_(std::move(status));
    auto argv = inProxy(repo_, {"update-ref", "-d", temp_ref_, spec_.revision});
    auto self = shared_from_this();
    state->git(spec(std::move(argv), kLocalTimeout), [self, status](ProcessResult r) mutable {
      if (auto state = self->state_.lock(); state && !r.ok())
        state->host().log(LogLevel::warning,
                          failure("git update-ref -d " + self->temp_ref_, std::move(r)).message);
      self->done_(std::move(status));
    });
  }

  void removeMarks() {
    if (marks_file_.empty()) return;
    std::error_code ec;
    std::filesystem::remove(std::exchange(marks_file_, ""), ec);
  }

  std::weak_ptr<State> state_;
  Repo repo_;
  ExportSpec spec_;
  std::function<void(std::string_view)> on_chunk_;
  std::function<void(Status)> done_;
  std::shared_ptr<Chain> chain_ = std::make_shared<Chain>();
  std::unordered_map<std::string, uint64_t> known_;  // revision -> mark
  // From rev-list:
  std::vector<std::string> boundary_;
  size_t new_commits_ = 0;
  std::string tree_;  // of a new commit
  std::string listing_error_;
  std::string marks_;       // what fast-export imports
  std::string marks_file_;  // where, while it exists
  std::string temp_ref_;    // -export/N while it exists
  ExportFilter filter_;
  std::string stream_error_;
};

// One fastImport: the mirror ref set to the upstream branch as last fetched
// (so that fast-import, which refuses to move a ref to a commit not
// containing its old value, refuses history that does not build on the
// upstream's), then git fast-import reading the host's stream through an
// ImportFilter, and, once the stream is finished, one get-mark per commit
// of the stream: fast-import prints their ids, which become the marks.
class GitImport final : public Import, public std::enable_shared_from_this<GitImport> {
 public:
  GitImport(std::weak_ptr<State> state, Repo repo, std::string branch,
            std::map<uint64_t, std::string> known, std::function<void(Result<Imported>)> done)
      : state_(std::move(state)),
        repo_(std::move(repo)),
        branch_(std::move(branch)),
        ref_(mirrorRef(repo_, branch_)),
        filter_(ref_, std::move(known)),
        done_(std::move(done)) {}

  const std::string& ref() const override { return ref_; }

  void write(std::string data, std::function<void(bool)> written) override {
    std::string out;
    out.reserve(data.size() + 64);
    if (!failed_ && !finished_) {
      if (auto s = filter_.feed(data, out); !s)
        fail(Error{"the stream into " + ref_ + ": " + s.error().message});
    }
    if (failed_ || finished_) return answer(std::move(written), false);
    if (out.empty()) return answer(std::move(written), true);
    send(std::move(out), std::move(written));
  }

  void finish() override {
    if (failed_ || finished_) return;
    finished_ = true;
    if (auto s = filter_.finish(); !s)
      return fail(Error{"the stream into " + ref_ + ": " + s.error().message});
    std::string tail;
    for (uint64_t m : filter_.commitMarks()) tail += "get-mark :" + std::to_string(m) + "\n";
    tail += "done\n";
    send(std::move(tail), nullptr);
    close_ = true;
    if (process_) process_->closeInput();
  }

  void kill() override { fail(Error{"the import into " + ref_ + " was abandoned"}); }

  // Sets the mirror ref, then starts fast-import.
  void start() {
    auto state = state_.lock();
    if (!state) return;
    std::string upstream = repo_.ref_prefix + branch_;
    auto self = shared_from_this();
    state->serialise(repo_.proxy, [self, upstream](std::function<void()> release) {
      auto state = self->state_.lock();
      if (!state) return;
      auto argv =
          inProxy(self->repo_, {"rev-parse", "--verify", "--quiet", upstream + "^{commit}", "--"});
      state->git(spec(std::move(argv), kLocalTimeout), [self, release](ProcessResult r) {
        auto state = self->state_.lock();
        if (!state) return;
        // Exit 1 without output: the branch is new (not fetched, not upstream).
        std::string head = trimmed(r.out);
        if (!r.ok() && !(r.started && r.exit_code == 1 && head.empty() && r.signal == 0)) {
          release();
          return self->abort(
              failure("git rev-parse " + self->repo_.ref_prefix + self->branch_, std::move(r)));
        }
        auto argv = head.empty() ? inProxy(self->repo_, {"update-ref", "-d", self->ref_})
                                 : inProxy(self->repo_, {"update-ref", self->ref_, head});
        state->git(spec(std::move(argv), kLocalTimeout), [self, release](ProcessResult r) {
          release();
          if (!r.ok()) return self->abort(failure("git update-ref " + self->ref_, std::move(r)));
          self->startImport();
        });
      });
    });
  }

 private:
  void answer(std::function<void(bool)> written, bool ok) {
    if (!written) return;
    if (auto state = state_.lock()) state->host().post([written, ok] { written(ok); });
  }

  void send(std::string data, std::function<void(bool)> written) {
    if (process_) return process_->write(std::move(data), std::move(written));
    pending_.emplace_back(std::move(data), std::move(written));  // until fast-import runs
  }

  void fail(Error error) {
    if (failed_) return;
    failed_ = true;
    error_ = std::move(error);
    for (auto& [data, written] : pending_) answer(std::move(written), false);
    pending_.clear();
    if (process_) process_->kill();  // its done reports error_
  }

  // Before fast-import runs: writes queued meanwhile fail, done says why.
  void abort(Error error) {
    fail(std::move(error));
    ended(*error_);
  }

  void startImport() {
    if (failed_) return ended(*error_);
    auto state = state_.lock();
    if (!state) return;
    // --done: only the end this plugin writes (finish) completes an import; a
    // stream cut short fails, and refs change only at the end.
    ProcessSpec p = spec(inProxy(repo_, {"fast-import", "--quiet", "--done"}), kStreamTimeout);
    p.stdin_pipe = true;
    auto self = shared_from_this();
    process_ = state->git(std::move(p), [self](ProcessResult r) { self->imported(std::move(r)); });
    for (auto& [data, written] : pending_) process_->write(std::move(data), std::move(written));
    pending_.clear();
    if (close_) process_->closeInput();
  }

  void imported(ProcessResult r) {
    if (error_) return ended(*error_);
    if (!r.ok()) {
      removeCrashReport(r.err);
      Error e = failure("git fast-import into " + ref_, r);
      if (r.err.find("does not contain") != std::string::npos)
        e.message = "diverged: the imported history does not contain the head of " + branch_ +
                    " as last fetched; nothing was changed (" + e.message + ")";
      return ended(std::move(e));
    }
    auto ids = parseGetMarks(r.out, filter_.commitMarks().size());
    if (!ids) return ended(Error{"git fast-import into " + ref_ + ": " + ids.error().message});
    Imported result;
    for (size_t i = 0; i < ids->size(); ++i)
      result.marks.emplace_back(filter_.commitMarks()[i], std::move((*ids)[i]));
    ended(std::move(result));
  }

  // fast-import leaves a report in the repository when it fails; the error
  // carries its message, and the proxy should not collect them.
  void removeCrashReport(const std::string& err) {
    constexpr std::string_view kReport = "dumping crash report to ";
    size_t at = err.find(kReport);
    if (at == std::string::npos) return;
    std::string path = err.substr(at + kReport.size());
    // Named in the repository (git prints it with the --git-dir prefix).
    std::string name = std::filesystem::path(path.substr(0, path.find('\n'))).filename().string();
    if (name.rfind("fast_import_crash_", 0) != 0) return;
    std::error_code ec;
    std::filesystem::remove(std::filesystem::path(repo_.proxy) / name, ec);
  }

  void ended(Result<Imported> result) {
    if (!done_) return;
    auto done = std::move(done_);
    done_ = nullptr;
    done(std::move(result));
  }

  std::weak_ptr<State> state_;
  Repo repo_;
  std::string branch_, ref_;
  ImportFilter filter_;
  std::function<void(Result<Imported>)> done_;
  std::shared_ptr<Running> process_;
  std::vector<std::pair<std::string, std::function<void(bool)>>> pending_;
  bool finished_ = false, close_ = false, failed_ = false;
  std::optional<Error> error_;
};

class GitVcs final : public Vcs {
 public:
  explicit GitVcs(Host& host) : host_(host), state_(std::make_shared<State>(host)) {}
  ~GitVcs() override { state_->killAll(); }  // their callbacks find the State gone
  GitVcs(const GitVcs&) = delete;            // owns running processes
  GitVcs& operator=(const GitVcs&) = delete;

  // Errors found before any process ran: from the loop, unless the GitVcs is gone.
  template <class Done, class Value>
  void later(Done done, Value value) {
    support::later(host_, std::weak_ptr<State>(state_), std::move(done), std::move(value));
  }

  void listHeads(const Repo& repo, std::function<void(Result<std::vector<Head>>)> done) override {
    if (repo.url.empty())
      return later(std::move(done), Error{"repository " + std::to_string(repo.id) + " has no URL"});
    std::weak_ptr<State> weak = state_;
    auto parsed = [weak, url = repo.url, done](ProcessResult r) {
      ParsedHeads heads = parseHeads(r.out);
      if (auto self = weak.lock()) {
        std::string names;
        for (const auto& n : heads.refused) names += (names.empty() ? "'" : ", '") + n + "'";
        if (self->newlyRefused(url, names))
          self->host().log(LogLevel::warning, url + ": ignoring branches whose names git refuses: " + names);
      }
      done(std::move(heads.heads));
    };
    // --heads asks the server for refs/heads/ only: one round trip whatever the branch count.
    auto lsRemote = [weak, url = repo.url, done, parsed] {
      auto self = weak.lock();
      if (!self) return;
      self->git(spec({"git", "ls-remote", "--heads", "--end-of-options", url}, kNetworkTimeout),
                [url, done, parsed](ProcessResult r) {
                  if (!r.ok()) return done(failure("git ls-remote " + url, std::move(r)));
                  parsed(std::move(r));
                });
    };
    // A local bare upstream: reading its refs is one process instead of
    // ls-remote's two (git and upload-pack), the bulk of a poll's cost. The
    // output has ls-remote's shape. Anything else, or any failure (not bare,
    // not ours to read), goes through ls-remote, whose error says why.
    std::string path = repo.url.rfind("file://", 0) == 0 ? repo.url.substr(7) : repo.url;
    if (path.empty() || path[0] != '/') return lsRemote();
    std::error_code ec;  // one stat: a work tree's repository is its .git
    if (std::filesystem::is_directory(path + "/.git", ec)) path += "/.git";
    state_->git(spec({"git", "--git-dir=" + path, "for-each-ref",
                      "--format=%(objectname)%09%(refname)", "refs/heads/"},
                     kLocalTimeout),
                [lsRemote, parsed](ProcessResult r) {
                  if (!r.ok()) return lsRemote();
                  parsed(std::move(r));
                });
  }

  void updateProxy(const Repo& repo, const std::vector<std::string>& branches,
                   std::function<void(Status)> done) override {
    if (auto s = checkRepo(repo, true); !s) return later(std::move(done), s.error());
    std::vector<std::string> argv = inProxy(
        repo,
        {"-c", "gc.autoDetach=false",  // an automatic gc runs inside this job, not beside the next
         "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
         "--end-of-options", repo.url});
    for (const auto& b : branches) {
      if (!isValidBranchName(b))
        return later(std::move(done), Error{"refusing to fetch branch '" + b + "' of " + repo.url +
                                            ": git does not accept that name"});
      // Forced: an upstream may rewrite its branch; the proxy follows it.
      argv.push_back("+refs/heads/" + b + ":" + repo.ref_prefix + b);
    }
    std::weak_ptr<State> weak = state_;
    state_->serialise(repo.proxy, [weak, repo, argv = std::move(argv), fetch = !branches.empty(),
                                   done = std::move(done)](std::function<void()> release) mutable {
      auto self = weak.lock();
      if (!self) return;
      auto finish = [release, done = std::move(done)](Status s) {
        release();
        done(std::move(s));
      };
      auto runFetch = [weak, repo, argv = std::move(argv), fetch, finish]() mutable {
        auto self = weak.lock();
        if (!self) return;
        if (!fetch) return finish(ok());
        self->git(spec(std::move(argv), kNetworkTimeout), [weak, repo, finish](ProcessResult r) {
          if (r.ok()) return finish(ok());
          // Perhaps the proxy was removed under us: make it again next time.
          if (auto self = weak.lock()) self->setProxyReady(repo.proxy, false);
          finish(failure("git fetch " + repo.url, std::move(r)));
        });
      };
      if (self->proxyReady(repo.proxy)) return runFetch();
      // Safe on an existing repository: git init only adds what is missing.
      auto init = spec({"git", "init", "--bare", "--quiet", "--", repo.proxy}, kLocalTimeout);
      self->git(std::move(init), [weak, repo, finish, runFetch](ProcessResult r) mutable {
        auto self = weak.lock();
        if (!self) return;
        if (!r.ok()) return finish(failure("git init " + repo.proxy, std::move(r)));
        if (auto s = exportEverything(repo.proxy); !s) return finish(s);
        self->setProxyReady(repo.proxy, true);
        runFetch();
      });
    });
  }

  void listCommits(const Repo& repo, const std::string& to, const std::vector<std::string>& exclude,
                   size_t limit,
                   std::function<void(Result<std::vector<CommitInfo>>)> done) override {
    if (auto s = checkRepo(repo, false); !s) return later(std::move(done), s.error());
    if (auto s = checkRevision(to); !s) return later(std::move(done), s.error());
    if (limit == 0) return later(std::move(done), std::vector<CommitInfo>{});
    std::vector<std::string> argv = inProxy(
        repo,
        {"-c", "core.quotePath=false",  // UTF-8 names as they are; control characters still quoted
         "log", std::string("--format=") + kLogFormat, "--name-only", "--no-renames", "--root",
         "--diff-merges=first-parent", "--topo-order", "--reverse",
         // git applies the count before --reverse: the newest `limit`, oldest first.
         "--max-count=" + std::to_string(limit), "--no-show-signature", "--no-color",
         // --ignore-missing applies only to what follows it: an unknown `to`
         // fails, an exclusion the proxy never saw (or lost to gc) is dropped.
         to, "--ignore-missing"});
    for (const auto& x : exclude) {
      if (auto s = checkRevision(x); !s) return later(std::move(done), s.error());
      argv.push_back("^" + x);
    }
    argv.push_back("--");  // revisions above, never paths
    state_->git(spec(std::move(argv), kLocalTimeout),
                [to, done = std::move(done)](ProcessResult r) {
                  if (!r.ok()) return done(failure("git log " + to, std::move(r)));
                  done(parseLog(r.out));
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
    return state_->git(
        spec(inProxy(repo, {"archive", "--format=tar", revision}), kNetworkTimeout),
        [revision, done = std::move(done)](ProcessResult r) {
          done(r.ok() ? ok() : Status(failure("git archive " + revision, std::move(r))));
        },
        std::move(on_chunk));
  }

  void treeDigest(const Repo& repo, const std::string& revision,
                  std::function<void(Result<std::string>)> done) override {
    if (auto s = checkRepo(repo, false); !s) return later(std::move(done), s.error());
    if (auto s = checkRevision(revision); !s) return later(std::move(done), s.error());
    auto argv = inProxy(repo, {"rev-parse", "--verify", "--quiet", revision + "^{tree}"});
    state_->git(spec(std::move(argv), kLocalTimeout),
                [revision, done = std::move(done)](ProcessResult r) {
                  if (!r.ok())
                    return done(failure("git rev-parse " + revision + "^{tree}", std::move(r)));
                  std::string tree = trimmed(std::move(r.out));
                  if (!isObjectId(tree))
                    return done(Error{"git rev-parse printed no tree id for " + revision});
                  done(std::move(tree));
                });
  }

  std::shared_ptr<Running> fastExport(const Repo& repo, const ExportSpec& spec,
                                      std::function<void(std::string_view)> on_chunk,
                                      std::function<void(Status)> done) override {
    if (auto s = checkExport(repo, spec); !s) {
      later(std::move(done), s.error());
      return nullptr;
    }
    for (const auto& known : spec.known) {
      if (known.first == spec.revision) {  // the target has it: an empty stream
        later(std::move(done), ok());
        return std::make_shared<Chain>();
      }
    }
    auto run = std::make_shared<Export>(state_, repo, spec, std::move(on_chunk), std::move(done));
    run->start();
    return run->chain();
  }

  std::shared_ptr<Import> fastImport(const Repo& repo, const ImportSpec& spec,
                                     std::function<void(Result<Imported>)> done) override {
    Status valid = checkRepo(repo, false);
    if (valid && !isValidBranchName(spec.branch))
      valid =
          Error{"cannot import into branch '" + spec.branch + "': git does not accept that name"};
    std::map<uint64_t, std::string> known;
    for (const auto& [mark, revision] : spec.known) {
      if (!valid) break;
      if (mark == 0 || !known.emplace(mark, revision).second)
        valid = Error{"known mark :" + std::to_string(mark) + " is zero or given twice"};
      else
        valid = checkRevision(revision);
    }
    if (!valid) {
      later(std::move(done), valid.error());
      return nullptr;
    }
    auto import =
        std::make_shared<GitImport>(state_, repo, spec.branch, std::move(known), std::move(done));
    import->start();
    return import;
  }

  void publish(const Repo& repo, const std::string& branch, const std::string& revision,
               const std::string& expected, std::function<void(Status)> done) override {
    Status valid = checkRepo(repo, true);
    if (valid && !isValidBranchName(branch))
      valid = Error{"cannot publish branch '" + branch + "': git does not accept that name"};
    if (valid) valid = checkRevision(revision);
    if (valid && !expected.empty()) valid = checkRevision(expected);
    if (!valid) return later(std::move(done), valid.error());
    auto go = [this, repo, branch, revision, expected](std::function<void(Status)> done) {
      if (auto local = localBareWithoutHooks(repo.url)) {
        return publishLocal(repo, *local, branch, revision, expected, std::move(done));
      }
      pushPublish(repo, branch, revision, expected, std::move(done));
    };
    if (expected.empty() || expected == revision) return go(std::move(done));
    // Only forward: a mirror never takes a branch back over commits (a
    // lease alone would allow any move from `expected`).
    std::weak_ptr<State> weak = state_;
    state_->git(spec(inProxy(repo, {"merge-base", "--is-ancestor", expected, revision}), kLocalTimeout),
                [weak, go, url = repo.url, branch, expected, revision, done = std::move(done)](ProcessResult r) mutable {
                  if (!weak.lock()) return;
                  if (r.ok()) return go(std::move(done));
                  if (r.started && r.exit_code == 1) {
                    return done(Error{"diverged: moving branch " + branch + " of " + url + " from " + expected +
                                      " to " + revision + " would not be a fast-forward; nothing was published"});
                  }
                  done(failure("git merge-base --is-ancestor " + expected + " " + revision, std::move(r)));
                });
  }

  void pushPublish(const Repo& repo, const std::string& branch, const std::string& revision,
                   const std::string& expected, std::function<void(Status)> done) {
    const std::string target = "refs/heads/" + branch;
    // A compare-and-swap: the lease holds only while the upstream's branch is
    // at `expected` (empty: absent). Nothing else of the proxy is pushed.
    auto argv =
        inProxy(repo, {"push", "--porcelain", "--no-follow-tags", "--no-verify", "--no-signed",
                       "--recurse-submodules=no", "--force-with-lease=" + target + ":" + expected,
                       "--end-of-options", repo.url, revision + ":" + target});
    state_->git(spec(std::move(argv), kNetworkTimeout), [url = repo.url, branch, expected, target,
                                                         done = std::move(done)](ProcessResult r) {
      if (r.ok()) return done(ok());
      if (r.started && r.exit_code == 1 && pushRejectedAsMoved(r.out, target)) {
        return done(Error{"diverged: branch " + branch + " of " + url + " is no longer " +
                          (expected.empty() ? "absent" : "at " + expected) +
                          " (someone else pushed to it); nothing was published"});
      }
      done(failure("git push " + url + " " + target, std::move(r)));
    });
  }

  // A local bare upstream without receive hooks gets what a push would give
  // it, without the push's cost: the new objects as one pack that
  // pack-objects writes straight into its objects/pack (it knows every
  // object's id, so nothing is inflated and hashed again, as index-pack
  // behind a push must: a second or more for a big first mirror run), then
  // the branch moved by update-ref's compare-and-swap. What `git clone
  // --local` is to cloning. With any hook the push runs, so that they do.
  static std::optional<std::string> localBareWithoutHooks(const std::string& url) {
    std::string path = url.rfind("file://", 0) == 0 ? url.substr(7) : url;
    if (path.empty() || path[0] != '/') return std::nullopt;
    std::error_code ec;
    namespace fs = std::filesystem;
    if (!fs::is_directory(path + "/objects/pack", ec) || !fs::is_regular_file(path + "/HEAD", ec) ||
        fs::exists(path + "/.git", ec)) {
      return std::nullopt;
    }
    for (const char* hook : {"pre-receive", "update", "post-receive", "post-update", "reference-transaction",
                             "proc-receive", "push-to-checkout"}) {
      if (fs::exists(path + "/hooks/" + hook, ec)) return std::nullopt;
    }
    return path;
  }

  void publishLocal(const Repo& repo, const std::string& path, const std::string& branch,
                    const std::string& revision, const std::string& expected, std::function<void(Status)> done) {
    const std::string target = "refs/heads/" + branch;
    auto diverged = [url = repo.url, branch, expected] {
      return Error{"diverged: branch " + branch + " of " + url + " is no longer " +
                   (expected.empty() ? "absent" : "at " + expected) + " (someone else moved it); nothing was published"};
    };
    std::weak_ptr<State> weak = state_;
    // Hooks configured elsewhere (core.hooksPath) also mean: push.
    state_->git(
        spec({"git", "--git-dir=" + path, "config", "--get", "core.hooksPath"}, kLocalTimeout),
        [this, weak, repo, path, branch, revision, expected, target, diverged,
         done = std::move(done)](ProcessResult hooks) mutable {
          auto self = weak.lock();
          if (!self) return;
          if (!hooks.started || hooks.exit_code != 1) return pushPublish(repo, branch, revision, expected, std::move(done));
          ProcessSpec pack = spec({"git", "--git-dir=" + repo.proxy, "pack-objects", "--revs", "--quiet",
                                   "--delta-base-offset", path + "/objects/pack/pack"},
                                  kNetworkTimeout);
          pack.stdin_pipe = true;
          auto packed = [weak, path, revision, expected, target, diverged, done = std::move(done)](ProcessResult r) {
            auto self = weak.lock();
            if (!self) return;
            if (!r.ok()) return done(failure("git pack-objects into " + path, std::move(r)));
            const std::string old = expected.empty() ? std::string(revision.size(), '0') : expected;
            self->git(spec({"git", "--git-dir=" + path, "update-ref", "-m", "pefnos mirror", "--end-of-options",
                            target, revision, old},
                           kLocalTimeout),
                      [revision, target, path, diverged, done](ProcessResult u) {
                        if (u.ok()) return done(ok());
                        // Already there (a run that died after publishing): done.
                        if (u.err.find("is at " + revision) != std::string::npos) return done(ok());
                        if (u.err.find("but expected") != std::string::npos ||
                            u.err.find("already exists") != std::string::npos ||
                            u.err.find("unable to resolve reference") != std::string::npos) {
                          return done(diverged());
                        }
                        done(failure("git update-ref " + target + " in " + path, std::move(u)));
                      });
          };
          auto process = self->git(std::move(pack), std::move(packed));
          std::string revs = revision + "\n" + (expected.empty() ? "" : "^" + expected + "\n");
          feedInput(process, [revs, given = false]() mutable {
            if (given) return std::string();
            given = true;
            return revs;
          });
        });
  }

  void forget(const Repo& repo, std::function<void(Status)> done) override {
    if (auto s = checkRepo(repo, false); !s) return later(std::move(done), s.error());
    // A pruning fetch from the proxy itself of a pattern that matches nothing:
    // git deletes every ref under the prefix, in one process, and no object.
    // (`update-ref --stdin` would need a stdin, which ProcessSpec lacks.)
    // clang-format off
    std::vector<std::string> argv{"git", "--git-dir=.", "fetch", "--quiet", "--prune", "--no-tags",
        "--no-write-fetch-head", "--end-of-options", ".",
        "+refs/pefnos-forget-nothing/*:" + repo.ref_prefix + "*"};
    // clang-format on
    std::weak_ptr<State> weak = state_;
    state_->serialise(repo.proxy, [weak, repo, argv = std::move(argv),
                                   done = std::move(done)](std::function<void()> release) mutable {
      auto self = weak.lock();
      if (!self) return;
      std::error_code ec;
      if (!std::filesystem::exists(repo.proxy, ec)) {  // never made: nothing to forget
        release();
        return done(ok());
      }
      auto forgotten = [repo, release, done](ProcessResult r) {
        release();
        if (r.ok()) return done(ok());
        done(failure("forgetting " + repo.ref_prefix + " in " + repo.proxy, std::move(r)));
      };
      self->git(spec(std::move(argv), kLocalTimeout, repo.proxy), forgotten);
    });
  }

 private:
  static Status checkExport(const Repo& repo, const ExportSpec& spec) {
    if (auto s = checkRepo(repo, false); !s) return s;
    if (auto s = checkRevision(spec.revision); !s) return s;
    if (!isValidRefName(spec.ref) || spec.ref.rfind("refs/", 0) != 0)
      return Error{"cannot export onto '" + spec.ref + "': not a full ref name (refs/…)"};
    uint64_t highest = 0;
    for (const auto& [revision, mark] : spec.known) {
      if (auto s = checkRevision(revision); !s) return s;
      if (mark == 0) return Error{"known revision " + revision + " has mark 0"};
      highest = std::max(highest, mark);
    }
    // git fast-export numbers its marks from the largest it imported + 1.
    if (spec.first_mark <= highest)
      return Error{"the stream's first mark :" + std::to_string(spec.first_mark) +
                   " is not above the known marks (up to :" + std::to_string(highest) + ")"};
    return ok();
  }

  // git push --porcelain: "!\tSRC:DST\t[rejected] (stale info)" when the lease
  // no longer holds; fetch first / non-fast-forward say the same in other words.
  static bool pushRejectedAsMoved(const std::string& out, const std::string& target) {
    size_t at = 0;
    while (at < out.size()) {
      size_t nl = out.find('\n', at);
      std::string_view line(out.data() + at, (nl == std::string::npos ? out.size() : nl) - at);
      at = nl == std::string::npos ? out.size() : nl + 1;
      if (line.size() < 2 || line[0] != '!' || line[1] != '\t') continue;
      if (line.find(":" + target + "\t") == std::string_view::npos) continue;
      for (const char* reason : {"(stale info)", "(fetch first)", "(non-fast-forward)"})
        if (line.find(reason) != std::string_view::npos) return true;
    }
    return false;
  }

  // git archive obeys export-ignore and export-subst from the tree's own
  // .gitattributes; a build needs the tree as committed (tests/ included, the
  // digest unchanged), and info/attributes overrides the tree's attributes.
  static Status exportEverything(const std::string& proxy) {
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(proxy) / "info", ec);
    std::ofstream out(std::filesystem::path(proxy) / "info" / "attributes", std::ios::trunc);
    out << "* -export-ignore -export-subst\n";
    out.close();
    if (!out) return Error{"cannot write " + proxy + "/info/attributes"};
    return ok();
  }

  Host& host_;
  std::shared_ptr<State> state_;
};

std::unique_ptr<Vcs> makeGitVcs(Host& host) { return std::make_unique<GitVcs>(host); }

}  // namespace

const PluginDescriptor& describe() {
  static const PluginDescriptor d{.abi_version = kPluginAbiVersion,
                                  .kind = PluginKind::vcs,
                                  .name = "git",
                                  .version = "1.0",
                                  .description = "Git, through the git program",
                                  .make_vcs = &makeGitVcs,
                                  .make_step = nullptr};
  return d;
}

}  // namespace pefnos::git

PEFNOS_PLUGIN(pefnos::git::describe)
