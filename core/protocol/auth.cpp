#include "core/protocol/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <charconv>
#include <stdexcept>
#include <vector>

namespace pefnos::protocol {
namespace {

constexpr size_t kKeySize = 32;   // SHA-256 output: every key, proof and signature
constexpr size_t kSaltSize = 16;  // RFC 7677's example size; decoys use it too
constexpr std::string_view kScheme = "scram-sha256";

const unsigned char* bytesOf(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// Failing to get randomness or to run a hash is a broken machine, not a
// peer's fault: there is nothing sensible to return.
[[noreturn]] void cryptoFailed(const char* what) {
  throw std::runtime_error(std::string("OpenSSL failed: ") + what);
}

std::string randomBytes(size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
    cryptoFailed("RAND_bytes");
  return out;
}

std::string hmac(std::string_view key, std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), bytesOf(data), data.size(), md,
            &len))
    cryptoFailed("HMAC-SHA256");
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string sha256(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1)
    cryptoFailed("SHA-256");
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string saltedPassword(std::string_view secret, std::string_view salt, int iterations) {
  std::string out(kKeySize, '\0');
  if (PKCS5_PBKDF2_HMAC(secret.data(), static_cast<int>(secret.size()), bytesOf(salt),
                        static_cast<int>(salt.size()), iterations, EVP_sha256(),
                        static_cast<int>(out.size()),
                        reinterpret_cast<unsigned char*>(out.data())) != 1)
    cryptoFailed("PBKDF2-HMAC-SHA256");
  return out;
}

std::string xorBytes(std::string_view a, std::string_view b) {
  std::string out(a);
  for (size_t i = 0; i < out.size() && i < b.size(); ++i) out[i] ^= b[i];
  return out;
}

// Lengths are public (always kKeySize here); the contents are compared
// without an early exit so that timing tells nothing about how close a guess was.
bool sameBytes(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool iterationsAcceptable(long long n) { return n >= 1 && n <= kMaxIterations; }

std::string clientKey(std::string_view salted) { return hmac(salted, "Client Key"); }
std::string serverKey(std::string_view salted) { return hmac(salted, "Server Key"); }

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int sextet(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

std::string base64(std::string_view bytes) {
  auto u = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])); };
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    uint32_t v = u(i) << 16 | u(i + 1) << 8 | u(i + 2);
    for (int shift : {18, 12, 6, 0}) out.push_back(kAlphabet[(v >> shift) & 63]);
  }
  size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = u(i) << 16 | (rest == 2 ? u(i + 1) << 8 : 0);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// Strict (RFC 4648 §3.5 canonical): padded, no whitespace, no '=' inside, no
// stray bits in the last character, so that one value has exactly one spelling.
Result<std::string> unbase64(std::string_view text) {
  if (text.size() % 4 != 0) return Error{"not base64: the length is not a multiple of 4"};
  size_t pad = text.ends_with("==") ? 2 : text.ends_with("=") ? 1 : 0;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < text.size() - pad; ++i) {
    int v = sextet(text[i]);
    if (v < 0) return Error{"not base64: unexpected character at offset " + std::to_string(i)};
    acc = (acc << 6 | static_cast<uint32_t>(v)) & 0x3fff;  // never more than 13 bits pending
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>(acc >> bits));
    }
  }
  if ((acc & ((1u << bits) - 1)) != 0) return Error{"not base64: stray bits before the padding"};
  return out;
}

std::string makeVerifier(std::string_view secret, int iterations) {
  return makeVerifier(secret, randomBytes(kSaltSize), iterations);
}

std::string makeVerifier(std::string_view secret, std::string_view salt, int iterations) {
  if (!iterationsAcceptable(iterations))
    throw std::invalid_argument("makeVerifier: iterations must be 1.." +
                                std::to_string(kMaxIterations));
  std::string salted = saltedPassword(secret, salt, iterations);
  return std::string(kScheme) + "$" + std::to_string(iterations) + "$" + base64(salt) + "$" +
         base64(sha256(clientKey(salted))) + "$" + base64(serverKey(salted));
}

