// The plugin SDK as a third party meets it: pefnos installed with `cmake
// --install`, the example plugin examples/plugin-stamp configured and built out
// of tree against the installed package only, dropped into a plugin directory
// and used by a real `pefnos master`; and the plugins pefnos must refuse (not
// a shared object, no entry symbol, another ABI, an unsafe directory) without
// stopping the rest.
//
// The out-of-tree configure and build run once per test run, in the one test
// that needs them; the other tests use copies of the example that the pefnos
// build itself makes (sdk_test_stamp*.so, see CMakeLists.txt).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include "pefnos/plugin.h"
#include "tests/support/child.h"
#include "tests/support/plugin_files.h"
#include "tests/support/testdb.h"

namespace pefnos {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono;
using test::Child;
using test::copyPlugin;
using test::listedLine;
using test::plainSharedLibrary;
using test::run;
using test::waitUntil;
using test::writeFile;

// Runs git with argv and returns its trimmed stdout; fails the test otherwise.
std::string git(std::vector<std::string> args) {
  args.insert(args.begin(), {"git", "-c", "user.name=Test Author", "-c", "user.email=t@example.org",
                             "-c", "init.defaultBranch=main"});
  auto [rc, out] = run(args);
  EXPECT_EQ(rc, 0) << out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Sdk : public ::testing::Test {
 protected:
  void SetUp() override { tdb_.scalar("INSERT INTO pefnos.project (id, name) VALUES (1, 'p')"); }

  // A directory below the test's, mode 0755 (what a plugin directory must be).
  std::string directory(const std::string& name, mode_t mode = 0755) {
    std::string path = dir_.path() + "/" + name;
    fs::create_directories(path);
    EXPECT_EQ(chmod(path.c_str(), mode), 0) << path;
    return path;
  }
  int addRepository(const std::string& name, const std::string& vcs, const std::string& url) {
    return std::stoi(tdb_.scalar(
        "INSERT INTO pefnos.repository (project_id, name, vcs, url, poll_interval) VALUES (1, " +
        tdb_.conn().quote(name) + ", " + tdb_.conn().quote(vcs) + ", " + tdb_.conn().quote(url) +
        ", 3600) RETURNING id"));
  }
  int addBranch(int repo, const std::string& name, bool pattern = false) {
    return std::stoi(tdb_.scalar(
        "INSERT INTO pefnos.branch (repository_id, name, pattern) VALUES (" + std::to_string(repo) +
        ", " + tdb_.conn().quote(name) + ", " + (pattern ? "true" : "false") + ") RETURNING id"));
  }
  void addPluginDirectory(const std::string& path) {
    tdb_.scalar("INSERT INTO pefnos.plugin_directory (path) VALUES (" + tdb_.conn().quote(path) +
                ")");
  }
  void startMaster(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {
        test::pefnosBinary(),  "master", "--workers", "none", "--db", tdb_.conninfo(), "--name", "m", "--state-dir",
        dir_.path() + "/state"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    master_ = std::make_unique<Child>(argv);
  }
  // Waits until the master has recorded what it loaded (all outcomes come in one transaction).
  void waitForPluginRows(const std::string& path) {
    EXPECT_TRUE(waitUntil(
        [&] {
          return count("pefnos.plugin WHERE master = 'm' AND path = " + tdb_.conn().quote(path)) ==
                 "1";
        },
        seconds(20)))
        << tdb_.scalar("SELECT string_agg(path || ' ' || state, ', ') FROM pefnos.plugin")
        << master_->output();
  }
  // poll_now through the command table; returns the command's result or error.
  std::string pollNow(int repo, bool expect_ok = true) {
    std::string id = tdb_.scalar("SELECT pefnos.poll_now(" + std::to_string(repo) + ")");
    EXPECT_TRUE(waitUntil(
        [&] {
          auto s = tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id);
          return s == "done" || s == "failed";
        },
        seconds(30)))
        << master_->output();
    std::string outcome =
        tdb_.scalar("SELECT coalesce(error, result::text) FROM pefnos.command WHERE id = " + id);
    EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.command WHERE id = " + id) == "done", expect_ok)
        << outcome << "\n"
        << master_->output();
    return outcome;
  }
  std::string head(int branch) {
    return tdb_.scalar("SELECT revision FROM pefnos.branch_head WHERE branch_id = " +
                       std::to_string(branch));
  }
  std::string count(const std::string& from_where) {
    return tdb_.scalar("SELECT count(*) FROM " + from_where);
  }
  std::pair<int, std::string> pluginsList(const std::vector<std::string>& dirs) {
    std::vector<std::string> argv = {test::pefnosBinary(), "plugins", "list", "--db",
                                     tdb_.conninfo()};
    for (const auto& d : dirs) argv.insert(argv.end(), {"--plugin-dir", d});
    return run(argv);
  }

  test::TestDatabase tdb_;
  test::TempDir dir_{"pefnos-sdk"};
  std::unique_ptr<Child> master_;
};

TEST_F(Sdk, PluginBuiltOutOfTreeAgainstTheInstalledSdkIsLoadedAndPolled) {
  // The SDK alone, as a package would ship it.
  const std::string prefix = dir_.path() + "/prefix";
  auto [install_rc, install_out] =
      run({PEFNOS_CMAKE, "--install", PEFNOS_BUILD_DIR, "--prefix", prefix, "--component", "sdk"});
  ASSERT_EQ(install_rc, 0) << install_out;
  for (const char* file :
       {"/include/pefnos/plugin.h", "/include/pefnos/vcs.h", "/include/pefnos/host.h",
        "/include/pefnos/result.h", "/include/pefnos/step.h", "/include/pefnos/plugin_support.h",
        "/lib/cmake/PefnosSDK/PefnosSDKConfig.cmake",
        "/lib/cmake/PefnosSDK/PefnosSDKConfigVersion.cmake",
        "/lib/cmake/PefnosSDK/PefnosPlugin.cmake"}) {
    EXPECT_TRUE(fs::exists(prefix + file)) << file << " was not installed\n" << install_out;
  }

  // Out of tree: the example knows pefnos only through the installed package.
  const std::string build = dir_.path() + "/stamp-build";
  auto [configure_rc, configure_out] =
      run({PEFNOS_CMAKE, "-S", std::string(PEFNOS_SOURCE_DIR) + "/examples/plugin-stamp", "-B",
           build, "-DCMAKE_PREFIX_PATH=" + prefix, "-DCMAKE_CXX_COMPILER=" PEFNOS_CXX_COMPILER,
           "-DCMAKE_BUILD_TYPE=RelWithDebInfo"});
  ASSERT_EQ(configure_rc, 0) << configure_out;
  EXPECT_NE(configure_out.find("pefnos plugin ABI " + std::to_string(kPluginAbiVersion) + " (SDK "),
            std::string::npos)
      << configure_out;
  EXPECT_NE(configure_out.find(" in " + prefix + "/lib/cmake/PefnosSDK)"), std::string::npos)
      << configure_out;
  auto [build_rc, build_out] = run({PEFNOS_CMAKE, "--build", build});
  ASSERT_EQ(build_rc, 0) << build_out;
  EXPECT_EQ(build_out.find("warning"), std::string::npos) << build_out;

  // Dropped into a configured plugin directory: no rebuild of pefnos.
  const std::string plugins = directory("plugins");
  copyPlugin(build + "/stamp.so", plugins + "/stamp.so");
  addPluginDirectory(plugins);
  const std::string upstream = directory("upstream");
  writeFile(upstream + "/main", "rev-1\nthe rest is not read\n");
  fs::create_directories(upstream + "/feature");
  writeFile(upstream + "/feature/x", "x-1\n");
  writeFile(upstream + "/feature/.x.swp", "not a branch\n");
  writeFile(upstream + "/feature/empty", "");
  int repo = addRepository("stamped", "stamp", upstream);
  int main = addBranch(repo, "main");
  addBranch(repo, "feature/*", true);
  startMaster();

  pollNow(repo);
  EXPECT_EQ(head(main), "rev-1");
  EXPECT_EQ(tdb_.scalar("SELECT string_agg(b.name || '=' || h.revision, ',' ORDER BY b.name) "
                        "FROM pefnos.branch b JOIN pefnos.branch_head h ON h.branch_id = b.id"),
            "feature/x=x-1,main=rev-1");

  writeFile(upstream + "/main", "rev-2\n");
  pollNow(repo);
  EXPECT_EQ(head(main), "rev-2");
  EXPECT_EQ(tdb_.scalar("SELECT message FROM pefnos.commit WHERE revision = 'rev-2'"),
            "stamp rev-2");
  EXPECT_EQ(tdb_.scalar("SELECT state || ' ' || name || ' ' || kind FROM pefnos.plugin "
                        "WHERE master = 'm' AND path = " +
                        tdb_.conn().quote(plugins + "/stamp.so")),
            "loaded stamp vcs");
}

TEST_F(Sdk, BadPluginsAreRefusedWithTheirReasonsAndTheOthersStillWork) {
  const std::string plugins = directory("plugins");
  writeFile(plugins + "/text.so", "this is not a shared object\n");
  copyPlugin(PEFNOS_GIT_PLUGIN, plugins + "/truncated.so", 4096);
  const std::string plain = plainSharedLibrary();
  ASSERT_FALSE(plain.empty()) << "no libz.so.1 found to use as a library without the entry symbol";
  copyPlugin(plain, plugins + "/nosymbol.so");
  copyPlugin(PEFNOS_STAMP_ABI999_PLUGIN, plugins + "/wrongabi.so");
  copyPlugin(PEFNOS_STAMP_PLUGIN, plugins + "/stamp.so");
  const std::map<std::string, std::string> refused = {
      {"text.so", "not a loadable shared object"},
      {"truncated.so", "not a loadable shared object"},
      {"nosymbol.so", "exports no 'pefnos_plugin'"},
      {"wrongabi.so",
       "built for plugin ABI 999, this pefnos has ABI " + std::to_string(kPluginAbiVersion)}};

  auto [rc, listing] = pluginsList({plugins});
  EXPECT_EQ(rc, 3) << listing;  // something was refused
  for (const auto& [file, reason] : refused) {
    std::string line = listedLine(listing, "refused  ", plugins + "/" + file + ": ");
    EXPECT_NE(line.find(reason), std::string::npos) << file << ": " << line << "\n" << listing;
  }
  EXPECT_NE(listing.find("loaded   vcs  git "), std::string::npos) << listing;
  EXPECT_NE(listedLine(listing, "loaded   vcs  stamp ", plugins + "/stamp.so"), "") << listing;

  // A master records each refusal where a user looks, and goes on working.
  std::string git_upstream = dir_.path() + "/up.git";
  git({"init", "-q", "--bare", git_upstream});
  git({"init", "-q", dir_.path() + "/work"});
  writeFile(dir_.path() + "/work/a", "a\n");
  git({"-C", dir_.path() + "/work", "add", "a"});
  git({"-C", dir_.path() + "/work", "commit", "-q", "-m", "one"});
  git({"-C", dir_.path() + "/work", "push", "-q", git_upstream, "HEAD:refs/heads/main"});
  int repo = addRepository("g", "git", git_upstream);
  int main = addBranch(repo, "main");
  startMaster({"--plugin-dir", plugins});
  waitForPluginRows(plugins + "/stamp.so");
  for (const auto& [file, reason] : refused) {
    const std::string path = tdb_.conn().quote(plugins + "/" + file);
    EXPECT_EQ(tdb_.scalar("SELECT state FROM pefnos.plugin WHERE path = " + path), "refused")
        << file;
    EXPECT_NE(tdb_.scalar("SELECT reason FROM pefnos.plugin WHERE path = " + path).find(reason),
              std::string::npos)
        << file;
    EXPECT_EQ(
        count("pefnos.event WHERE source = 'plugin' AND level = 'error' AND details->>'path' = " +
              path),
        "1")
        << file;
  }
  EXPECT_EQ(count("pefnos.plugin WHERE state = 'loaded' AND name IN ('git', 'stamp')"), "2");

  pollNow(repo);
  EXPECT_EQ(head(main), git({"--git-dir", git_upstream, "rev-parse", "main"}));
}

TEST_F(Sdk, PluginDirectoryOthersMayWriteIsRefusedWhole) {
  const std::string open_to_all = directory("world-writable");
  copyPlugin(PEFNOS_STAMP_PLUGIN, open_to_all + "/stamp.so");
  ASSERT_EQ(chmod(open_to_all.c_str(), 0777), 0);
  const std::string open_to_group = directory("group-writable", 0775);
  copyPlugin(PEFNOS_STAMP_PLUGIN, open_to_group + "/stamp.so");

  auto [rc, listing] = pluginsList({open_to_all, open_to_group});
  EXPECT_EQ(rc, 3) << listing;
  for (const auto& dir : {open_to_all, open_to_group}) {
    EXPECT_NE(
        listedLine(listing, "refused  ", dir + ": ").find("writable by others than its owner"),
        std::string::npos)
        << dir << "\n"
        << listing;
  }
  EXPECT_EQ(listing.find("stamp.so"), std::string::npos)
      << "a file of a refused directory was read\n"
      << listing;
  EXPECT_NE(listing.find("loaded   vcs  git "), std::string::npos) << listing;

  // A master refuses it the same way; a repository that needs its plugin says why it cannot poll.
  addPluginDirectory(open_to_all);
  int repo = addRepository("stamped", "stamp", directory("upstream"));
  startMaster();
  waitForPluginRows(open_to_all);
  EXPECT_NE(tdb_.scalar("SELECT state || ': ' || reason FROM pefnos.plugin WHERE path = " +
                        tdb_.conn().quote(open_to_all))
                .find("refused: the plugin directory is writable"),
            std::string::npos);
  EXPECT_EQ(count("pefnos.event WHERE source = 'plugin' AND details->>'path' = " +
                  tdb_.conn().quote(open_to_all)),
            "1");
  std::string error = pollNow(repo, false);
  EXPECT_NE(error.find("no VCS plugin named 'stamp'"), std::string::npos) << error;
}

}  // namespace
}  // namespace pefnos
