// Pieces shared by the subcommands of `pefnos`.
#pragma once

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <stdexcept>
#include <string>

#include "core/base/result.h"
#include "core/cluster/cluster.h"

namespace pefnos::cli {

// A clear message for the user; main() prints it and exits 1.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] inline void fail(const std::string& message) { throw Failure(message); }

struct DbArgs {
  std::string db;    // --db
  std::string home;  // --home
};

// --db, else --home's cluster, else PEFNOS_DB, else PEFNOS_HOME's or the
// default home's cluster if it exists, else "" (libpq's PG* defaults).
std::string resolveConninfo(const DbArgs& args);
// A connection for a one-shot command, or a clear failure.
std::unique_ptr<pqxx::connection> connectOrExit(const DbArgs& args);
// Runs the loop until its last close callbacks, closes it; returns rc.
int closeLoop(uv_loop_t* loop, int rc);
// The connection string without its password, for messages.
std::string describeConninfo(const std::string& conninfo);

struct ServeArgs {
  DbArgs db;
  std::string name;
  bool demo = false;
  int db_connections = 2;
  int heartbeat_seconds = 10;  // the master's, and its workers' (silence for 3 of them drops one)
  std::string state_dir;                 // default: HOME/state
  std::vector<std::string> plugin_dirs;  // --plugin-dir
  cluster::Options cluster;
  std::string workers = "127.0.0.1:7420";  // --workers; "none": no workers
  std::string http = "none";               // --http; `up` serves it by default
  int local_slots = 2;                     // up: slots of the local worker
  std::string user;                        // master --user: the user to become when started by root
};

// `pefnos worker`.
struct WorkerArgs {
  std::string master = "127.0.0.1:7420";
  std::string name, secret_file, workdir;
  std::string tags;  // k=v,k=v
  int slots = 1;
  std::string user;  // --user: the user to become when started by root
};
// Started by root: gives the paths to `user` and becomes it (see
// core/base/user.h); without a user, says that it stays root. A failure is fatal.
void dropRoot(const std::string& user, const std::string& option,
              const std::vector<std::filesystem::path>& writable);
int runWorker(const WorkerArgs& args);
// `pefnos ctl worker-secret NAME`: sets the worker's verifier from a secret
// file (made, with a random secret, when it does not exist).
int workerSecret(const DbArgs& db, const std::string& name, const std::string& secret_file);
// `pefnos ctl status [--json]`.
int ctlStatus(const DbArgs& db, bool as_json);
// `pefnos ctl token create|revoke NAME`.
int apiToken(const DbArgs& db, const std::string& name, bool create);
// `pefnos ctl mirror-now MIRROR` and `pefnos ctl verify MIRROR --all` (by name or id).
int ctlMirrorNow(const DbArgs& db, const std::string& mirror, bool wait, int timeout_seconds);
int ctlVerify(const DbArgs& db, const std::string& mirror, bool all, int timeout_seconds);
int runUp(const ServeArgs& args);
int runMaster(const ServeArgs& args);
// `pefnos plugins list`: what loads and what is refused, and why.
int listPlugins(const DbArgs& db, const std::vector<std::string>& extra_dirs);

struct CommandOutcome {
  long long id = 0;
  std::string state, result, error;
  double round_trip_ms = 0;
};
// Inserts a command (LISTENing for its end first, so none is missed) and,
// with wait, blocks until a master finished it or the timeout passed.
Result<CommandOutcome> waitForCommand(pqxx::connection& conn, const std::string& kind,
                                      const nlohmann::json& args, bool wait,
                                      std::chrono::milliseconds timeout);

// Where config/ (schema, examples) is: $PEFNOS_DATADIR, the installed
// share/pefnos/config beside the binary, or the source tree of a build.
std::string configDir();

}  // namespace pefnos::cli
