#include "core/cluster/cluster.h"

#include <fcntl.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <pqxx/pqxx>
#include <sstream>
#include <thread>
#include <vector>

#include "core/base/log.h"

namespace pefnos::cluster {
namespace {

constexpr size_t kMaxSocketPath = 107;  // sun_path, less the terminating NUL

std::string errnoText(int err) { return std::strerror(err); }

// The newest PostgreSQL whose server binaries are installed, or PEFNOS_PG_BINDIR.
std::optional<fs::path> findBindir() {
  if (const char* env = std::getenv("PEFNOS_PG_BINDIR"); env && *env) return fs::path(env);
  std::optional<fs::path> best;
  int best_version = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    int version = std::atoi(entry.path().filename().c_str());
    if (version > best_version && fs::exists(entry.path() / "bin" / "postgres")) {
      best_version = version;
      best = entry.path() / "bin";
    }
  }
  return best;
}

// Every ancestor must be searchable by the server user, or it cannot reach its files.
Status checkReachable(const fs::path& dir, uid_t uid, gid_t gid, const std::string& user) {
  for (fs::path p = dir; !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (stat(p.c_str(), &st) != 0) return Error{"cannot stat " + p.string() + ": " + errnoText(errno)};
    bool ok = (st.st_uid == uid && (st.st_mode & S_IXUSR)) ||
              (st.st_gid == gid && (st.st_mode & S_IXGRP)) || (st.st_mode & S_IXOTH);
    if (!ok) {
      return Error{"the PostgreSQL server runs as user '" + user + "', which cannot reach " +
                   dir.string() + " (" + p.string() +
                   " is not searchable by it): choose another --home, such as /var/lib/pefnos"};
    }
    if (p == p.parent_path()) break;
  }
  return ok();
}

Status makeDir(const fs::path& dir, mode_t mode, std::optional<uid_t> uid, std::optional<gid_t> gid) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Error{"cannot create " + dir.string() + ": " + ec.message()};
  if (chmod(dir.c_str(), mode) != 0) return Error{"cannot chmod " + dir.string() + ": " + errnoText(errno)};
  if (uid && chown(dir.c_str(), *uid, *gid) != 0) {
    return Error{"cannot give " + dir.string() + " to the server user: " + errnoText(errno)};
  }
  return ok();
}

// A value for postgresql.conf, single-quoted.
std::string confQuote(const std::string& value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'') out += "''";
    else if (c == '\\') out += "\\\\";
    else out += c;
  }
  return out + "'";
}

std::vector<std::string> serverEnvironment() {
  std::vector<std::string> env = {"LANG=C.UTF-8", "LC_ALL=C.UTF-8",
                                  "PATH=/usr/local/bin:/usr/bin:/bin"};
  if (const char* tz = std::getenv("TZ")) env.push_back(std::string("TZ=") + tz);
  return env;
}

}  // namespace

fs::path defaultHome() {
  if (const char* env = std::getenv("PEFNOS_HOME"); env && *env) return env;
  if (geteuid() == 0) return "/var/lib/pefnos";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".pefnos";
  if (const passwd* pw = getpwuid(getuid())) return fs::path(pw->pw_dir) / ".pefnos";
  return ".pefnos";
}

Layout layoutFor(const fs::path& home) {
  fs::path abs = fs::absolute(home).lexically_normal();
  if (abs.has_filename() == false) abs = abs.parent_path();
  return Layout{abs, abs / "pg", abs / "run", abs / "pg.log", 5432};
}

