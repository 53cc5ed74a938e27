// The Subversion VCS plugin: svn, svnsync, svnadmin, tar and git processes
// that the host runs; this file builds their argv and reads their output
// (the parsing itself is in svn_parse.h).
//
// Branches are directories, found only where Repo.branches points; a head is
// "PATH@REV", REV being the revision in which that path last changed. The
// proxy is one svnsync mirror per repository; history, trees and digests
// are read from it, and so is fastExport's stream (by export.py, through
// Subversion's Python bindings). Subversion is only ever a mirror's source:
// fastImport and publish keep the defaults.
//
// Safety: paths reach svn URL-encoded, after validation, as argv elements
// after "--"; svn runs with --non-interactive, --no-auth-cache and a private
// empty configuration, so it never prompts nor reads a user's settings.
// Nothing here blocks the loop beyond a few stats, the read of a one-line
// db/current and writes of small files.
#include <dlfcn.h>
#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "pefnos/plugin.h"
#include "pefnos/plugin_support.h"
#include "svn_parse.h"

namespace pefnos::svn {
namespace {
namespace fs = std::filesystem;

constexpr int kPollTimeout = 300;       // svn info / list / log: a poll must end
constexpr int kTransferTimeout = 3600;  // svnsync, export: big; svnsync resumes where it stopped
// A mirror's fast-export runs at the pace of its importer (the host pauses it
// while the importer is behind): a bound, not an estimate.
constexpr int kStreamTimeout = 24 * 3600;
// In the mirror directory, beside svnsync's files: the source URL and its
// repository path, written last when the mirror is made (see ensureMirror).
constexpr const char* kSourceFile = "pefnos-source";
constexpr const char* kEmptyTree = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

std::vector<std::string> svnEnvironment() {
  return {
      // Messages in one language, quoted to the user as they are; UTF-8 so
      // that svn can write non-ASCII file names (export) at all.
      "LC_ALL=C.UTF-8",
      // svn+ssh: fail instead of asking for a passphrase or a new host key.
      "SVN_SSH=ssh -o BatchMode=yes",
  };
}

// The tree digest's git must hash bytes as they are: no user or system
// configuration (autocrlf, filters), and no attributes (see treeDigest).
std::vector<std::string> gitEnvironment(const std::string& scratch) {
  return {"GIT_CONFIG_GLOBAL=/dev/null",
          "GIT_CONFIG_NOSYSTEM=1",
          "GIT_ATTR_NOSYSTEM=1",
          "GIT_DIR=" + scratch + "/git",
          "GIT_INDEX_FILE=" + scratch + "/index",
          "GIT_WORK_TREE=" + scratch + "/tree"};
}

// "svn list URL exited with 1: svn: E170013: …", keeping only the end of stderr.
Error failure(const std::string& what, ProcessResult r) {
  r.err = support::stderrTail(std::move(r.err));
  // svn separates a warning from its error by a blank line: one line each here.
  for (size_t at; (at = r.err.find("\n\n")) != std::string::npos;) r.err.erase(at, 1);
  return Error{r.describe(what)};
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

// A short file, read whole (db/current, our source file); nullopt if unreadable.
std::optional<std::string> readSmallFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string data(4096, '\0');
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<size_t>(in.gcount()));
  return data;
}

std::optional<Revnum> youngestOf(const fs::path& repository) {
  auto current = readSmallFile(repository / "db" / "current");
  if (!current) return std::nullopt;
  return parseYoungest(*current);
}

// The root of the local repository holding path: the nearest directory
// upwards that holds a `format` file and a `db/` directory.
std::optional<fs::path> localRepositoryOf(const std::string& path) {
  std::error_code ec;
  for (fs::path p = fs::path(path).lexically_normal(); !p.empty(); p = p.parent_path()) {
    if (fs::is_regular_file(p / "format", ec) && fs::is_directory(p / "db", ec)) return p;
    if (p == p.root_path()) break;
  }
  return std::nullopt;
}

ProcessSpec spec(std::vector<std::string> argv, int timeout_seconds,
                 std::vector<std::string> env = {}, std::string cwd = "") {
  ProcessSpec s;
  s.argv = std::move(argv);
  s.env = std::move(env);
  s.cwd = std::move(cwd);
  s.timeout_seconds = timeout_seconds;
  return s;
}

std::string repoName(const Repo& repo) { return "repository " + std::to_string(repo.id); }

// fastExport's helper (export.py, installed as vcs-svn-export.py beside this
// library): Subversion's Python bindings read the mirror directly.
std::string exportHelperPath() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&exportHelperPath), &info) == 0 || !info.dli_fname) return "";
  return (fs::path(info.dli_fname).parent_path() / "vcs-svn-export.py").string();
}

