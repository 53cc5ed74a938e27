// Scenario `http`: the web room of a master (no workers) on a private cluster.
//
//   http.console_p50_ms / _p99_ms   GET /api/v1/console with 100 builders × 50
//                                   builds inserted directly, timed from the
//                                   client (connect to last byte), 100 requests
//   http.sse500_rss_growth_mb       the master's RSS with 500 clients of
//                                   /api/v1/events connected and 50 events of a
//                                   running build delivered, minus before them
//   http.sse500_delivery_p99_ms     from the commit of a NOTIFY pefnos_build to
//                                   each of the 500 clients reading the event
//
// PEFNOS_BENCH_SSE_CLIENTS (default 500) and PEFNOS_BENCH_SSE_EVENTS (default 50) scale it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <pqxx/pqxx>
#include <stdexcept>
#include <thread>

#include "bench.h"

namespace pefnos::bench {
namespace {

using Clock = std::chrono::steady_clock;


int connectTo(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// One GET on its own connection, read to the end (5 s at most); the status.
int get(int port, const std::string& target, std::string* body = nullptr) {
  int fd = connectTo(port);
  if (fd < 0) return 0;
  std::string req = "GET " + target + " HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return 0;
  }
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string all;
  char buf[65536];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) all.append(buf, static_cast<size_t>(n));
  close(fd);
  if (body) *body = all;
  return all.size() > 12 ? std::atoi(all.c_str() + 9) : 0;
}

}  // namespace

