// stamp: an example VCS plugin for pefnos, built outside the pefnos tree
// against the installed SDK (see README.md).
//
// A repository's url is a directory. Each regular text file below it is a
// branch named by its path there ("main", "feature/x"), and the file's first
// line is the branch's head revision. Empty files, files whose first line is
// blank, binary files and hidden names (".swp", ".git/…") are not branches.
// There is no history and no proxy: a revision is its own only commit.
//
// Like every plugin it never blocks the daemon's loop and never starts a
// shell: it asks the host to run grep with argv and parses what grep prints.
#include <pefnos/plugin.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

// The test suite builds a copy with another value to see it refused.
#ifndef STAMP_ABI_VERSION
#define STAMP_ABI_VERSION pefnos::kPluginAbiVersion
#endif

namespace stamp {
namespace {

using namespace pefnos;

// "a/.b/c", ".swp": some component of the path starts with a dot.
bool hiddenPath(std::string_view path) {
  for (size_t at = 0; at <= path.size();) {
    if (path.substr(at, 1) == ".") return true;
    size_t slash = path.find('/', at);
    if (slash == std::string_view::npos) break;
    at = slash + 1;
  }
  return false;
}

// grep -Z prints "PATH\0FIRST LINE\n" for each file; PATH starts with dir + "/".
std::vector<Head> parseHeads(const std::string& dir, std::string_view out) {
  std::vector<Head> heads;
  const std::string prefix = dir == "/" ? dir : dir + "/";
  while (!out.empty()) {
    size_t nul = out.find('\0');
    if (nul == std::string_view::npos) break;
    size_t nl = out.find('\n', nul);
    std::string_view path = out.substr(0, nul);
    std::string_view line =
        out.substr(nul + 1, (nl == std::string_view::npos ? out.size() : nl) - nul - 1);
    out.remove_prefix(nl == std::string_view::npos ? out.size() : nl + 1);

    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
      line.remove_suffix(1);
    }
    if (path.substr(0, prefix.size()) != prefix) continue;
    path.remove_prefix(prefix.size());
    if (path.empty() || line.empty() || hiddenPath(path)) continue;
    heads.push_back({std::string(path), std::string(line)});
  }
  return heads;
}

class StampVcs final : public Vcs {
 public:
  explicit StampVcs(Host& host) : host_(host) {}
  // Callbacks of processes still running find alive_ gone and do nothing.
  ~StampVcs() override {
    alive_.reset();
    for (auto& weak : running_)
      if (auto r = weak.lock()) r->kill();
  }
  StampVcs(const StampVcs&) = delete;  // owns running processes
  StampVcs& operator=(const StampVcs&) = delete;

  void listHeads(const Repo& repo, std::function<void(Result<std::vector<Head>>)> done) override {
    std::string dir = repo.url;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (dir.empty() || dir.front() != '/') {
      return later(std::move(done),
                   Error{"stamp: the url of repository " + std::to_string(repo.id) +
                         " must be an absolute directory path, not '" + repo.url + "'"});
    }
    // -r: every file below dir (symbolic links are not followed); -Z: a NUL
    // after each file name, so names may hold any byte but NUL; -m1 -e '':
    // the first line only; -I: binary files skipped; -D skip: no FIFO or
    // device is ever opened.
    ProcessSpec spec;
    spec.argv = {"grep", "-r", "-Z", "-H", "-I", "-D", "skip", "-m1", "-e", "", "--", dir};
    spec.env = {"LC_ALL=C"};
    spec.timeout_seconds = 60;
    std::weak_ptr<bool> alive = alive_;
    start(std::move(spec), [alive, dir, done = std::move(done)](ProcessResult r) {
      if (alive.expired()) return;
      // grep exits with 1 when it selected no line: a directory without branches.
      if (r.started && r.exit_code == 1 && r.signal == 0 && !r.timed_out && r.err.empty()) {
        return done(std::vector<Head>{});
      }
      if (!r.ok()) return done(Error{r.describe("stamp: grep in " + dir)});
      done(parseHeads(dir, r.out));
    });
  }

  // The files are read where they are: there is nothing to bring in.
  void updateProxy(const Repo&, const std::vector<std::string>&,
                   std::function<void(Status)> done) override {
    later(std::move(done), ok());
  }

  void listCommits(const Repo&, const std::string& to, const std::vector<std::string>&,
                   size_t limit,
                   std::function<void(Result<std::vector<CommitInfo>>)> done) override {
    if (to.empty()) return later(std::move(done), Error{"stamp: no revision given"});
    std::vector<CommitInfo> commits;
    if (limit > 0) {
      CommitInfo c;
      c.revision = to;
      c.message = "stamp " + to;
      commits.push_back(std::move(c));
    }
    later(std::move(done), std::move(commits));
  }

  std::shared_ptr<Running> exportTree(const Repo&, const std::string&,
                                      std::function<void(std::string_view)>,
                                      std::function<void(Status)> done) override {
    later(std::move(done), Error{"exporting a tree is not supported by stamp: it keeps no trees"});
    return nullptr;
  }

  void treeDigest(const Repo&, const std::string&,
                  std::function<void(Result<std::string>)> done) override {
    later(std::move(done), Error{"tree digests are not supported by stamp: it keeps no trees"});
  }

  // Nothing is kept for a repository, so there is nothing to drop.
  void forget(const Repo&, std::function<void(Status)> done) override {
    later(std::move(done), ok());
  }

 private:
  // A result known at once still reaches done from the loop, never from
  // inside the call (callers need not be re-entrant), and never once this
  // object is gone.
  template <class Done, class Value>
  void later(Done done, Value value) {
    host_.post([alive = std::weak_ptr<bool>(alive_), done = std::move(done),
                value = std::move(value)]() mutable {
      if (!alive.expired()) done(std::move(value));
    });
  }
  void start(ProcessSpec spec, std::function<void(ProcessResult)> done) {
    std::erase_if(running_, [](const std::weak_ptr<Running>& r) { return r.expired(); });
    running_.push_back(host_.run(std::move(spec), std::move(done)));
  }

  Host& host_;
  std::vector<std::weak_ptr<Running>> running_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

std::unique_ptr<Vcs> makeStamp(Host& host) { return std::make_unique<StampVcs>(host); }

}  // namespace

// What pefnos reads first: the ABI version these headers carry, then the rest.
const pefnos::PluginDescriptor& describe() {
  static const pefnos::PluginDescriptor d{
      .abi_version = STAMP_ABI_VERSION,
      .kind = pefnos::PluginKind::vcs,
      .name = "stamp",  // what repository rows name: vcs = 'stamp'
      .version = "1.0",
      .description = "branches are the files of a directory, revisions their first line",
      .make_vcs = &makeStamp,
      .make_step = nullptr};
  return d;
}

}  // namespace stamp

PEFNOS_PLUGIN(stamp::describe)