// The helper writes the ref into command lines: a full ref name, no spaces
// or control characters.
bool isPlainRef(const std::string& ref) {
  if (ref.rfind("refs/", 0) != 0 || ref.size() == 5) return false;
  return std::none_of(ref.begin(), ref.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7f;
  });
}

// The proxy of one repository: its svnsync mirror.
struct Mirror {
  std::string dir;  // <proxy>/<ref_prefix without its slash>
  std::string url;  // file:// URL of dir
};

Result<Mirror> mirrorOf(const Repo& repo) {
  if (repo.proxy.empty() || repo.proxy[0] != '/')
    return Error{repoName(repo) + " has no absolute proxy path ('" + repo.proxy + "')"};
  std::string prefix = repo.ref_prefix;
  if (prefix.size() < 2 || prefix.back() != '/' ||
      !isValidBranchPath(std::string_view(prefix).substr(0, prefix.size() - 1)))
    return Error{repoName(repo) + " has an invalid ref prefix '" + prefix + "' (want refs/…/)"};
  prefix.pop_back();
  std::string dir = (fs::path(repo.proxy) / prefix).lexically_normal().string();
  return Mirror{dir, "file://" + encodePath(dir)};
}

// What the mirror was made from: the upstream URL and that URL's path in its
// repository ("" for the root, "/proj" for a subdirectory). svnsync keeps
// repository paths and revision numbers as they are upstream, so the mirror
// holds the URL's content at the same path.
struct Source {
  std::string url;
  std::string root;
};

std::optional<Source> readSource(const Mirror& mirror) {
  auto data = readSmallFile(fs::path(mirror.dir) / kSourceFile);
  if (!data) return std::nullopt;
  std::istringstream in(*data);
  Source s;
  if (!std::getline(in, s.url) || !std::getline(in, s.root) || s.url.empty()) return std::nullopt;
  return s;
}

Status writeSource(const Mirror& mirror, const Source& source) {
  fs::path path = fs::path(mirror.dir) / kSourceFile;
  {
    std::ofstream out(path.string() + ".new", std::ios::trunc);
    out << source.url << '\n' << source.root << '\n';
    out.close();
    if (!out) return Error{"cannot write " + path.string()};
  }
  std::error_code ec;
  fs::rename(path.string() + ".new", path, ec);  // whole or not at all
  if (ec) return Error{"cannot write " + path.string() + ": " + ec.message()};
  return ok();
}

// An export in progress: first svn export, then a tar stream. The caller's
// handle stays valid across both, and a kill reaches whichever runs.
class Pipeline : public Running {
 public:
  // The process now running; `streaming` is the one whose output the caller reads.
  void attach(std::shared_ptr<Running> process, bool streaming) {
    current_ = std::move(process);
    streaming_ = streaming;
    if (!current_) return;
    if (killed_)
      current_->kill();
    else if (paused_ && streaming_)
      current_->pause();
  }
  bool killed() const { return killed_; }

  void pause() override {
    paused_ = true;
    if (current_ && streaming_) current_->pause();
  }
  void resume() override {
    paused_ = false;
    if (current_ && streaming_) current_->resume();
  }
  void kill() override {
    killed_ = true;
    if (current_) current_->kill();
  }
  void write(std::string, std::function<void(bool)> written) override {
    if (written) written(false);  // nothing reads our input
  }
  void closeInput() override {}

 private:
  std::shared_ptr<Running> current_;
  bool streaming_ = false, paused_ = false, killed_ = false;
};

// What the SvnVcs shares with the callbacks of the processes it started,
// which may fire after it is gone: they hold it weakly and then do nothing.
class State : public std::enable_shared_from_this<State> {
 public:
  explicit State(Host& host) : host_(host), processes_(host), env_(svnEnvironment()) {
    makeConfigDir();
  }
  ~State() {
    // Processes are killed by now; what they were writing goes with them.
    std::error_code ec;
    for (const auto& dir : scratch_) fs::remove_all(dir, ec);
    if (!config_dir_.empty()) fs::remove_all(config_dir_, ec);
  }
  State(const State&) = delete;  // owns directories and running processes
  State& operator=(const State&) = delete;

  Host& host() { return host_; }
  const std::string& configError() const { return config_error_; }

