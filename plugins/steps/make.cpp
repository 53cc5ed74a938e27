// The make step: make -jN with the step's arguments and targets; compiler
// warnings in the output make the result "warnings".
//   {"type": "make", "targets": ["all", "check"], "args": ["V=1"], "jobs": 4}
#include "outcome.h"
#include "parameters.h"
#include "pefnos/plugin.h"

namespace pefnos::steps::make {
namespace {

Result<StepCommand> planMake(const StepContext& context) {
  Parameters p("make", context.params_json);
  auto targets = p.texts("targets");
  auto args = p.texts("args");
  int jobs = p.jobs(context.properties_json);
  StepCommand c;
  c.cwd = p.relativePath("cwd");
  c.timeout_seconds = static_cast<int>(p.positive("timeout", c.timeout_seconds));
  c.collect_regex = kCompilerWarningRegex;
  for (const auto& target : targets) {
    if (target.empty() || target.front() == '-') {
      p.refuse("targets", "has \"" + target + "\", which is no target name (options go in 'args')");
    }
  }
  if (auto done = p.finish(); !done) return done.error();
  c.argv = {"make", "-j" + std::to_string(jobs)};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.argv.insert(c.argv.end(), targets.begin(), targets.end());
  return c;
}

class MakeStep : public Step {
 public:
  Result<std::vector<StepCommand>> plan(const StepContext& context) override {
    auto command = planMake(context);
    if (!command) return command.error();
    return std::vector<StepCommand>{std::move(*command)};
  }

  StepResult interpret(const StepContext& context,
                       const std::vector<CommandOutcome>& outcomes) override {
    auto command = planMake(context);
    if (!command)
      return result(StepState::error, nlohmann::json::object(), command.error().message);
    if (outcomes.empty()) {
      return result(StepState::failed, nlohmann::json::object(), label(*command) + " did not run");
    }
    const CommandOutcome& o = outcomes.front();
    size_t warnings = countCompilerWarnings(o.collected);
    nlohmann::json summary{{"warnings", warnings}};
    if (!succeeded(o)) return result(StepState::failed, summary, describe(*command, o));
    if (warnings > 0) {
      return result(StepState::warnings, summary,
                    std::to_string(warnings) + (warnings == 1 ? " warning" : " warnings"));
    }
    return result(StepState::succeeded, summary, "no warnings");
  }
};

std::unique_ptr<Step> makeMakeStep(Host&) { return std::make_unique<MakeStep>(); }

}  // namespace

const PluginDescriptor& descriptor() {
  static const PluginDescriptor d{.abi_version = kPluginAbiVersion,
                                  .kind = PluginKind::step,
                                  .name = "make",
                                  .version = "1.0",
                                  .description = "Runs make, counting compiler warnings",
                                  .make_vcs = nullptr,
                                  .make_step = &makeMakeStep};
  return d;
}

}  // namespace pefnos::steps::make

PEFNOS_PLUGIN(pefnos::steps::make::descriptor)
