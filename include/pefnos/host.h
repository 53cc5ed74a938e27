// Part of the plugin API: what the pefnos host offers a plugin.
//
// A plugin never blocks the daemon's loop and never starts a shell: it asks
// the host to run programs (argv only) and is called back on the loop thread
// with their output. Every callback a plugin receives runs on the loop thread.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pefnos {

struct ProcessSpec {
  std::vector<std::string> argv{};  // argv[0] is looked up in PATH; never a shell
  std::vector<std::string> env{};   // "NAME=value" entries added to the host's environment
  std::string cwd{};                // empty: "/" (never wherever the daemon happened to start)
  size_t max_output = 64u << 20;  // run(): output beyond this fails the run (stream(): ignored)
  int timeout_seconds = 600;      // then the process is killed and timed_out is set; 0: none
  // The program reads what the plugin writes (Running::write); otherwise its
  // stdin is /dev/null. For long-lived helpers speaking a line protocol, and
  // for programs fed a stream (fast-import).
  bool stdin_pipe = false;
};

struct ProcessResult {
  bool started = false;  // false: the program could not be started (see err)
  int exit_code = -1;
  int signal = 0;
  bool timed_out = false;
  bool output_truncated = false;
  std::string out;  // run() only
  std::string err;  // the end of stderr (or why it could not start)

  bool ok() const { return started && exit_code == 0 && signal == 0 && !timed_out && !output_truncated; }
  // "git ls-remote exited with 128: fatal: ..." for error messages.
  std::string describe(const std::string& what) const;
};

// A process that is running; lets its owner apply back-pressure or stop it.
class Running {
 public:
  virtual ~Running() = default;
  virtual void pause() = 0;   // stop reading its output until resume()
  virtual void resume() = 0;
  virtual void kill() = 0;    // SIGKILL; done still runs, with the signal
  // With spec.stdin_pipe: queues data for the program's stdin. written (if
  // given) runs on the loop once the data is in the pipe, with false if the
  // program is gone; a writer waits for it before writing more (back-pressure).
  virtual void write(std::string data, std::function<void(bool written)> written = nullptr) = 0;
  virtual void closeInput() = 0;  // EOF for the program, after what was queued
};

enum class LogLevel { debug, info, warning, error };

class Host {
 public:
  virtual ~Host() = default;
  // Runs the program and hands its collected stdout and stderr to done.
  virtual std::shared_ptr<Running> run(ProcessSpec spec, std::function<void(ProcessResult)> done) = 0;
  // Runs the program and hands its stdout to on_out chunk by chunk, as it comes.
  virtual std::shared_ptr<Running> stream(ProcessSpec spec,
                                          std::function<void(std::string_view)> on_out,
                                          std::function<void(ProcessResult)> done) = 0;
  virtual void log(LogLevel level, std::string_view message) = 0;
  // Runs fn on the loop thread soon, never inside this call: how a plugin
  // reports an error found before any process started without re-entering
  // its caller.
  virtual void post(std::function<void()> fn) = 0;
};

inline std::string ProcessResult::describe(const std::string& what) const {
  std::string s = what;
  if (!started) return s + " could not start: " + err;
  if (timed_out) s += " timed out";
  else if (signal != 0) s += " was killed by signal " + std::to_string(signal);
  else if (output_truncated) s += " printed more output than allowed";
  else s += " exited with " + std::to_string(exit_code);
  std::string tail = err;
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
  if (!tail.empty()) s += ": " + tail;
  return s;
}

}  // namespace pefnos