std::string quoteConninfoValue(const std::string& value) {
  bool plain = !value.empty();
  for (char c : value) {
    if (c == ' ' || c == '\'' || c == '\\' || c == '=') plain = false;
  }
  if (plain) return value;
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

std::string conninfo(const Layout& layout, const std::string& dbname) {
  return "host=" + quoteConninfoValue(layout.run.string()) + " port=" +
         std::to_string(layout.port) + " dbname=" + quoteConninfoValue(dbname) + " user=pefnos";
}

Result<std::unique_ptr<Cluster>> Cluster::open(const fs::path& home, Options options) {
  std::unique_ptr<Cluster> c(new Cluster());
  c->layout_ = layoutFor(home);
  c->options_ = std::move(options);
  const Layout& l = c->layout_;

  std::string socket = (l.run / (".s.PGSQL." + std::to_string(l.port))).string();
  if (socket.size() > kMaxSocketPath) {
    return Error{"the home " + l.home.string() + " is too long a path for a Unix socket (" +
                 socket + " is over " + std::to_string(kMaxSocketPath) +
                 " bytes): choose a shorter --home"};
  }
  std::error_code ec;
  fs::create_directories(l.home, ec);
  if (ec) return Error{"cannot create the home " + l.home.string() + ": " + ec.message()};
  if (access(l.home.c_str(), W_OK | X_OK) != 0) {
    return Error{"cannot write to the home " + l.home.string() + ": " + errnoText(errno)};
  }

  auto bindir = findBindir();
  if (!bindir) {
    return Error{"no PostgreSQL server found under /usr/lib/postgresql (install postgresql, "
                 "or set PEFNOS_PG_BINDIR)"};
  }
  c->bindir_ = *bindir;

  if (geteuid() == 0) {
    const passwd* pw = getpwnam(c->options_.server_user.c_str());
    if (pw == nullptr) {
      return Error{"PostgreSQL refuses to run as root, and the user '" +
                   c->options_.server_user + "' to run it as does not exist (--server-user)"};
    }
    c->uid_ = pw->pw_uid;
    c->gid_ = pw->pw_gid;
    if (auto s = checkReachable(l.home, pw->pw_uid, pw->pw_gid, c->options_.server_user); !s) {
      return s.error();
    }
  }
  return c;
}

bool Cluster::initialized() const { return fs::exists(layout_.data / "PG_VERSION"); }

Status Cluster::init() {
  if (initialized()) return ok();
  const Layout& l = layout_;
  if (auto s = makeDir(l.data, 0700, uid_, gid_); !s) return s;
  if (auto s = makeDir(l.run, 0755, uid_, gid_); !s) return s;
  log::info("cluster", "creating a PostgreSQL cluster in ", l.data.string(),
            uid_ ? " (the server runs as user " + options_.server_user + ")" : "");

  loop::ProcessOptions p;
  p.argv = {(bindir_ / "initdb").string(), "-D", l.data.string(), "-U", "pefnos", "-E", "UTF8",
            "--locale=C.UTF-8", "-A", "trust"};
  if (options_.fast) p.argv.push_back("--no-sync");
  p.env = serverEnvironment();
  p.cwd = l.data.string();
  p.uid = uid_;
  p.gid = gid_;
  auto run = loop::runToCompletion(p);
  if (!run) return Error{"initdb failed: " + run.error().message};
  if (run->exit_status != 0 || run->term_signal != 0) {
    std::error_code ec;
    fs::remove_all(l.data, ec);  // a half-made cluster would be taken for a good one
    return Error{"initdb failed (exit " + std::to_string(run->exit_status) + "): " + run->err +
                 run->out};
  }

  std::ofstream conf(l.data / "postgresql.conf", std::ios::app);
  conf << "\n# Added by pefnos: a private cluster, reached through the socket below.\n"
       << "unix_socket_directories = " << confQuote(l.run.string()) << "\n"
       << "listen_addresses = ''\n";
  if (options_.fast) conf << "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n";
  if (!conf) return Error{"cannot write " + (l.data / "postgresql.conf").string()};
  return ok();
}

std::optional<pid_t> Cluster::runningPid() const {
  std::ifstream in(layout_.data / "postmaster.pid");
  pid_t pid = 0;
  if (!(in >> pid) || pid <= 0) return std::nullopt;
  if (kill(pid, 0) == 0 || errno == EPERM) return pid;
  return std::nullopt;
}

bool Cluster::ready() const {
  return PQping(conninfo(layout_, "postgres").c_str()) == PQPING_OK;
}

std::string Cluster::lastLogLines(int count) const {
  std::ifstream in(layout_.log);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::string out;
  for (size_t i = lines.size() > size_t(count) ? lines.size() - count : 0; i < lines.size(); ++i) {
    out += "\n  " + lines[i];
  }
  return out;
}

Result<pid_t> Cluster::start(uv_loop_t* loop, bool keep_alive) {
  if (!initialized()) return Error{"no cluster in " + layout_.data.string() + ": init it first"};
  if (auto pid = runningPid()) return Error{"a PostgreSQL server already runs on " +
                                            layout_.data.string() + " (pid " + std::to_string(*pid) + ")"};
  int log_fd = ::open(layout_.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (log_fd < 0) return Error{"cannot open " + layout_.log.string() + ": " + errnoText(errno)};

  loop::ProcessOptions p;
  p.argv = {(bindir_ / "postgres").string(), "-D", layout_.data.string(), "-p",
            std::to_string(layout_.port)};
  p.env = serverEnvironment();
  p.cwd = layout_.data.string();
  p.uid = uid_;
  p.gid = gid_;
  p.detached = true;
  p.in = loop::ProcessOptions::Stdio::ignore;
  p.out_fd = log_fd;
  p.err_fd = log_fd;
  auto exited = std::make_shared<std::optional<std::string>>();
  loop::Process::Callbacks cb;
  cb.on_exit = [exited](int64_t status, int signal) {
    *exited = "exit status " + std::to_string(status) +
              (signal ? ", signal " + std::to_string(signal) : "");
  };
  auto spawned = loop::Process::spawn(loop, std::move(p), std::move(cb));
  ::close(log_fd);
  if (!spawned) return Error{"cannot start PostgreSQL: " + spawned.error().message};
  server_ = std::move(spawned.value());
  if (!keep_alive) server_->unref();
  const pid_t pid = server_->pid();

  // The loop is not serving anything yet: turning it here only reaps the
  // child if it dies, so that a failed start is reported at once.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!ready()) {
    uv_run(loop, UV_RUN_NOWAIT);
    if (*exited) {
      server_.reset();
      return Error{"PostgreSQL stopped while starting (" + **exited + "); the end of " +
                   layout_.log.string() + ":" + lastLogLines(6)};
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGQUIT);
      return Error{"PostgreSQL did not accept connections within 60 s; see " + layout_.log.string() +
                   ":" + lastLogLines(6)};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  log::info("cluster", "PostgreSQL ", pid, " accepts connections on ", layout_.run.string());
  if (auto s = createDatabase(); !s) return s.error();
  return pid;
}

Status Cluster::createDatabase() {
  try {
    pqxx::connection c(conninfo(layout_, "postgres"));
    pqxx::nontransaction tx(c);
    if (tx.exec("SELECT 1 FROM pg_database WHERE datname = 'pefnos'").empty()) {
      tx.exec("CREATE DATABASE pefnos");
      log::info("cluster", "created the database pefnos");
    }
    return ok();
  } catch (const std::exception& e) {
    return Error{std::string("cannot create the database pefnos: ") + e.what()};
  }
}

Status Cluster::stop(int timeout_seconds) {
  auto pid = runningPid();
  if (!pid) return ok();
  if (kill(*pid, SIGINT) != 0) {
    return Error{"cannot stop PostgreSQL (pid " + std::to_string(*pid) + "): " + errnoText(errno)};
  }
  // The postmaster removes its pid file as the last step of shutdown; a child
  // of ours lingers as a zombie until the loop reaps it, so pid checks lie.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  bool quit_sent = false;
  while (fs::exists(layout_.data / "postmaster.pid")) {
    if (kill(*pid, 0) != 0 && errno == ESRCH) break;
    if (std::chrono::steady_clock::now() > deadline) {
      if (quit_sent) return Error{"PostgreSQL (pid " + std::to_string(*pid) + ") does not stop"};
      log::warning("cluster", "PostgreSQL did not stop within ", timeout_seconds,
                   " s; sending SIGQUIT");
      kill(*pid, SIGQUIT);
      quit_sent = true;
      deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  log::info("cluster", "PostgreSQL ", *pid, " stopped");
  return ok();
}

Status Cluster::remove() {
  if (auto s = stop(); !s) return s;
  std::error_code ec;
  fs::remove_all(layout_.data, ec);
  if (ec) return Error{"cannot remove " + layout_.data.string() + ": " + ec.message()};
  fs::remove_all(layout_.run, ec);
  fs::remove(layout_.log, ec);
  return ok();
}

}  // namespace pefnos::cluster
