// The embedded default: a private PostgreSQL cluster under a home directory.
//
//   HOME/pg/        data directory (initdb on first use), owned by the server user
//   HOME/run/       the Unix socket; the cluster listens on nothing else by default
//   HOME/pg.log     the server's log
//
// PostgreSQL refuses to run as root: started by root, the server runs as an
// unprivileged user (`postgres` by default); started by anyone else, as that
// user. Binaries are spawned with argv only: no pg_ctl, no shell.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "core/base/result.h"
#include "core/loop/loop.h"

namespace pefnos::cluster {

namespace fs = std::filesystem;

// $PEFNOS_HOME, else /var/lib/pefnos for root, else ~/.pefnos.
fs::path defaultHome();

struct Layout {
  fs::path home, data, run, log;
  int port = 5432;  // names the socket file; there is no TCP listener
};
Layout layoutFor(const fs::path& home);

// A libpq connection string for the cluster of a home (quoted as libpq wants).
std::string conninfo(const Layout& layout, const std::string& dbname = "pefnos");
// Quotes one value for a libpq key=value connection string.
std::string quoteConninfoValue(const std::string& value);

struct Options {
  std::string server_user = "postgres";  // used only when started by root
  bool fast = false;          // fsync off: for tests and benchmarks, never for real data
};

class Cluster {
 public:
  // Checks the home (creatable, writable, reachable by the server user) and
  // finds the PostgreSQL binaries. Creates nothing but the home itself.
  static Result<std::unique_ptr<Cluster>> open(const fs::path& home, Options options);

  const Layout& layout() const { return layout_; }
  bool initialized() const;
  // initdb on first use; later calls do nothing.
  Status init();
  // The postmaster's pid when a server runs on this data directory.
  std::optional<pid_t> runningPid() const;
  // Starts the server as a child of `loop` in its own session (so a
  // terminal's Ctrl-C reaches pefnos, which stops the server in order),
  // waits until it accepts connections and creates the `pefnos` database.
  // With keep_alive false the loop does not wait for the server (a daemon).
  Result<pid_t> start(uv_loop_t* loop, bool keep_alive);
  // Fast shutdown (SIGINT), then waits for the pid file to go; SIGQUIT after timeout.
  Status stop(int timeout_seconds = 60);
  // Stops the server if it runs and removes the data directory.
  Status remove();
  // Ok when the server accepts connections.
  bool ready() const;

 private:
  Cluster() = default;
  Status createDatabase();
  std::string lastLogLines(int count) const;

  Layout layout_;
  Options options_;
  fs::path bindir_;
  std::optional<uid_t> uid_;  // set when the server runs as another user
  std::optional<gid_t> gid_;
  std::unique_ptr<loop::Process> server_;
};

}  // namespace pefnos::cluster
