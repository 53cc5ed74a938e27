// The step plugins (plugins/steps/) as the master meets them: loaded through
// the Registry from the build's plugin directory, asked for their commands
// with crafted contexts, and told crafted outcomes. Where a step relies on
// its collect_regex, the test collects lines from a realistic output the way
// the worker does (a regex search per line), so that the regex is tested too.
#include <gtest/gtest.h>
#include <uv.h>

#include <algorithm>
#include <csignal>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/plugin/plugin.h"

namespace pefnos {
namespace {

using Argv = std::vector<std::string>;
using nlohmann::json;

class StepPluginsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);
    ASSERT_EQ(uv_loop_init(&loop), 0);
    host = std::make_unique<plugin::ProcessHost>(&loop);
    registry = std::make_unique<plugin::Registry>(*host);
    registry->loadDirectory(PEFNOS_PLUGIN_BUILD_DIR);
  }

  void TearDown() override {
    steps.clear();
    registry.reset();
    host.reset();
    uv_run(&loop, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop), 0) << "a handle was leaked";
  }

  Step& step(const std::string& name) {
    auto made = registry->makeStep(name);
    if (!made)
      throw std::runtime_error("no step plugin '" + name + "' in " PEFNOS_PLUGIN_BUILD_DIR);
    steps.push_back(made);
    return *made;
  }

  static StepContext context(const json& params, const json& properties = json::object()) {
    StepContext c;
    c.params_json = params.dump();
    c.properties_json = properties.dump();
    c.repository = "addons";
    c.vcs = "git";
    c.branch = "main";
    c.revision = "0123456789abcdef0123456789abcdef01234567";
    return c;
  }

  // The commands, failing the test when plan() refuses.
  std::vector<StepCommand> plan(const std::string& name, const StepContext& c) {
    auto planned = step(name).plan(c);
    EXPECT_TRUE(planned.ok()) << name << ": " << (planned ? "" : planned.error().message);
    return planned ? *planned : std::vector<StepCommand>{};
  }

  // plan()'s error, failing the test when it accepts.
  std::string refusal(const std::string& name, const json& params,
                      const json& properties = json::object()) {
    auto planned = step(name).plan(context(params, properties));
    EXPECT_FALSE(planned.ok()) << name << " accepted " << params.dump();
    return planned ? "" : planned.error().message;
  }

  static CommandOutcome exited(int code, std::vector<std::string> collected = {}) {
    CommandOutcome o;
    o.exit_code = code;
    o.collected = std::move(collected);
    return o;
  }

  // What the worker keeps of `output` for a command: the lines its
  // collect_regex finds something in.
  static std::vector<std::string> collect(const StepCommand& command, const std::string& output) {
    std::vector<std::string> kept;
    if (command.collect_regex.empty()) return kept;
    std::regex re(command.collect_regex, std::regex::ECMAScript);
    std::istringstream lines(output);
    for (std::string line; std::getline(lines, line);) {
      if (std::regex_search(line, re)) kept.push_back(line);
    }
    return kept;
  }

  uv_loop_t loop;
  std::unique_ptr<plugin::ProcessHost> host;
  std::unique_ptr<plugin::Registry> registry;
  std::vector<std::shared_ptr<Step>> steps;  // released before the registry
};

std::string stateName(StepState s) {
  switch (s) {
    case StepState::succeeded:
      return "succeeded";
    case StepState::warnings:
      return "warnings";
    case StepState::failed:
      return "failed";
    case StepState::error:
      return "error";
  }
  return "?";
}

#define EXPECT_STATE(result, expected) \
  EXPECT_EQ(stateName((result).state), stateName(StepState::expected)) << (result).message

// ---- The registry --------------------------------------------------------

TEST_F(StepPluginsTest, RegistryListsTheFiveStepTypes) {
  std::set<std::string> names;
  for (const auto& name : registry->stepNames()) names.insert(name);
  EXPECT_EQ(names, (std::set<std::string>{"cmake", "make", "odoo-test", "shell", "source"}));
  for (const auto& name : names) EXPECT_TRUE(registry->makeStep(name)) << name;
  EXPECT_FALSE(registry->makeStep("vcs-git"));
}

// ---- source --------------------------------------------------------------

TEST_F(StepPluginsTest, SourceUnpacksIntoItsCwd) {
  auto commands = plan("source", context({{"type", "source"}, {"cwd", "src"}}));
  ASSERT_EQ(commands.size(), 1u);
  EXPECT_TRUE(commands.at(0).unpack_source);
  EXPECT_TRUE(commands.at(0).argv.empty());
  EXPECT_EQ(commands.at(0).cwd, "src");
  EXPECT_EQ(plan("source", context({{"type", "source"}})).at(0).cwd, "");
}

TEST_F(StepPluginsTest, SourceResultIsTheUnpackingsOutcome) {
  auto c = context({{"type", "source"}});
  EXPECT_STATE(step("source").interpret(c, {exited(0)}), succeeded);
  CommandOutcome broken = exited(2);
  broken.message = "tar: Unexpected EOF in archive";
  auto r = step("source").interpret(c, {broken});
  EXPECT_STATE(r, failed);
  EXPECT_NE(r.message.find("tar: Unexpected EOF in archive"), std::string::npos) << r.message;
}

