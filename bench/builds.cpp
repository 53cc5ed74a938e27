// Scenarios `builds` and `logs`: a master with local `pefnos worker`
// processes over loopback, on a private cluster with durable settings.
//
//   builds.force_start_p50 / _p99   ms from the force-build command row being
//                                   inserted to the first step's process running
//                                   on a worker (the step is `date +%s%N`)
//   builds.builds_per_s             1,000 trivial builds (`true`) queued at
//                                   once, through 4 workers of 2 slots
//   logs.store_s_50mib              seconds from a step's process printing its
//                                   last byte of 50 MiB until the step's row says
//                                   it ended (its log is stored first), worst of
//                                   repetitive text and incompressible base64
//   logs.master_peak_rss_mb         the master's peak resident memory (VmHWM)
//
// PEFNOS_BENCH_FORCED (default 200) and PEFNOS_BENCH_BUILDS (default 1000) scale it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <thread>

#include "bench.h"
#include <nlohmann/json.hpp>

#include "core/protocol/auth.h"

namespace pefnos::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;


long long realtimeNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A master and `workers` workers of 2 slots on a fresh cluster, with one
// repository, one branch with a head, and the builders the scenario adds.
class Rig {
 public:
  explicit Rig(int workers) {
    const std::string home = cluster_.home();
    pqxx::connection c(cluster_.conninfo());
    pqxx::work tx(c);
    tx.exec("INSERT INTO pefnos.project (id, name) VALUES (1, 'bench')");
    tx.exec("INSERT INTO pefnos.repository (id, project_id, name, vcs, url, poll_interval, active) "
            "VALUES (1, 1, 'r', 'git', '/nonexistent', 86400, false)");
    tx.exec("INSERT INTO pefnos.branch (id, repository_id, name) VALUES (1, 1, 'main')");
    tx.exec("INSERT INTO pefnos.branch_head (branch_id, revision) VALUES (1, repeat('a', 40))");
    for (int w = 0; w < workers; ++w) {
      const std::string name = "w" + std::to_string(w), file = home + "/" + name + ".secret";
      std::ofstream(file) << "secret-" << name << "\n";
      fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write);
      tx.exec_params("INSERT INTO pefnos.worker (name, secret_hash, slots) VALUES ($1, $2, 2)", name,
                     protocol::makeVerifier("secret-" + name));
    }
    tx.commit();
    port_ = freePort();
    master_ = spawn({PEFNOS_BINARY, "--log-level", "warning", "master", "--db", cluster_.conninfo(), "--name",
                     "bench", "--state-dir", home + "/state", "--workers", "127.0.0.1:" + std::to_string(port_),
                     "--db-connections", "4"});
    for (int w = 0; w < workers; ++w) {
      const std::string name = "w" + std::to_string(w);
      workers_.push_back(spawn({PEFNOS_BINARY, "--log-level", "warning", "worker", "--master",
                                "127.0.0.1:" + std::to_string(port_), "--name", name, "--secret-file",
                                home + "/" + name + ".secret", "--workdir", home + "/work-" + name, "--slots", "2"}));
    }
    conn_ = std::make_unique<pqxx::connection>(cluster_.conninfo());
    // The workers retry until the master listens; give them time to be in.
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
  ~Rig() {
    for (pid_t w : workers_) stop(w);
    stop(master_);
  }

  int addBuilder(const std::string& steps, int max_concurrent) {
    pqxx::work tx(*conn_);
    auto r = tx.exec_params("INSERT INTO pefnos.builder (project_id, name, steps, trusted, max_concurrent) "
                            "VALUES (1, 'b' || (SELECT count(*) FROM pefnos.builder), $1::jsonb, false, $2) "
                            "RETURNING id",
                            steps, max_concurrent);
    tx.exec_params("INSERT INTO pefnos.builder_branch (builder_id, branch_id) VALUES ($1, 1)", r[0][0].as<int>());
    tx.commit();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the master's model hears of it
    return r[0][0].as<int>();
  }
  long long scalar(const std::string& sql) {
    pqxx::nontransaction tx(*conn_);
    auto r = tx.exec(sql);
    return r[0][0].is_null() ? 0 : r[0][0].as<long long>();
  }
  std::string text(const std::string& sql) {
    pqxx::nontransaction tx(*conn_);
    return tx.exec(sql)[0][0].as<std::string>();
  }
  void exec(const std::string& sql) {
    pqxx::work tx(*conn_);
    tx.exec(sql);
    tx.commit();
  }
  template <class F>
  void waitFor(F done, int seconds) {
    const auto t0 = Clock::now();
    while (!done()) {
      if (Clock::now() - t0 > std::chrono::seconds(seconds)) throw std::runtime_error("timed out waiting");
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  }
  pid_t master() const { return master_; }

 private:
  BenchCluster cluster_;
  int port_ = 0;
  pid_t master_ = 0;
  std::vector<pid_t> workers_;
  std::unique_ptr<pqxx::connection> conn_;
};

}  // namespace

