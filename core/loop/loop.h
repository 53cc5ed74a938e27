// The loop room: one C++ owner per libuv handle. Each object owns a heap impl
// holding the handle; its destructor drops the user callbacks and starts
// uv_close, and the impl is freed only in the close callback. Objects may be
// destroyed at any time, even from inside their own callbacks. Errors come back
// as values; nothing here throws through libuv, and nothing here blocks the
// loop (except runToCompletion, which runs its own private loop).
//
// The daemon must ignore SIGPIPE: a write to a vanished peer or child must
// become an EPIPE error, not kill the process.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/base/result.h"

namespace pefnos::loop {

class Timer {
 public:
  explicit Timer(uv_loop_t* loop);
  ~Timer();
  Timer(const Timer&) = delete;  // owns a libuv handle
  Timer& operator=(const Timer&) = delete;

  // Fires after timeout_ms, then every repeat_ms (0: once). Restarting replaces the callback.
  void start(uint64_t timeout_ms, uint64_t repeat_ms, std::function<void()> on_fire);
  void stop();
  bool active() const;
  void unref();  // does not keep the loop alive

 private:
  struct Impl;
  Impl* impl_;
};

class Signal {
 public:
  explicit Signal(uv_loop_t* loop);
  ~Signal();
  Signal(const Signal&) = delete;
  Signal& operator=(const Signal&) = delete;

  Status start(int signum, std::function<void(int signum)> on_signal);
  void stop();
  void unref();

 private:
  struct Impl;
  Impl* impl_;
};

// Watches an fd it does not own; the caller closes the fd after destroying the Poll.
class Poll {
 public:
  Poll(uv_loop_t* loop, int fd);
  ~Poll();
  Poll(const Poll&) = delete;
  Poll& operator=(const Poll&) = delete;

  // events: UV_READABLE | UV_WRITABLE ...; status < 0 is a libuv error code.
  Status start(int events, std::function<void(int status, int events)> on_event);
  void stop();
  void unref();

 private:
  struct Impl;
  Impl* impl_;
};

// Wakes the loop from any thread. Several send()s may fold into one callback.
class Async {
 public:
  Async(uv_loop_t* loop, std::function<void()> on_wake);
  ~Async();
  Async(const Async&) = delete;
  Async& operator=(const Async&) = delete;

  void send();            // thread-safe; a no-op if status() is an error
  Status status() const;  // an error only if the handle could not be created (no fds left)
  void unref();

 private:
  struct Impl;
  Impl* impl_;
};

// Runs functions posted from any thread on the loop thread, in posting order.
// Destroying the Mailbox drops what has not run yet. Threads that post must
// stop before the Mailbox is destroyed.
class Mailbox {
 public:
  explicit Mailbox(uv_loop_t* loop);
  ~Mailbox();
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  void post(std::function<void()> fn);
  Status status() const { return async_.status(); }
  void unref() { async_.unref(); }

 private:
  struct Queue;
  std::shared_ptr<Queue> queue_;  // shared with the wake callback, which may outlive *this
  Async async_;
};

// Members have initialisers so that callers can name only what they set: {.argv = {...}}.
struct ProcessOptions {
  enum class Stdio { ignore, pipe, inherit };
  std::vector<std::string> argv{};  // argv[0] is the program (PATH is searched); never a shell
  std::optional<std::vector<std::string>> env{};  // "NAME=value" entries; nullopt inherits ours
  std::string cwd{};                              // empty: ours
  std::optional<uid_t> uid{};
  std::optional<gid_t> gid{};
  bool detached = false;  // own session: survives us, not hit by our terminal's signals
  Stdio in = Stdio::ignore, out = Stdio::pipe, err = Stdio::pipe;
  int out_fd = -1, err_fd = -1;  // if >= 0, the child's stdout/stderr go there (overrides out/err)
};

// A child process. Destroying the object does NOT kill the child: it closes the
// handle and pipes, and the child is no longer reaped by us (a detached child
// that outlives us is adopted by init). Kill first if that is what you want.
class Process {
 public:
  struct Callbacks {
    std::function<void(std::string_view chunk)> on_stdout{};
    std::function<void(std::string_view chunk)> on_stderr{};
    // Once, after the child exited and its stdout/stderr pipes reached EOF.
    std::function<void(int64_t exit_status, int term_signal)> on_exit{};
  };