TEST_F(StepPluginsTest, SourceRefusesAnyOtherParameter) {
  EXPECT_NE(refusal("source", {{"type", "source"}, {"url", "x"}}).find("'url'"), std::string::npos);
  EXPECT_NE(refusal("source", {{"type", "source"}, {"cwd", "/tmp"}}).find("'cwd'"),
            std::string::npos);
}

// ---- shell ---------------------------------------------------------------

TEST_F(StepPluginsTest, ShellRunsArgvAsGiven) {
  auto commands = plan("shell", context({{"type", "shell"},
                                         {"argv", {"make", "check", "NAME=a b; rm -rf /"}},
                                         {"cwd", "sub/dir"},
                                         {"timeout", 120},
                                         {"max_output", 4096}}));
  ASSERT_EQ(commands.size(), 1u);
  const auto& c = commands.at(0);
  EXPECT_EQ(c.argv, (Argv{"make", "check", "NAME=a b; rm -rf /"}));
  EXPECT_EQ(c.cwd, "sub/dir");
  EXPECT_EQ(c.timeout_seconds, 120);
  EXPECT_EQ(c.max_output, 4096u);
  EXPECT_FALSE(c.unpack_source);
  EXPECT_FALSE(c.always);
  EXPECT_EQ(c.collect_regex, "");
}

TEST_F(StepPluginsTest, ShellRunsAScriptDirectlyOrThroughItsInterpreter) {
  EXPECT_EQ(plan("shell", context({{"type", "shell"}, {"script", "ci/test.sh"}})).at(0).argv,
            (Argv{"./ci/test.sh"}));
  EXPECT_EQ(plan("shell", context({{"type", "shell"},
                                   {"script", "ci/lint.py"},
                                   {"interpreter", {"python3", "-u"}}}))
                .at(0)
                .argv,
            (Argv{"python3", "-u", "./ci/lint.py"}));
  // The script is named from the build directory; the command runs in cwd.
  EXPECT_EQ(plan("shell", context({{"type", "shell"}, {"script", "ci/test.sh"}, {"cwd", "a/b"}}))
                .at(0)
                .argv,
            (Argv{"../../ci/test.sh"}));
  EXPECT_EQ(plan("shell", context({{"type", "shell"}, {"script", "-x.sh"}})).at(0).argv,
            (Argv{"./-x.sh"}));
}

TEST_F(StepPluginsTest, ShellKeepsSecretEnvironmentApart) {
  auto c = plan("shell", context({{"type", "shell"},
                                  {"argv", {"deploy"}},
                                  {"env", {{"LANG", "C.UTF-8"}, {"MODE", "prod"}}},
                                  {"secret_env", {{"TOKEN", "s3cret"}}}}))
               .at(0);
  EXPECT_EQ(c.env, (Argv{"LANG=C.UTF-8", "MODE=prod"}));
  EXPECT_EQ(c.secret_env, (Argv{"TOKEN=s3cret"}));
  for (const auto& entry : c.env) EXPECT_EQ(entry.find("s3cret"), std::string::npos) << entry;
}

TEST_F(StepPluginsTest, ShellRefusesBadParametersNamingTheKey) {
  struct Case {
    json params;
    std::string key;
  };
  const std::vector<Case> cases = {
      {{{"argv", {"make"}}, {"targets", {"all"}}}, "'targets'"},
      {{{"argv", "make check"}}, "'argv'"},
      {{{"argv", json::array()}}, "'argv'"},
      {{{"argv", {"make", 3}}}, "'argv'"},
      {{{"argv", {""}}}, "'argv'"},
      {{{"script", "../outside.sh"}}, "'script'"},
      {{{"script", "ci/../../outside.sh"}}, "'script'"},
      {{{"script", "/usr/bin/evil"}}, "'script'"},
      {{{"argv", {"make"}}, {"cwd", "/tmp"}}, "'cwd'"},
      {{{"argv", {"make"}}, {"cwd", "a/../.."}}, "'cwd'"},
      {{{"argv", {"make"}}, {"env", {{"BAD-NAME", "x"}}}}, "'env'"},
      {{{"argv", {"make"}}, {"env", {{"1ST", "x"}}}}, "'env'"},
      {{{"argv", {"make"}}, {"env", {{"N", 1}}}}, "'env'"},
      {{{"argv", {"make"}}, {"secret_env", {{"A=B", "x"}}}}, "'secret_env'"},
      {{{"argv", {"make"}}, {"env", {{"T", "a"}}}, {"secret_env", {{"T", "b"}}}}, "'secret_env'"},
      {{{"argv", {"make"}}, {"timeout", 0}}, "'timeout'"},
      {{{"argv", {"make"}}, {"timeout", "60"}}, "'timeout'"},
      {{{"argv", {"make"}}, {"max_output", -1}}, "'max_output'"},
      {{{"argv", {"make"}}, {"warnings_regex", "(unclosed"}}, "'warnings_regex'"},
      {{{"argv", {"make"}}, {"interpreter", {"sh"}}}, "'interpreter'"},
      {{{"script", "t.sh"}, {"interpreter", "sh"}}, "'interpreter'"},
      {{{"argv", {"make"}}, {"script", "t.sh"}}, "'argv'"},
      {json::object(), "'script'"},
  };
  for (const auto& [params, key] : cases) {
    json p = params;
    p["type"] = "shell";
    std::string message = refusal("shell", p);
    EXPECT_NE(message.find(key), std::string::npos) << p.dump() << " -> " << message;
    EXPECT_EQ(message.rfind("shell: ", 0), 0u) << message;
  }
}

