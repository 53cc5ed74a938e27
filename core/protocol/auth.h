// Worker authentication, SCRAM-SHA-256 style (RFC 5802/7677 without the
// text framing): the database stores only a verifier from which the secret
// cannot be recovered and which cannot be replayed as a proof, and each
// connection proves knowledge of the secret against a fresh nonce.
//
//   verifier (worker.secret_hash):
//     scram-sha256$<iterations>$<salt b64>$<StoredKey b64>$<ServerKey b64>
//     SaltedPassword = PBKDF2-HMAC-SHA256(secret, salt, iterations)
//     ClientKey = HMAC(SaltedPassword, "Client Key"); StoredKey = SHA256(ClientKey)
//     ServerKey = HMAC(SaltedPassword, "Server Key")
//   auth message = "pefnos-worker-v1," + name + "," + nonce
//   proof (worker) = ClientKey XOR HMAC(StoredKey, auth message)
//   master: ClientKey' = proof XOR HMAC(StoredKey, auth message);
//           accept iff SHA256(ClientKey') == StoredKey (constant-time compare)
//   server signature (master → worker) = HMAC(ServerKey, auth message): the
//           worker knows it talks to a master that holds its verifier.
#pragma once

#include <string>
#include <string_view>

#include "core/base/result.h"

namespace pefnos::protocol {

inline constexpr int kDefaultIterations = 4096;
// Iteration counts outside 1..kMaxIterations are refused everywhere: a
// verifier with more would let one connection attempt burn seconds of CPU.
inline constexpr int kMaxIterations = 10'000'000;

// A new verifier for secret (random salt). What `pefnos worker hash-secret` prints.
// Throws std::invalid_argument for iterations outside 1..kMaxIterations.
std::string makeVerifier(std::string_view secret, int iterations = kDefaultIterations);
// The same with a given salt (raw bytes): deterministic, for known-answer tests.
std::string makeVerifier(std::string_view secret, std::string_view salt, int iterations);

struct Verifier {
  int iterations = 0;
  std::string salt;        // raw bytes
  std::string stored_key;  // raw bytes
  std::string server_key;  // raw bytes
};
Result<Verifier> parseVerifier(std::string_view text);

// A random nonce (32 bytes, hex).
std::string newNonce();
std::string authMessage(std::string_view worker_name, std::string_view nonce);

// Worker side: the proof for this challenge (base64), and the server
// signature it expects back (base64). salt is raw bytes (the challenge carries
// it in base64: decode it first). The iterations come from the master: check
// them against 1..kMaxIterations before calling clientProof, which throws
// std::invalid_argument otherwise (serverSignatureValid just says false).
std::string clientProof(std::string_view secret, std::string_view salt, int iterations,
                        std::string_view auth_message);
bool serverSignatureValid(std::string_view secret, std::string_view salt, int iterations,
                          std::string_view auth_message, std::string_view signature_b64);

// Master side: whether proof (base64) proves the secret behind verifier;
// compares in constant time. Garbage (not base64, wrong length) is just false.
bool proofValid(const Verifier& verifier, std::string_view auth_message,
                std::string_view proof_b64);
std::string serverSignature(const Verifier& verifier, std::string_view auth_message);

// A believable challenge for a name that has no verifier (so that a stranger
// cannot tell unknown names from wrong secrets): salt derived from the name.
Verifier decoyVerifier(std::string_view worker_name);

// Standard alphabet, padded. unbase64 is strict: no whitespace, padding only
// at the end, no stray bits, so a value has exactly one spelling.
// API bearer tokens: random, shown once; the database keeps only the hash
// (hex SHA-256: a token has 256 bits of entropy, so no salt or stretching).
std::string newApiToken();  // "pft_" + 64 hex digits
std::string apiTokenHash(std::string_view token);

std::string base64(std::string_view bytes);
Result<std::string> unbase64(std::string_view text);

}  // namespace pefnos::protocol
