// The source step: the worker unpacks the build's source tree (the master's
// proxy exports it through the VCS plugin) into the build directory or cwd.
//   {"type": "source", "cwd": "src"}
#include "outcome.h"
#include "parameters.h"
#include "pefnos/plugin.h"

namespace pefnos::steps::source {
namespace {

Result<StepCommand> unpack(const StepContext& context) {
  Parameters p("source", context.params_json);
  StepCommand command;
  command.unpack_source = true;
  command.cwd = p.relativePath("cwd");
  if (auto done = p.finish(); !done) return done.error();
  return command;
}

class SourceStep : public Step {
 public:
  Result<std::vector<StepCommand>> plan(const StepContext& context) override {
    auto command = unpack(context);
    if (!command) return command.error();
    return std::vector<StepCommand>{std::move(*command)};
  }

  StepResult interpret(const StepContext& context,
                       const std::vector<CommandOutcome>& outcomes) override {
    auto command = unpack(context);
    if (!command)
      return result(StepState::error, nlohmann::json::object(), command.error().message);
    if (outcomes.empty())
      return result(StepState::failed, nlohmann::json::object(), "the source was not unpacked");
    const CommandOutcome& o = outcomes.front();
    if (succeeded(o))
      return result(StepState::succeeded, nlohmann::json::object(), "source unpacked");
    return result(
        StepState::failed, nlohmann::json::object(),
        o.message.empty() ? describe(*command, o) : "unpacking the source failed: " + o.message);
  }
};

std::unique_ptr<Step> makeSourceStep(Host&) { return std::make_unique<SourceStep>(); }

}  // namespace

const PluginDescriptor& descriptor() {
  static const PluginDescriptor d{.abi_version = kPluginAbiVersion,
                                  .kind = PluginKind::step,
                                  .name = "source",
                                  .version = "1.0",
                                  .description = "Unpacks the build's source tree",
                                  .make_vcs = nullptr,
                                  .make_step = &makeSourceStep};
  return d;
}

}  // namespace pefnos::steps::source

PEFNOS_PLUGIN(pefnos::steps::source::descriptor)
