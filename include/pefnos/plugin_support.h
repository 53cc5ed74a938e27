// Part of the plugin SDK: inline helpers for plugins that run programs through
// the Host. Compiled into each plugin; nothing here crosses the plugin ABI.
//
// The rule they keep: once the plugin object that owns them is gone, no
// callback it handed out runs. Every callback handed to the Host holds these
// helpers weakly and does nothing once they are destroyed; they never block
// and never call back from inside the call that started the work.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "pefnos/host.h"
#include "pefnos/result.h"

namespace pefnos::support {

// What of a program's stderr goes into an Error: enough for its message,
// not a whole log.
inline constexpr size_t kStderrTail = 2000;

// The end of err, at most limit bytes, starting at a line.
inline std::string stderrTail(std::string err, size_t limit = kStderrTail) {
  if (err.size() > limit) {
    err.erase(0, err.size() - limit);
    if (size_t nl = err.find('\n'); nl != std::string::npos) err.erase(0, nl + 1);
  }
  return err;
}

// "git fetch URL exited with 128: fatal: …", with only the end of stderr.
inline Error failure(const std::string& what, ProcessResult r) {
  r.err = stderrTail(std::move(r.err));
  return Error{r.describe(what)};
}

// Calls done(value) on the loop soon, never inside this call (callers need
// not be re-entrant), unless owner is gone by then.
template <class Owner, class Done, class Value>
void later(Host& host, std::weak_ptr<Owner> owner, Done done, Value value) {
  host.post([owner = std::move(owner), done = std::move(done), value = std::move(value)]() mutable {
    if (owner.lock()) done(std::move(value));
  });
}

// A proxy's path as a key: "p/", "p//" and "p" are one directory.
inline std::string proxyKey(const std::string& proxy) {
  std::string key = std::filesystem::path(proxy).lexically_normal().string();
  while (key.size() > 1 && key.back() == '/') key.pop_back();
  return key;
}

// The processes a plugin object started through the Host. Their callbacks
// run only while this object lives; it kills those still running when it is
// destroyed (or on killAll()).
class Processes {
 public:
  explicit Processes(Host& host) : tracked_(std::make_shared<Tracked>(host)) {}
  ~Processes() { killAll(); }
  Processes(const Processes&) = delete;  // owns running processes
  Processes& operator=(const Processes&) = delete;

  // Host::run, or Host::stream when on_out is given (stdout goes to it
  // instead of being collected); done is dropped if this object is gone.
  std::shared_ptr<Running> start(ProcessSpec spec, std::function<void(ProcessResult)> done,
                                 std::function<void(std::string_view)> on_out = nullptr) {
    auto tracked = tracked_;  // held: a done called at once may destroy this object
    uint64_t id = ++tracked->last_id;
    tracked->running[id];  // before starting: done may come at once and erase it
    std::weak_ptr<Tracked> weak = tracked;
    auto finished = [weak, id, done = std::move(done)](ProcessResult r) {
      auto self = weak.lock();
      if (!self) return;
      self->running.erase(id);
      done(std::move(r));
    };
    std::shared_ptr<Running> running;
    if (on_out) {
      auto out = [weak, on_out = std::move(on_out)](std::string_view chunk) {
        if (weak.lock()) on_out(chunk);
      };
      running = tracked->host.stream(std::move(spec), std::move(out), std::move(finished));
    } else {
      running = tracked->host.run(std::move(spec), std::move(finished));
    }
    if (auto it = tracked->running.find(id); it != tracked->running.end()) it->second = running;
    return running;
  }

  // Kills every process still running; their done callbacks still run
  // (with the signal) while this object lives.
  void killAll() {
    auto running = std::move(tracked_->running);
    tracked_->running.clear();
    for (auto& [id, weak] : running)
      if (auto r = weak.lock()) r->kill();
  }

 private:
  struct Tracked {
    explicit Tracked(Host& h) : host(h) {}
    Host& host;
    uint64_t last_id = 0;
    std::map<uint64_t, std::weak_ptr<Running>> running;
  };
  std::shared_ptr<Tracked> tracked_;
};

// Jobs run one after the other per key (a proxy that two writers must not
// touch at once), in the order given. A job is called with release, which
// it calls once when it is finished; the next job of that key starts then.
// Jobs not started when this object is destroyed never start.
class SerialJobs {
 public:
  using Job = std::function<void(std::function<void()> release)>;

  SerialJobs() = default;
  SerialJobs(const SerialJobs&) = delete;  // releases handed out refer to this queue
  SerialJobs& operator=(const SerialJobs&) = delete;

  void serialise(const std::string& key, Job job) {
    auto& queue = (*queues_)[key];
    queue.push_back(std::move(job));
    if (queue.size() == 1) startFront(queues_, key);
  }

 private:
  using Queues = std::map<std::string, std::deque<Job>>;  // the front one runs

  static void startFront(std::shared_ptr<Queues> queues, const std::string& key) {
    // Moved out: the slot stays (empty, meaning "running") until release pops it.
    Job job = std::move((*queues)[key].front());
    std::weak_ptr<Queues> weak = queues;
    job([weak, key, released = std::make_shared<bool>(false)] {
      auto self = weak.lock();
      if (!self || *released) return;  // copies of release share the flag: one pop per job
      *released = true;
      auto& queue = (*self)[key];
      queue.pop_front();
      if (queue.empty())
        self->erase(key);
      else
        startFront(self, key);
    });
  }

  std::shared_ptr<Queues> queues_ = std::make_shared<Queues>();
};

}  // namespace pefnos::support