// Errors never quote the verifier: it is as good as a password to an attacker
// who can run a dictionary against it.
Result<Verifier> parseVerifier(std::string_view text) {
  std::vector<std::string_view> fields;
  for (size_t start = 0;;) {
    size_t end = text.find('$', start);
    fields.push_back(text.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  const std::string shape = " (expected scram-sha256$<iterations>$<salt>$<StoredKey>$<ServerKey>)";
  if (fields[0] != kScheme)
    return Error{"worker secret verifier: not a scram-sha256 verifier" + shape};
  if (fields.size() != 5)
    return Error{"worker secret verifier: " + std::to_string(fields.size()) + " fields, not 5" +
                 shape};

  Verifier v;
  long long iterations = 0;
  auto [end, ec] =
      std::from_chars(fields[1].data(), fields[1].data() + fields[1].size(), iterations);
  bool digits =
      !fields[1].empty() && fields[1][0] != '-' && end == fields[1].data() + fields[1].size();
  if (ec == std::errc::result_out_of_range && digits)
    return Error{"worker secret verifier: the iteration count is outside 1.." +
                 std::to_string(kMaxIterations)};
  if (ec != std::errc() || !digits)
    return Error{"worker secret verifier: the iteration count is not a number"};
  if (!iterationsAcceptable(iterations))
    return Error{"worker secret verifier: the iteration count " + std::to_string(iterations) +
                 " is outside 1.." + std::to_string(kMaxIterations)};
  v.iterations = static_cast<int>(iterations);

  struct Part {
    std::string_view name, text;
    std::string* out;
  };
  for (const Part& p :
       {Part{"salt", fields[2], &v.salt}, Part{"StoredKey", fields[3], &v.stored_key},
        Part{"ServerKey", fields[4], &v.server_key}}) {
    auto bytes = unbase64(p.text);
    if (!bytes)
      return Error{"worker secret verifier: the " + std::string(p.name) + " is " +
                   bytes.error().message};
    *p.out = std::move(bytes).value();
  }
  if (v.salt.empty()) return Error{"worker secret verifier: the salt is empty"};
  if (v.stored_key.size() != kKeySize || v.server_key.size() != kKeySize)
    return Error{"worker secret verifier: StoredKey and ServerKey must be " +
                 std::to_string(kKeySize) + " bytes each (SHA-256)"};
  return v;
}

std::string newNonce() {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : randomBytes(32)) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

// The nonce is the master's hex, so the last comma always separates it from
// the name, whatever the name holds: no two (name, nonce) pairs collide.
std::string authMessage(std::string_view worker_name, std::string_view nonce) {
  std::string out = "pefnos-worker-v1,";
  out.append(worker_name).append(",").append(nonce);
  return out;
}

std::string clientProof(std::string_view secret, std::string_view salt, int iterations,
                        std::string_view auth_message) {
  if (!iterationsAcceptable(iterations))
    throw std::invalid_argument("clientProof: iterations must be 1.." +
                                std::to_string(kMaxIterations));
  std::string key = clientKey(saltedPassword(secret, salt, iterations));
  return base64(xorBytes(key, hmac(sha256(key), auth_message)));
}

bool serverSignatureValid(std::string_view secret, std::string_view salt, int iterations,
                          std::string_view auth_message, std::string_view signature_b64) {
  if (!iterationsAcceptable(iterations)) return false;
  auto signature = unbase64(signature_b64);
  if (!signature) return false;
  std::string expected = hmac(serverKey(saltedPassword(secret, salt, iterations)), auth_message);
  return sameBytes(*signature, expected);
}

bool proofValid(const Verifier& verifier, std::string_view auth_message,
                std::string_view proof_b64) {
  auto proof = unbase64(proof_b64);
  if (!proof || proof->size() != kKeySize || verifier.stored_key.size() != kKeySize) return false;
  std::string claimed_client_key = xorBytes(*proof, hmac(verifier.stored_key, auth_message));
  return sameBytes(sha256(claimed_client_key), verifier.stored_key);
}

std::string serverSignature(const Verifier& verifier, std::string_view auth_message) {
  return base64(hmac(verifier.server_key, auth_message));
}

Verifier decoyVerifier(std::string_view worker_name) {
  // Same name, same salt for the life of the process, as a real verifier's
  // would be; the key keeps anyone from computing a decoy's salt themselves.
  // (A restart changes the decoy salts; a key kept in the database would not.)
  static const std::string key = randomBytes(kKeySize);
  Verifier v;
  v.iterations = kDefaultIterations;
  v.salt = hmac(key, worker_name).substr(0, kSaltSize);
  // Random keys, thrown away: accepting a proof would take a SHA-256 preimage
  // of stored_key, which nobody, the master included, knows.
  v.stored_key = randomBytes(kKeySize);
  v.server_key = randomBytes(kKeySize);
  return v;
}

std::string newApiToken() { return "pft_" + newNonce(); }

std::string apiTokenHash(std::string_view token) {
  static const char* const digits = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : sha256(token)) {
    hex += digits[c >> 4];
    hex += digits[c & 15];
  }
  return hex;
}

}  // namespace pefnos::protocol