TEST_F(StepPluginsTest, ShellAcceptsANameForPeople) {
  auto c = plan("shell", context({{"type", "shell"}, {"name", "unit tests"}, {"argv", {"true"}}}));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_NE(refusal("shell", {{"type", "shell"}, {"name", 3}, {"argv", {"true"}}}).find("'name'"),
            std::string::npos);
}

TEST_F(StepPluginsTest, ShellResultSaysHowTheCommandEnded) {
  auto c =
      context({{"type", "shell"}, {"argv", {"run-tests"}}, {"timeout", 10}, {"max_output", 100}});
  Step& shell = step("shell");

  auto ok = shell.interpret(c, {exited(0)});
  EXPECT_STATE(ok, succeeded);
  EXPECT_EQ(json::parse(ok.summary_json), (json{{"exit_code", 0}}));

  auto failed = shell.interpret(c, {exited(3)});
  EXPECT_STATE(failed, failed);
  EXPECT_EQ(failed.message, "run-tests exited with 3");

  CommandOutcome slow;
  slow.timed_out = true;
  slow.signal = 9;
  EXPECT_EQ(shell.interpret(c, {slow}).message, "run-tests timed out after 10 s");
  EXPECT_STATE(shell.interpret(c, {slow}), failed);

  CommandOutcome chatty;
  chatty.output_limited = true;
  chatty.signal = 9;
  EXPECT_EQ(shell.interpret(c, {chatty}).message, "run-tests printed more than 100 bytes");

  CommandOutcome killed;
  killed.signal = 11;
  EXPECT_EQ(shell.interpret(c, {killed}).message, "run-tests was killed by signal 11");

  CommandOutcome missing;
  missing.not_started = true;
  missing.message = "no such file or directory";
  auto r = shell.interpret(c, {missing});
  EXPECT_STATE(r, failed);
  EXPECT_EQ(r.message, "run-tests did not start: no such file or directory");

  EXPECT_STATE(shell.interpret(c, {}), failed);
}

TEST_F(StepPluginsTest, ShellWarningsRegexTurnsMatchesIntoWarnings) {
  auto c = context({{"type", "shell"}, {"argv", {"lint"}}, {"warnings_regex", "^W[0-9]+ "}});
  auto command = plan("shell", c).at(0);
  EXPECT_EQ(command.collect_regex, "^W[0-9]+ ");
  auto kept = collect(command, "checking\nW101 unused import\nall done\nW202 line too long\n");
  ASSERT_EQ(kept.size(), 2u);

  auto warned = step("shell").interpret(c, {exited(0, kept)});
  EXPECT_STATE(warned, warnings);
  EXPECT_EQ(json::parse(warned.summary_json)["warnings"], 2);
  EXPECT_STATE(step("shell").interpret(c, {exited(0)}), succeeded);
  EXPECT_STATE(step("shell").interpret(c, {exited(1, kept)}), failed);
}

// ---- make ----------------------------------------------------------------

TEST_F(StepPluginsTest, MakeArgvHasJobsArgsThenTargets) {
  auto c = plan("make", context({{"type", "make"},
                                 {"targets", {"all", "check"}},
                                 {"args", {"V=1", "-k"}},
                                 {"jobs", 4},
                                 {"cwd", "src"},
                                 {"timeout", 900}}))
               .at(0);
  EXPECT_EQ(c.argv, (Argv{"make", "-j4", "V=1", "-k", "all", "check"}));
  EXPECT_EQ(c.cwd, "src");
  EXPECT_EQ(c.timeout_seconds, 900);
  EXPECT_FALSE(c.collect_regex.empty());
}

TEST_F(StepPluginsTest, MakeJobsComeFromTheStepThenTheBuildPropertiesThenOne) {
  EXPECT_EQ(plan("make", context({{"type", "make"}})).at(0).argv, (Argv{"make", "-j1"}));
  EXPECT_EQ(plan("make", context({{"type", "make"}}, {{"jobs", 3}})).at(0).argv,
            (Argv{"make", "-j3"}));
  EXPECT_EQ(plan("make", context({{"type", "make"}}, {{"jobs", "6"}})).at(0).argv,
            (Argv{"make", "-j6"}));
  EXPECT_EQ(plan("make", context({{"type", "make"}, {"jobs", 2}}, {{"jobs", 8}})).at(0).argv,
            (Argv{"make", "-j2"}));
}

