// `pefnos worker` and `pefnos ctl worker-secret`.
#include <filesystem>
#include <fstream>
#include <iostream>

#include "core/base/hostport.h"
#include "core/base/log.h"
#include "core/cli/cli.h"
#include "core/loop/loop.h"
#include "core/protocol/auth.h"
#include "core/web/web.h"
#include "core/worker/worker.h"

namespace pefnos::cli {

int runWorker(const WorkerArgs& args) {
  worker::Options o;
  auto master = parseHostPort(args.master);
  if (!master) fail("--master: " + master.error().message);
  o.master_host = master->host;
  o.master_port = master->port;
  o.name = args.name;
  auto secret = worker::readSecretFile(args.secret_file);
  if (!secret) fail(secret.error().message);
  o.secret = *secret;
  o.slots = args.slots;
  o.workdir = args.workdir.empty() ? (std::filesystem::current_path() / "pefnos-work").string()
                                   : std::filesystem::absolute(args.workdir).string();
  std::error_code ec;
  std::filesystem::create_directories(o.workdir, ec);
  if (ec) fail("cannot create the work directory " + o.workdir + ": " + ec.message());
  dropRoot(args.user, "--user", {o.workdir});  // the secret is read: root is needed no more
  for (size_t start = 0; start < args.tags.size();) {
    size_t end = args.tags.find(',', start);
    if (end == std::string::npos) end = args.tags.size();
    std::string kv = args.tags.substr(start, end - start);
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) fail("--tags wants k=v,k=v, not '" + kv + "'");
    o.tags[kv.substr(0, eq)] = kv.substr(eq + 1);
    start = end + 1;
  }

  uv_loop_t loop;
  uv_loop_init(&loop);
  int rc = 0;
  {
    worker::Worker w(&loop, o);
    loop::Signal sigint(&loop), sigterm(&loop);
    auto stop = [&](int) {
      log::info("worker", "stopping");
      sigint.stop();
      sigterm.stop();
      w.stop();
    };
    if (auto s = sigint.start(SIGINT, stop); !s) fail(s.error().message);
    if (auto s = sigterm.start(SIGTERM, stop); !s) fail(s.error().message);
    log::info("worker", "worker '", o.name, "' for ", args.master, ", ", o.slots, " slots, work in ", o.workdir);
    w.start([&](const std::string&) {
      rc = 2;
      sigint.stop();
      sigterm.stop();
    });
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  return closeLoop(&loop, rc);
}

int workerSecret(const DbArgs& db, const std::string& name, const std::string& secret_file) {
  auto made = worker::createSecretFile(secret_file);
  if (!made) fail(made.error().message);
  if (*made) std::cout << "made a new secret in " << secret_file << "\n";
  auto secret = worker::readSecretFile(secret_file);
  if (!secret) fail(secret.error().message);
  auto conn = connectOrExit(db);
  pqxx::work tx(*conn);
  auto r = tx.exec_params("UPDATE pefnos.worker SET secret_hash = $2 WHERE name = $1 RETURNING id", name,
                          protocol::makeVerifier(*secret));
  if (r.empty()) fail("no worker named '" + name + "' (add it to the configuration first)");
  tx.commit();
  std::cout << "worker '" << name << "' now accepts the secret in " << secret_file << "\n";
  return 0;
}

int ctlStatus(const DbArgs& db, bool as_json) {
  auto conn = connectOrExit(db);
  pqxx::work tx(*conn);
  const nlohmann::json s = web::status(tx);
  if (as_json) {
    std::cout << s.dump(2) << "\n";
    return 0;
  }
  std::string builds;
  for (const auto& [state, n] : s["builds"].items()) {
    builds += (builds.empty() ? "" : ", ") + state + " " + std::to_string(n.get<long long>());
  }
  std::cout << "builds        " << (builds.empty() ? "none yet" : builds) << "\n"
            << "queue         " << s["queue"].get<long long>() << " waiting for a worker\n"
            << "repositories  " << s["repositories"]["active"].get<long long>() << " active, "
            << s["failing"].size() << " failing\n";
  for (const auto& f : s["failing"]) {
    std::cout << "  " << f["name"].get<std::string>() << ": " << f["error"].get<std::string>() << "\n";
  }
  for (const auto& m : s["masters"]) {
    std::cout << "master        " << m["name"].get<std::string>() << " (heartbeat "
              << m["heartbeat_age_s"].get<long long>() << " s ago)\n";
  }
  return 0;
}

int apiToken(const DbArgs& db, const std::string& name, bool create) {
  auto conn = connectOrExit(db);
  pqxx::work tx(*conn);
  if (!create) {
    auto r = tx.exec_params("UPDATE pefnos.api_token SET active = false WHERE name = $1 RETURNING id", name);
    if (r.empty()) fail("no token named '" + name + "'");
    tx.commit();
    std::cout << "token '" << name << "' revoked\n";
    return 0;
  }
  const std::string token = protocol::newApiToken();
  auto r = tx.exec_params("INSERT INTO pefnos.api_token (name, hash) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING "
                          "RETURNING id",
                          name, protocol::apiTokenHash(token));
  if (r.empty()) fail("a token named '" + name + "' exists; revoke it or choose another name");
  tx.commit();
  // The token itself exists only here: stdout, once.
  std::cout << token << "\n";
  return 0;
}

}  // namespace pefnos::cli
