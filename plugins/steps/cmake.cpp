// The cmake step: configure, build, and (unless "test": false) ctest, whose
// summary line gives the test counts.
//   {"type": "cmake", "build_type": "Debug", "configure_args": ["-DWITH_X=ON"],
//    "ctest_args": ["-L", "unit"], "jobs": 4}
#include <regex>

#include "outcome.h"
#include "parameters.h"
#include "pefnos/plugin.h"

namespace pefnos::steps::cmake {
namespace {

// ctest's last lines: "83% tests passed, 2 tests failed out of 12", or
// "No tests were found!!!".
constexpr const char* kCtestSummaryRegex =
    "[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+|No tests were found";

// Configure, build, then ctest if asked.
Result<std::vector<StepCommand>> planCMake(const StepContext& context) {
  Parameters p("cmake", context.params_json);
  auto source_dir = p.relativePath("source_dir", ".");
  auto build_dir = p.relativePath("build_dir", "build");
  auto configure_args = p.texts("configure_args");
  auto build_type = p.text("build_type", "RelWithDebInfo");
  int jobs = p.jobs(context.properties_json);
  bool test = p.flag("test", true);
  auto ctest_args = p.texts("ctest_args");
  int timeout = static_cast<int>(p.positive("timeout", StepCommand{}.timeout_seconds));
  if (source_dir.empty())
    p.refuse("source_dir", "must not be empty (\".\" is the build directory)");
  if (build_dir.empty()) p.refuse("build_dir", "must not be empty");
  if (auto done = p.finish(); !done) return done.error();

  auto command = [timeout](std::vector<std::string> argv, std::string collect = "") {
    StepCommand c;
    c.argv = std::move(argv);
    c.timeout_seconds = timeout;
    c.collect_regex = std::move(collect);
    return c;
  };
  std::vector<std::string> configure{"cmake", "-S", source_dir, "-B", build_dir};
  if (!build_type.empty()) configure.push_back("-DCMAKE_BUILD_TYPE=" + build_type);
  configure.insert(configure.end(), configure_args.begin(), configure_args.end());

  std::vector<StepCommand> commands;
  commands.push_back(command(std::move(configure)));
  commands.push_back(
      command({"cmake", "--build", build_dir, "-j", std::to_string(jobs)}, kCompilerWarningRegex));
  if (test) {
    std::vector<std::string> ctest{"ctest", "--test-dir",        build_dir, "--output-on-failure",
                                   "-j",    std::to_string(jobs)};
    ctest.insert(ctest.end(), ctest_args.begin(), ctest_args.end());
    commands.push_back(command(std::move(ctest), kCtestSummaryRegex));
  }
  return commands;
}

struct TestCounts {
  bool found = false;  // a summary line was printed
  long long tests = 0, failed = 0;
};

// The last summary line wins: a test may itself run ctest and print one.
TestCounts readCtestSummary(const std::vector<std::string>& collected) {
  static const std::regex counts("tests passed, ([0-9]+) tests? failed out of ([0-9]+)");
  TestCounts result;
  for (const auto& line : collected) {
    std::smatch m;
    if (std::regex_search(line, m, counts)) {
      result = {true, std::stoll(m[2].str()), std::stoll(m[1].str())};
    } else if (line.find("No tests were found") != std::string::npos) {
      result = {true, 0, 0};
    }
  }
  return result;
}

class CMakeStep : public Step {
 public:
  Result<std::vector<StepCommand>> plan(const StepContext& context) override {
    return planCMake(context);
  }

  StepResult interpret(const StepContext& context,
                       const std::vector<CommandOutcome>& outcomes) override {
    auto planned = planCMake(context);
    if (!planned)
      return result(StepState::error, nlohmann::json::object(), planned.error().message);
    const auto& commands = *planned;
    const char* stages[] = {"configure", "build", "test"};

    size_t warnings = outcomes.size() > 1 ? countCompilerWarnings(outcomes[1].collected) : 0;
    nlohmann::json summary{{"warnings", warnings}};
    std::string warned = warnings == 0
                             ? ""
                             : ", " + std::to_string(warnings) +
                                   (warnings == 1 ? " compiler warning" : " compiler warnings");

    // Configure and build must succeed; what ctest says is read even when it failed.
    for (size_t i = 0; i < commands.size() && i < 2; ++i) {
      if (i >= outcomes.size())
        return result(StepState::failed, summary, label(commands[i]) + " did not run");
      if (!succeeded(outcomes[i])) {
        return result(StepState::failed, summary,
                      std::string(stages[i]) + " failed: " + describe(commands[i], outcomes[i]));
      }
    }
    if (commands.size() == 2) {
      return result(warnings ? StepState::warnings : StepState::succeeded, summary,
                    "built, tests not run" + warned);
    }
    if (outcomes.size() < 3)
      return result(StepState::failed, summary, label(commands[2]) + " did not run");

    const CommandOutcome& ctest = outcomes[2];
    TestCounts counts = readCtestSummary(ctest.collected);
    if (!counts.found) {
      // ctest ended without its summary: killed, not started, or a usage error.
      return result(StepState::failed, summary, "test failed: " + describe(commands[2], ctest));
    }
    summary["tests"] = counts.tests;
    summary["failed"] = counts.failed;
    summary["passed"] = counts.tests - counts.failed;
    std::string message = counts.tests == 0
                              ? "no tests were found" + warned
                              : std::to_string(counts.tests) + " tests, " +
                                    std::to_string(counts.failed) + " failed" + warned;
    if (counts.failed > 0 || !succeeded(ctest)) {
      if (counts.failed == 0) message += "; " + describe(commands[2], ctest);
      return result(StepState::failed, summary, message);
    }
    bool warn = counts.tests == 0 || warnings > 0;
    return result(warn ? StepState::warnings : StepState::succeeded, summary, message);
  }
};

std::unique_ptr<Step> makeCMakeStep(Host&) { return std::make_unique<CMakeStep>(); }

}  // namespace

const PluginDescriptor& descriptor() {
  static const PluginDescriptor d{.abi_version = kPluginAbiVersion,
                                  .kind = PluginKind::step,
                                  .name = "cmake",
                                  .version = "1.0",
                                  .description = "Configures, builds and tests a CMake project",
                                  .make_vcs = nullptr,
                                  .make_step = &makeCMakeStep};
  return d;
}

}  // namespace pefnos::steps::cmake

PEFNOS_PLUGIN(pefnos::steps::cmake::descriptor)
