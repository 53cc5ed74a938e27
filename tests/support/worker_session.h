// The worker protocol spoken by hand over a raw loopback connection, for tests
// that play a worker the real one never would be: silent, hostile, replaying.
// Blocking; reads time out after 10 s (connectLoopback).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/protocol/auth.h"
#include "core/protocol/protocol.h"
#include "tests/support/http_client.h"

namespace pefnos::test {

// The next control message from a raw connection (skipping heartbeats), or
// nullopt when the connection ends, times out or breaks the protocol.
inline std::optional<nlohmann::json> readControl(int fd, protocol::Decoder& decoder) {
  char buf[4096];
  for (;;) {
    while (auto frame = decoder.next()) {
      auto m = protocol::parseControl(frame->payload);
      if (m && (*m)["type"] != "heartbeat") return *m;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0 || !decoder.feed(std::string_view(buf, static_cast<size_t>(n)))) return std::nullopt;
  }
}

// A connection that said hello as name and was challenged: what a worker
// needs to prove its secret (or to fail to).
struct Challenged {
  int fd = -1;
  protocol::Decoder decoder;
  std::string name, nonce;
  nlohmann::json challenge;
  // The proof a worker holding secret would send.
  std::string proof(const std::string& secret) const {
    auto salt = protocol::unbase64(challenge["salt"].get<std::string>());
    return protocol::clientProof(secret, salt ? *salt : std::string(), challenge["iterations"].get<int>(),
                                 protocol::authMessage(name, nonce));
  }
  // Sends an auth message with proof; the master's answer (welcome or refused).
  std::optional<nlohmann::json> auth(const std::string& proof_text) {
    std::string auth = protocol::encodeControl({{"type", "auth"}, {"proof", proof_text}});
    EXPECT_EQ(write(fd, auth.data(), auth.size()), static_cast<ssize_t>(auth.size()));
    return readControl(fd, decoder);
  }
};

// Connects to a master's worker port and says hello (protocol version 1, one slot).
inline Challenged helloAs(int port, const std::string& name) {
  Challenged c;
  c.name = name;
  c.fd = connectLoopback(port, protocol::encodeControl({{"type", "hello"}, {"version", protocol::kVersion},
                                                        {"name", name}, {"tags", nlohmann::json::object()},
                                                        {"slots", 1}}));
  auto challenge = readControl(c.fd, c.decoder);
  EXPECT_TRUE(challenge && (*challenge)["type"] == "challenge") << (challenge ? challenge->dump() : "nothing");
  if (challenge && (*challenge)["type"] == "challenge") {
    c.challenge = *challenge;
    c.nonce = (*challenge)["nonce"].get<std::string>();
  }
  return c;
}

}  // namespace pefnos::test
