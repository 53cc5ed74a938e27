// Worker authentication's parsing (core/protocol/auth): the stored verifier,
// strict base64, and the proofs and signatures a peer sends. Contracts: base64
// has exactly one spelling per value (unbase64 accepts x only if base64 of the
// result is x again); an accepted verifier has the shape it promises and reads
// back the same once written canonically; garbage proofs never crash. No
// PBKDF2 with a fuzzed iteration count: that would be slow, not a finding.
#include <optional>
#include <string>

#include "core/protocol/auth.h"
#include "fuzz.h"

using namespace pefnos;
using pefnos::fuzz::asText;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = asText(data, size);

  FUZZ_CHECK(*protocol::unbase64(protocol::base64(input)) == input);
  if (auto bytes = protocol::unbase64(input)) {
    FUZZ_CHECK(protocol::base64(*bytes) == input);
  } else {
    FUZZ_CHECK(bytes.error().message.rfind("not base64: ", 0) == 0);
  }

  auto verifier = protocol::parseVerifier(input);
  if (verifier) {
    FUZZ_CHECK(verifier->iterations >= 1 && verifier->iterations <= protocol::kMaxIterations);
    FUZZ_CHECK(!verifier->salt.empty());
    FUZZ_CHECK(verifier->stored_key.size() == 32 && verifier->server_key.size() == 32);
    std::string canonical = "scram-sha256$" + std::to_string(verifier->iterations) + "$" +
                            protocol::base64(verifier->salt) + "$" +
                            protocol::base64(verifier->stored_key) + "$" +
                            protocol::base64(verifier->server_key);
    auto back = protocol::parseVerifier(canonical);
    FUZZ_CHECK(back && back->iterations == verifier->iterations && back->salt == verifier->salt &&
               back->stored_key == verifier->stored_key && back->server_key == verifier->server_key);
  } else {
    FUZZ_CHECK(verifier.error().message.rfind("worker secret verifier: ", 0) == 0);
  }

  // The master's side of a connection: the name and proof are the peer's.
  size_t cut = input.find('\n');
  std::string_view name = input.substr(0, cut);
  std::string_view proof = cut == std::string_view::npos ? "" : input.substr(cut + 1);
  std::string nonce = protocol::newNonce();
  std::string message = protocol::authMessage(name, nonce);
  FUZZ_CHECK(message.substr(message.rfind(',') + 1) == nonce);  // names never shift the nonce
  protocol::Verifier decoy = protocol::decoyVerifier(name);
  FUZZ_CHECK(decoy.salt == protocol::decoyVerifier(name).salt && decoy.salt.size() == 16);
  FUZZ_CHECK(!protocol::proofValid(decoy, message, proof));
  if (verifier) (void)protocol::proofValid(*verifier, message, proof);
  // The worker's side: a master's signature, with a cheap iteration count.
  (void)protocol::serverSignatureValid("secret", name, 1, message, proof);
  FUZZ_CHECK(!protocol::serverSignatureValid("secret", name, 0, message, proof));
  return 0;
}
