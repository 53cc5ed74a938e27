// Scenario `poll-bzr-svn`: a master polling local Bazaar branches, then local
// Subversion branch paths, every 60 s, while commits land now and then.
//
//   poll-bzr-svn.bzr_branches, .svn_branches   what was configured
//   poll-bzr-svn.bzr_first_cycle_s             until every bzr head is recorded
//   poll-bzr-svn.bzr_polls                     bzr polls in the window
//   poll-bzr-svn.bzr_cpu_ms_per_poll           CPU (master + every child, the
//                                              long-lived Breezy helper included)
//                                              per repository poll
//   poll-bzr-svn.svn_...                       the same for svn
//   poll-bzr-svn.rss_mb                        the master's resident memory
//   poll-bzr-svn.bzr_helper_rss_mb             the Breezy helper's
//
// Each VCS has 20 repositories of 10 branches (200 branches); one repository
// gets a new commit every 10 s of the window. The two VCSs are measured one
// after the other on the same master (the other one's repositories inactive).
// PEFNOS_BENCH_WINDOW_S (default 180) sets each window.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <thread>

#include "bench.h"

namespace pefnos::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
constexpr int kRepos = 20, kBranches = 10;

std::vector<std::string> brz(std::vector<std::string> args) {
  args.insert(args.begin(), "brz");
  return args;
}
std::vector<std::string> svn(std::vector<std::string> args) {
  args.insert(args.begin(), {"svn", "--non-interactive", "--username", "bench"});
  return args;
}

// One seed repository per VCS with kBranches branches, copied: making them
// one by one would measure brz and svn, not pefnos.
void makeRepositories(const fs::path& dir) {
  setenv("BRZ_EMAIL", "Bench <b@example.org>", 1);
  setenv("BRZ_LOG", "/dev/null", 1);
  const std::string seed = (dir / "bzr-r0").string(), work = (dir / "bzr-work").string();
  runOk(brz({"init-shared-repo", "-q", "--no-trees", seed}));
  runOk(brz({"init", "-q", seed + "/b0"}));
  runOk(brz({"checkout", "-q", "--lightweight", seed + "/b0", work}));
  std::ofstream(work + "/file") << "seed\n";
  runOk(brz({"add", "-q", work}));
  runOk(brz({"commit", "-q", "-m", "seed", work}));
  for (int b = 1; b < kBranches; ++b) {
    runOk(brz({"branch", "-q", seed + "/b0", seed + "/b" + std::to_string(b)}));
  }

  const std::string svn_seed = (dir / "svn-r0").string(), url = "file://" + svn_seed;
  runOk({"svnadmin", "create", svn_seed});
  runOk(svn({"mkdir", "-q", "--parents", "-m", "layout", url + "/trunk", url + "/branches"}));
  std::ofstream((dir / "svn-file").string()) << "seed\n";
  runOk(svn({"import", "-q", "-m", "seed", (dir / "svn-file").string(), url + "/trunk/file"}));
  for (int b = 0; b < kBranches; ++b) {
    runOk(svn({"copy", "-q", "-m", "branch", url + "/trunk", url + "/branches/b" + std::to_string(b)}));
  }
  for (int r = 1; r < kRepos; ++r) {
    fs::copy(seed, dir / ("bzr-r" + std::to_string(r)), fs::copy_options::recursive);
    fs::copy(svn_seed, dir / ("svn-r" + std::to_string(r)), fs::copy_options::recursive);
  }
}

// A commit on branch b0 (bzr) or branches/b0 (svn) of repository r.
void commitTo(const fs::path& dir, const std::string& vcs, int r, int n) {
  const std::string work = (dir / (vcs + "-work-" + std::to_string(r))).string();
  const std::string repo = (dir / (vcs + "-r" + std::to_string(r))).string();
  const bool fresh = !fs::exists(work);
  if (vcs == "bzr") {
    if (fresh) runOk(brz({"checkout", "-q", "--lightweight", repo + "/b0", work}));
    std::ofstream(work + "/file") << "commit " << n << "\n";
    runOk(brz({"commit", "-q", "-m", "commit " + std::to_string(n), work}));
  } else {
    if (fresh) runOk(svn({"checkout", "-q", "file://" + repo + "/branches/b0", work}));
    std::ofstream(work + "/file") << "commit " << n << "\n";
    runOk(svn({"commit", "-q", "-m", "commit " + std::to_string(n), work}));
  }
}

}  // namespace

