#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <pqxx/pqxx>

#include "bench.h"
#include "core/base/log.h"
#include "core/db/migrate.h"

namespace pefnos::bench {

BenchCluster::BenchCluster() {
  char tmpl[] = "/tmp/pefnos-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
  chmod(tmpl, 0755);  // the server user must reach it when we run as root
  home_ = tmpl;
  uv_loop_init(&loop_);
  // Durable settings, as a user would run it: the figures include fsync.
  auto c = cluster::Cluster::open(home_, cluster::Options{});
  if (!c) throw std::runtime_error(c.error().message);
  cluster_ = std::move(c.value());
  if (auto s = cluster_->init(); !s) throw std::runtime_error(s.error().message);
  if (auto pid = cluster_->start(&loop_, false); !pid) throw std::runtime_error(pid.error().message);
  conninfo_ = cluster::conninfo(cluster_->layout());
  pqxx::connection conn(conninfo_);
  if (auto m = db::migrate(conn); !m) throw std::runtime_error(m.error().message);
}

BenchCluster::~BenchCluster() {
  if (auto s = cluster_->remove(); !s) std::cerr << "bench: " << s.error().message << "\n";
  cluster_.reset();
  uv_run(&loop_, UV_RUN_NOWAIT);
  uv_loop_close(&loop_);
  std::error_code ec;
  std::filesystem::remove_all(home_, ec);
}

void figure(const std::string& name, double value, const std::string& unit) {
  std::printf("%s %.3f %s\n", name.c_str(), value, unit.c_str());
  std::fflush(stdout);
}

double percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  size_t index = static_cast<size_t>(p / 100.0 * (samples.size() - 1) + 0.5);
  return samples[std::min(index, samples.size() - 1)];
}

}  // namespace pefnos::bench

int main(int argc, char** argv) {
  using namespace pefnos::bench;
  pefnos::log::setLevel(pefnos::log::Level::warning);
  const std::map<std::string, int (*)()> scenarios = {{"notify", runNotify}, {"poll-git", runPollGit}, {"poll-bzr-svn", runPollBzrSvn}, {"builds", runBuilds}, {"logs", runLogs}, {"http", runHttp}, {"mirror", runMirror}};
  std::vector<std::string> chosen(argv + 1, argv + argc);
  if (chosen.empty()) {
    for (const auto& [name, fn] : scenarios) chosen.push_back(name);
  }
  for (const auto& name : chosen) {
    if (name == "--help" || name == "-h") {
      std::cout << "usage: bench/run [SCENARIO...]   scenarios:";
      for (const auto& [n, fn] : scenarios) std::cout << " " << n;
      std::cout << "\n";
      return 0;
    }
    if (!scenarios.count(name)) {
      std::cerr << "bench: unknown scenario '" << name << "'\n";
      return 2;
    }
  }
  int rc = 0;
  for (const auto& name : chosen) {
    try {
      rc |= scenarios.at(name)();
    } catch (const std::exception& e) {
      std::cerr << "bench: " << name << " failed: " << e.what() << "\n";
      rc = 1;
    }
  }
  return rc;
}
