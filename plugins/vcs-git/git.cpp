// The git VCS plugin: every operation is one git process (two when a proxy is
// first used) that the host runs; this file only builds argv and reads output.
//
// Safety: names and revisions reach git as argv elements after validation
// (git_parse.h); URLs follow --end-of-options; git never prompts. Nothing
// here blocks the loop beyond a stat and a one-line write when a proxy is made.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "git_parse.h"
#include "pefnos/plugin.h"
#include "pefnos/plugin_support.h"

namespace pefnos::git {
namespace {

constexpr int kNetworkTimeout = 3600;  // a first fetch of a big upstream is slow
constexpr int kLocalTimeout = 300;

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
  std::vector<std::string> env_;
  std::set<std::string> ready_;  // proxies made or seen by this object
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
      if (auto self = weak.lock(); self && !heads.refused.empty()) {
        std::string names;
        for (const auto& n : heads.refused) names += (names.empty() ? "'" : ", '") + n + "'";
        self->host().log(LogLevel::warning,
                         url + ": ignoring branches whose names git refuses: " + names);
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
