// Scenario `mirror`: a generated history carried by a mirror run through a
// real master, against the bare pipe between the same tools.
//
//   mirror.revisions             revisions of the generated history (merges of
//                                side branches forked from old revisions included)
//   mirror.stream_mb             size of the fast-export stream
//   mirror.bare_pipe_s           `git fast-export | git fast-import`, nothing else,
//                                from the proxy the run reads (the faster of two)
//   mirror.run_s                 the mirror run (claim, stream through the
//                                master, sampled verification, marks, publish)
//   mirror.overhead_pct          run_s over bare_pipe_s, in percent above it
//   mirror.master_peak_rss_mb    the master's peak resident memory (VmHWM)
//   mirror.incremental_s         one new revision: mirror-now command to done,
//                                every revision verified
//
// Git to git, so that both ends are fast and what is measured is what the
// master adds. PEFNOS_BENCH_MIRROR_REVS (default 2000 main-line commits) and
// PEFNOS_BENCH_MIRROR_KB (default 512, the size of the file each commit
// rewrites whole) scale it.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <pqxx/pqxx>
#include <random>
#include <thread>

#include "bench.h"

namespace pefnos::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Starts argv with stdin and stdout from the given descriptors (-1: inherit).
pid_t spawnIo(std::vector<std::string> argv, int in, int out) {
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    if (in >= 0) dup2(in, 0);
    if (out >= 0) dup2(out, 1);
    for (int fd = 3; fd < 256; ++fd) close(fd);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void waitOk(pid_t pid, const std::string& what) {
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error(what + " failed");
}

void writeAll(int fd, const std::string& s) {
  for (size_t done = 0; done < s.size();) {
    ssize_t n = write(fd, s.data() + done, s.size() - done);
    if (n <= 0) throw std::runtime_error("write to fast-import failed");
    done += static_cast<size_t>(n);
  }
}

// A history on refs/heads/main: `revs` main-line commits, each rewriting one
// of 8 files of `kb` KiB whole (small changes: git stores deltas, the stream
// carries every version whole); every 25 commits a side branch forks from the
// main line 60 commits back, gets 3 commits and is merged. Returns commits.
int generate(const std::string& repo, int revs, int kb) {
  int p[2];
  if (pipe(p) != 0) throw std::runtime_error("pipe failed");
  pid_t imp = spawnIo({"git", "-C", repo, "fast-import", "--quiet"}, p[0], -1);
  close(p[0]);
  std::mt19937 rng(42);
  std::string base;
  while (base.size() < static_cast<size_t>(kb) * 1024) base += "line " + std::to_string(rng()) + " of generated content\n";
  base.resize(static_cast<size_t>(kb) * 1024);
  int mark = 0, commits = 0;
  long long when = 1700000000;
  std::vector<int> main_marks;
  auto commit = [&](const std::string& ref, int from, int merge, int file, const std::string& msg) {
    std::string content = base;
    std::string stamp = "revision " + std::to_string(commits) + " " + std::to_string(rng()) + "\n";
    content.replace(static_cast<size_t>(rng() % (content.size() - stamp.size())), stamp.size(), stamp);
    std::string s = "commit " + ref + "\nmark :" + std::to_string(++mark) + "\n" +
                    "author Bench Author <bench@example.org> " + std::to_string(when) + " +0100\n" +
                    "committer Bench Author <bench@example.org> " + std::to_string(when) + " +0100\n" +
                    "data " + std::to_string(msg.size()) + "\n" + msg + "\n";
    if (from) s += "from :" + std::to_string(from) + "\n";
    if (merge) s += "merge :" + std::to_string(merge) + "\n";
    s += "M 100644 inline data/f" + std::to_string(file) + ".txt\ndata " + std::to_string(content.size()) + "\n";
    writeAll(p[1], s);
    writeAll(p[1], content);
    writeAll(p[1], "\n");
    ++when;
    ++commits;
    return mark;
  };
  for (int i = 0; i < revs; ++i) {
    int from = main_marks.empty() ? 0 : main_marks.back();
    if (i % 25 == 24 && main_marks.size() > 60) {
      int side = main_marks[main_marks.size() - 60];
      writeAll(p[1], "reset refs/heads/side\nfrom :" + std::to_string(side) + "\n\n");
      for (int k = 0; k < 3; ++k) side = commit("refs/heads/side", side, 0, (i + k) % 8, "side work " + std::to_string(k));
      main_marks.push_back(commit("refs/heads/main", from, side, i % 8, "merge side branch " + std::to_string(i)));
      continue;
    }
    main_marks.push_back(commit("refs/heads/main", from, 0, i % 8, "commit " + std::to_string(i)));
  }
  close(p[1]);
  waitOk(imp, "git fast-import (generating the history)");
  return commits;
}

std::string scalar(pqxx::connection& c, const std::string& sql) {
  pqxx::work tx(c);
  auto r = tx.exec(sql);
  tx.commit();
  return r[0][0].is_null() ? "" : r[0][0].as<std::string>();
}

// Inserts a command through its SQL function and waits for it; seconds taken.
double command(pqxx::connection& c, const std::string& call, int timeout_s) {
  const auto t0 = Clock::now();
  std::string id = scalar(c, "SELECT " + call);
  for (;;) {
    std::string state = scalar(c, "SELECT state FROM pefnos.command WHERE id = " + id);
    if (state == "done") break;
    if (state == "failed") {
      throw std::runtime_error(call + " failed: " +
                               scalar(c, "SELECT error FROM pefnos.command WHERE id = " + id));
    }
    if (Clock::now() - t0 > std::chrono::seconds(timeout_s)) throw std::runtime_error(call + " timed out");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int runMirror() {
  const int revs = envInt("PEFNOS_BENCH_MIRROR_REVS", 2000);
  const int kb = envInt("PEFNOS_BENCH_MIRROR_KB", 512);
  BenchCluster cluster;
  const std::string dir = cluster.home() + "/mirror";
  std::filesystem::create_directories(dir);
  const std::string src = dir + "/src.git", tgt = dir + "/tgt.git";
  for (const auto& r : {src, tgt}) runOk({"git", "init", "-q", "--bare", r});
  std::cerr << "mirror: generating " << revs << " revisions of " << kb << " KiB files\n";
  const int commits = generate(src, revs, kb);
  figure("mirror.revisions", commits, "count");

  pqxx::connection c(cluster.conninfo());
  scalar(c, "INSERT INTO pefnos.project (id, name) VALUES (1, 'bench') RETURNING id");
  scalar(c, "INSERT INTO pefnos.repository (id, project_id, name, vcs, url, poll_interval) "
            "VALUES (1, 1, 'src', 'git', " + c.quote(src) + ", 86400) RETURNING id");
  scalar(c, "INSERT INTO pefnos.branch (id, repository_id, name) VALUES (1, 1, 'main') RETURNING id");
  scalar(c, "INSERT INTO pefnos.repository (id, project_id, name, vcs, url, poll_interval) "
            "VALUES (2, 1, 'tgt', 'git', " + c.quote(tgt) + ", 86400) RETURNING id");
  scalar(c, "INSERT INTO pefnos.mirror (id, name, source_branch_id, target_repository_id, target_branch, "
            "delay, verify) VALUES (1, 'm', 1, 2, 'main', 86400, 'sample') RETURNING id");
  pid_t master = spawn({PEFNOS_BINARY, "--log-level", "info", "master", "--db", cluster.conninfo(),
                        "--name", "bench", "--state-dir", cluster.home() + "/state", "--workers", "none"});
  int rc = 0;
  try {
    command(c, "pefnos.ping()", 60);
    command(c, "pefnos.poll_now(1)", 600);
    // The bare pipe: the same tools, nothing between them, from the same
    // proxy the run reads (warm, like the run: the faster of two).
    const std::string proxy = cluster.home() + "/state/proxy/git/1";
    double bare_s = 1e9;
    for (int round = 0; round < 2; ++round) {
      const std::string bare = dir + "/bare" + std::to_string(round) + ".git";
      runOk({"git", "init", "-q", "--bare", bare});
      int p[2];
      if (pipe(p) != 0) throw std::runtime_error("pipe failed");
      // As deep as the socket pairs the master's processes are given (about
      // 200 KiB), so that buffer sizes are not what is compared.
      fcntl(p[1], F_SETPIPE_SZ, 256 << 10);
      const auto t0 = Clock::now();
      pid_t exp = spawnIo({"git", "-C", proxy, "fast-export", "--show-original-ids", "--reencode=yes",
                           "--signed-tags=strip", "refs/pefnos/1/main"}, -1, p[1]);
      close(p[1]);
      pid_t imp = spawnIo({"git", "-C", bare, "fast-import", "--quiet"}, p[0], -1);
      close(p[0]);
      waitOk(exp, "git fast-export");
      waitOk(imp, "git fast-import");
      bare_s = std::min(bare_s, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    {
      // The stream's size, from one more export (not timed).
      int p[2];
      if (pipe(p) != 0) throw std::runtime_error("pipe failed");
      pid_t exp = spawnIo({"git", "-C", proxy, "fast-export", "refs/pefnos/1/main"}, -1, p[1]);
      close(p[1]);
      std::vector<char> buf(1 << 16);
      long long bytes = 0;
      for (ssize_t n; (n = read(p[0], buf.data(), buf.size())) > 0;) bytes += n;
      close(p[0]);
      waitOk(exp, "git fast-export");
      figure("mirror.stream_mb", static_cast<double>(bytes) / (1 << 20), "MB");
      figure("mirror.bare_pipe_s", bare_s, "s");
    }
    const double rss_before = rssMb(master, "VmHWM");
    std::cerr << "mirror: running the mirror (master peak so far " << rss_before << " MB)\n";
    command(c, "pefnos.mirror_now(1)", 3600);
    const double run_s = std::stod(scalar(c, "SELECT extract(epoch FROM finished_at - started_at) "
                                             "FROM pefnos.mirror_run ORDER BY id DESC LIMIT 1"));
    figure("mirror.run_s", run_s, "s");
    figure("mirror.overhead_pct", (run_s / bare_s - 1) * 100, "%");
    figure("mirror.master_peak_rss_mb", rssMb(master, "VmHWM"), "MB");
    if (scalar(c, "SELECT count(*) FROM pefnos.mirror_mark") != std::to_string(commits)) {
      throw std::runtime_error("the run did not carry every revision");
    }

    // One new revision, verified whole.
    int p[2];
    if (pipe(p) != 0) throw std::runtime_error("pipe failed");
    pid_t imp = spawnIo({"git", "-C", src, "fast-import", "--quiet"}, p[0], -1);
    close(p[0]);
    writeAll(p[1], "commit refs/heads/main\ncommitter Bench <b@example.org> 1800000000 +0000\ndata 4\nnew\n"
                   "from refs/heads/main^0\nM 100644 inline new.txt\ndata 4\nnew\n\n");
    close(p[1]);
    waitOk(imp, "git fast-import (one more revision)");
    command(c, "pefnos.poll_now(1)", 120);
    scalar(c, "UPDATE pefnos.mirror SET verify = 'all' RETURNING id");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the model follows the row
    figure("mirror.incremental_s", command(c, "pefnos.mirror_now(1)", 120), "s");
  } catch (const std::exception& e) {
    std::cerr << "mirror: " << e.what() << "\n";
    rc = 1;
  }
  stop(master);
  return rc;
}

}  // namespace pefnos::bench
