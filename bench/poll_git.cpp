// Scenario `poll-git`: a master polling many local git repositories.
//
//   poll-git.repositories, .branches    what was configured
//   poll-git.first_cycle_s              until every branch head is recorded
//   poll-git.rss_mb                     the master's resident memory after it
//   poll-git.cpu_pct                    master + its git children, percent of
//                                       one core, over the window
//   poll-git.polls                      polls done in the window
//   poll-git.cpu_ms_per_poll            CPU per repository poll
//   poll-git.push_to_request_p50_ms     push, then pefnos.notify_push, until
//                                       the build request row exists (p50, p99)
//
// PEFNOS_BENCH_REPOS (default 1000) and PEFNOS_BENCH_WINDOW_S (default 300)
// scale it down for a quick look.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <pqxx/pqxx>
#include <thread>

#include "bench.h"

namespace pefnos::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
constexpr int kBranches = 10;

std::vector<std::string> git(std::vector<std::string> args) {
  args.insert(args.begin(), {"git", "-c", "user.name=Bench", "-c", "user.email=b@example.org",
                             "-c", "init.defaultBranch=b0"});
  return args;
}

}  // namespace

int runPollGit() {
  const int repos = envInt("PEFNOS_BENCH_REPOS", 1000);
  const int window_s = envInt("PEFNOS_BENCH_WINDOW_S", 300);
  BenchCluster cluster;
  const fs::path dir = cluster.home() + "/repos";
  fs::create_directories(dir);

  // One upstream with kBranches branches, copied: making 1,000 with git would
  // measure git, not pefnos.
  const std::string work = (dir / "work").string(), first = (dir / "r0.git").string();
  runOk(git({"init", "-q", "--bare", first}));
  runOk(git({"init", "-q", work}));
  for (int b = 0; b < kBranches; ++b) {
    std::ofstream(work + "/file") << b << "\n";
    runOk(git({"-C", work, "add", "file"}));
    runOk(git({"-C", work, "commit", "-q", "-m", "commit " + std::to_string(b)}));
    runOk(git({"-C", work, "push", "-q", first, "HEAD:refs/heads/b" + std::to_string(b)}));
  }
  for (int r = 1; r < repos; ++r) {
    fs::copy(first, dir / ("r" + std::to_string(r) + ".git"), fs::copy_options::recursive);
  }
  {
    pqxx::connection c(cluster.conninfo());
    pqxx::work tx(c);
    tx.exec("INSERT INTO pefnos.project (id, name) VALUES (1, 'bench')");
    tx.exec_params("INSERT INTO pefnos.repository (id, project_id, name, vcs, url, poll_interval) "
                   "SELECT r + 1, 1, 'r' || r, 'git', $1 || '/r' || r || '.git', 60 "
                   "FROM generate_series(0, $2 - 1) r",
                   dir.string(), repos);
    tx.exec_params("INSERT INTO pefnos.branch (repository_id, name) "
                   "SELECT r, 'b' || b FROM generate_series(1, $1) r, generate_series(0, $2 - 1) b",
                   repos, kBranches);
    tx.exec("INSERT INTO pefnos.builder (id, project_id, name) VALUES (1, 1, 'build')");
    tx.exec("INSERT INTO pefnos.builder_branch (builder_id, branch_id) "
            "SELECT 1, id FROM pefnos.branch WHERE repository_id = 1 AND name = 'b0'");
    tx.commit();
  }
  figure("poll-git.repositories", repos, "count");
  figure("poll-git.branches", repos * kBranches, "count");

  const auto t0 = Clock::now();
  pid_t master = spawn({PEFNOS_BINARY, "--log-level", "warning", "master", "--db",
                        cluster.conninfo(), "--name", "bench", "--state-dir",
                        cluster.home() + "/state", "--workers", "none"});
  pqxx::connection c(cluster.conninfo());
  auto scalar = [&](const std::string& sql) {
    pqxx::nontransaction tx(c);
    return tx.exec(sql)[0][0].as<long long>();
  };
  while (scalar("SELECT count(*) FROM pefnos.branch_head") < repos * kBranches) {
    if (Clock::now() - t0 > std::chrono::minutes(10)) throw std::runtime_error("first cycle took over 10 minutes");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  figure("poll-git.first_cycle_s", std::chrono::duration<double>(Clock::now() - t0).count(), "s");
  // Let the first cycle's requests and proxies settle, then measure.
  std::this_thread::sleep_for(std::chrono::seconds(5));
  figure("poll-git.rss_mb", rssMb(master), "MB");

  const long ticks_per_s = sysconf(_SC_CLK_TCK);
  const std::string count_polls = "SELECT coalesce(sum(polls), 0) FROM pefnos.repository_poll";
  const long long polls0 = scalar(count_polls);
  const CpuTicks cpu0 = cpuTicks(master);
  const auto w0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(window_s));
  const double wall = std::chrono::duration<double>(Clock::now() - w0).count();
  const CpuTicks cpu1 = cpuTicks(master);  // git children are reaped: all in children
  const long long polls = scalar(count_polls) - polls0;
  const double self_s = static_cast<double>(cpu1.self - cpu0.self) / ticks_per_s;
  const double children_s = static_cast<double>(cpu1.children - cpu0.children) / ticks_per_s;
  figure("poll-git.cpu_pct", 100.0 * (self_s + children_s) / wall, "%");
  figure("poll-git.cpu_pct_master", 100.0 * self_s / wall, "%");
  figure("poll-git.cpu_pct_children", 100.0 * children_s / wall, "%");
  figure("poll-git.polls", static_cast<double>(polls), "count");
  figure("poll-git.cpu_ms_per_poll", polls ? 1000.0 * (self_s + children_s) / static_cast<double>(polls) : 0, "ms");
  figure("poll-git.rss_mb_after_window", rssMb(master), "MB");

  // Push to request: a commit pushed to r0's branch b0, then notify_push.
  runOk(git({"-C", work, "checkout", "-q", "-B", "b0"}));
  std::vector<double> samples;
  for (int i = 0; i < 50; ++i) {
    std::ofstream(work + "/file") << "push " << i << "\n";
    runOk(git({"-C", work, "commit", "-q", "-a", "-m", "push " + std::to_string(i)}));
    runOk(git({"-C", work, "push", "-q", "--force", first, "HEAD:refs/heads/b0"}));
    std::string rev;
    {
      std::ifstream head(work + "/.git/refs/heads/b0");
      head >> rev;
    }
    auto p0 = Clock::now();
    {
      pqxx::nontransaction tx(c);
      tx.exec("SELECT pefnos.notify_push(1)");
    }
    for (;;) {
      if (scalar("SELECT count(*) FROM pefnos.build_request WHERE revision = '" + rev + "'") > 0) break;
      if (Clock::now() - p0 > std::chrono::seconds(30)) throw std::runtime_error("no build request after a push");
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    samples.push_back(std::chrono::duration<double, std::milli>(Clock::now() - p0).count());
  }
  figure("poll-git.push_to_request_p50_ms", percentile(samples, 50), "ms");
  figure("poll-git.push_to_request_p99_ms", percentile(samples, 99), "ms");

  stop(master);
  return 0;
}

}  // namespace pefnos::bench
