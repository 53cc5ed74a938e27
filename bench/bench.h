// Shared by the benchmark scenarios: a private PostgreSQL for the run, figures
// printed as `scenario.metric value unit`.
#pragma once

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
double percentile(std::vector<double> samples, double p);

int runNotify();
int runPollGit();

}  // namespace pefnos::bench