  // svn (or svnsync) SUBCOMMAND with the options that keep it from prompting
  // or reading a user's configuration, then args (put "--" in them yourself).
  std::vector<std::string> svn(const std::string& program, const std::string& subcommand,
                               std::initializer_list<std::string> args) const {
    std::vector<std::string> argv{program,           subcommand,     "--non-interactive",
                                  "--no-auth-cache", "--config-dir", config_dir_};
    argv.insert(argv.end(), args);
    return argv;
  }

  // Runs a program; done is called unless the SvnVcs is destroyed first.
  // With on_out, stdout is streamed to it instead of collected.
  std::shared_ptr<Running> start(ProcessSpec spec, std::function<void(ProcessResult)> done,
                                 std::function<void(std::string_view)> on_out = nullptr) {
    spec.env.insert(spec.env.end(), env_.begin(), env_.end());
    return processes_.start(std::move(spec), std::move(done), std::move(on_out));
  }

  void killAll() { processes_.killAll(); }

  // Jobs that write one mirror (svnsync, forget) run one after the other:
  // svnsync holds a lock in the mirror, and a second one would fail on it
  // (or, with --steal-lock, take it from the first). A job calls release
  // when it is finished.
  void serialise(const std::string& key, support::SerialJobs::Job job) {
    jobs_.serialise(key, std::move(job));
  }

  // A scratch directory under the proxy for an export; removed by
  // removeScratch, or at the latest when this State goes.
  Result<std::string> makeScratch(const std::string& proxy) {
    std::error_code ec;
    fs::create_directories(proxy, ec);
    std::string templ = (fs::path(proxy) / ".pefnos-svn-export-XXXXXX").string();
    if (!mkdtemp(templ.data()))
      return Error{"cannot make a scratch directory in " + proxy + ": " + std::strerror(errno)};
    scratch_.insert(templ);
    return templ;
  }
  // rm -rf as a process: a tree of any size must not be removed on the loop.
  void removeScratch(const std::string& dir, std::function<void()> then) {
    start(spec({"rm", "-rf", "--", dir}, kTransferTimeout),
          [weak = weak_from_this(), dir, then = std::move(then)](ProcessResult r) {
            auto self = weak.lock();
            if (!self) return;
            self->scratch_.erase(dir);
            if (!r.ok()) self->host_.log(LogLevel::warning, failure("rm -rf " + dir, r).message);
            then();
          });
  }

  // Heads as last listed, per URL and branch configuration, with the
  // youngest revision they were listed at: an unchanged repository is answered from here.
  struct Listed {
    Revnum youngest = -1;
    std::vector<Head> heads;
  };
  std::map<std::string, Listed> listed;
  // The youngest upstream revision a listing saw, per URL: a mirror already
  // there needs no svnsync.
  std::map<std::string, Revnum> upstream_youngest;

 private:
  // svn reads ~/.subversion unless told otherwise: a user's file could add
  // stored passwords, proxies or a prompting ssh tunnel. Ours is empty; the
  // three files svn would otherwise fill with commented defaults exist, empty.
  void makeConfigDir() {
    std::string templ = (fs::temp_directory_path() / "pefnos-svn-config-XXXXXX").string();
    if (!mkdtemp(templ.data())) {
      config_error_ =
          "cannot make svn's private configuration directory: " + std::string(std::strerror(errno));
      return;
    }
    config_dir_ = templ;
    for (const char* name : {"config", "servers", "README.txt"}) {
      std::ofstream out(fs::path(config_dir_) / name);
      if (!out) config_error_ = "cannot write svn's private configuration in " + config_dir_;
    }
  }

  Host& host_;
  support::Processes processes_;
  support::SerialJobs jobs_;  // by mirror
  std::vector<std::string> env_;
  std::string config_dir_, config_error_;
  std::set<std::string> scratch_;
};

// One listHeads: the search, round by round, at one revision of the upstream.
struct Listing {
  std::string url;
  std::string key;  // into State::listed
  Revnum youngest = 0;
  BranchSearch search;
  std::function<void(Result<std::vector<Head>>)> done;
};

class SvnVcs final : public Vcs {
 public:
  explicit SvnVcs(Host& host) : host_(host), state_(std::make_shared<State>(host)) {}
  ~SvnVcs() override { state_->killAll(); }  // their callbacks find the State gone
  SvnVcs(const SvnVcs&) = delete;            // owns running processes
  SvnVcs& operator=(const SvnVcs&) = delete;

  // Errors found before any process ran: from the loop, unless the SvnVcs is gone.
  template <class Done, class Value>
  void later(Done done, Value value) {
    support::later(host_, std::weak_ptr<State>(state_), std::move(done), std::move(value));
  }

