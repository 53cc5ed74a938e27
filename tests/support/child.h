// A child process for integration tests: argv only (posix_spawn, no shell),
// stdout and stderr captured to a file, killed and reaped on destruction.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace pefnos::test {

// True in the sanitizer build (scripts/test's second pass). There a process's
// memory is mostly AddressSanitizer's (shadow, quarantine), so the memory
// bounds are checked in the plain build only; everything else is the same.
#ifdef PEFNOS_SANITIZED
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif

class Child {
 public:
  explicit Child(std::vector<std::string> argv, std::vector<std::string> extra_env = {});
  ~Child();  // SIGKILL if still running
  Child(const Child&) = delete;  // owns a process
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  // Everything the child wrote to stdout and stderr so far.
  std::string output() const;
  // Sends signum and waits for the exit; nullopt if it did not exit in time.
  std::optional<int> stop(int signum, std::chrono::milliseconds timeout);
  // The exit status (or 128 + signal) once it has exited, nullopt while it runs.
  std::optional<int> exited();
  bool waitOutput(const std::string& needle, std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::string log_path_;
};

// Polls pred every 20 ms until it holds or timeout passes.
bool waitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

// Runs a command to completion: {exit status, stdout+stderr}.
std::pair<int, std::string> run(std::vector<std::string> argv);

}  // namespace pefnos::test

namespace pefnos::test {

// A temporary directory under /tmp, searchable by PostgreSQL's server user
// (mode 0755), removed with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "pefnos");
  ~TempDir();
  TempDir(const TempDir&) = delete;  // owns a directory
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace pefnos::test
