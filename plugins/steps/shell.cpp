// The shell step: runs one program, given as argv or as a script of the
// source tree, never through a shell.
//   {"type": "shell", "argv": ["make", "check"]}
//   {"type": "shell", "script": "ci/test.sh", "env": {"LANG": "C"},
//    "secret_env": {"TOKEN": "..."}, "warnings_regex": "^WARN"}
//   {"type": "shell", "script": "ci/lint.py", "interpreter": ["python3"]}
#include <filesystem>

#include "outcome.h"
#include "parameters.h"
#include "pefnos/plugin.h"

namespace pefnos::steps::shell {
namespace {

constexpr long long kMostOutput = 1LL << 40;

// The script's path as seen from cwd (both relative to the build directory),
// starting with "./" or "../" so that neither a PATH lookup nor an option
// parser can take it for something else.
std::string scriptFrom(const std::string& cwd, const std::string& script) {
  std::string path = std::filesystem::path(script).lexically_normal().generic_string();
  std::string up;
  for (const auto& part : std::filesystem::path(cwd).lexically_normal()) {
    if (!part.empty() && part != ".") up += "../";
  }
  return (up.empty() ? "./" : up) + path;
}

struct ShellPlan {
  StepCommand command;
  bool counts_warnings = false;
};

Result<ShellPlan> planShell(const StepContext& context) {
  Parameters p("shell", context.params_json);
  ShellPlan plan;
  StepCommand& c = plan.command;
  auto argv = p.texts("argv", {}, /*non_empty=*/true);
  auto script = p.text("script");
  auto interpreter = p.texts("interpreter", {}, /*non_empty=*/true);
  c.env = p.environment("env");
  c.secret_env = p.environment("secret_env");
  c.cwd = p.relativePath("cwd");
  c.timeout_seconds = static_cast<int>(p.positive("timeout", c.timeout_seconds));
  c.max_output = static_cast<size_t>(p.positive("max_output", c.max_output, kMostOutput));
  c.collect_regex = p.regex("warnings_regex");
  plan.counts_warnings = !c.collect_regex.empty();

  if (p.has("argv") == p.has("script")) {
    p.fail("give exactly one of 'argv' (a program and its arguments) and 'script'");
  } else if (p.has("argv")) {
    if (p.has("interpreter")) p.refuse("interpreter", "goes with 'script', not with 'argv'");
    if (!argv.empty() && argv.front().empty()) p.refuse("argv", "must start with a program name");
    c.argv = std::move(argv);
  } else if (script.empty() || !isInsideBuildDirectory(script) || script.back() == '/') {
    p.refuse("script", "must be a file inside the build directory (relative, without \"..\"): \"" +
                           script + "\"");
  } else {
    c.argv = std::move(interpreter);  // empty without one: the script is the program
    c.argv.push_back(scriptFrom(c.cwd, script));
  }
  for (const auto& secret : c.secret_env) {
    std::string name = secret.substr(0, secret.find('='));
    for (const auto& entry : c.env) {
      if (entry.substr(0, entry.find('=')) == name) {
        p.refuse("secret_env", "repeats \"" + name + "\", which 'env' sets too");
      }
    }
  }
  if (auto done = p.finish(); !done) return done.error();
  return plan;
}

class ShellStep : public Step {
 public:
  Result<std::vector<StepCommand>> plan(const StepContext& context) override {
    auto plan = planShell(context);
    if (!plan) return plan.error();
    return std::vector<StepCommand>{std::move(plan->command)};
  }

  StepResult interpret(const StepContext& context,
                       const std::vector<CommandOutcome>& outcomes) override {
    auto plan = planShell(context);
    auto summary = nlohmann::json::object();
    if (!plan) return result(StepState::error, summary, plan.error().message);
    const StepCommand& command = plan->command;
    if (outcomes.empty())
      return result(StepState::failed, summary, label(command) + " did not run");
    const CommandOutcome& o = outcomes.front();
    bool exited = !o.not_started && !o.timed_out && !o.output_limited && o.signal == 0;
    if (exited) summary["exit_code"] = o.exit_code;
    if (plan->counts_warnings) summary["warnings"] = o.collected.size();
    if (!succeeded(o)) return result(StepState::failed, summary, describe(command, o));
    if (plan->counts_warnings && !o.collected.empty()) {
      return result(StepState::warnings, summary,
                    label(command) + ": " + std::to_string(o.collected.size()) +
                        (o.collected.size() == 1 ? " line" : " lines") +
                        " matched 'warnings_regex'");
    }
    return result(StepState::succeeded, summary, describe(command, o));
  }
};

std::unique_ptr<Step> makeShellStep(Host&) { return std::make_unique<ShellStep>(); }

}  // namespace

const PluginDescriptor& descriptor() {
  static const PluginDescriptor d{.abi_version = kPluginAbiVersion,
                                  .kind = PluginKind::step,
                                  .name = "shell",
                                  .version = "1.0",
                                  .description = "Runs a program or a script of the source tree",
                                  .make_vcs = nullptr,
                                  .make_step = &makeShellStep};
  return d;
}

}  // namespace pefnos::steps::shell

PEFNOS_PLUGIN(pefnos::steps::shell::descriptor)
