// Scenario `notify`: how fast the daemon reacts to a row and a NOTIFY.
//
//   notify.handler_p50/p99     NOTIFY sent by another connection -> the
//                              subscriber's handler runs on the loop thread
//   notify.roundtrip_p50/p99   a client inserts a ping command -> a real
//                              `pefnos master` claims, runs and writes its
//                              result -> the client hears pefnos_command_done
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "bench.h"
#include "core/db/db.h"
#include "core/loop/loop.h"

extern char** environ;

namespace pefnos::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kSamples = 1000;

double msSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::vector<double> handlerLatencies(const std::string& conninfo) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  std::vector<double> samples;
  std::atomic<int> heard{0};
  std::atomic<bool> listening{false};
  {
    db::Listener listener(&loop, conninfo);
    listener.subscribe("bench", [&](const std::string& payload) {
      auto sent = Clock::time_point(Clock::duration(std::stoll(payload)));
      samples.push_back(msSince(sent));
      ++heard;
      if (heard == kSamples) uv_stop(&loop);
    });
    listener.onListening([&] { listening = true; });
    listener.start();
    std::thread sender([&] {
      while (!listening) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      pqxx::connection c(conninfo);
      for (int i = 0; i < kSamples; ++i) {
        pqxx::nontransaction tx(c);
        auto now = std::to_string(Clock::now().time_since_epoch().count());
        tx.exec("NOTIFY bench, " + tx.quote(now));
        while (heard <= i) std::this_thread::yield();
      }
    });
    uv_run(&loop, UV_RUN_DEFAULT);
    sender.join();
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return samples;
}

class Receiver : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection& c, long long* last) : notification_receiver(c, "pefnos_command_done"), last_(last) {}
  void operator()(const std::string& payload, int) override { *last_ = std::stoll(payload); }

 private:
  long long* last_;
};

std::vector<double> commandRoundTrips(const std::string& conninfo) {
  std::vector<std::string> argv_s = {PEFNOS_BINARY, "--log-level", "warning", "master", "--db",
                                     conninfo, "--name", "bench"};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t master;
  if (posix_spawn(&master, argv[0], nullptr, nullptr, argv.data(), environ) != 0) {
    throw std::runtime_error("cannot start the master");
  }
  pqxx::connection c(conninfo);
  long long done = 0;
  Receiver receiver(c, &done);
  auto once = [&]() -> double {
    auto t0 = Clock::now();
    long long id;
    {
      pqxx::nontransaction tx(c);
      id = tx.exec("SELECT pefnos.ping()")[0][0].as<long long>();
    }
    auto deadline = t0 + std::chrono::seconds(30);
    while (done != id) {
      c.await_notification(1, 0);
      if (Clock::now() > deadline) throw std::runtime_error("no master answered a ping in 30 s");
    }
    return msSince(t0);
  };
  for (int i = 0; i < 50; ++i) once();  // warm-up: connections, plans, caches
  std::vector<double> samples;
  for (int i = 0; i < kSamples; ++i) samples.push_back(once());
  kill(master, SIGTERM);
  int status;
  waitpid(master, &status, 0);
  return samples;
}

}  // namespace

int runNotify() {
  BenchCluster cluster;
  auto handler = handlerLatencies(cluster.conninfo());
  figure("notify.handler_p50", percentile(handler, 50), "ms");
  figure("notify.handler_p99", percentile(handler, 99), "ms");
  auto round = commandRoundTrips(cluster.conninfo());
  figure("notify.roundtrip_p50", percentile(round, 50), "ms");
  figure("notify.roundtrip_p99", percentile(round, 99), "ms");
  figure("notify.roundtrip_max", percentile(round, 100), "ms");
  figure("notify.commands", static_cast<double>(round.size()), "count");
  return 0;
}

}  // namespace pefnos::bench
