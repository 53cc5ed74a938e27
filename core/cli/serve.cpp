// `pefnos up` and `pefnos master`: the long-running modes.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "core/base/hostport.h"
#include "core/base/log.h"
#include "core/base/user.h"
#include "core/cli/cli.h"
#include "core/config/config.h"
#include "core/db/migrate.h"
#include "core/loop/loop.h"
#include "core/master/master.h"
#include "core/plugin/plugin.h"
#include "core/protocol/auth.h"
#include "core/worker/worker.h"

extern char** environ;

namespace pefnos::cli {
namespace {

// Where the proxies of upstream repositories live: --state-dir, else HOME/state.
std::string stateDir(const ServeArgs& args) {
  if (!args.state_dir.empty()) return args.state_dir;
  return (cluster::layoutFor(args.db.home.empty() ? cluster::defaultHome().string() : args.db.home).home / "state")
      .string();
}

// Runs a master on loop until SIGINT/SIGTERM (or a fatal error), then calls
// after_stop on the loop thread. Returns the exit code.
int serve(uv_loop_t* loop, const ServeArgs& args, const std::string& conninfo,
          std::function<void()> after_stop,
          std::function<void(master::Master&)> on_serving = nullptr,
          std::function<void()> before_stop = nullptr) {
  master::Options options;
  options.conninfo = conninfo;
  options.name = args.name.empty() ? master::defaultName() : args.name;
  options.db_connections = args.db_connections;
  options.heartbeat_seconds = args.heartbeat_seconds;
  options.state_dir = stateDir(args);
  options.plugin_dirs = args.plugin_dirs;
  options.workers_listen = args.workers == "none" ? "" : args.workers;
  options.http_listen = args.http == "none" ? "" : args.http;
  for (const auto& [flag, value] : {std::pair{"--workers", options.workers_listen}, {"--http", options.http_listen}}) {
    if (value.empty()) continue;
    if (auto parsed = parseHostPort(value); !parsed) fail(std::string(flag) + ": " + parsed.error().message + ", or none");
  }
  auto master = std::make_unique<master::Master>(loop, options);
  if (on_serving) master->onServing([&] { on_serving(*master); });
  loop::Signal sigint(loop), sigterm(loop);
  int rc = 0;
  auto stop = [&] {
    sigint.stop();
    sigterm.stop();
    if (before_stop) before_stop();
    master->stop([&] {
      master.reset();
      if (after_stop) after_stop();
    });
  };
  auto on_signal = [&](int signum) {
    log::info("pefnos", "received ", signum == SIGINT ? "SIGINT" : "SIGTERM", "; stopping");
    stop();
  };
  if (auto s = sigint.start(SIGINT, on_signal); !s) fail(s.error().message);
  if (auto s = sigterm.start(SIGTERM, on_signal); !s) fail(s.error().message);
  master->start([&](Error e) {
    log::error("master", e.message);
    rc = 1;
    stop();
  });
  uv_run(loop, UV_RUN_DEFAULT);
  return rc;
}

// Runs a VCS tool with argv for the demo's repositories; a failure is fatal
// to the demo.
void demoTool(std::vector<std::string> argv, std::vector<std::string> env = {}) {
  loop::ProcessOptions o{.argv = argv};
  if (!env.empty()) {
    std::vector<std::string> all;
    for (char** e = environ; *e; ++e) all.emplace_back(*e);
    all.insert(all.end(), env.begin(), env.end());
    o.env = std::move(all);
  }
  auto out = loop::runToCompletion(std::move(o));
  std::string what = argv[0] + " " + argv[argv[0] == "git" ? 7 : 1];
  if (!out) fail("cannot prepare the demo repositories: " + out.error().message);
  if (out->exit_status != 0) fail("cannot prepare the demo repositories: " + what + " failed: " + out->err);
}

void demoGit(std::vector<std::string> args) {
  args.insert(args.begin(), {"git", "-c", "user.name=pefnos demo", "-c", "user.email=demo@localhost",
                             "-c", "init.defaultBranch=main"});
  demoTool(std::move(args));
}

void demoBrz(std::vector<std::string> args) {
  args.insert(args.begin(), "brz");
  demoTool(std::move(args), {"BRZ_EMAIL=pefnos demo <demo@localhost>", "BRZ_LOG=/dev/null"});
}

void demoSvn(std::vector<std::string> args) {
  args.insert(args.begin(), {"svn", "--non-interactive", "--username", "demo"});
  demoTool(std::move(args));
}

// The demo configuration, with its repositories made real under dir on
// first use: demo.git (main and feature/hello) and a fork of it, a Bazaar
// branch (demo-bzr, its one branch is "trunk", mirrored into the git
// repository demo-bzr-mirror.git) and a Subversion repository
// with the usual layout (demo-svn: trunk and branches/hello).
nlohmann::json demoConfiguration(const std::string& file, const std::filesystem::path& dir) {
  std::ifstream in(file);
  if (!in) fail("cannot read the demo configuration " + file);
  nlohmann::json doc = nlohmann::json::parse(in, nullptr, false);
  if (doc.is_discarded()) fail("the demo configuration " + file + " is not JSON");
  const std::string upstream = (dir / "demo.git").string(), fork = (dir / "demo-fork.git").string();
  const std::string work = (dir / "work").string();
  if (!std::filesystem::exists(upstream)) {
    log::info("pefnos", "creating the demo git repositories in ", dir.string());
    demoGit({"init", "-q", "--bare", upstream});
    demoGit({"init", "-q", work});
    std::ofstream(work + "/README") << "The pefnos demo repository.\n";
    demoGit({"-C", work, "add", "README"});
    demoGit({"-C", work, "commit", "-q", "-m", "Start the demo"});
    demoGit({"-C", work, "push", "-q", upstream, "HEAD:refs/heads/main"});
    std::ofstream(work + "/hello") << "hello\n";
    demoGit({"-C", work, "add", "hello"});
    demoGit({"-C", work, "commit", "-q", "-m", "Say hello"});
    demoGit({"-C", work, "push", "-q", upstream, "HEAD:refs/heads/feature/hello"});
    demoGit({"clone", "-q", "--bare", upstream, fork});
  }
  const std::string bzr = (dir / "demo-bzr").string();
  if (!std::filesystem::exists(bzr)) {
    log::info("pefnos", "creating the demo Bazaar branch in ", bzr);
    demoBrz({"init", "-q", bzr});
    std::ofstream(bzr + "/README") << "The pefnos demo branch, in Bazaar.\n";
    demoBrz({"add", "-q", bzr});
    demoBrz({"commit", "-q", "-m", "Start the Bazaar demo", bzr});
  }
  // The git repository the Bazaar branch is mirrored into (demo-bzr-to-git).
  const std::string bzr_mirror = (dir / "demo-bzr-mirror.git").string();
  if (!std::filesystem::exists(bzr_mirror)) demoGit({"init", "-q", "--bare", bzr_mirror});
  const std::string svn = (dir / "demo-svn").string(), svn_url = "file://" + svn;
  if (!std::filesystem::exists(svn)) {
    log::info("pefnos", "creating the demo Subversion repository in ", svn);
    demoTool({"svnadmin", "create", svn});
    demoSvn({"mkdir", "-q", "--parents", "-m", "The usual layout", svn_url + "/trunk",
             svn_url + "/branches", svn_url + "/tags"});
    const std::string readme = (dir / "svn-README").string();
    std::ofstream(readme) << "The pefnos demo repository, in Subversion.\n";
    demoSvn({"import", "-q", "-m", "Start the Subversion demo", readme, svn_url + "/trunk/README"});
    demoSvn({"copy", "-q", "-m", "Branch hello", svn_url + "/trunk", svn_url + "/branches/hello"});
  }
  for (auto& project : doc["projects"]) {
    if (project["name"] != "demo") continue;
    for (auto& repo : project["repositories"]) {
      if (repo["name"] == "demo") repo["url"] = upstream;
      if (repo["name"] == "demo-fork") repo["url"] = fork;
      if (repo["name"] == "demo-bzr") repo["url"] = bzr;
      if (repo["name"] == "demo-bzr-mirror") repo["url"] = bzr_mirror;
      if (repo["name"] == "demo-svn") repo["url"] = svn_url;
    }
  }
  return doc;
}

// The secret of the local worker (made on first use, mode 600) and its row
// in pefnos.worker with the matching verifier; returns the secret.
std::string ensureLocalWorker(const std::string& conninfo, const std::string& secret_file, int slots) {
  if (auto made = worker::createSecretFile(secret_file); !made) throw std::runtime_error(made.error().message);
  auto secret = worker::readSecretFile(secret_file);
  if (!secret) throw std::runtime_error(secret.error().message);
  pqxx::connection conn(conninfo);
  pqxx::work tx(conn);
  tx.exec_params("INSERT INTO pefnos.worker (name, secret_hash, slots) VALUES ('local', $1, $2) "
                 "ON CONFLICT (name) DO UPDATE SET secret_hash = EXCLUDED.secret_hash, slots = EXCLUDED.slots",
                 protocol::makeVerifier(*secret), slots);
  tx.commit();
  return *secret;
}


}  // namespace

int closeLoop(uv_loop_t* loop, int rc) {
  uv_run(loop, UV_RUN_DEFAULT);  // close callbacks still pending
  if (uv_loop_close(loop) != 0) log::warning("pefnos", "event loop closed with handles still open");
  return rc;
}

namespace {

// Gives the paths to user (making make_dirs first) and becomes it for good.
Status switchUser(const std::string& user, const std::vector<std::filesystem::path>& make_dirs,
                  const std::vector<std::filesystem::path>& give) {
  if (auto given = giveToUser(user, make_dirs, give); !given) return given;
  if (auto became = becomeUser(user); !became) return became;
  log::info("pefnos", "running as user ", user, " (started by root)");
  return ok();
}

}  // namespace

void dropRoot(const std::string& user, const std::string& option, const std::vector<std::filesystem::path>& writable) {
  if (geteuid() != 0) return;
  if (user.empty()) {
    log::warning("pefnos", "running as root: ", option, " USER runs it as an unprivileged user instead");
    return;
  }
  if (auto switched = switchUser(user, {}, writable); !switched) fail(switched.error().message);
}

int runMaster(const ServeArgs& args) {
  dropRoot(args.user, "--user", {stateDir(args)});
  uv_loop_t loop;
  uv_loop_init(&loop);
  std::string conninfo = resolveConninfo(args.db);
  log::info("pefnos", "database: ", describeConninfo(conninfo));
  int rc = serve(&loop, args, conninfo, nullptr);
  return closeLoop(&loop, rc);
}

int runUp(const ServeArgs& args) {
  const std::string home = args.db.home.empty() ? cluster::defaultHome().string() : args.db.home;
  auto opened = cluster::Cluster::open(home, args.cluster);
  if (!opened) fail(opened.error().message);
  std::unique_ptr<cluster::Cluster> cl = std::move(opened.value());
  if (auto s = cl->init(); !s) fail(s.error().message);

  uv_loop_t loop;
  uv_loop_init(&loop);
  bool started_here = false;
  pid_t pid;
  if (auto running = cl->runningPid()) {
    pid = *running;
    log::info("pefnos", "reusing the PostgreSQL server already running on ",
              cl->layout().data.string(), " (pid ", pid, "); it will be left running");
  } else {
    auto started = cl->start(&loop, true);
    if (!started) fail(started.error().message);
    pid = *started;
    started_here = true;
  }
  auto stop_cluster = [&] {
    if (started_here) {
      if (auto s = cl->stop(); !s) log::error("cluster", s.error().message);
    }
    cl.reset();
  };

  // Root was needed only to start the server as its user; from here on the
  // daemon is that same user (which can still stop the server), and what it
  // writes under the home is given to it first.
  const std::filesystem::path home_dir = cl->layout().home;
  if (geteuid() == 0) {
    std::vector<std::filesystem::path> writable = {stateDir(args), home_dir / "work"};
    if (args.demo) writable.push_back(home_dir / "demo");
    // The local worker's secret is made here, while the home can be written.
    const auto secret = home_dir / "local-worker.secret";
    Status switched = ok();
    if (args.workers != "none") {
      if (auto made = worker::createSecretFile(secret.string()); !made) switched = made.error();
    }
    std::vector<std::filesystem::path> give = writable;
    give.push_back(secret);
    if (switched) switched = switchUser(args.cluster.server_user, writable, give);
    if (!switched) {
      stop_cluster();
      closeLoop(&loop, 1);
      fail(switched.error().message);
    }
  }

  const std::string conninfo = cluster::conninfo(cl->layout());
  try {
    pqxx::connection conn(conninfo);
    auto applied = db::migrate(conn);
    if (!applied) fail(applied.error().message);
    if (!applied->empty()) log::info("pefnos", "schema migrated to version ", db::latestSchemaVersion());
    if (args.demo) {
      std::string file = configDir() + "/examples/demo.json";
      auto doc = demoConfiguration(file, cl->layout().home / "demo");
      auto report = config::importConfig(conn, doc);
      if (!report.errors.empty()) fail("the demo configuration " + file + " is broken: " + report.errors.front());
      log::info("pefnos", "demo configuration imported from ", file, ": ", report.created,
                " created, ", report.updated, " updated, ", report.unchanged,
                " unchanged; push to ", (cl->layout().home / "demo" / "demo.git").string(),
                " and its commits appear in pefnos.commit");
    }
  } catch (const Failure&) {
    stop_cluster();
    closeLoop(&loop, 1);
    throw;
  } catch (const std::exception& e) {
    stop_cluster();
    closeLoop(&loop, 1);
    fail(std::string("cannot prepare the database: ") + e.what());
  }

  // The local worker: a row named 'local' whose verifier matches a secret
  // kept in the home, and a Worker on this loop speaking the same protocol
  // over loopback as a remote one would.
  const std::string secret_file = (cl->layout().home / "local-worker.secret").string();
  std::string local_secret;
  if (args.workers != "none") {
    try {
      local_secret = ensureLocalWorker(conninfo, secret_file, args.local_slots);
    } catch (const std::exception& e) {
      stop_cluster();
      closeLoop(&loop, 1);
      fail(std::string("cannot set up the local worker: ") + e.what());
    }
  }
  std::unique_ptr<worker::Worker> local;
  auto start_local = [&](master::Master& m) {
    if (local_secret.empty() || m.workersPort() == 0) return;
    worker::Options wo;
    wo.master_host = parseHostPort(args.workers)->host;  // checked before the master started
    if (wo.master_host == "0.0.0.0") wo.master_host = "127.0.0.1";
    wo.master_port = m.workersPort();
    wo.name = "local";
    wo.secret = local_secret;
    wo.slots = args.local_slots;
    wo.workdir = (cl->layout().home / "work").string();
    local = std::make_unique<worker::Worker>(&loop, wo);
    local->start([](const std::string& why) { log::error("pefnos", "the local worker stopped: ", why); });
  };
  auto stop_local = [&] {
    if (local) local->stop();
    local.reset();
  };

  const std::string h = cl->layout().home.string();
  std::cout << "pefnos is up: PostgreSQL pid " << pid << ", home " << h << "\n"
            << "  database   " << conninfo << "\n"
            << "  psql       psql \"$(pefnos db url --home " << h << ")\"\n"
            << "  try        pefnos ctl ping --wait --home " << h << "\n"
            << (args.http == "none" ? std::string()
                                    : "  page       http://" + args.http + "/\n"
                                      "  api        http://" + args.http + "/api/v1/status  (and /metrics)\n"
                                      "  token      pefnos ctl token create NAME --home " + h +
                                      "  (for the page's buttons)\n")
            << "  stop       Ctrl-C\n"
            << std::flush;
  int rc = serve(&loop, args, conninfo, stop_cluster, start_local, stop_local);
  return closeLoop(&loop, rc);
}

int listPlugins(const DbArgs& db, const std::vector<std::string>& extra_dirs) {
  std::vector<std::string> dirs = {plugin::builtinPluginDir()};
  dirs.insert(dirs.end(), extra_dirs.begin(), extra_dirs.end());
  std::string conninfo = resolveConninfo(db);
  try {
    pqxx::connection conn(conninfo);
    pqxx::read_transaction tx(conn);
    auto configured = config::activePluginDirectories(tx);
    dirs.insert(dirs.end(), configured.begin(), configured.end());
  } catch (const std::exception& e) {
    std::cerr << "pefnos: (the configured plugin directories are not listed: cannot read them from "
              << describeConninfo(conninfo) << ")\n";
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  int refused = 0;
  {
    plugin::ProcessHost host(&loop);
    plugin::Registry registry(host);
    for (const auto& d : dirs) registry.loadDirectory(d);
    for (const auto& o : registry.outcomes()) {
      if (o.loaded) {
        std::cout << "loaded   " << o.kind << "  " << o.name << " " << o.version << "  " << o.path
                  << (o.description.empty() ? "" : "  (" + o.description + ")") << "\n";
      } else {
        ++refused;
        std::cout << "refused  " << o.path << ": " << o.reason << "\n";
      }
    }
    if (registry.outcomes().empty()) std::cout << "no plugins in " << dirs.front() << "\n";
  }
  closeLoop(&loop, 0);
  return refused ? 3 : 0;
}

}  // namespace pefnos::cli
