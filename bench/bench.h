// Shared by the benchmark scenarios: a private PostgreSQL for the run, figures
// printed as `scenario.metric value unit`.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "core/cluster/cluster.h"

namespace pefnos::bench {

// A private, migrated cluster in a temporary home, removed at the end.
class BenchCluster {
 public:
  BenchCluster();
  ~BenchCluster();
  const std::string& conninfo() const { return conninfo_; }
  const std::string& home() const { return home_; }

 private:
  std::string home_, conninfo_;
  std::unique_ptr<cluster::Cluster> cluster_;
  uv_loop_t loop_;
};

void figure(const std::string& name, double value, const std::string& unit);

// Programs and what they cost (bench/proc.cpp).
int envInt(const char* name, int fallback);
int freePort();  // a loopback port nobody listens on now
pid_t spawn(std::vector<std::string> argv);
void runOk(std::vector<std::string> argv);  // throws unless it exits 0
void stop(pid_t pid);                       // SIGTERM, then reaped
// utime + stime in clock ticks: the process, its reaped children, and its
// children still running (a long-lived helper).
struct CpuTicks {
  long long self = 0, children = 0, live_children = 0;
  long long all() const { return self + children + live_children; }
};
CpuTicks cpuTicks(pid_t pid);
// From /proc/PID/status: VmRSS now, or VmHWM for the peak.
double rssMb(pid_t pid, const std::string& field = "VmRSS");
std::vector<pid_t> childrenOf(pid_t pid);
double percentile(std::vector<double> samples, double p);

int runNotify();
int runPollGit();
int runPollBzrSvn();
int runBuilds();
int runLogs();
int runHttp();
int runMirror();

}  // namespace pefnos::bench
