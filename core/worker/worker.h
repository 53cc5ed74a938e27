// The worker room: `pefnos worker`, the process that runs build commands for a
// master. It connects to the master over TCP, proves its secret
// (core/protocol/auth.h), then does what it is told: make a build directory,
// unpack a source tree streamed to it, run commands (argv only, each in its
// own process group, with a timeout and an output limit) and stream their
// output back, kill a build's commands, remove the directory. It needs no
// access to upstream repositories and keeps no state across connections: when
// the connection drops it kills what it was running and reconnects, telling
// the master which builds it was running so that the master can reconcile.
//
// Back-pressure: when the master reads slowly (its socket queue grows past
// kHighWater), the worker stops reading its commands' output (they block on
// their full pipes) until the queue drains; when an unpacking tar reads
// slowly, the worker stops reading from the master.
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "core/base/result.h"

namespace pefnos::worker {

struct Options {
  std::string master_host = "127.0.0.1";  // a numeric address
  int master_port = 0;
  std::string name;
  std::string secret;
  std::map<std::string, std::string> tags;
  int slots = 1;
  std::string workdir;                 // build directories are made under it
  int heartbeat_seconds = 10;          // silence for 3 × this drops the connection
  int reconnect_max_ms = 5000;         // backoff cap between connection attempts
};

inline constexpr size_t kHighWater = 1u << 20;  // socket bytes queued before pausing output
inline constexpr size_t kTailBytes = 64u << 10;  // output kept for the master's interpreter
inline constexpr size_t kMaxCollected = 10000;   // lines kept for collect_regex

class Worker {
 public:
  Worker(uv_loop_t* loop, Options options);
  ~Worker();  // kills what runs
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Connects (again and again, with backoff, until stop()). on_fatal runs
  // when the master refuses this worker (wrong secret, unknown name, another
  // protocol version): retrying would not help.
  void start(std::function<void(const std::string& reason)> on_fatal);
  // Kills running commands and closes the connection; done runs once all is closed.
  void stop();

  bool connected() const;  // authenticated with the master
  size_t running() const;  // commands running now

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Reads a secret file: its first line, without the newline; refuses an empty
// file and (when refuse_shared) a file that group or others may read.
Result<std::string> readSecretFile(const std::string& path, bool refuse_shared = true);
// Makes a secret file with a random secret, mode 600 from its creation (never
// readable by others, not even for a moment); true if made, false if it was
// already there.
Result<bool> createSecretFile(const std::string& path);

}  // namespace pefnos::worker
