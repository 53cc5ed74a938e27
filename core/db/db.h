// The database room: PostgreSQL for the event loop, never blocking it.
//
// libpqxx calls are synchronous, so every connection lives on its own small
// thread; the loop hands work over and gets results back through a
// loop::Mailbox (uv_async). Each thread reconnects by itself with backoff
// when the server goes away. The loop thread never touches libpq.
//
// Database  runs transactions for the loop (a pool of connection threads).
// Listener  one dedicated LISTEN connection; NOTIFY payloads go to
//           subscribers on the loop thread. After every (re)connection it
//           calls the onListening callbacks: NOTIFY is only a wake-up, so
//           subscribers then catch up from the rows. What it has read and
//           the loop has not yet handled is bounded: past the bound it stops
//           reading, and the server keeps the rest in its NOTIFY queue.
#pragma once

#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "core/base/result.h"
#include "core/loop/loop.h"

namespace pefnos::db {

// What to do with a job whose connection broke under it.
enum class Retry {
  no,              // deliver the error: the caller decides (a claim, say)
  on_reconnect,    // run it again on the next connection (idempotent writes)
};

class Database {
 public:
  struct Options {
    std::string conninfo;
    int connections = 2;
    std::string name = "db";  // for log lines
  };
  Database(uv_loop_t* loop, Options options);
  // Cancels running queries and joins the threads; callbacks not yet run are dropped.
  ~Database();
  Database(const Database&) = delete;  // owns threads and connections
  Database& operator=(const Database&) = delete;

  // Runs fn inside a transaction on a database thread and commits it;
  // done(result) runs on the loop thread. Jobs wait while the server is
  // unreachable. An exception from fn becomes an Error and rolls back.
  template <class R>
  void transact(std::function<R(pqxx::work&)> fn, std::function<void(Result<R>)> done,
                Retry retry = Retry::no) {
    auto slot = std::make_shared<std::optional<Result<R>>>();
    submit(Job{[fn = std::move(fn), slot](pqxx::connection& c) {
                 pqxx::work tx(c);
                 R r = fn(tx);
                 tx.commit();
                 slot->emplace(std::move(r));
               },
               [slot](Error e) { slot->emplace(std::move(e)); },
               [slot, done = std::move(done)] { done(std::move(**slot)); }, retry});
  }

  // Runs fn with the bare connection (it manages its own transactions).
  template <class R>
  void withConnection(std::function<R(pqxx::connection&)> fn, std::function<void(Result<R>)> done,
                      Retry retry = Retry::no) {
    auto slot = std::make_shared<std::optional<Result<R>>>();
    submit(Job{[fn = std::move(fn), slot](pqxx::connection& c) { slot->emplace(fn(c)); },
               [slot](Error e) { slot->emplace(std::move(e)); },
               [slot, done = std::move(done)] { done(std::move(**slot)); }, retry});
  }

  // Jobs submitted and not yet delivered: what back-pressure looks at.
  size_t pending() const { return pending_; }
  bool connected() const { return connected_threads_ > 0; }

 private:
  struct Job {
    std::function<void(pqxx::connection&)> run;
    std::function<void(Error)> fail;
    std::function<void()> deliver;
    Retry retry;
  };
  void submit(Job job);
  void threadMain(int index);

  Options options_;
  loop::Mailbox mailbox_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  std::vector<pqxx::connection*> running_;  // per thread, while a job runs: cancelled on shutdown
  std::vector<std::thread> threads_;
  std::atomic<size_t> pending_{0};
  std::atomic<int> connected_threads_{0};
};

// The bound on notifications a Listener has read and the loop not yet handled.
struct ListenerBound {
  size_t notifications = 10000;
  size_t bytes = 16 << 20;  // of payloads
};

class Listener {
 public:
  using Bound = ListenerBound;
  Listener(uv_loop_t* loop, std::string conninfo, Bound bound = {});
  ~Listener();
  Listener(const Listener&) = delete;  // owns a thread and a connection
  Listener& operator=(const Listener&) = delete;

  // Handlers run on the loop thread. Subscribing to a new channel at any time
  // issues LISTEN on the live connection.
  void subscribe(const std::string& channel, std::function<void(const std::string& payload)>);
  // Called on the loop thread each time every channel is LISTENed again.
  void onListening(std::function<void()> callback);
  // Called on the loop thread when the LISTEN connection is lost, with why.
  void onLost(std::function<void(const std::string& why)> callback);
  void start();
  bool listening() const { return listening_; }
  // Notifications (and their bytes) read and not yet handled; the most
  // there ever were; how often reading paused at the bound.
  size_t queued() const { return queued_; }
  size_t queuedBytes() const { return queued_bytes_; }
  size_t queuedHighWater() const { return queued_high_; }
  size_t pauses() const { return pauses_; }

 private:
  void threadMain();
  void wakeThread();
  bool full() const { return queued_ >= bound_.notifications || queued_bytes_ >= bound_.bytes; }

  std::string conninfo_;
  loop::Mailbox mailbox_;
  std::map<std::string, std::vector<std::function<void(const std::string&)>>> handlers_;
  std::vector<std::function<void()>> on_listening_;
  std::vector<std::function<void(const std::string&)>> on_lost_;

  std::mutex mutex_;  // guards channels_, stopping_, wait_
  std::vector<std::string> channels_;
  bool stopping_ = false;
  std::condition_variable wait_;
  int wake_fd_ = -1;  // eventfd: interrupts the thread's poll()
  std::atomic<bool> listening_{false};
  const Bound bound_;
  std::atomic<size_t> queued_{0}, queued_bytes_{0}, queued_high_{0}, pauses_{0};
  std::atomic<bool> paused_{false};  // the thread waits for the loop to drain
  std::thread thread_;
};

// Connects with libpqxx, retrying with backoff until it works or stop says
// so; logs each failure once per attempt. Returns nullptr when stopped.
std::unique_ptr<pqxx::connection> connectWithRetry(const std::string& conninfo,
                                                   const std::string& who,
                                                   const std::function<bool(int ms)>& sleep_or_stop);

}  // namespace pefnos::db
