// The `pefnos` entry point: parses the command line (CLI11) and hands each
// subcommand to the room that does the work. Nothing here talks to libuv or
// PostgreSQL beyond wiring; see serve.cpp for `up` and `master`.
#include <signal.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "core/base/log.h"
#include "core/cli/cli.h"
#include "core/cluster/cluster.h"
#include "core/config/config.h"
#include "core/db/migrate.h"

namespace pefnos::cli {
std::unique_ptr<pqxx::connection> connectOrExit(const DbArgs& a) {
  std::string conninfo = resolveConninfo(a);
  try {
    return std::make_unique<pqxx::connection>(conninfo);
  } catch (const std::exception& e) {
    fail("cannot connect to the database (" + describeConninfo(conninfo) + "): " + e.what());
  }
}

namespace {

void addDbOptions(CLI::App* cmd, DbArgs& a) {
  cmd->add_option("--db", a.db,
                  "libpq connection string of an existing database (also PEFNOS_DB; "
                  "PG* variables honoured)");
  cmd->add_option("--home", a.home, "use the embedded cluster of this pefnos home (also PEFNOS_HOME)");
}


int dbMigrate(const DbArgs& a) {
  auto conn = connectOrExit(a);
  auto applied = db::migrate(*conn);
  if (!applied) fail(applied.error().message);
  if (applied->empty()) {
    std::cout << "schema already at version " << db::latestSchemaVersion() << "\n";
  } else {
    for (int v : *applied) std::cout << "applied migration " << v << "\n";
    std::cout << "schema now at version " << db::latestSchemaVersion() << "\n";
  }
  return 0;
}

int dbStatus(const DbArgs& a) {
  auto conn = connectOrExit(a);
  auto status = db::schemaStatus(*conn);
  if (!status) fail(status.error().message);
  std::cout << "database: " << describeConninfo(resolveConninfo(a)) << "\n"
            << "schema version: " << status->current << " (this binary: " << status->latest << ")\n";
  for (const auto& m : status->applied) {
    std::cout << "  " << m.version << " " << m.name << "  applied " << m.applied_at
              << (m.checksum_matches ? "" : "  (changed since it was applied!)") << "\n";
  }
  if (status->current < status->latest) {
    std::cout << "pending: run `pefnos db migrate`\n";
    return 3;
  }
  if (status->current > status->latest) {
    std::cout << "the database is newer than this binary: upgrade pefnos\n";
    return 4;
  }
  std::cout << "up to date\n";
  return 0;
}

int configImport(const DbArgs& a, const std::string& file) {
  auto conn = connectOrExit(a);
  if (auto s = db::checkSchema(*conn); !s) fail(s.error().message);
  auto report = config::importFile(*conn, file);
  if (!report) fail(report.error().message);
  if (!report->errors.empty()) {
    std::cerr << "pefnos: " << file << ": " << report->errors.size()
              << " error(s), nothing was imported:\n";
    for (const auto& e : report->errors) std::cerr << "  " << e << "\n";
    return 1;
  }
  std::cout << "imported " << file << ": " << report->created << " created, " << report->updated
            << " updated, " << report->unchanged << " unchanged\n";
  return 0;
}

int configExport(const DbArgs& a, const std::string& out) {
  auto conn = connectOrExit(a);
  if (auto s = db::checkSchema(*conn); !s) fail(s.error().message);
  auto doc = config::exportConfig(*conn);
  if (!doc) fail("cannot export: " + doc.error().message);
  std::string text = doc.value().dump(2) + "\n";
  if (out.empty() || out == "-") {
    std::cout << text;
    return 0;
  }
  std::ofstream f(out);
  f << text;
  if (!f) fail("cannot write " + out);
  return 0;
}

// Inserts a command row and, with wait, follows it to its outcome.
int ctlCommand(const DbArgs& a, const std::string& kind, const std::string& args_json, bool wait,
               int timeout_seconds) {
  auto conn = connectOrExit(a);
  nlohmann::json args;
  try {
    args = nlohmann::json::parse(args_json.empty() ? "{}" : args_json);
  } catch (const std::exception& e) {
    fail(std::string("the arguments are not JSON: ") + e.what());
  }
  auto result = waitForCommand(*conn, kind, args, wait, std::chrono::seconds(timeout_seconds));
  if (!result) fail(result.error().message);
  const CommandOutcome& o = *result;
  if (!wait) {
    std::cout << o.id << "\n";
    return 0;
  }
  std::cout << "command " << o.id << " (" << kind << ") " << o.state << " in " << o.round_trip_ms
            << " ms";
  if (!o.result.empty()) std::cout << ": " << o.result;
  if (!o.error.empty()) std::cout << ": " << o.error;
  std::cout << "\n";
  return o.state == "done" ? 0 : 1;
}

int clusterCommand(const std::string& action, const std::string& home, const cluster::Options& opts,
                   bool fresh) {
  auto c = cluster::Cluster::open(home, opts);
  if (!c) fail(c.error().message);
  cluster::Cluster& cl = **c;
  if (action == "status") {
    auto pid = cl.runningPid();
    std::cout << "home: " << cl.layout().home.string() << "\n"
              << "initialised: " << (cl.initialized() ? "yes" : "no") << "\n"
              << "running: " << (pid ? "yes, pid " + std::to_string(*pid) : std::string("no"))
              << "\n"
              << "url: " << cluster::conninfo(cl.layout()) << "\n";
    return pid ? 0 : 3;
  }
  if (action == "stop") {
    if (auto s = cl.stop(); !s) fail(s.error().message);
    return 0;
  }
  if (action == "remove" || fresh) {
    if (auto s = cl.remove(); !s) fail(s.error().message);
    if (action == "remove") return 0;
  }
  if (auto s = cl.init(); !s) fail(s.error().message);
  if (action == "init") return 0;
  if (auto pid = cl.runningPid()) {
    std::cout << "already running, pid " << *pid << "\n";
    return 0;
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  auto pid = cl.start(&loop, false);
  if (!pid) fail(pid.error().message);
  std::cout << "started PostgreSQL, pid " << *pid << "; " << cluster::conninfo(cl.layout()) << "\n";
  c->reset();  // closes the handle; the server lives on as a daemon
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);  // a vanished peer is an EPIPE error, not a death
  // Workers, HTTP and event clients, plugins' pipes: as many descriptors as
  // the hard limit allows (an unprivileged user's soft default is 1,024).
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 65536);
    setrlimit(RLIMIT_NOFILE, &files);
  }
  CLI::App app{"pefnos: a continuous-integration daemon whose configuration lives in PostgreSQL"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("pefnos ") + PEFNOS_VERSION);
  std::string level = "info";
  app.add_option("--log-level", level, "debug, info, warning or error")
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}));

  // up
  ServeArgs up_args;
  auto* up = app.add_subcommand(
      "up", "embedded default: a private PostgreSQL under the home (created on first run), "
            "migrations, and the master; Ctrl-C stops everything");
  up->add_option("--home", up_args.db.home,
                 "pefnos home (default $PEFNOS_HOME, /var/lib/pefnos for root, else ~/.pefnos)");
  up->add_flag("--demo", up_args.demo, "import the demo configuration (config/examples/demo.json)");
  up->add_option("--server-user", up_args.cluster.server_user,
                 "when run as root, run PostgreSQL as this user, and the daemon too once the server "
                 "is up (it gets the home's state/, work/ and demo/)")
      ->capture_default_str();
  up->add_option("--name", up_args.name, "master name (default: the host name)");
  up->add_option("--plugin-dir", up_args.plugin_dirs, "also load plugins from this directory");
  up->add_option("--workers", up_args.workers,
                 "where workers connect, HOST:PORT (port 0: any free one), or none; a local "
                 "worker named 'local' connects here")
      ->capture_default_str();
  up_args.http = "127.0.0.1:7421";
  up->add_option("--http", up_args.http, "the JSON API and /metrics, HOST:PORT (port 0: any), or none")
      ->capture_default_str();
  up->add_option("--local-slots", up_args.local_slots, "builds the local worker runs at once")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();

  // master
  ServeArgs master_args;
  auto* master = app.add_subcommand("master", "the daemon, against an existing database");
  addDbOptions(master, master_args.db);
  master->add_option("--name", master_args.name, "master name, unique per running master "
                                                  "(default: the host name)");
  master->add_option("--state-dir", master_args.state_dir,
                     "where proxies of upstream repositories live (default: HOME/state)");
  master->add_option("--plugin-dir", master_args.plugin_dirs, "also load plugins from this directory");
  master->add_option("--workers", master_args.workers,
                     "where workers connect, HOST:PORT (port 0: any free one), or none")
      ->capture_default_str();
  master->add_option("--http", master_args.http,
                     "serve the JSON API and /metrics on HOST:PORT (port 0: any), or none")
      ->capture_default_str();
  master->add_option("--heartbeat", master_args.heartbeat_seconds,
                     "seconds between heartbeats (leases, workers); a worker silent for three is dropped")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  master->add_option("--user", master_args.user,
                     "when run as root, become this user at once (it gets the state directory)");
  master->add_option("--db-connections", master_args.db_connections,
                     "database connections for queries")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();

  // worker
  WorkerArgs worker_args;
  auto* worker = app.add_subcommand(
      "worker", "run builds for a master: connects to it, proves its secret, runs the commands "
                "it is given and streams their output back");
  worker->add_option("--master", worker_args.master, "the master's HOST:PORT (a numeric address)")
      ->capture_default_str();
  worker->add_option("--name", worker_args.name, "this worker's name (a row of pefnos.worker)")
      ->required();
  worker->add_option("--secret-file", worker_args.secret_file,
                     "file holding this worker's secret (mode 600); see `pefnos ctl worker-secret`")
      ->required();
  worker->add_option("--tags", worker_args.tags, "tags this worker offers, k=v,k=v");
  worker->add_option("--slots", worker_args.slots, "builds run at once")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  worker->add_option("--workdir", worker_args.workdir,
                     "where build directories are made (default: ./pefnos-work)");
  worker->add_option("--user", worker_args.user,
                     "when run as root, become this user once the secret is read (it gets the workdir)");

  // db
  DbArgs db_args;
  auto* dbcmd = app.add_subcommand("db", "the database schema");
  dbcmd->require_subcommand(1);
  auto* migrate = dbcmd->add_subcommand("migrate", "apply the schema migrations this binary carries");
  auto* status = dbcmd->add_subcommand("status", "show the schema version and applied migrations");
  auto* url = dbcmd->add_subcommand("url", "print the libpq connection string in use "
                                           "(psql \"$(pefnos db url)\")");
  for (auto* c : {migrate, status, url}) addDbOptions(c, db_args);

  // config
  DbArgs config_args;
  std::string import_file, export_file;
  auto* configcmd = app.add_subcommand("config", "configuration in and out of the database");
  configcmd->require_subcommand(1);
  auto* import = configcmd->add_subcommand(
      "import", "create or update the configuration of FILE.json, in one transaction: "
                "all or nothing");
  import->add_option("file", import_file, "configuration file (JSON)")->required();
  auto* exportcmd = configcmd->add_subcommand("export", "print the configuration as JSON");
  exportcmd->add_option("-o,--output", export_file, "write to this file instead of stdout");
  for (auto* c : {import, exportcmd}) addDbOptions(c, config_args);

  // ctl
  DbArgs ctl_args;
  bool wait = false;
  int timeout = 30;
  std::string kind, args_json;
  auto* ctl = app.add_subcommand("ctl", "tell the daemon what to do: each command is a row in "
                                        "pefnos.command that a master picks up");
  ctl->require_subcommand(1);
  auto* ping = ctl->add_subcommand("ping", "a command that does nothing but answer");
  auto* reload = ctl->add_subcommand("reload", "re-read the whole configuration");
  int poll_repository = 0;
  auto* poll_now = ctl->add_subcommand("poll-now", "poll a repository at once");
  poll_now->add_option("repository", poll_repository, "repository id")->required();
  auto* command = ctl->add_subcommand("command", "any command kind, with JSON arguments");
  command->add_option("kind", kind, "command kind")->required();
  command->add_option("args", args_json, "arguments, a JSON object");
  int force_builder = 0, force_branch = 0;
  std::string force_revision;
  auto* force = ctl->add_subcommand("force-build", "queue a build of a branch (its head, or a revision)");
  force->add_option("builder", force_builder, "builder id")->required();
  force->add_option("branch", force_branch, "branch id")->required();
  force->add_option("revision", force_revision, "revision (default: the branch's head)");
  long long stop_build = 0;
  auto* stop = ctl->add_subcommand("stop", "stop a running build");
  stop->add_option("build", stop_build, "build id")->required();
  std::string mirror_name;
  bool verify_all = false;
  auto* mirror_now = ctl->add_subcommand("mirror-now", "run a mirror at once (pefnos.mirror_now): "
                                                       "whatever its delay, even after a failure");
  mirror_now->add_option("mirror", mirror_name, "mirror name or id")->required();
  auto* verify = ctl->add_subcommand(
      "verify", "re-verify a mirror: every carried revision's tree and metadata on both sides "
                "(pefnos.verify_mirror); prints progress, exits 2 if anything differs");
  verify->add_option("mirror", mirror_name, "mirror name or id")->required();
  verify->add_flag("--all", verify_all, "every revision the mirror has carried (required)");
  addDbOptions(verify, ctl_args);
  verify->add_option("--timeout", timeout, "seconds to wait")->capture_default_str();
  std::string secret_worker, secret_file;
  auto* worker_secret = ctl->add_subcommand(
      "worker-secret", "set a worker's secret: its verifier (never the secret) goes into "
                       "pefnos.worker; the secret file is made with a random secret if missing");
  worker_secret->add_option("name", secret_worker, "worker name")->required();
  worker_secret->add_option("--secret-file", secret_file, "the secret file")->required();
  addDbOptions(worker_secret, ctl_args);
  auto* status_cmd = ctl->add_subcommand(
      "status", "the summary the API's /api/v1/status gives: builds, queue, failing repositories, masters");
  bool status_json = false;
  status_cmd->add_flag("--json", status_json, "print the JSON itself");
  addDbOptions(status_cmd, ctl_args);
  std::string token_name;
  auto* token = ctl->add_subcommand("token", "bearer tokens for the API's writes");
  token->require_subcommand(1);
  auto* token_create = token->add_subcommand(
      "create", "make a token: printed once, only its hash is kept (pefnos.api_token)");
  auto* token_revoke = token->add_subcommand("revoke", "make a token unusable");
  for (auto* c : {token_create, token_revoke}) {
    c->add_option("name", token_name, "the token's name")->required();
    addDbOptions(c, ctl_args);
  }
  for (auto* c : {ping, reload, poll_now, command, force, stop, mirror_now}) {
    addDbOptions(c, ctl_args);
    c->add_flag("--wait", wait, "wait for the outcome and print it");
    c->add_option("--timeout", timeout, "seconds to wait")->capture_default_str();
  }

  // plugins
  DbArgs plugins_db;
  std::vector<std::string> plugin_dirs;
  auto* plugins = app.add_subcommand("plugins", "VCS and step plugins");
  plugins->require_subcommand(1);
  auto* plugins_list = plugins->add_subcommand(
      "list", "load every plugin (built-in directory, --plugin-dir, configured directories) and "
              "say what was loaded and what was refused, and why");
  addDbOptions(plugins_list, plugins_db);
  plugins_list->add_option("--plugin-dir", plugin_dirs, "also load plugins from this directory");

  // cluster
  std::string cluster_home;
  cluster::Options cluster_opts;
  bool fresh = false;
  auto* clustercmd = app.add_subcommand(
      "cluster", "the embedded PostgreSQL of a home, on its own (pefnos up manages it for you)");
  clustercmd->require_subcommand(1);
  std::vector<CLI::App*> cluster_actions;
  for (const char* action : {"init", "start", "stop", "status", "remove"}) {
    auto* c = clustercmd->add_subcommand(action, std::string(action) + " the embedded cluster");
    c->add_option("--home", cluster_home, "pefnos home (default as for `up`)");
    c->add_option("--server-user", cluster_opts.server_user,
                  "when run as root, run PostgreSQL as this user")
        ->capture_default_str();
    c->add_flag("--fast", cluster_opts.fast, "fsync off: for tests and benchmarks only");
    c->add_flag("--fresh", fresh, "remove an existing cluster first");
    cluster_actions.push_back(c);
  }

  CLI11_PARSE(app, argc, argv);
  log::Level lvl;
  log::parseLevel(level, &lvl);
  log::setLevel(lvl);

  try {
    if (*up) return runUp(up_args);
    if (*worker) return runWorker(worker_args);
    if (*worker_secret) return workerSecret(ctl_args, secret_worker, secret_file);
    if (*status_cmd) return ctlStatus(ctl_args, status_json);
    if (*token_create || *token_revoke) return apiToken(ctl_args, token_name, bool(*token_create));
    if (*force) {
      nlohmann::json a{{"builder", force_builder}, {"branch", force_branch}};
      if (!force_revision.empty()) a["revision"] = force_revision;
      return ctlCommand(ctl_args, "force-build", a.dump(), wait, timeout);
    }
    if (*mirror_now) return ctlMirrorNow(ctl_args, mirror_name, wait, timeout);
    if (*verify) return ctlVerify(ctl_args, mirror_name, verify_all, timeout);
    if (*stop) return ctlCommand(ctl_args, "stop-build", nlohmann::json{{"build", stop_build}}.dump(), wait, timeout);
    if (*master) return runMaster(master_args);
    if (*migrate) return dbMigrate(db_args);
    if (*status) return dbStatus(db_args);
    if (*url) {
      std::cout << resolveConninfo(db_args) << "\n";
      return 0;
    }
    if (*import) return configImport(config_args, import_file);
    if (*exportcmd) return configExport(config_args, export_file);
    if (*plugins_list) return listPlugins(plugins_db, plugin_dirs);
    if (*ping) return ctlCommand(ctl_args, "ping", "", wait, timeout);
    if (*reload) return ctlCommand(ctl_args, "reload", "", wait, timeout);
    if (*poll_now) {
      return ctlCommand(ctl_args, "poll-now",
                        nlohmann::json{{"repository", poll_repository}}.dump(), wait, timeout);
    }
    if (*command) return ctlCommand(ctl_args, kind, args_json, wait, timeout);
    for (auto* c : cluster_actions) {
      if (*c) {
        return clusterCommand(c->get_name(),
                              cluster_home.empty() ? cluster::defaultHome().string() : cluster_home,
                              cluster_opts, fresh);
      }
    }
  } catch (const Failure& f) {
    std::cerr << "pefnos: " << f.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace pefnos::cli

int main(int argc, char** argv) { return pefnos::cli::main(argc, argv); }
