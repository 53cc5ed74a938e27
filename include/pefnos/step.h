// Part of the plugin API: the interface a step plugin implements.
//
// A step turns its JSON parameters and the build's properties into commands
// that a worker runs, then reads their results. It runs on the master, is
// synchronous and cheap (no I/O, no processes): the worker does the work.
// The worker stays simple: it runs commands and streams their output.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "pefnos/result.h"

namespace pefnos {

// What a step knows about the build it is part of. JSON values are passed as
// text so that the API carries no JSON library's types; parse them with any.
struct StepContext {
  std::string params_json = "{}";      // the step's object from builder.steps, "type" included
  std::string properties_json = "{}";  // builder.properties and the request's properties, merged
  std::string repository;              // the repository's name
  std::string vcs;                     // "git", "bzr", "svn"
  std::string branch;                  // may be empty (a forced build of a bare revision)
  std::string revision;
  std::vector<std::string> changed_files;  // of the commits this build is the first to build
  std::map<std::string, std::string> worker_tags;
  // Summaries of this builder's last finished builds on the branch, newest
  // first (each the JSON object the step's interpret() returned), so that a
  // step can re-run what failed last time.
  std::vector<std::string> previous_summaries_json;
};

// One program for the worker to run, in order; a command that fails ends the
// step (the commands marked `always` still run: clean-up).
struct StepCommand {
  std::vector<std::string> argv;  // argv[0] is looked up in the worker's PATH; never a shell
  std::vector<std::string> env;   // "NAME=value" added to the worker's environment
  // Environment that is secret ("NAME=value"): sent only to trusted workers.
  // A step of an untrusted build that asks for secrets fails before it starts.
  std::vector<std::string> secret_env;
  std::string cwd;           // relative to the build directory; "" is the build directory
  int timeout_seconds = 3600;
  size_t max_output = 64u << 20;  // bytes of stdout+stderr; beyond it the command is killed
  // Instead of running argv, the worker unpacks the build's source tree (a tar
  // stream from the master's proxy, through the VCS plugin's exportTree) into cwd.
  bool unpack_source = false;
  bool always = false;  // runs even after an earlier command of the step failed
  // Lines of output matching this ECMAScript regex are kept whole (up to
  // 10,000) for interpret(), wherever they appear in a long output.
  std::string collect_regex;
};

// What the worker reports for each command that ran.
struct CommandOutcome {
  int exit_code = -1;
  int signal = 0;
  bool timed_out = false;
  bool output_limited = false;  // killed for printing more than max_output
  bool not_started = false;     // e.g. the program does not exist on the worker
  std::string message;          // why, when not_started
  std::string output_tail;      // the last bytes of the command's output (up to 64 KiB)
  std::vector<std::string> collected;  // the lines that matched collect_regex, in order
};

enum class StepState { succeeded, warnings, failed, error };

struct StepResult {
  StepState state = StepState::error;
  std::string summary_json = "{}";  // e.g. {"tests": 118, "failed": 0}; shown and kept per step
  std::string message;              // one line for humans: "118 tests, 2 failed"
};

class Step {
 public:
  virtual ~Step() = default;
  // The commands for this build; an Error (invalid parameters, say) fails the
  // step with that message before anything runs.
  virtual Result<std::vector<StepCommand>> plan(const StepContext& context) = 0;
  // The step's result from the outcomes of the commands that ran, in order
  // (fewer than planned when one failed).
  virtual StepResult interpret(const StepContext& context,
                               const std::vector<CommandOutcome>& outcomes) = 0;
};

}  // namespace pefnos