int runBuilds() {
  const int forced = envInt("PEFNOS_BENCH_FORCED", 200);
  const int queued = envInt("PEFNOS_BENCH_BUILDS", 1000);
  Rig rig(4);

  // Forced builds one at a time: command row → the step's process runs.
  int dated = rig.addBuilder(R"([{"type": "shell", "argv": ["date", "+%s%N"]}])", 1);
  std::vector<double> samples;
  for (int i = 0; i < forced; ++i) {
    const long long before = rig.scalar("SELECT count(*) FROM pefnos.build WHERE state = 'succeeded'");
    const long long t0 = realtimeNs();
    rig.exec("SELECT pefnos.force_build(" + std::to_string(dated) + ", 1)");
    rig.waitFor([&] { return rig.scalar("SELECT count(*) FROM pefnos.build WHERE state = 'succeeded'") > before; }, 30);
    const long long started = std::stoll(rig.text(
        "SELECT convert_from(l.data, 'UTF8') FROM pefnos.log l JOIN pefnos.step s ON s.id = l.step_id "
        "ORDER BY s.id DESC, l.seq LIMIT 1"));
    samples.push_back(static_cast<double>(started - t0) / 1e6);
  }
  figure("builds.force_start_p50", percentile(samples, 50), "ms");
  figure("builds.force_start_p99", percentile(samples, 99), "ms");

  // Many trivial builds queued at once.
  int trivial = rig.addBuilder(R"([{"type": "shell", "argv": ["true"]}])", 8);
  const auto t0 = Clock::now();
  rig.exec("INSERT INTO pefnos.build_request (builder_id, branch_id, revision, reason) SELECT " +
           std::to_string(trivial) + ", 1, repeat('a', 40), 'force' FROM generate_series(1, " +
           std::to_string(queued) + ")");
  const std::string done_sql = "SELECT count(*) FROM pefnos.build WHERE builder_id = " + std::to_string(trivial) +
                               " AND state = 'succeeded'";
  rig.waitFor([&] { return rig.scalar(done_sql) >= queued; }, 600);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  figure("builds.builds_per_s", queued / seconds, "builds/s");
  figure("builds.stored", static_cast<double>(rig.scalar(
                              "SELECT count(*) FROM pefnos.build_request WHERE state = 'done' AND builder_id = " +
                              std::to_string(trivial))),
         "requests");
  return 0;
}

int runLogs() {
  Rig rig(1);
  const long long mib50 = 50ll << 20;
  // The user's own steps: sh -c is theirs to choose; pefnos hands it argv.
  const std::vector<std::pair<std::string, std::string>> kinds = {
      {"text", "yes 'a line of repetitive build output, like a compiler printing warnings' | head -c " +
                   std::to_string(mib50)},
      {"base64", "head -c " + std::to_string(mib50 * 3 / 4) + " /dev/urandom | base64 -w 76"}};
  double worst = 0;
  for (const auto& [name, script] : kinds) {
    nlohmann::json steps = nlohmann::json::array(
        {{{"type", "shell"}, {"argv", {"sh", "-c", script + "; date +%s%N >&2"}}, {"max_output", mib50 * 2}}});
    int builder = rig.addBuilder(steps.dump(), 1);
    rig.exec("SELECT pefnos.force_build(" + std::to_string(builder) + ", 1)");
    const std::string state_sql = "SELECT count(*) FROM pefnos.build WHERE builder_id = " + std::to_string(builder) +
                                  " AND state NOT IN ('pending', 'running')";
    rig.waitFor([&] { return rig.scalar(state_sql) > 0; }, 300);
    const std::string step = "(SELECT s.id FROM pefnos.step s JOIN pefnos.build b ON b.id = s.build_id WHERE "
                             "b.builder_id = " + std::to_string(builder) + ")";
    const long long ended_ns = std::stoll(rig.text(
        "SELECT convert_from(data, 'UTF8') FROM pefnos.log WHERE stream = 'err' AND step_id = " + step +
        " ORDER BY seq DESC LIMIT 1"));
    const long long stored_ns = rig.scalar("SELECT (extract(epoch FROM finished_at) * 1e9)::bigint FROM pefnos.step "
                                           "WHERE id = " + step);
    const long long bytes = rig.scalar("SELECT sum(length(data)) FROM pefnos.log WHERE stream = 'out' AND step_id = " +
                                       step);
    const double store_s = static_cast<double>(stored_ns - ended_ns) / 1e9;
    figure("logs.store_s_" + name, store_s, "s");
    figure("logs.stored_mib_" + name, static_cast<double>(bytes) / (1 << 20), "MiB");
    worst = std::max(worst, store_s);
  }
  figure("logs.store_s_50mib", worst, "s");
  figure("logs.master_peak_rss_mb", rssMb(rig.master(), "VmHWM"), "MB");
  return 0;
}

}  // namespace pefnos::bench