  void listHeads(const Repo& repo, std::function<void(Result<std::vector<Head>>)> done) override {
    if (!state_->configError().empty()) return later(std::move(done), Error{state_->configError()});
    std::string url = withoutTrailingSlash(repo.url);
    if (url.empty()) return later(std::move(done), Error{repoName(repo) + " has no URL"});
    auto search = BranchSearch::make(repo.branches);
    if (!search) return later(std::move(done), Error{url + ": " + search.error().message});
    auto listing =
        std::make_shared<Listing>(Listing{url, url, 0, std::move(search.value()), std::move(done)});
    for (const auto& b : repo.branches) listing->key += (b.pattern ? "\n*" : "\n=") + b.name;

    // The youngest revision first: unchanged, the last answer still holds.
    // A local repository's is one small file away; anything else asks svn.
    if (auto path = localPathOfUrl(url)) {
      if (auto root = localRepositoryOf(*path)) {
        if (auto youngest = youngestOf(*root)) return listAt(listing, *youngest);
      }
    }
    std::weak_ptr<State> weak = state_;
    state_->start(
        spec(state_->svn("svn", "info", {"--show-item", "revision", "--", url}), kPollTimeout),
        [this, weak, listing](ProcessResult r) {
          if (!r.ok()) return listing->done(failure("svn info " + listing->url, r));
          auto youngest = parseYoungest(r.out);
          if (!youngest)
            return listing->done(
                Error{"svn info " + listing->url + " printed no revision: " + trimmed(r.out)});
          listAt(listing, *youngest);
        });
  }

  // One sync brings every branch; the names are only checked, so that a
  // hostile one is refused here as by every other VCS.
  void updateProxy(const Repo& repo, const std::vector<std::string>& branches,
                   std::function<void(Status)> done) override {
    if (!state_->configError().empty()) return later(std::move(done), Error{state_->configError()});
    for (const auto& b : branches) {
      if (!isValidBranchPath(b)) {
        return later(std::move(done), Error{"refusing branch path '" + b + "' of " + repo.url +
                                            ": not a plain relative path"});
      }
    }
    auto mirror = mirrorOf(repo);
    if (!mirror) return later(std::move(done), mirror.error());
    std::string url = withoutTrailingSlash(repo.url);
    if (url.empty()) return later(std::move(done), Error{repoName(repo) + " has no URL"});
    std::weak_ptr<State> weak = state_;
    state_->serialise(mirror->dir, [this, weak, url, mirror = *mirror,
                                    done = std::move(done)](std::function<void()> release) mutable {
      if (!weak.lock()) return;
      auto finish = [release, done = std::move(done)](Status s) {
        release();
        done(std::move(s));
      };
      ensureMirror(url, mirror, [this, weak, url, mirror, finish](Status made) {
        if (!made) return finish(made);
        auto self = weak.lock();
        if (!self) return;
        // Once per upstream change: a mirror at the revision the last listing
        // saw has every branch that listing reported.
        auto seen = self->upstream_youngest.find(url);
        auto have = youngestOf(mirror.dir);
        if (seen != self->upstream_youngest.end() && have && *have >= seen->second)
          return finish(ok());
        // --steal-lock: a sync killed mid-way (timeout, daemon restart) leaves
        // its lock behind, and only we ever sync this mirror (serialised above).
        self->start(spec(self->svn("svnsync", "synchronize", {"--steal-lock", "--", mirror.url}),
                         kTransferTimeout),
                    [url, finish](ProcessResult r) {
                      finish(r.ok() ? ok() : Status(failure("svnsync synchronize from " + url, r)));
                    });
      });
    });
  }

  void listCommits(const Repo& repo, const std::string& to, const std::vector<std::string>& exclude,
                   size_t limit,
                   std::function<void(Result<std::vector<CommitInfo>>)> done) override {
    auto target = readable(repo, to);
    if (!target) return later(std::move(done), target.error());
    std::vector<RevisionId> excluded;
    for (const auto& x : exclude) {
      auto id = parseRevisionId(x);
      if (!id) return later(std::move(done), notAnId(x));
      excluded.push_back(std::move(*id));
    }
    if (limit == 0) return later(std::move(done), std::vector<CommitInfo>{});
    // One more than asked: the oldest one returned needs its parent's id.
    auto argv = state_->svn(
        "svn", "log",
        {"--xml", "--verbose", "--limit", std::to_string(limit + 1), "--", target->url});
    state_->start(
        spec(std::move(argv), kPollTimeout), [to, target = *target, excluded = std::move(excluded),
                                              limit, done = std::move(done)](ProcessResult r) {
          if (!r.ok())
            return done(failure("svn log " + to + " (mirror of " + target.source.url + ")", r));
          auto log = parseLog(r.out);
          if (!log) return done(Error{"svn log " + to + ": " + log.error().message});
          done(branchHistory(*log, target.path, target.source.root, excluded, limit));
        });
  }

