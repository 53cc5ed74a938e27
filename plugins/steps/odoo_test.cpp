// The odoo-test step (OpenERP/Odoo addon repositories): installs, in a fresh
// database, the modules that this build's commits changed, those that failed
// in earlier builds and those always tested, with Odoo's tests enabled; reads
// which modules failed from the server's log; drops the database.
//   {"type": "odoo-test", "server": ["/opt/odoo/odoo-bin", "-c", "odoo.conf"],
//    "addons_path": "/opt/odoo/addons,.", "always": ["base_extra"], "ignore": ["demo_only"]}
//
// Commands: drop a leftover database of the same name (a rebuild of the same
// revision after an interrupted run would otherwise find its modules installed
// and run no test), the server, then drop the database (always).
#include <algorithm>
#include <regex>
#include <set>

#include "outcome.h"
#include "parameters.h"
#include "pefnos/plugin.h"

namespace pefnos::steps::odoo {
namespace {

constexpr int kDropTimeout = 300;
constexpr size_t kLongestPrefix = 40;  // PostgreSQL names stop at 63 bytes

// A module's logger ("odoo.addons.sale.tests.test_x") and what marks trouble.
const std::string kAddon = "(odoo|openerp)\\.addons\\.[A-Za-z0-9_]+\\.";
const std::string kTrouble = "( ERROR | CRITICAL | FAIL|FAIL:|ERROR:)";
// A line that says a module failed, as Odoo 16 prints them:
//   "2024-03-05 10:12:03,456 4242 ERROR db odoo.addons.sale.tests.test_x: FAIL: TestX.test_y"
// and as OpenERP's unittest runner did: "FAIL: test_y (openerp.addons.sale.tests.test_x.TestX)".
const std::string kModuleFailureRegex = kTrouble + ".*" + kAddon + "|" + kAddon + ".*" + kTrouble;
// Odoo's totals at the end of a run: "2 failed, 1 error(s) of 118 tests when loading database
// 'db'".
const std::string kTotalsRegex = "([0-9]+) failed, ([0-9]+) error\\(s\\) of ([0-9]+) tests";

bool isWordCharacter(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

bool isModuleName(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), isWordCharacter);
}

// The modules that changed files belong to: the directory right under an
// entry of the addons path that lies in the source tree ("." by default).
// Files at the top of an entry (setup.py, README.md) and hidden directories
// belong to no module; nor does setup/, where OCA repositories keep their
// packaging.
std::set<std::string> changedModules(const std::vector<std::string>& changed_files,
                                     const std::string& addons_path) {
  std::vector<std::string> roots;  // "" for ".", else "addons/"
  size_t start = 0;
  while (start <= addons_path.size()) {
    size_t end = std::min(addons_path.find(',', start), addons_path.size());
    std::string entry = addons_path.substr(start, end - start);
    start = end + 1;
    while (entry.size() > 1 && entry.back() == '/') entry.pop_back();
    if (entry.empty() || !isInsideBuildDirectory(entry)) continue;  // outside the source tree
    while (entry.rfind("./", 0) == 0) entry.erase(0, 2);
    roots.push_back(entry == "." || entry.empty() ? "" : entry + "/");
  }
  std::set<std::string> modules;
  for (std::string file : changed_files) {
    while (file.rfind("./", 0) == 0) file.erase(0, 2);
    for (const auto& root : roots) {
      if (file.compare(0, root.size(), root) != 0) continue;
      std::string_view rest = std::string_view(file).substr(root.size());
      size_t slash = rest.find('/');
      if (slash == std::string_view::npos) continue;  // a file, not a module's directory
      std::string_view name = rest.substr(0, slash);
      if (isModuleName(name) && name != "setup") modules.emplace(name);
    }
  }
  return modules;
}

// Modules whose newest mention in earlier summaries (newest first) is "failed".
std::set<std::string> previouslyFailed(const std::vector<std::string>& summaries) {
  std::map<std::string, std::string> newest;
  for (const auto& text : summaries) {
    auto summary = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!summary.is_object() || !summary.contains("modules") || !summary["modules"].is_object())
      continue;
    for (const auto& [name, status] : summary["modules"].items()) {
      if (status.is_string() && isModuleName(name)) newest.emplace(name, status.get<std::string>());
    }
  }
  std::set<std::string> failed;
  for (const auto& [name, status] : newest) {
    if (status == "failed") failed.insert(name);
  }
  return failed;
}