int runPollBzrSvn() {
  const int window_s = envInt("PEFNOS_BENCH_WINDOW_S", 180);
  BenchCluster cluster;
  const fs::path dir = cluster.home() + "/repos";
  fs::create_directories(dir);
  makeRepositories(dir);
  {
    pqxx::connection c(cluster.conninfo());
    pqxx::work tx(c);
    tx.exec("INSERT INTO pefnos.project (id, name) VALUES (1, 'bench')");
    // bzr: ids 1..20, active; svn: ids 101..120, inactive until their turn.
    tx.exec_params("INSERT INTO pefnos.repository (id, project_id, name, vcs, url, poll_interval, active) "
                   "SELECT r + 1, 1, 'bzr' || r, 'bzr', $1 || '/bzr-r' || r, 60, true "
                   "FROM generate_series(0, $2 - 1) r",
                   dir.string(), kRepos);
    tx.exec_params("INSERT INTO pefnos.repository (id, project_id, name, vcs, url, poll_interval, active) "
                   "SELECT r + 101, 1, 'svn' || r, 'svn', 'file://' || $1 || '/svn-r' || r, 60, false "
                   "FROM generate_series(0, $2 - 1) r",
                   dir.string(), kRepos);
    tx.exec_params("INSERT INTO pefnos.branch (repository_id, name) "
                   "SELECT r.id, CASE WHEN r.vcs = 'svn' THEN 'branches/' ELSE '' END || 'b' || b "
                   "FROM pefnos.repository r, generate_series(0, $1 - 1) b",
                   kBranches);
    tx.commit();
  }
  figure("poll-bzr-svn.bzr_branches", kRepos * kBranches, "count");
  figure("poll-bzr-svn.svn_branches", kRepos * kBranches, "count");

  pid_t master = spawn({PEFNOS_BINARY, "--log-level", "warning", "master", "--db",
                        cluster.conninfo(), "--name", "bench", "--state-dir",
                        cluster.home() + "/state", "--workers", "none"});
  pqxx::connection c(cluster.conninfo());
  auto scalar = [&](const std::string& sql) {
    pqxx::nontransaction tx(c);
    return tx.exec(sql)[0][0].as<long long>();
  };
  const long ticks_per_s = sysconf(_SC_CLK_TCK);

  for (const std::string vcs : {"bzr", "svn"}) {
    const std::string prefix = "poll-bzr-svn." + vcs + "_";
    const std::string of_vcs = " JOIN pefnos.repository r ON r.id = x.repository_id WHERE r.vcs = '" + vcs + "'";
    if (vcs == "svn") {
      pqxx::work tx(c);
      tx.exec("UPDATE pefnos.repository SET active = (vcs = 'svn')");
      tx.commit();
    }
    const auto t0 = Clock::now();
    while (scalar("SELECT count(*) FROM pefnos.branch_head h JOIN pefnos.branch x ON x.id = h.branch_id" +
                  of_vcs) < kRepos * kBranches) {
      if (Clock::now() - t0 > std::chrono::minutes(10)) throw std::runtime_error(vcs + ": first cycle took over 10 minutes");
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    figure(prefix + "first_cycle_s", std::chrono::duration<double>(Clock::now() - t0).count(), "s");
    std::this_thread::sleep_for(std::chrono::seconds(5));  // the first cycle's tail settles

    const std::string count_polls = "SELECT coalesce(sum(polls), 0) FROM pefnos.repository_poll x" + of_vcs;
    const long long polls0 = scalar(count_polls);
    const CpuTicks cpu0 = cpuTicks(master);
    const auto w0 = Clock::now();
    for (int n = 0; Clock::now() - w0 < std::chrono::seconds(window_s); ++n) {
      if (n % 10 == 9) commitTo(dir, vcs, (n / 10) % kRepos, n);
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    const double wall = std::chrono::duration<double>(Clock::now() - w0).count();
    const CpuTicks cpu1 = cpuTicks(master);
    const long long polls = scalar(count_polls) - polls0;
    const double cpu_s = static_cast<double>(cpu1.all() - cpu0.all()) / ticks_per_s;
    figure(prefix + "polls", static_cast<double>(polls), "count");
    figure(prefix + "cpu_pct", 100.0 * cpu_s / wall, "%");
    figure(prefix + "cpu_ms_per_poll", polls ? 1000.0 * cpu_s / static_cast<double>(polls) : 0, "ms");
  }
  figure("poll-bzr-svn.rss_mb", rssMb(master), "MB");
  double helper_mb = 0;
  for (pid_t kid : childrenOf(master)) helper_mb += rssMb(kid);
  figure("poll-bzr-svn.bzr_helper_rss_mb", helper_mb, "MB");
  stop(master);
  return 0;
}

}  // namespace pefnos::bench