  std::shared_ptr<Running> exportTree(const Repo& repo, const std::string& revision,
                                      std::function<void(std::string_view)> on_chunk,
                                      std::function<void(Status)> done) override {
    auto pipeline = std::make_shared<Pipeline>();
    std::weak_ptr<State> weak = state_;
    std::weak_ptr<Pipeline> weak_pipeline = pipeline;
    exportScratch(
        repo, revision, pipeline,
        [weak, weak_pipeline, revision, on_chunk = std::move(on_chunk), done = std::move(done)](
            const std::string& scratch, std::function<void(Status)> cleanup) mutable {
          auto self = weak.lock();
          if (!self) return;
          // Streamed as it comes: a tree may be far bigger than memory.
          auto tar = self->start(
              spec({"tar", "--create", "--file=-", "--sort=name", "--numeric-owner",
                    "--directory=" + scratch + "/tree", "."},
                   kTransferTimeout),
              [revision, cleanup = std::move(cleanup)](ProcessResult r) {
                cleanup(r.ok() ? ok() : Status(failure("tar of " + revision, r)));
              },
              std::move(on_chunk));
          if (auto p = weak_pipeline.lock()) p->attach(tar, true);
        },
        [done](Status s) mutable { done(std::move(s)); });
    return pipeline;
  }

  void treeDigest(const Repo& repo, const std::string& revision,
                  std::function<void(Result<std::string>)> done) override {
    std::weak_ptr<State> weak = state_;
    auto finished = std::make_shared<Result<std::string>>(Error{""});
    exportScratch(
        repo, revision, nullptr,
        [this, weak, revision, finished](const std::string& scratch,
                                         std::function<void(Status)> cleanup) {
          if (!weak.lock()) return;
          digestTree(scratch, revision, [finished, cleanup](Result<std::string> tree) {
            *finished = std::move(tree);
            cleanup(finished->ok() ? ok() : Status(finished->error()));
          });
        },
        [finished, done = std::move(done)](Status s) {
          if (!s) return done(s.error());
          done(std::move(*finished));
        });
  }

  // One helper process: it reads the known marks on stdin, then writes the
  // stream (see export.py). The history and the ids are those of listCommits.
  std::shared_ptr<Running> fastExport(const Repo& repo, const ExportSpec& stream,
                                      std::function<void(std::string_view)> on_chunk,
                                      std::function<void(Status)> done) override {
    auto target = readable(repo, stream.revision);
    auto mirror = mirrorOf(repo);
    Status valid = target ? Status(ok()) : Status(target.error());
    if (valid && !mirror) valid = mirror.error();
    if (valid && !isPlainRef(stream.ref))
      valid = Error{"cannot export onto '" + stream.ref + "': not a full ref name (refs/…)"};
    uint64_t highest = 0;
    for (const auto& [id, mark] : stream.known) {
      if (!valid) break;
      if (!parseRevisionId(id))
        valid = notAnId(id);
      else if (mark == 0)
        valid = Error{"known revision " + id + " has mark 0"};
      highest = std::max(highest, mark);
    }
    if (valid && stream.first_mark <= highest)
      valid = Error{"the stream's first mark :" + std::to_string(stream.first_mark) +
                    " is not above the known marks (up to :" + std::to_string(highest) + ")"};
    std::string helper = exportHelperPath();
    if (valid && helper.empty()) valid = Error{"cannot find the svn export helper"};
    if (!valid) {
      later(std::move(done), valid.error());
      return nullptr;
    }
    for (const auto& known : stream.known) {
      if (known.first == stream.revision) {  // the target has it: an empty stream
        later(std::move(done), ok());
        return std::make_shared<Pipeline>();
      }
    }
    auto id = parseRevisionId(stream.revision);
    ProcessSpec p =
        spec({"/usr/bin/python3", helper, mirror->dir, target->source.root, id->path,
              std::to_string(id->revision), std::to_string(stream.first_mark), stream.ref},
             kStreamTimeout, {"PYTHONDONTWRITEBYTECODE=1"});
    p.stdin_pipe = true;
    auto running = state_->start(
        std::move(p),
        [revision = stream.revision, done = std::move(done)](ProcessResult r) {
          done(r.ok() ? ok() : Status(failure("svn fast-export of " + revision, r)));
        },
        std::move(on_chunk));
    // The known marks, in pieces, each once the last is in the pipe.
    auto known = std::make_shared<std::vector<std::pair<std::string, uint64_t>>>(stream.known);
    feedKnown(running, known, 0);
    return running;
  }