TEST_F(StepPluginsTest, MakeRefusesBadParametersNamingTheKey) {
  EXPECT_EQ(refusal("make", {{"type", "make"}, {"jobs", 0}}),
            "make: 'jobs' must be a positive integer (at most 1024)");
  EXPECT_NE(refusal("make", {{"type", "make"}, {"jobs", "4"}}).find("'jobs'"), std::string::npos);
  EXPECT_NE(refusal("make", {{"type", "make"}, {"jobs", 2.5}}).find("'jobs'"), std::string::npos);
  EXPECT_NE(refusal("make", {{"type", "make"}}, {{"jobs", "many"}}).find("property 'jobs'"),
            std::string::npos);
  EXPECT_NE(refusal("make", {{"type", "make"}, {"targets", "all"}}).find("'targets'"),
            std::string::npos);
  EXPECT_NE(refusal("make", {{"type", "make"}, {"targets", {"-f/etc/passwd"}}}).find("'targets'"),
            std::string::npos);
  std::string unknown = refusal("make", {{"type", "make"}, {"target", {"all"}}});
  EXPECT_NE(unknown.find("unknown parameter 'target'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("targets"), std::string::npos) << "lists the known keys: " << unknown;
}

TEST_F(StepPluginsTest, MakeCountsCompilerWarnings) {
  auto c = context({{"type", "make"}});
  auto command = plan("make", c).at(0);
  const std::string output =
      "cc -c -o a.o a.c\n"
      "a.c:12:7: warning: unused variable 'x' [-Wunused-variable]\n"
      "   12 |   int x;\n"
      "b.c: In function 'main':\n"
      "common.h:3:1: warning: 'static' is not at beginning of declaration "
      "[-Wold-style-declaration]\n"
      "common.h:3:1: warning: 'static' is not at beginning of declaration "
      "[-Wold-style-declaration]\n"
      "/usr/bin/ld: warning: libold.so.1, needed by libx.so, may conflict with libold.so.2\n"
      "echo 'no warning: here'\n"
      "cc -o app a.o b.o\n";
  auto kept = collect(command, output);

  auto warned = step("make").interpret(c, {exited(0, kept)});
  EXPECT_STATE(warned, warnings);
  // The header's warning, printed for two files, counts once.
  EXPECT_EQ(json::parse(warned.summary_json), (json{{"warnings", 3}}));
  EXPECT_EQ(warned.message, "3 warnings");

  auto clean =
      step("make").interpret(c, {exited(0, collect(command, "cc -c a.c\ncc -o app a.o\n"))});
  EXPECT_STATE(clean, succeeded);
  EXPECT_EQ(json::parse(clean.summary_json), (json{{"warnings", 0}}));

  auto broken = step("make").interpret(c, {exited(2, kept)});
  EXPECT_STATE(broken, failed);
  EXPECT_EQ(broken.message, "make -j1 exited with 2");
}

// ---- cmake ---------------------------------------------------------------

TEST_F(StepPluginsTest, CMakeConfiguresBuildsAndTests) {
  auto commands = plan("cmake", context({{"type", "cmake"}}, {{"jobs", 2}}));
  ASSERT_EQ(commands.size(), 3u);
  EXPECT_EQ(commands.at(0).argv,
            (Argv{"cmake", "-S", ".", "-B", "build", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"}));
  EXPECT_EQ(commands.at(1).argv, (Argv{"cmake", "--build", "build", "-j", "2"}));
  EXPECT_EQ(commands.at(2).argv,
            (Argv{"ctest", "--test-dir", "build", "--output-on-failure", "-j", "2"}));
  for (const auto& c : commands) EXPECT_EQ(c.cwd, "");
}

TEST_F(StepPluginsTest, CMakeTakesItsDirectoriesArgumentsAndTimeout) {
  auto commands = plan("cmake", context({{"type", "cmake"},
                                         {"source_dir", "src"},
                                         {"build_dir", "out/debug"},
                                         {"build_type", "Debug"},
                                         {"configure_args", {"-G", "Ninja", "-DWITH_X=ON"}},
                                         {"ctest_args", {"-L", "unit"}},
                                         {"jobs", 3},
                                         {"timeout", 1800}}));
  ASSERT_EQ(commands.size(), 3u);
  EXPECT_EQ(commands.at(0).argv, (Argv{"cmake", "-S", "src", "-B", "out/debug",
                                       "-DCMAKE_BUILD_TYPE=Debug", "-G", "Ninja", "-DWITH_X=ON"}));
  EXPECT_EQ(commands.at(1).argv, (Argv{"cmake", "--build", "out/debug", "-j", "3"}));
  EXPECT_EQ(commands.at(2).argv, (Argv{"ctest", "--test-dir", "out/debug", "--output-on-failure",
                                       "-j", "3", "-L", "unit"}));
  for (const auto& c : commands) EXPECT_EQ(c.timeout_seconds, 1800);
}

TEST_F(StepPluginsTest, CMakeWithoutTestsOnlyBuilds) {
  auto c = context({{"type", "cmake"}, {"test", false}});
  auto commands = plan("cmake", c);
  ASSERT_EQ(commands.size(), 2u);
  EXPECT_EQ(commands.at(1).argv[1], "--build");
  auto r = step("cmake").interpret(c, {exited(0), exited(0)});
  EXPECT_STATE(r, succeeded);
  EXPECT_FALSE(json::parse(r.summary_json).contains("tests"));
}

TEST_F(StepPluginsTest, CMakeRefusesBadParametersNamingTheKey) {
  EXPECT_NE(refusal("cmake", {{"type", "cmake"}, {"build_dir", "/tmp/b"}}).find("'build_dir'"),
            std::string::npos);
  EXPECT_NE(refusal("cmake", {{"type", "cmake"}, {"source_dir", "../other"}}).find("'source_dir'"),
            std::string::npos);
  EXPECT_NE(refusal("cmake", {{"type", "cmake"}, {"test", "yes"}}).find("'test'"),
            std::string::npos);
  EXPECT_EQ(refusal("cmake", {{"type", "cmake"}, {"jobs", -2}}),
            "cmake: 'jobs' must be a positive integer (at most 1024)");
  EXPECT_NE(refusal("cmake", {{"type", "cmake"}, {"ctest_args", "-L unit"}}).find("'ctest_args'"),
            std::string::npos);
  EXPECT_NE(refusal("cmake", {{"type", "cmake"}, {"generator", "Ninja"}}).find("'generator'"),
            std::string::npos);
}

TEST_F(StepPluginsTest, CMakeReadsCtestsSummaryWhenAllPass) {
  auto c = context({{"type", "cmake"}});
  auto commands = plan("cmake", c);
  const std::string output =
      "Test project /b/build\n"
      "    Start 1: parser\n"
      "1/12 Test #1: parser ...........................   Passed    0.01 sec\n"
      "\n"
      "100% tests passed, 0 tests failed out of 12\n"
      "\n"
      "Total Test time (real) =   0.42 sec\n";
  auto r = step("cmake").interpret(
      c, {exited(0), exited(0), exited(0, collect(commands.at(2), output))});
  EXPECT_STATE(r, succeeded);
  EXPECT_EQ(r.message, "12 tests, 0 failed");
  EXPECT_EQ(json::parse(r.summary_json),
            (json{{"tests", 12}, {"failed", 0}, {"passed", 12}, {"warnings", 0}}));
}

TEST_F(StepPluginsTest, CMakeReadsCtestsSummaryWhenSomeFail) {
  auto c = context({{"type", "cmake"}});
  auto commands = plan("cmake", c);
  const std::string output =
      " 9/12 Test #9: db_roundtrip .....................***Failed    0.30 sec\n"
      "83% tests passed, 2 tests failed out of 12\n"
      "\n"
      "The following tests FAILED:\n"
      "\t  9 - db_roundtrip (Failed)\n"
      "\t 11 - http_api (Failed)\n"
      "Errors while running CTest\n";
  auto r = step("cmake").interpret(
      c, {exited(0), exited(0), exited(8, collect(commands.at(2), output))});
  EXPECT_STATE(r, failed);
  EXPECT_EQ(r.message, "12 tests, 2 failed");
  auto summary = json::parse(r.summary_json);
  EXPECT_EQ(summary["tests"], 12);
  EXPECT_EQ(summary["failed"], 2);
  EXPECT_EQ(summary["passed"], 10);
}

TEST_F(StepPluginsTest, CMakeWithNoTestsFoundGivesWarnings) {
  auto c = context({{"type", "cmake"}});
  auto commands = plan("cmake", c);
  auto kept = collect(commands.at(2), "Test project /b/build\nNo tests were found!!!\n");
  ASSERT_EQ(kept.size(), 1u);
  auto r = step("cmake").interpret(c, {exited(0), exited(0), exited(0, kept)});
  EXPECT_STATE(r, warnings);
  EXPECT_EQ(json::parse(r.summary_json)["tests"], 0);
}

TEST_F(StepPluginsTest, CMakeCompilerWarningsGiveWarnings) {
  auto c = context({{"type", "cmake"}});
  auto commands = plan("cmake", c);
  auto warned = collect(commands.at(1),
                        "[1/3] Building CXX object a.o\n"
                        "/s/a.cpp:3:9: warning: unused variable 'y' [-Wunused-variable]\n");
  auto passed = collect(commands.at(2), "100% tests passed, 0 tests failed out of 4\n");
  auto r = step("cmake").interpret(c, {exited(0), exited(0, warned), exited(0, passed)});
  EXPECT_STATE(r, warnings);
  EXPECT_EQ(json::parse(r.summary_json)["warnings"], 1);
  EXPECT_EQ(r.message, "4 tests, 0 failed, 1 compiler warning");
}

TEST_F(StepPluginsTest, CMakeNamesTheStageThatFailed) {
  auto c = context({{"type", "cmake"}});
  auto configure = step("cmake").interpret(c, {exited(1)});
  EXPECT_STATE(configure, failed);
  EXPECT_EQ(configure.message.rfind("configure failed: cmake -S . -B build", 0), 0u)
      << configure.message;

  auto build = step("cmake").interpret(c, {exited(0), exited(2)});
  EXPECT_STATE(build, failed);
  EXPECT_EQ(build.message, "build failed: cmake --build build -j 1 exited with 2");

  CommandOutcome hung;
  hung.timed_out = true;
  auto test = step("cmake").interpret(c, {exited(0), exited(0), hung});
  EXPECT_STATE(test, failed);
  EXPECT_NE(test.message.find("timed out after 3600 s"), std::string::npos) << test.message;
}

// ---- odoo-test -----------------------------------------------------------

class OdooStepTest : public StepPluginsTest {
 protected:
  static StepContext odoo(json params, std::vector<std::string> changed,
                          std::vector<json> previous = {}) {
    params["type"] = "odoo-test";
    StepContext c = context(params);
    c.changed_files = std::move(changed);
    for (const auto& summary : previous) c.previous_summaries_json.push_back(summary.dump());
    return c;
  }
  // The -i argument of the server command.
  std::string installed(const StepContext& c) {
    auto commands = plan("odoo-test", c);
    if (commands.size() != 3) return "(" + std::to_string(commands.size()) + " commands)";
    const auto& argv = commands.at(1).argv;
    auto i = std::find(argv.begin(), argv.end(), "-i");
    return i == argv.end() || i + 1 == argv.end() ? "(no -i)" : *(i + 1);
  }
};

// Odoo 16's log of a run where sale_extra has a failing and an erroring
// test and stock_extra passes.
const char* const kOdoo16Log =
    "2024-03-05 10:11:58,101 4242 INFO pefnos-test-x odoo.modules.loading: loading 1 modules...\n"
    "2024-03-05 10:11:58,310 4242 INFO pefnos-test-x odoo.modules.loading: 1 modules loaded in "
    "0.21s, 0 queries (+0 extra)\n"
    "2024-03-05 10:12:01,002 4242 INFO pefnos-test-x odoo.modules.loading: Loading module "
    "sale_extra (62/63)\n"
    "2024-03-05 10:12:03,120 4242 INFO pefnos-test-x odoo.modules.module: "
    "odoo.addons.sale_extra.tests.test_order running tests.\n"
    "2024-03-05 10:12:03,121 4242 INFO pefnos-test-x odoo.addons.sale_extra.tests.test_order: "
    "Starting TestOrder.test_total ...\n"
    "2024-03-05 10:12:03,456 4242 ERROR pefnos-test-x odoo.addons.sale_extra.tests.test_order: "
    "FAIL: TestOrder.test_total\n"
    "Traceback (most recent call last):\n"
    "  File \"/build/sale_extra/tests/test_order.py\", line 41, in test_total\n"
    "    self.assertEqual(order.amount_total, 115.0)\n"
    "AssertionError: 100.0 != 115.0\n"
    "\n"
    "2024-03-05 10:12:03,460 4242 INFO pefnos-test-x odoo.addons.sale_extra.tests.test_order: "
    "Starting TestOrder.test_cancel ...\n"
    "2024-03-05 10:12:03,790 4242 ERROR pefnos-test-x odoo.addons.sale_extra.tests.test_order: "
    "ERROR: TestOrder.test_cancel\n"
    "Traceback (most recent call last):\n"
    "  File \"/build/sale_extra/models/sale_order.py\", line 88, in action_cancel\n"
    "KeyError: 'state'\n"
    "2024-03-05 10:12:04,010 4242 INFO pefnos-test-x odoo.modules.loading: Loading module "
    "stock_extra (63/63)\n"
    "2024-03-05 10:12:05,200 4242 INFO pefnos-test-x odoo.addons.stock_extra.tests.test_move: "
    "Starting TestMove.test_done ...\n"
    "2024-03-05 10:12:05,330 4242 WARNING pefnos-test-x odoo.addons.stock_extra.models.stock_move: "
    "Two fields (qty, product_qty) of stock.move() have the same label: Quantity.\n"
    "2024-03-05 10:12:06,500 4242 INFO pefnos-test-x odoo.modules.loading: Modules loaded.\n"
    "2024-03-05 10:12:06,510 4242 INFO pefnos-test-x odoo.service.server: Starting post tests\n"
    "2024-03-05 10:12:07,800 4242 INFO pefnos-test-x odoo.service.server: 3 post-tests in 1.29s, "
    "120 queries\n"
    "2024-03-05 10:12:07,801 4242 INFO pefnos-test-x odoo.tests.stats: sale_extra: 8 tests 0.67s "
    "301 queries\n"
    "2024-03-05 10:12:07,850 4242 ERROR pefnos-test-x odoo.tests.result: 1 failed, 1 error(s) of "
    "118 tests when loading database 'pefnos-test-x'\n"
    "2024-03-05 10:12:07,900 4242 INFO pefnos-test-x odoo.service.server: Initiating shutdown\n";

TEST_F(OdooStepTest, TestsTheModulesOfTheChangedFiles) {
  auto c =
      odoo({}, {"sale_extra/models/sale_order.py", "sale_extra/views/sale_order.xml",
                "stock_extra/__manifest__.py", "setup.py", "README.md", ".github/workflows/ci.yml",
                "setup/sale_extra/setup.py", ".pre-commit-config.yaml", "not-a-module/x.py"});
  auto commands = plan("odoo-test", c);
  ASSERT_EQ(commands.size(), 3u);
  const std::string db = commands.at(1).argv[2];
  EXPECT_EQ(commands.at(1).argv,
            (Argv{"odoo", "-d", db, "--addons-path", ".", "-i", "sale_extra,stock_extra",
                  "--test-enable", "--stop-after-init", "--log-level=test"}));
}

TEST_F(OdooStepTest, ServerAddonsPathAndExtraArgumentsGoIntoTheCommand) {
  auto c = odoo({{"server", {"python3", "/opt/odoo/odoo-bin", "-c", "odoo.conf"}},
                 {"addons_path", "/opt/odoo/addons,addons"},
                 {"extra_args", {"--without-demo=False"}},
                 {"timeout", 7200}},
                {"addons/account_extra/models.py", "account_root/x.py"});
  auto commands = plan("odoo-test", c);
  ASSERT_EQ(commands.size(), 3u);
  const std::string db = commands.at(1).argv[5];
  // Only modules under an addons path entry that is in the source tree.
  EXPECT_EQ(commands.at(1).argv,
            (Argv{"python3", "/opt/odoo/odoo-bin", "-c", "odoo.conf", "-d", db, "--addons-path",
                  "/opt/odoo/addons,addons", "-i", "account_extra", "--test-enable",
                  "--stop-after-init", "--log-level=test", "--without-demo=False"}));
  EXPECT_EQ(commands.at(1).timeout_seconds, 7200);
}

TEST_F(OdooStepTest, DropsALeftoverDatabaseFirstAndTheDatabaseAlwaysAtTheEnd) {
  auto commands = plan("odoo-test", odoo({}, {"sale_extra/a.py"}));
  ASSERT_EQ(commands.size(), 3u);
  const std::string db = commands.at(1).argv[2];
  EXPECT_EQ(commands.at(0).argv, (Argv{"dropdb", "--if-exists", db}));
  EXPECT_FALSE(commands.at(0).always);
  EXPECT_FALSE(commands.at(1).always);
  EXPECT_EQ(commands.at(2).argv, (Argv{"dropdb", "--if-exists", db}));
  EXPECT_TRUE(commands.at(2).always);

  auto custom =
      plan("odoo-test", odoo({{"dropdb", {"psql-drop", "--force"}}}, {"sale_extra/a.py"}));
  ASSERT_EQ(custom.size(), 3u);
  EXPECT_EQ(custom[2].argv, (Argv{"psql-drop", "--force", db}));
}

TEST_F(OdooStepTest, DatabaseNameIsASafeIdentifierPerRevisionAndBranch) {
  auto c = odoo({}, {"sale_extra/a.py"});
  std::string db = plan("odoo-test", c).at(1).argv[2];
  EXPECT_TRUE(std::regex_match(db, std::regex("pefnos-test-[0-9a-f]{12}"))) << db;
  EXPECT_EQ(plan("odoo-test", c).at(1).argv[2], db) << "the same build, the same name";

  auto other_revision = c;
  other_revision.revision = "fedcba9876543210fedcba9876543210fedcba98";
  EXPECT_NE(plan("odoo-test", other_revision).at(1).argv[2], db);
  auto other_branch = c;
  other_branch.branch = "16.0-fix; DROP DATABASE postgres";
  std::string other = plan("odoo-test", other_branch).at(1).argv[2];
  EXPECT_NE(other, db);
  EXPECT_TRUE(std::regex_match(other, std::regex("pefnos-test-[0-9a-f]{12}"))) << other;

  auto prefixed = odoo({{"db_prefix", "ci_16"}}, {"sale_extra/a.py"});
  EXPECT_TRUE(std::regex_match(plan("odoo-test", prefixed).at(1).argv[2],
                               std::regex("ci_16-[0-9a-f]{12}")));
  EXPECT_NE(
      refusal("odoo-test", {{"type", "odoo-test"}, {"db_prefix", "x\"; drop"}}).find("'db_prefix'"),
      std::string::npos);
}

TEST_F(OdooStepTest, RetestsWhatFailedInTheNewestBuildThatTestedIt) {
  // Newest first: a passed after failing, b failed and was not tested since.
  std::vector<json> previous = {
      {{"modules", {{"a_mod", "passed"}}}, {"tests", 4}, {"failed", 0}},
      {{"modules", {{"a_mod", "failed"}, {"b_mod", "failed"}, {"c_mod", "passed"}}}},
      json::object(),
  };
  EXPECT_EQ(installed(odoo({}, {"d_mod/x.py"}, previous)), "b_mod,d_mod");
  EXPECT_EQ(installed(odoo({}, {}, previous)), "b_mod");
}

TEST_F(OdooStepTest, AlwaysAndIgnoreAdjustTheModules) {
  auto c = odoo({{"always", {"z_core", "sale_extra"}}, {"ignore", {"stock_extra", "b_mod"}}},
                {"sale_extra/a.py", "stock_extra/b.py", "web_extra/c.js"},
                {{{"modules", {{"b_mod", "failed"}}}}});
  EXPECT_EQ(installed(c), "sale_extra,web_extra,z_core");
  EXPECT_NE(
      refusal("odoo-test", {{"type", "odoo-test"}, {"always", {"bad-name"}}}).find("'always'"),
      std::string::npos);
  EXPECT_NE(refusal("odoo-test", {{"type", "odoo-test"}, {"ignore", "x"}}).find("'ignore'"),
            std::string::npos);
  EXPECT_NE(
      refusal("odoo-test", {{"type", "odoo-test"}, {"server", json::array()}}).find("'server'"),
      std::string::npos);
  EXPECT_NE(refusal("odoo-test", {{"type", "odoo-test"}, {"modules", {"x"}}}).find("'modules'"),
            std::string::npos);
}

TEST_F(OdooStepTest, WithoutAModuleToTestThereIsNoCommand) {
  auto c = odoo({}, {"README.md", "setup.py", ".github/workflows/test.yml"},
                {{{"modules", {{"sale_extra", "passed"}}}}});
  auto planned = step("odoo-test").plan(c);
  ASSERT_TRUE(planned.ok()) << planned.error().message;
  EXPECT_TRUE(planned->empty());
  auto r = step("odoo-test").interpret(c, {});
  EXPECT_STATE(r, succeeded);
  EXPECT_EQ(r.message, "no module changed");
}

TEST_F(OdooStepTest, ReadsEachModulesResultFromTheLog) {
  auto c = odoo({}, {"sale_extra/models/sale_order.py", "stock_extra/models/stock_move.py"});
  auto commands = plan("odoo-test", c);
  ASSERT_EQ(commands.size(), 3u);
  auto kept = collect(commands.at(1), kOdoo16Log);
  // The two failures and the totals: no INFO line, no WARNING, no traceback.
  ASSERT_EQ(kept.size(), 3u) << ::testing::PrintToString(kept);

  auto r = step("odoo-test").interpret(c, {exited(0), exited(1, kept), exited(0)});
  EXPECT_STATE(r, failed);
  EXPECT_EQ(json::parse(r.summary_json),
            (json{{"modules", {{"sale_extra", "failed"}, {"stock_extra", "passed"}}},
                  {"tests", 118},
                  {"failed", 2}}));
  EXPECT_EQ(r.message, "modules failed: sale_extra; 118 tests, 2 failed");

  // The next build retests sale_extra only.
  auto next = odoo({}, {}, {json::parse(r.summary_json)});
  EXPECT_EQ(installed(next), "sale_extra");
}

TEST_F(OdooStepTest, OpenErpStyleFailureLinesCountToo) {
  auto c = odoo({}, {"sale_extra/a.py", "stock_extra/b.py"});
  auto commands = plan("odoo-test", c);
  auto kept = collect(commands.at(1),
                      "2014-05-02 08:00:01,000 77 INFO db openerp.modules.module: running "
                      "openerp.addons.stock_extra.tests.test_b\n"
                      "FAIL: test_move (openerp.addons.stock_extra.tests.test_b.TestB)\n");
  ASSERT_EQ(kept.size(), 1u);
  // OpenERP exited 0 even when tests failed: the log decides.
  auto r = step("odoo-test").interpret(c, {exited(0), exited(0, kept), exited(0)});
  EXPECT_STATE(r, failed);
  auto modules = json::parse(r.summary_json)["modules"];
  EXPECT_EQ(modules["stock_extra"], "failed");
  EXPECT_EQ(modules["sale_extra"], "passed");
}

TEST_F(OdooStepTest, AllPassingSucceedsAndAFailedDropOnlyWarns) {
  auto c = odoo({}, {"sale_extra/a.py", "stock_extra/b.py"});
  auto commands = plan("odoo-test", c);
  auto kept = collect(commands.at(1),
                      "2024-03-05 10:12:07,850 4242 INFO db odoo.tests.result: 0 failed, 0 "
                      "error(s) of 57 tests when loading database 'db'\n");
  ASSERT_EQ(kept.size(), 1u);

  auto r = step("odoo-test").interpret(c, {exited(0), exited(0, kept), exited(0)});
  EXPECT_STATE(r, succeeded);
  EXPECT_EQ(r.message, "2 modules passed; 57 tests, 0 failed");
  EXPECT_EQ(json::parse(r.summary_json)["modules"],
            (json{{"sale_extra", "passed"}, {"stock_extra", "passed"}}));

  auto undropped = step("odoo-test").interpret(c, {exited(0), exited(0, kept), exited(1)});
  EXPECT_STATE(undropped, warnings);
  EXPECT_NE(undropped.message.find("dropping the database failed"), std::string::npos)
      << undropped.message;
}

TEST_F(OdooStepTest, AServerThatDiesMarksEveryModuleForRetest) {
  auto c = odoo({}, {"sale_extra/a.py", "stock_extra/b.py"});
  CommandOutcome killed;
  killed.timed_out = true;
  auto r = step("odoo-test").interpret(c, {exited(0), killed, exited(0)});
  EXPECT_STATE(r, failed);
  EXPECT_NE(r.message.find("timed out after 3600 s"), std::string::npos) << r.message;
  EXPECT_EQ(json::parse(r.summary_json)["modules"],
            (json{{"sale_extra", "failed"}, {"stock_extra", "failed"}}));

  auto crashed = step("odoo-test").interpret(c, {exited(0), exited(255), exited(0)});
  EXPECT_STATE(crashed, failed);
  EXPECT_NE(crashed.message.find("exited with 255"), std::string::npos) << crashed.message;
}

TEST_F(OdooStepTest, AFailedLeftoverDropStopsBeforeTheServer) {
  auto c = odoo({}, {"sale_extra/a.py"});
  CommandOutcome missing;
  missing.not_started = true;
  missing.message = "dropdb: not found";
  auto r = step("odoo-test").interpret(c, {missing, exited(0)});
  EXPECT_STATE(r, failed);
  EXPECT_NE(r.message.find("dropdb: not found"), std::string::npos) << r.message;
  EXPECT_EQ(json::parse(r.summary_json)["modules"]["sale_extra"], "failed");
}

}  // namespace
}  // namespace pefnos