int runHttp() {
  const int clients = envInt("PEFNOS_BENCH_SSE_CLIENTS", 500);
  const int events = envInt("PEFNOS_BENCH_SSE_EVENTS", 50);
  BenchCluster cluster;
  {
    pqxx::connection c(cluster.conninfo());
    pqxx::work tx(c);
    tx.exec("INSERT INTO pefnos.project (id, name) VALUES (1, 'bench')");
    tx.exec("INSERT INTO pefnos.repository (id, project_id, name, vcs, url, active) VALUES"
            " (1, 1, 'r', 'git', '/nonexistent', false)");
    tx.exec("INSERT INTO pefnos.branch (id, repository_id, name) VALUES (1, 1, 'main')");
    tx.exec("INSERT INTO pefnos.commit (id, network_id, revision, author, message)"
            " SELECT g, 1, md5(g::text), 'Author ' || g, 'Change ' || g || E'\\n\\nwith a body' FROM generate_series(1, 50) g");
    tx.exec("INSERT INTO pefnos.builder (id, project_id, name) SELECT g, 1, 'builder-' || g FROM generate_series(1, 100) g");
    tx.exec("INSERT INTO pefnos.builder_branch (builder_id, branch_id) SELECT g, 1 FROM generate_series(1, 100) g");
    // 50 builds per builder, one per commit, in the order a day of polling makes them.
    tx.exec("INSERT INTO pefnos.build_request (id, builder_id, branch_id, commit_id, revision, reason, state, finished_at)"
            " SELECT (c - 1) * 100 + b, b, 1, c, md5(c::text), 'poll', 'done', now()"
            " FROM generate_series(1, 50) c, generate_series(1, 100) b");
    tx.exec("INSERT INTO pefnos.build (id, request_id, builder_id, number, state, started_at, finished_at)"
            " SELECT id, id, builder_id, commit_id, (ARRAY['succeeded', 'failed', 'warnings', 'succeeded'])[1 + id % 4],"
            " now(), now() FROM pefnos.build_request");
    tx.exec("UPDATE pefnos.build SET state = 'running', finished_at = NULL WHERE id = 5000");
    tx.exec("SELECT setval('pefnos.build_request_id_seq', 5000)");
    tx.exec("SELECT setval('pefnos.build_id_seq', 5000)");
    tx.commit();
    pqxx::nontransaction(c).exec("ANALYZE");
  }
  const int port = freePort();
  pid_t master = spawn({PEFNOS_BINARY, "--log-level", "warning", "master", "--db", cluster.conninfo(), "--name",
                        "bench", "--state-dir", cluster.home() + "/state", "--workers", "none", "--http",
                        "127.0.0.1:" + std::to_string(port)});
  struct Stop {
    pid_t pid;
    ~Stop() { stop(pid); }
  } stop_master{master};
  const auto t0 = Clock::now();
  while (get(port, "/api/v1/status") != 200) {
    if (Clock::now() - t0 > std::chrono::seconds(30)) throw std::runtime_error("the master does not answer HTTP");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  // The console grid, timed from the client.
  std::string body;
  if (get(port, "/api/v1/console", &body) != 200) throw std::runtime_error("console: " + body.substr(0, 200));
  if (body.find("\"builder-100\"") == std::string::npos || body.find("\"count\":1") == std::string::npos)
    throw std::runtime_error("console: not the grid expected");
  for (int i = 0; i < 5; ++i) get(port, "/api/v1/console");
  std::vector<double> samples;
  for (int i = 0; i < 100; ++i) {
    const auto start = Clock::now();
    if (get(port, "/api/v1/console") != 200) throw std::runtime_error("console failed");
    samples.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  figure("http.console_p50_ms", percentile(samples, 50), "ms");
  figure("http.console_p99_ms", percentile(samples, 99), "ms");
  figure("http.console_bytes", static_cast<double>(body.size()), "bytes");

  // 500 event clients following a running build.
  const double rss_before = rssMb(master);
  int ep = epoll_create1(0);
  std::vector<int> fds;
  std::vector<std::string> tails(static_cast<size_t>(clients));  // the last bytes each one read
  for (int i = 0; i < clients; ++i) {
    int fd = connectTo(port);
    if (fd < 0) throw std::runtime_error("cannot connect event client " + std::to_string(i));
    const std::string req = "GET /api/v1/events HTTP/1.1\r\nHost: bench\r\n\r\n";
    if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) throw std::runtime_error("write");
    fcntl(fd, F_SETFL, O_NONBLOCK);
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u32 = static_cast<uint32_t>(i);
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    fds.push_back(fd);
  }
  // Reads what is there; marks who saw `marker` (once each) at the time it did.
  std::vector<char> seen(static_cast<size_t>(clients));
  auto pump = [&](const std::string& marker, Clock::time_point since, std::vector<double>* latencies,
                  int timeout_ms) {
    int count = 0;
    std::fill(seen.begin(), seen.end(), 0);
    const auto end = Clock::now() + std::chrono::milliseconds(timeout_ms);
    epoll_event ready[256];
    char buf[16384];
    while (count < clients && Clock::now() < end) {
      int n = epoll_wait(ep, ready, 256, 100);
      for (int k = 0; k < n; ++k) {
        const uint32_t i = ready[k].data.u32;
        for (ssize_t r; (r = read(fds[i], buf, sizeof buf)) > 0;) {
          std::string& t = tails[i];
          t.append(buf, static_cast<size_t>(r));
          if (!seen[i] && t.find(marker) != std::string::npos) {
            seen[i] = 1;
            ++count;
            if (latencies)
              latencies->push_back(std::chrono::duration<double, std::milli>(Clock::now() - since).count());
          }
          if (t.size() > 4096) t.erase(0, t.size() - 1024);
        }
      }
    }
    return count;
  };
  if (int n = pump("pefnos events", Clock::now(), nullptr, 20000); n != clients)
    throw std::runtime_error("only " + std::to_string(n) + " event clients connected");
  pqxx::connection c(cluster.conninfo());
  std::vector<double> delivery;
  for (int k = 1; k <= events; ++k) {
    // One step of the running build: its row changes, then the NOTIFY (at commit).
    pqxx::work tx(c);
    tx.exec("UPDATE pefnos.build SET summary = jsonb_build_object('tick', " + std::to_string(k) + ") WHERE id = 5000");
    tx.exec("SELECT pg_notify('pefnos_build', '5000')");
    const auto sent = Clock::now();
    tx.commit();
    const int got = pump("{\"tick\":" + std::to_string(k) + "}", sent, &delivery, 5000);
    if (got != clients)
      throw std::runtime_error("event " + std::to_string(k) + " reached " + std::to_string(got) + " clients");
  }
  const double rss_after = rssMb(master);
  figure("http.sse500_rss_growth_mb", rss_after - rss_before, "MB");
  figure("http.sse500_delivery_p50_ms", percentile(delivery, 50), "ms");
  figure("http.sse500_delivery_p99_ms", percentile(delivery, 99), "ms");
  figure("http.sse500_delivery_max_ms", percentile(delivery, 100), "ms");
  for (int fd : fds) close(fd);
  close(ep);
  return 0;
}

}  // namespace pefnos::bench