// One database per repository, branch and revision: builds of other
// revisions may run beside this one on the same PostgreSQL.
std::string databaseName(const std::string& prefix, const StepContext& context) {
  uint64_t hash = 14695981039346656037ull;  // FNV-1a
  for (const std::string* part : {&context.repository, &context.branch, &context.revision}) {
    for (unsigned char c : *part + '\n') {
      hash ^= c;
      hash *= 1099511628211ull;
    }
  }
  static const char digits[] = "0123456789abcdef";
  std::string hex;
  for (int shift = 44; shift >= 0; shift -= 4) hex += digits[(hash >> shift) & 0xf];
  return prefix + "-" + hex;
}

std::string joined(const std::vector<std::string>& items, const char* separator) {
  std::string text;
  for (const auto& item : items) text += (text.empty() ? "" : separator) + item;
  return text;
}

struct OdooPlan {
  std::vector<std::string> modules;  // to test: sorted, unique
  std::string database;
  std::vector<StepCommand> commands;  // drop leftover, server, drop; none without modules
};

Result<OdooPlan> planOdoo(const StepContext& context) {
  Parameters p("odoo-test", context.params_json);
  auto server = p.texts("server", {"odoo"}, /*non_empty=*/true);
  auto addons_path = p.text("addons_path", ".");
  auto db_prefix = p.text("db_prefix", "pefnos-test");
  auto always = p.texts("always");
  auto ignore = p.texts("ignore");
  auto dropdb = p.texts("dropdb", {"dropdb", "--if-exists"}, /*non_empty=*/true);
  auto extra_args = p.texts("extra_args");
  int timeout = static_cast<int>(p.positive("timeout", StepCommand{}.timeout_seconds));

  if (addons_path.empty()) p.refuse("addons_path", "must not be empty (\".\" is the source tree)");
  // Odoo's own pattern for database names, and no quoting needed anywhere.
  bool prefix_ok = !db_prefix.empty() && db_prefix.size() <= kLongestPrefix &&
                   isWordCharacter(db_prefix[0]) && db_prefix[0] != '_' &&
                   std::all_of(db_prefix.begin(), db_prefix.end(),
                               [](char c) { return isWordCharacter(c) || c == '-'; });
  if (!prefix_ok) {
    p.refuse("db_prefix", "must be up to " + std::to_string(kLongestPrefix) +
                              " letters, digits, '_' and '-', starting with a letter or digit");
  }
  for (const auto& [key, names] : {std::pair{"always", &always}, std::pair{"ignore", &ignore}}) {
    for (const auto& name : *names) {
      if (!isModuleName(name)) p.refuse(key, "has \"" + name + "\", which is no module name");
    }
  }
  if (auto done = p.finish(); !done) return done.error();

  std::set<std::string> modules = changedModules(context.changed_files, addons_path);
  modules.merge(previouslyFailed(context.previous_summaries_json));
  modules.insert(always.begin(), always.end());
  for (const auto& name : ignore) modules.erase(name);

  OdooPlan plan;
  plan.modules.assign(modules.begin(), modules.end());
  plan.database = databaseName(db_prefix, context);
  if (plan.modules.empty()) return plan;

  auto drop = [&](bool always_run) {
    StepCommand c;
    c.argv = dropdb;
    c.argv.push_back(plan.database);
    c.timeout_seconds = kDropTimeout;
    c.always = always_run;
    return c;
  };
  StepCommand run;
  run.argv = server;
  run.argv.insert(run.argv.end(), {"-d", plan.database, "--addons-path", addons_path, "-i",
                                   joined(plan.modules, ","), "--test-enable", "--stop-after-init",
                                   "--log-level=test"});
  run.argv.insert(run.argv.end(), extra_args.begin(), extra_args.end());
  run.timeout_seconds = timeout;
  run.collect_regex = kModuleFailureRegex + "|" + kTotalsRegex;
  plan.commands = {drop(false), std::move(run), drop(true)};
  return plan;
}

// What the server's log says.
struct OdooLog {
  std::set<std::string> failed_modules;
  long long failure_lines = 0;
  bool totals = false;  // Odoo printed its totals: the run went to its end
  long long tests = 0, failed = 0;
};

