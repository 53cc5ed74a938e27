#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <regex>

#include "core/cli/cli.h"

namespace pefnos::cli {
namespace fs = std::filesystem;

std::string resolveConninfo(const DbArgs& a) {
  if (!a.db.empty()) return a.db;
  if (!a.home.empty()) return cluster::conninfo(cluster::layoutFor(a.home));
  if (const char* env = std::getenv("PEFNOS_DB"); env && *env) return env;
  auto layout = cluster::layoutFor(cluster::defaultHome());
  if (fs::exists(layout.data / "PG_VERSION")) return cluster::conninfo(layout);
  return "";
}

std::string describeConninfo(const std::string& conninfo) {
  if (conninfo.empty()) return "libpq defaults from PG* variables";
  static const std::regex password(R"((password\s*=\s*)('([^'\\]|\\.)*'|\S+))");
  static const std::regex uri_password(R"((://[^:/@]*:)[^@]*@)");
  std::string out = std::regex_replace(conninfo, password, "$1***");
  return std::regex_replace(out, uri_password, "$1***@");
}

namespace {
class DoneReceiver : public pqxx::notification_receiver {
 public:
  DoneReceiver(pqxx::connection& c, long long* last) : notification_receiver(c, "pefnos_command_done"), last_(last) {}
  void operator()(const std::string& payload, int) override { *last_ = std::atoll(payload.c_str()); }

 private:
  long long* last_;
};
}  // namespace

Result<CommandOutcome> waitForCommand(pqxx::connection& conn, const std::string& kind,
                                      const nlohmann::json& args, bool wait,
                                      std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  CommandOutcome o;
  try {
    long long finished = 0;
    DoneReceiver receiver(conn, &finished);
    const auto t0 = Clock::now();
    {
      pqxx::work tx(conn);
      o.id = tx.exec_params("SELECT pefnos.command($1, $2::jsonb)", kind, args.dump())[0][0]
                 .as<long long>();
      tx.commit();
    }
    if (!wait) return o;
    const auto deadline = t0 + timeout;
    bool done = false;
    while (!done) {
      if (finished != o.id) conn.await_notification(1, 0);
      if (finished == o.id) o.round_trip_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      // The row is the truth: read it on every wake-up, notified or not.
      pqxx::read_transaction tx(conn);
      auto row = tx.exec_params(
          "SELECT state, coalesce(result::text, ''), coalesce(error, '') FROM pefnos.command "
          "WHERE id = $1",
          o.id)[0];
      o.state = row[0].as<std::string>();
      done = o.state == "done" || o.state == "failed" || o.state == "cancelled";
      if (done) {
        o.result = row[1].as<std::string>();
        o.error = row[2].as<std::string>();
        if (finished != o.id) {
          o.round_trip_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        }
      } else if (Clock::now() > deadline) {
        return Error{"command " + std::to_string(o.id) + " (" + kind + ") is still " + o.state +
                     " after " + std::to_string(timeout.count() / 1000) +
                     " s: is a master running on this database? (pefnos up, pefnos master)"};
      }
    }
    return o;
  } catch (const std::exception& e) {
    return Error{std::string("cannot run the command: ") + e.what()};
  }
}

std::string configDir() {
  if (const char* env = std::getenv("PEFNOS_DATADIR"); env && *env) return env;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path installed = exe.parent_path().parent_path() / PEFNOS_DATADIR_REL / "config";
    if (fs::exists(installed)) return installed.string();
  }
  return PEFNOS_SOURCE_DIR "/config";
}

}  // namespace pefnos::cli