  void forget(const Repo& repo, std::function<void(Status)> done) override {
    auto mirror = mirrorOf(repo);
    if (!mirror) return later(std::move(done), mirror.error());
    std::weak_ptr<State> weak = state_;
    state_->serialise(mirror->dir, [weak, dir = mirror->dir,
                                    done = std::move(done)](std::function<void()> release) mutable {
      auto self = weak.lock();
      if (!self) return;
      std::error_code ec;
      if (!fs::exists(dir, ec)) {  // never made: nothing to forget
        release();
        return done(ok());
      }
      // The mirror is this repository's alone: nothing in it is shared with forks.
      self->start(spec({"rm", "-rf", "--", dir}, kTransferTimeout),
                  [dir, release, done = std::move(done)](ProcessResult r) {
                    release();
                    done(r.ok() ? ok() : Status(failure("removing the svn mirror " + dir, r)));
                  });
    });
  }

 private:
  static void feedKnown(const std::shared_ptr<Running>& process,
                        std::shared_ptr<std::vector<std::pair<std::string, uint64_t>>> known,
                        size_t at) {
    std::string piece;
    while (at < known->size() && piece.size() < (64u << 10)) {
      piece += std::to_string((*known)[at].second) + " " + (*known)[at].first + "\n";
      ++at;
    }
    if (piece.empty()) return process->closeInput();
    std::weak_ptr<Running> weak = process;
    process->write(std::move(piece), [weak, known, at](bool written) {
      auto p = weak.lock();
      if (p && written) feedKnown(p, known, at);  // else it is gone: its done says why
    });
  }

  // A revision to read from the mirror: its URL there (with peg) and its
  // repository path.
  struct Readable {
    Source source;
    std::string url;   // mirror URL of the path, "@REV" appended
    std::string path;  // repository path ("/proj/trunk")
  };

  static Error notAnId(const std::string& id) {
    return Error{"'" + id +
                 "' is not an svn revision id (PATH@REVISION, PATH relative to the "
                 "repository URL)"};
  }

  Result<Readable> readable(const Repo& repo, const std::string& revision) {
    if (!state_->configError().empty()) return Error{state_->configError()};
    auto id = parseRevisionId(revision);
    if (!id) return notAnId(revision);
    auto mirror = mirrorOf(repo);
    if (!mirror) return mirror.error();
    auto source = readSource(*mirror);
    if (!source)
      return Error{"no svn mirror of " + repo.url + " in " + mirror->dir +
                   " yet (updateProxy makes it)"};
    std::string path = source->root + "/" + id->path;
    return Readable{*source, joinUrl(mirror->url, path) + "@" + std::to_string(id->revision), path};
  }

  // Makes the mirror if it is missing, half-made or made from another URL.
  void ensureMirror(const std::string& url, const Mirror& mirror,
                    std::function<void(Status)> done) {
    auto source = readSource(mirror);
    if (source && source->url == url) return done(ok());
    std::weak_ptr<State> weak = state_;
    auto make = [this, weak, url, mirror, done]() {
      auto self = weak.lock();
      if (!self) return;
      // The URL's path in its repository: where svnsync will put its content.
      self->start(
          spec(self->svn("svn", "info", {"--show-item", "relative-url", "--", url}), kPollTimeout),
          [this, weak, url, mirror, done](ProcessResult r) {
            auto self = weak.lock();
            if (!self) return;
            if (!r.ok()) return done(failure("svn info " + url, r));
            std::string relative = trimmed(r.out);
            if (relative.empty() || relative[0] != '^')
              return done(Error{"svn info " + url + " printed no relative URL: " + relative});
            std::string root = decodePercent(relative.substr(1));
            if (root == "/") root.clear();
            std::error_code ec;
            fs::create_directories(fs::path(mirror.dir).parent_path(), ec);
            self->start(spec({"svnadmin", "create", "--", mirror.dir}, kPollTimeout),
                        [this, weak, url, mirror, root, done](ProcessResult r) {
                          if (!r.ok()) return done(failure("svnadmin create " + mirror.dir, r));
                          initializeMirror(url, mirror, root, done);
                        });
          });
    };
    std::error_code ec;
    if (!fs::exists(mirror.dir, ec)) return make();
    // Half-made (killed before initialize finished) or from another URL: start again.
    state_->start(spec({"rm", "-rf", "--", mirror.dir}, kTransferTimeout),
                  [mirror, make, done](ProcessResult r) {
                    if (!r.ok())
                      return done(failure("removing the stale svn mirror " + mirror.dir, r));
                    make();
                  });
  }

