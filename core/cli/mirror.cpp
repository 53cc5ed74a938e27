// `pefnos ctl mirror-now MIRROR` and `pefnos ctl verify MIRROR --all`: mirror
// commands by name or id, through the same SQL functions a GUI calls.
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "core/cli/cli.h"

namespace pefnos::cli {

namespace {

int mirrorId(pqxx::connection& conn, const std::string& mirror) {
  pqxx::read_transaction tx(conn);
  auto r = tx.exec_params("SELECT id FROM pefnos.mirror WHERE name = $1 OR id::text = $1 ORDER BY name = $1 DESC LIMIT 1",
                          mirror);
  if (r.empty()) fail("no mirror named or numbered '" + mirror + "' (see pefnos config export)");
  return r[0][0].as<int>();
}

}  // namespace

int ctlMirrorNow(const DbArgs& a, const std::string& mirror, bool wait, int timeout_seconds) {
  auto conn = connectOrExit(a);
  const int id = mirrorId(*conn, mirror);
  auto o = waitForCommand(*conn, "mirror-now", nlohmann::json{{"mirror", id}}, wait,
                          std::chrono::seconds(timeout_seconds));
  if (!o) fail(o.error().message);
  if (!wait) {
    std::cout << o->id << "\n";
    return 0;
  }
  std::cout << "command " << o->id << " (mirror-now " << mirror << ") " << o->state;
  if (!o->result.empty()) std::cout << ": " << o->result;
  if (!o->error.empty()) std::cout << ": " << o->error;
  std::cout << "\n";
  return o->state == "done" ? 0 : 1;
}

int ctlVerify(const DbArgs& a, const std::string& mirror, bool all, int timeout_seconds) {
  if (!all) fail("say --all: verify re-checks every revision the mirror has carried (runs verify their new ones)");
  auto conn = connectOrExit(a);
  const int id = mirrorId(*conn, mirror);
  long long command = 0;
  long long total = 0;
  std::string since;
  {
    pqxx::work tx(*conn);
    since = tx.exec("SELECT now()::text")[0][0].as<std::string>();
    total = tx.exec_params("SELECT count(*) FROM pefnos.mirror_mark WHERE mirror_id = $1", id)[0][0].as<long long>();
    command = tx.exec_params("SELECT pefnos.verify_mirror($1)", id)[0][0].as<long long>();
    tx.commit();
  }
  std::cerr << "verifying " << total << " revisions of mirror " << mirror << " (command " << command << ")\n";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  long long shown = -1;
  const bool tty = isatty(2);
  for (;;) {
    pqxx::read_transaction tx(*conn);
    auto c = tx.exec_params(
        "SELECT state, coalesce(result::text, ''), coalesce(error, '') FROM pefnos.command WHERE id = $1",
        command)[0];
    long long n = tx.exec_params(
        "SELECT count(*) FROM pefnos.mirror_verify WHERE mirror_id = $1 AND run_id IS NULL "
        "AND verified_at >= $2::timestamptz",
        id, since)[0][0].as<long long>();
    if (n != shown) {
      std::cerr << (tty ? "\r" : "") << "verified " << n << " of " << total << (tty ? "" : "\n") << std::flush;
      shown = n;
    }
    const std::string state = c[0].as<std::string>();
    if (state == "done" || state == "failed" || state == "cancelled") {
      if (tty) std::cerr << "\n";
      if (state != "done") {
        std::cout << "verify " << mirror << " " << state << ": " << c[2].as<std::string>() << "\n";
        return 1;
      }
      auto r = nlohmann::json::parse(c[1].as<std::string>());
      std::cout << "verified " << r.value("verified", 0) << " revisions of " << mirror << ": "
                << r.value("failed", 0) << " differ\n";
      if (r.value("unverified", 0) > 0) {
        std::cout << r.value("unverified", 0) << " could not be checked, first: "
                  << r.value("first_unverified", std::string()) << "\n";
      }
      if (r.contains("first_failure")) {
        const auto& f = r["first_failure"];
        std::cout << "first difference: " << f.value("summary", f.dump()) << "\n";
        for (const auto& d : f["differences"]) {
          std::cout << "  " << d.value("path", d.value("field", std::string("?"))) << ": "
                    << d.value("source", std::string()) << " | " << d.value("target", std::string())
                    << d.value("error", std::string()) << "\n";
        }
      }
      return r.value("failed", 0) == 0 && r.value("unverified", 0) == 0 ? 0 : 2;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      fail("command " + std::to_string(command) + " is still " + state + " after " +
           std::to_string(timeout_seconds) + " s: is a master running on this database?");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
}

}  // namespace pefnos::cli