OdooLog readLog(const std::vector<std::string>& collected) {
  static const std::regex failure(kModuleFailureRegex);
  static const std::regex module("(odoo|openerp)\\.addons\\.([A-Za-z0-9_]+)\\.");
  static const std::regex totals(kTotalsRegex);
  OdooLog log;
  for (const auto& line : collected) {
    std::smatch m;
    if (std::regex_search(line, m, totals)) {
      log.totals = true;
      log.failed = std::stoll(m[1].str()) + std::stoll(m[2].str());
      log.tests = std::stoll(m[3].str());
    } else if (std::regex_search(line, failure) && std::regex_search(line, m, module)) {
      log.failed_modules.insert(m[2].str());
      ++log.failure_lines;
    }
  }
  if (!log.totals) log.failed = log.failure_lines;
  return log;
}

class OdooTestStep : public Step {
 public:
  Result<std::vector<StepCommand>> plan(const StepContext& context) override {
    auto plan = planOdoo(context);
    if (!plan) return plan.error();
    return std::move(plan->commands);
  }

  StepResult interpret(const StepContext& context,
                       const std::vector<CommandOutcome>& outcomes) override {
    auto plan = planOdoo(context);
    if (!plan) return result(StepState::error, nlohmann::json::object(), plan.error().message);
    nlohmann::json summary{{"modules", nlohmann::json::object()}};
    if (plan->commands.empty()) return result(StepState::succeeded, summary, "no module changed");
    const auto& commands = plan->commands;

    // A module counts as passed only when the server said so; any other is
    // recorded as failed so that the next build tests it again.
    auto& modules = summary["modules"];
    for (const auto& name : plan->modules) modules[name] = "failed";

    if (outcomes.empty() || !succeeded(outcomes[0])) {
      std::string why = outcomes.empty() ? label(commands[0]) + " did not run"
                                         : describe(commands[0], outcomes[0]);
      return result(StepState::failed, summary, "dropping a leftover database failed: " + why);
    }
    if (outcomes.size() < 2)
      return result(StepState::failed, summary, label(commands[1]) + " did not run");

    const CommandOutcome& server = outcomes[1];
    OdooLog log = readLog(server.collected);
    // A failure in a module not asked for (a dependency) is blamed on those
    // asked for: they were installed, and the next build tests them again.
    bool went_through = succeeded(server) || log.totals;
    bool others_failed = false;
    for (const auto& name : log.failed_modules) others_failed |= !modules.contains(name);
    for (const auto& name : plan->modules) {
      if (went_through && !others_failed && !log.failed_modules.count(name))
        modules[name] = "passed";
    }
    if (log.totals) summary["tests"] = log.tests;
    summary["failed"] = log.failed;

    std::string counts =
        log.totals ? std::to_string(log.tests) + " tests, " + std::to_string(log.failed) + " failed"
                   : "";
    std::string message;
    StepState state = StepState::succeeded;
    if (!log.failed_modules.empty()) {
      state = StepState::failed;
      message =
          "modules failed: " + joined({log.failed_modules.begin(), log.failed_modules.end()}, ", ");
      if (!counts.empty()) message += "; " + counts;
      if (!succeeded(server) && !log.totals) message += "; " + describe(commands[1], server);
    } else if (!succeeded(server)) {
      state = StepState::failed;
      message = describe(commands[1], server);
      if (!counts.empty()) message += "; " + counts;
    } else {
      size_t n = plan->modules.size();
      message = std::to_string(n) + (n == 1 ? " module passed" : " modules passed");
      if (!counts.empty()) message += "; " + counts;
    }
    if (outcomes.size() < 3 || !succeeded(outcomes[2])) {
      std::string why = outcomes.size() < 3 ? label(commands[2]) + " did not run"
                                            : describe(commands[2], outcomes[2]);
      message += "; dropping the database failed: " + why;
      if (state == StepState::succeeded) state = StepState::warnings;
    }
    return result(state, summary, message);
  }
};

std::unique_ptr<Step> makeOdooTestStep(Host&) { return std::make_unique<OdooTestStep>(); }

}  // namespace

const PluginDescriptor& descriptor() {
  static const PluginDescriptor d{
      .abi_version = kPluginAbiVersion,
      .kind = PluginKind::step,
      .name = "odoo-test",
      .version = "1.0",
      .description = "Tests the changed (and failing) modules of an Odoo addons repository",
      .make_vcs = nullptr,
      .make_step = &makeOdooTestStep};
  return d;
}

}  // namespace pefnos::steps::odoo

PEFNOS_PLUGIN(pefnos::steps::odoo::descriptor)