  void initializeMirror(const std::string& url, const Mirror& mirror, const std::string& root,
                        std::function<void(Status)> done) {
    // svnsync records its progress in revision properties, which a
    // repository refuses to change without this hook; /bin/true allows all.
    std::error_code ec;
    fs::create_symlink("/bin/true", fs::path(mirror.dir) / "hooks" / "pre-revprop-change", ec);
    if (ec)
      return done(Error{"cannot install the revprop hook in " + mirror.dir + ": " + ec.message()});
    state_->start(spec(state_->svn("svnsync", "initialize", {"--", mirror.url, url}), kPollTimeout),
                  [url, mirror, root, done](ProcessResult r) {
                    if (!r.ok()) return done(failure("svnsync initialize from " + url, r));
                    done(writeSource(mirror, Source{url, root}));
                  });
  }

  // svn export of a revision into <scratch>/tree; then work(scratch, cleanup),
  // whose cleanup(status) removes the scratch directory and calls done. Every
  // path through here removes the directory, failures included.
  void exportScratch(const Repo& repo, const std::string& revision,
                     std::shared_ptr<Pipeline> pipeline,
                     std::function<void(const std::string&, std::function<void(Status)>)> work,
                     std::function<void(Status)> done) {
    auto target = readable(repo, revision);
    if (!target) return later(std::move(done), target.error());
    auto scratch = state_->makeScratch(repo.proxy);
    if (!scratch) return later(std::move(done), scratch.error());
    std::weak_ptr<State> weak = state_;
    auto cleanup = [weak, dir = *scratch, done = std::move(done)](Status s) {
      auto self = weak.lock();
      if (!self) return;
      self->removeScratch(dir, [s, done] { done(s); });
    };
    // Repository form: no keyword expansion, no externals (other servers,
    // other credentials, another revision). The trailing '@' keeps svn from
    // reading an '@' in the proxy's path as a peg revision.
    auto argv = state_->svn("svn", "export",
                            {"--quiet", "--ignore-keywords", "--ignore-externals", "--",
                             target->url, *scratch + "/tree@"});
    auto running =
        state_->start(spec(std::move(argv), kTransferTimeout),
                      [revision, dir = *scratch, work = std::move(work), cleanup](ProcessResult r) {
                        if (!r.ok()) return cleanup(failure("svn export " + revision, r));
                        work(dir, cleanup);
                      });
    if (pipeline) pipeline->attach(running, false);
  }

  // git's tree id of <scratch>/tree, with a throwaway repository and index
  // beside it.
  void digestTree(const std::string& scratch, const std::string& revision,
                  std::function<void(Result<std::string>)> done) {
    auto env = gitEnvironment(scratch);
    std::weak_ptr<State> weak = state_;
    // init sees only GIT_DIR: a bare repository, which the others then use
    // with GIT_WORK_TREE.
    state_->start(
        spec({"git", "init", "--quiet", "--bare", "--template="}, kPollTimeout,
             {env[0], env[1], env[2], env[3]}),
        [weak, scratch, revision, env, done](ProcessResult r) {
          auto self = weak.lock();
          if (!self) return;
          if (!r.ok()) return done(failure("git init for the digest of " + revision, r));
          // The tree's own .gitattributes must not change a byte of what is
          // hashed (eol=crlf, filters): info/attributes overrides them.
          std::error_code ec;
          fs::create_directories(fs::path(scratch) / "git" / "info", ec);
          std::ofstream out(fs::path(scratch) / "git" / "info" / "attributes", std::ios::trunc);
          out << "* -text -eol -filter -ident -working-tree-encoding\n";
          out.close();
          if (!out) return done(Error{"cannot write the digest's attributes in " + scratch});
          // -f: the tree's .gitignore must not hide files either.
          self->start(
              spec({"git", "add", "-A", "-f"}, kTransferTimeout, env, scratch + "/tree"),
              [weak, revision, env, scratch, done](ProcessResult r) {
                auto self = weak.lock();
                if (!self) return;
                if (!r.ok()) return done(failure("git add for the digest of " + revision, r));
                self->start(
                    spec({"git", "write-tree"}, kPollTimeout, env, scratch + "/tree"),
                    [revision, done](ProcessResult r) {
                      if (!r.ok())
                        return done(failure("git write-tree for the digest of " + revision, r));
                      std::string tree = trimmed(r.out);
                      if (tree.size() != 40 && tree.size() != 64)
                        return done(Error{"git write-tree printed no tree id for " + revision});
                      done(std::move(tree));
                    });
              });
        });
  }

