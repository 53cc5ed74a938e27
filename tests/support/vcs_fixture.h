// What every VCS plugin test needs: a real libuv loop, the plugin loaded
// through the Registry from the build's plugin directory, a counting Host in
// front of the ProcessHost (so that "one process" and "one at a time" are
// measured, not assumed), and await() to run the loop until a call answers.
// Every test ends with the loop closing cleanly (uv_loop_close == 0).
#pragma once

#include <gtest/gtest.h>
#include <uv.h>

#include <algorithm>
#include <csignal>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/loop/loop.h"
#include "core/plugin/plugin.h"
#include "tests/support/child.h"

namespace pefnos::test {

// Forwards to a ProcessHost; remembers each argv and how many ran at once.
class CountingHost : public Host {
 public:
  explicit CountingHost(uv_loop_t* loop) : inner_(loop) {}
  std::shared_ptr<Running> run(ProcessSpec spec, std::function<void(ProcessResult)> done) override {
    started(spec);
    return inner_.run(std::move(spec), finished(std::move(done)));
  }
  std::shared_ptr<Running> stream(ProcessSpec spec, std::function<void(std::string_view)> on_out,
                                  std::function<void(ProcessResult)> done) override {
    started(spec);
    return inner_.stream(std::move(spec), std::move(on_out), finished(std::move(done)));
  }
  void post(std::function<void()> fn) override { inner_.post(std::move(fn)); }
  void log(LogLevel level, std::string_view message) override {
    logged.emplace_back(message);
    inner_.log(level, message);
  }

  std::vector<std::vector<std::string>> argvs;
  std::vector<std::string> logged;
  int in_flight = 0, most_in_flight = 0;

  // How many of the recorded processes had this argument (a subcommand).
  size_t count(const std::string& argument) const {
    return std::count_if(argvs.begin(), argvs.end(), [&](const auto& argv) {
      return std::find(argv.begin(), argv.end(), argument) != argv.end();
    });
  }

 private:
  void started(const ProcessSpec& spec) {
    argvs.push_back(spec.argv);
    most_in_flight = std::max(most_in_flight, ++in_flight);
  }
  std::function<void(ProcessResult)> finished(std::function<void(ProcessResult)> done) {
    return [this, done = std::move(done)](ProcessResult r) {
      --in_flight;
      done(std::move(r));
    };
  }
  plugin::ProcessHost inner_;
};

// A loop, a CountingHost and the named plugin's Vcs, made fresh for each test.
class VcsFixture : public ::testing::Test {
 protected:
  explicit VcsFixture(std::string vcs_name) : vcs_name_(std::move(vcs_name)) {}

  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);  // as the daemon does
    ASSERT_EQ(uv_loop_init(&loop), 0);
    host = std::make_unique<CountingHost>(&loop);
    registry = std::make_unique<plugin::Registry>(*host);
    registry->loadDirectory(PEFNOS_PLUGIN_BUILD_DIR);
    vcs = registry->makeVcs(vcs_name_);
    ASSERT_TRUE(vcs) << "no " << vcs_name_ << " plugin in " << PEFNOS_PLUGIN_BUILD_DIR;
  }

  void TearDown() override {
    vcs.reset();
    // The host before the registry: its pending callbacks (a helper's exit)
    // are plugin code, which must stay loaded until they are gone.
    host.reset();
    registry.reset();
    uv_run(&loop, UV_RUN_DEFAULT);  // lets the closes started by destructors finish
    EXPECT_EQ(uv_loop_close(&loop), 0) << "a handle was leaked";
  }

  // Runs the loop until the operation that start begins calls back.
  template <class T>
  T await(const std::function<void(std::function<void(T)>)>& start, uint64_t timeout_ms = 60000) {
    std::optional<T> got;
    start([&got](T value) {
      EXPECT_FALSE(got.has_value()) << "done called twice";
      got.emplace(std::move(value));
    });
    bool expired = false;
    loop::Timer watchdog(&loop), tick(&loop);
    watchdog.start(timeout_ms, 0, [&] { expired = true; });
    // An answer posted through a timer arrives in the timer phase of an
    // iteration, which then still polls: the tick keeps that poll short.
    tick.start(5, 5, [] {});
    while (!got && !expired) uv_run(&loop, UV_RUN_ONCE);
    if (!got) throw std::runtime_error("no answer in time");  // TearDown still cleans up
    return std::move(*got);
  }

  Result<std::vector<Head>> listHeads(const Repo& r) {
    return await<Result<std::vector<Head>>>([&](auto done) { vcs->listHeads(r, done); });
  }
  Status updateProxy(const Repo& r, const std::vector<std::string>& branches) {
    return await<Status>([&](auto done) { vcs->updateProxy(r, branches, done); });
  }
  Result<std::vector<CommitInfo>> listCommits(const Repo& r, const std::string& to,
                                              const std::vector<std::string>& exclude,
                                              size_t limit) {
    return await<Result<std::vector<CommitInfo>>>(
        [&](auto done) { vcs->listCommits(r, to, exclude, limit, done); });
  }
  Result<std::string> treeDigest(const Repo& r, const std::string& revision) {
    return await<Result<std::string>>([&](auto done) { vcs->treeDigest(r, revision, done); });
  }
  Status forget(const Repo& r) {
    return await<Status>([&](auto done) { vcs->forget(r, done); });
  }
  // The revision's tree as the plugin exports it (a tar, in memory: tests only).
  Result<std::string> exportTree(const Repo& r, const std::string& revision) {
    std::string tar;
    auto status = await<Status>([&](auto done) {
      vcs->exportTree(r, revision, [&](std::string_view chunk) { tar.append(chunk); }, done);
    });
    if (!status) return status.error();
    return tar;
  }

  uv_loop_t loop;
  std::unique_ptr<CountingHost> host;
  std::unique_ptr<plugin::Registry> registry;
  std::shared_ptr<Vcs> vcs;

 private:
  std::string vcs_name_;
};

}  // namespace pefnos::test