  struct Impl;  // opaque; named only by process.cpp

  static Result<std::unique_ptr<Process>> spawn(uv_loop_t* loop, ProcessOptions options,
                                                Callbacks callbacks);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  int pid() const;
  Status kill(int signum);
  // Needs in == pipe. If it returns an Error, done is never called.
  Status writeStdin(std::string data, std::function<void(Status)> done);
  Status closeStdin();  // EOF for the child, after queued writes
  void unref();         // a detached daemon child does not keep the loop alive
  // Back-pressure: stop reading the child's stdout and stderr (it blocks once
  // a pipe is full) until resumeOutput().
  void pauseOutput();
  void resumeOutput();

 private:
  Process();
  Impl* impl_;
};

struct CommandOutput {
  int64_t exit_status = 0;
  int term_signal = 0;
  std::string out, err;
};

// For set-up code before or outside the main loop: blocks until the command
// exited, on a private loop. Never call it on the daemon's loop thread. stdin is
// not piped (in == pipe is treated as ignore).
Result<CommandOutput> runToCompletion(ProcessOptions options);

// A connected TCP stream, from TcpServer or TcpStream::connect.
class TcpStream {
 public:
  ~TcpStream();
  TcpStream(const TcpStream&) = delete;
  TcpStream& operator=(const TcpStream&) = delete;

  // Host is a numeric IPv4/IPv6 address (name resolution is the caller's job).
  // connected runs once, later, unless connect() itself returns an Error.
  static Status connect(uv_loop_t* loop, const std::string& host, int port,
                        std::function<void(Result<std::unique_ptr<TcpStream>>)> connected);

  // on_end gets ok() at EOF or the read error; reading stops then.
  Status read(std::function<void(std::string_view)> on_data, std::function<void(Status)> on_end);
  void stopReading();  // back-pressure: pause until resumeReading()
  Status resumeReading();
  // If it returns an Error, done is never called; done may be empty.
  Status write(std::string data, std::function<void(Status)> done);
  size_t writeQueueSize() const;    // bytes queued, not yet handed to the kernel
  const std::string& peer() const;  // "address:port"

 private:
  friend class TcpServer;
  struct Impl;
  explicit TcpStream(uv_loop_t* loop);
  Impl* impl_;
};

class TcpServer {
 public:
  // Port 0 picks a free port; port() tells which.
  static Result<std::unique_ptr<TcpServer>> listen(
      uv_loop_t* loop, const std::string& host, int port,
      std::function<void(std::unique_ptr<TcpStream>)> on_connection);
  ~TcpServer();
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  int port() const;

 private:
  struct Impl;
  explicit TcpServer(uv_loop_t* loop);
  Impl* impl_;
};

// Shared by this room's .cpp files; not for callers.
namespace detail {

void logCallbackException(const char* source) noexcept;

// Runs a user callback from inside a libuv callback. f is a copy, so the
// callable survives even if it destroys its owner (which clears the original).
// An exception must not unwind through libuv's C frames: it is logged instead.
template <class F, class... Args>
void callSafely(const char* source, F f, Args&&... args) noexcept {
  if (!f) return;
  try {
    f(std::forward<Args>(args)...);
  } catch (...) {
    logCallbackException(source);
  }
}

// Closes impl->handle and deletes impl in the close callback (or now, if the
// handle was never initialised).
template <class Impl>
void closeAndDelete(Impl* impl) {
  if (impl->init_rc != 0) {
    delete impl;
    return;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&impl->handle),
           [](uv_handle_t* h) { delete static_cast<Impl*>(h->data); });
}

// Queues data on stream. done runs with the outcome unless *owner_gone is set
// by then; the owner's impl must outlive the request (it does: libuv cancels
// writes before a stream's close callback).
Status writeStream(uv_stream_t* stream, std::string data, std::function<void(Status)> done,
                   const bool* owner_gone, const std::string& target);

std::string uvMessage(const std::string& what, int rc);  // "what: uv_strerror(rc)"

}  // namespace detail
}  // namespace pefnos::loop
