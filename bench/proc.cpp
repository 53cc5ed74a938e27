// Process helpers shared by the polling scenarios: start programs, read what
// a process (and its children) cost from /proc.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "bench.h"

extern char** environ;

namespace pefnos::bench {

// A loopback port nobody listens on now (bound, read back, closed).
int freePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

int envInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

pid_t spawn(std::vector<std::string> argv) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid;
  if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) {
    throw std::runtime_error("cannot start " + argv[0]);
  }
  return pid;
}

void runOk(std::vector<std::string> argv) {
  pid_t pid = spawn(argv);
  int status;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(argv[0] + " " + argv[1] + " failed");
  }
}

void stop(pid_t pid) {
  kill(pid, SIGTERM);
  int status;
  waitpid(pid, &status, 0);
}

namespace {
std::vector<std::string> statFields(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(in, line);
  std::vector<std::string> f;
  if (line.empty()) return f;
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  for (std::string x; rest >> x;) f.push_back(x);
  return f;
}

std::vector<pid_t> liveChildren(pid_t pid) {
  std::vector<pid_t> kids;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(task.path() / "children");
    for (pid_t k; in >> k;) kids.push_back(k);
  }
  return kids;
}
}  // namespace

CpuTicks cpuTicks(pid_t pid) {
  // Fields after the name: state is [0]; utime [11], stime [12], cutime [13], cstime [14].
  auto f = statFields(pid);
  if (f.size() < 15) return {};
  CpuTicks t{std::stoll(f[11]) + std::stoll(f[12]), std::stoll(f[13]) + std::stoll(f[14]), 0};
  // Children still running (a long-lived helper) are not in cutime yet.
  for (pid_t kid : liveChildren(pid)) {
    CpuTicks k = cpuTicks(kid);
    t.live_children += k.self + k.children + k.live_children;
  }
  return t;
}

double rssMb(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string key; in >> key;) {
    if (key == field + ":") {
      long kb;
      in >> kb;
      return kb / 1024.0;
    }
    std::string skip;
    std::getline(in, skip);
  }
  return 0;
}

std::vector<pid_t> childrenOf(pid_t pid) { return liveChildren(pid); }

}  // namespace pefnos::bench