  // Lists one round of the branch search (all its directories in one svn
  // list), feeds it, and goes on until the search is finished.
  void listAt(const std::shared_ptr<Listing>& listing, Revnum youngest) {
    listing->youngest = youngest;
    auto cached = state_->listed.find(listing->key);
    if (cached != state_->listed.end() && cached->second.youngest == youngest) {
      state_->upstream_youngest[listing->url] = youngest;
      return later(std::move(listing->done), cached->second.heads);
    }
    listRound(listing);
  }

  void listRound(const std::shared_ptr<Listing>& listing) {
    auto targets = listing->search.targets();
    if (targets.empty()) return finishListing(listing);
    // Every target at the same revision: one consistent answer, cacheable
    // against that revision.
    std::vector<std::string> argv = state_->svn("svn", "list", {"--xml", "--"});
    std::string peg = "@" + std::to_string(listing->youngest);
    for (const auto& t : targets) argv.push_back(joinUrl(listing->url, t) + peg);
    std::weak_ptr<State> weak = state_;
    state_->start(
        spec(std::move(argv), kPollTimeout), [this, weak, listing, targets](ProcessResult r) {
          if (!weak.lock()) return;
          bool some_missing = !r.ok() && r.started && r.exit_code == 1 && !r.timed_out &&
                              !r.output_truncated && onlyMissingTargets(r.err);
          if (!r.ok() && !some_missing)
            return listing->done(failure("svn list " + listing->url, r));
          auto lists = parseLists(r.out);
          if (!lists)
            return listing->done(Error{"svn list " + listing->url + ": " + lists.error().message});
          if (lists->size() != targets.size())
            return listing->done(Error{"svn list " + listing->url + " listed " +
                                       std::to_string(lists->size()) + " of " +
                                       std::to_string(targets.size()) + " directories"});
          // The URL itself is the first target of the first round. Empty and
          // possibly missing: ask svn which, so that a wrong URL is an error
          // rather than a repository without branches.
          if (some_missing && targets.front().empty() && lists->front().empty())
            return checkUrl(listing, std::move(*lists));
          listing->search.feed(*lists);
          listRound(listing);
        });
  }

  void checkUrl(const std::shared_ptr<Listing>& listing, std::vector<BranchSearch::Listing> lists) {
    std::string at = "@" + std::to_string(listing->youngest);
    std::weak_ptr<State> weak = state_;
    state_->start(spec(state_->svn("svn", "info", {"--show-item", "kind", "--", listing->url + at}),
                       kPollTimeout),
                  [this, weak, listing, lists = std::move(lists), at](ProcessResult r) {
                    if (!weak.lock()) return;
                    if (!r.ok())
                      return listing->done(
                          failure("svn repository URL " + listing->url + " (at revision " +
                                      at.substr(1) + ") does not exist or cannot be read: svn info",
                                  r));
                    listing->search.feed(lists);
                    listRound(listing);
                  });
  }

  void finishListing(const std::shared_ptr<Listing>& listing) {
    if (!listing->search.refused().empty()) {
      std::string names;
      for (const auto& n : listing->search.refused())
        names += (names.empty() ? "'" : ", '") + n + "'";
      host_.log(LogLevel::warning,
                listing->url + ": ignoring directories whose names are refused: " + names);
    }
    auto heads = listing->search.heads();
    state_->listed[listing->key] = State::Listed{listing->youngest, heads};
    state_->upstream_youngest[listing->url] = listing->youngest;
    listing->done(std::move(heads));
  }

  Host& host_;
  std::shared_ptr<State> state_;
};

std::unique_ptr<Vcs> makeSvnVcs(Host& host) { return std::make_unique<SvnVcs>(host); }

}  // namespace

const PluginDescriptor& describe() {
  static const PluginDescriptor d{.abi_version = kPluginAbiVersion,
                                  .kind = PluginKind::vcs,
                                  .name = "svn",
                                  .version = "1.0",
                                  .description = "Subversion, through svn and an svnsync mirror",
                                  .make_vcs = &makeSvnVcs,
                                  .make_step = nullptr};
  return d;
}

}  // namespace pefnos::svn

PEFNOS_PLUGIN(pefnos::svn::describe)
