#include <signal.h>

#include <algorithm>

#include "core/base/log.h"
#include "core/loop/loop.h"
#include "core/plugin/plugin.h"

extern char** environ;

namespace pefnos::plugin {
namespace {
constexpr size_t kErrTail = 16 * 1024;  // what is kept of stderr for messages

std::vector<std::string> environmentWith(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string entry(*e);
    std::string key = entry.substr(0, entry.find('='));
    bool overridden = std::any_of(extra.begin(), extra.end(), [&](const std::string& x) {
      return x.compare(0, key.size() + 1, key + "=") == 0;
    });
    if (!overridden) env.push_back(std::move(entry));
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}
}  // namespace

// One running program: the loop::Process, its timeout, what it printed.
class ProcessHost::Child : public Running, public std::enable_shared_from_this<Child> {
 public:
  Child(ProcessHost& host, ProcessSpec spec, std::function<void(std::string_view)> on_out,
        std::function<void(ProcessResult)> done)
      : host_(host), spec_(std::move(spec)), on_out_(std::move(on_out)), done_(std::move(done)),
        timer_(host.loop_) {}

  void start() {
    loop::ProcessOptions o;
    o.argv = spec_.argv;
    o.env = environmentWith(spec_.env);
    o.cwd = spec_.cwd.empty() ? "/" : spec_.cwd;
    if (spec_.stdin_pipe) o.in = loop::ProcessOptions::Stdio::pipe;
    loop::Process::Callbacks cb;
    // Weak: a Child gone (host destroyed) must not be called.
    std::weak_ptr<Child> weak = shared_from_this();
    cb.on_stdout = [weak](std::string_view chunk) {
      if (auto self = weak.lock()) self->onStdout(chunk);
    };
    cb.on_stderr = [weak](std::string_view chunk) {
      if (auto self = weak.lock()) {
        self->result_.err.append(chunk);
        if (self->result_.err.size() > 2 * kErrTail) self->result_.err.erase(0, self->result_.err.size() - kErrTail);
      }
    };
    cb.on_exit = [weak](int64_t status, int signal) {
      if (auto self = weak.lock()) self->finish(static_cast<int>(status), signal);
    };
    auto spawned = loop::Process::spawn(host_.loop_, std::move(o), std::move(cb));
    if (!spawned) {
      // Reported from the loop, not from inside run(): callers need not be re-entrant.
      result_.err = spawned.error().message;
      timer_.start(0, 0, [weak] {
        if (auto self = weak.lock()) self->finish(-1, 0);
      });
      return;
    }
    process_ = std::move(spawned.value());
    result_.started = true;
    if (spec_.timeout_seconds > 0) {
      timer_.start(static_cast<uint64_t>(spec_.timeout_seconds) * 1000, 0, [weak] {
        if (auto self = weak.lock()) {
          self->result_.timed_out = true;
          self->kill();
        }
      });
    }
  }

  void pause() override {
    if (process_) process_->pauseOutput();
  }
  void resume() override {
    if (process_) process_->resumeOutput();
  }
  void kill() override {
    if (process_) (void)process_->kill(SIGKILL);
  }
  void write(std::string data, std::function<void(bool)> written) override {
    auto report = [this, written](bool ok) {
      if (written) host_.post([written, ok] { written(ok); });  // never inside write()
    };
    if (!process_ || !spec_.stdin_pipe || finished_) return report(false);
    auto status = process_->writeStdin(std::move(data), [written](Status s) {
      if (written) written(static_cast<bool>(s));
    });
    if (!status) report(false);
  }
  void closeInput() override {
    if (process_ && spec_.stdin_pipe && !finished_) (void)process_->closeStdin();
  }

 private:
  void onStdout(std::string_view chunk) {
    if (on_out_) return on_out_(chunk);
    if (result_.out.size() + chunk.size() > spec_.max_output) {
      result_.output_truncated = true;
      kill();
      return;
    }
    result_.out.append(chunk);
  }

  void finish(int status, int signal) {
    finished_ = true;
    timer_.stop();
    result_.exit_code = status;
    result_.signal = signal;
    auto self = shared_from_this();  // lives until the end of this call
    host_.active_.erase(self);
    auto done = std::move(done_);
    if (done) done(std::move(result_));
  }

  ProcessHost& host_;
  ProcessSpec spec_;
  std::function<void(std::string_view)> on_out_;
  std::function<void(ProcessResult)> done_;
  loop::Timer timer_;
  std::unique_ptr<loop::Process> process_;
  ProcessResult result_;
  bool finished_ = false;
};

ProcessHost::ProcessHost(uv_loop_t* loop)
    : loop_(loop), posted_timer_(std::make_unique<loop::Timer>(loop)) {}

void ProcessHost::post(std::function<void()> fn) {
  posted_.push_back(std::move(fn));
  if (posted_.size() > 1) return;
  posted_timer_->start(0, 0, [this] {
    auto batch = std::move(posted_);
    posted_.clear();
    for (auto& f : batch) f();
  });
}

ProcessHost::~ProcessHost() {
  for (const auto& child : active_) child->kill();
  active_.clear();
}

std::shared_ptr<Running> ProcessHost::start(ProcessSpec spec,
                                            std::function<void(std::string_view)> on_out,
                                            std::function<void(ProcessResult)> done) {
  auto child = std::make_shared<Child>(*this, std::move(spec), std::move(on_out), std::move(done));
  active_.insert(child);
  child->start();
  return child;
}

std::shared_ptr<Running> ProcessHost::run(ProcessSpec spec, std::function<void(ProcessResult)> done) {
  return start(std::move(spec), nullptr, std::move(done));
}

std::shared_ptr<Running> ProcessHost::stream(ProcessSpec spec,
                                             std::function<void(std::string_view)> on_out,
                                             std::function<void(ProcessResult)> done) {
  if (!on_out) on_out = [](std::string_view) {};
  return start(std::move(spec), std::move(on_out), std::move(done));
}

void ProcessHost::log(LogLevel level, std::string_view message) {
  static const log::Level levels[] = {log::Level::debug, log::Level::info, log::Level::warning,
                                      log::Level::error};
  log::line(levels[static_cast<int>(level)], "plugin", message);
}

}  // namespace pefnos::plugin
