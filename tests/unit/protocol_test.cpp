// The worker protocol room: frame codec, control-message parsing and worker
// authentication. Pure logic, no sockets.
#include "core/protocol/protocol.h"

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/protocol/auth.h"

namespace pefnos::protocol {
namespace {

using nlohmann::json;

// A raw header, to say things our encoder never would.
std::string header(uint32_t length, uint8_t kind, uint32_t channel) {
  std::string h;
  for (int s : {24, 16, 8, 0}) h.push_back(static_cast<char>(length >> s));
  h.push_back(static_cast<char>(kind));
  for (int s : {24, 16, 8, 0}) h.push_back(static_cast<char>(channel >> s));
  return h;
}

std::vector<Frame> drain(Decoder& d) {
  std::vector<Frame> frames;
  while (auto f = d.next()) frames.push_back(std::move(*f));
  return frames;
}

bool mentions(const std::string& message, const std::string& part) {
  return message.find(part) != std::string::npos;
}

// ---- Frames ---------------------------------------------------------------

TEST(ProtocolFrame, HeaderIsLengthKindChannelBigEndian) {
  std::string bytes = encodeData(0x01020304, "xyz");
  EXPECT_EQ(bytes, header(3, 2, 0x01020304) + "xyz");
  EXPECT_EQ(bytes.substr(0, kHeaderSize), std::string("\0\0\0\3\2\1\2\3\4", 9));
}

TEST(ProtocolFrame, ControlRoundTrips) {
  json hello = {{"type", "hello"},
                {"version", kVersion},
                {"name", "builder-1"},
                {"tags", {"linux", "x86_64"}},
                {"slots", 4}};
  Decoder d;
  ASSERT_TRUE(d.feed(encodeControl(hello)).ok());
  auto frames = drain(d);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].kind, Kind::control);
  EXPECT_EQ(frames[0].channel, 0u);
  auto parsed = parseControl(frames[0].payload);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(*parsed, hello);
}

TEST(ProtocolFrame, DataRoundTripsBinaryBytes) {
  std::string bytes;
  for (int i = 0; i < 1000; ++i) bytes.push_back(static_cast<char>(i * 7));
  Decoder d;
  ASSERT_TRUE(d.feed(encodeData(42, bytes) + encodeEnd(42)).ok());
  auto frames = drain(d);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].kind, Kind::data);
  EXPECT_EQ(frames[0].channel, 42u);
  EXPECT_EQ(frames[0].payload, bytes);
  EXPECT_EQ(frames[1].kind, Kind::data);
  EXPECT_EQ(frames[1].channel, 42u);
  EXPECT_TRUE(frames[1].payload.empty());
}

TEST(ProtocolFrame, EncodeDataSplitsAtMaxData) {
  std::string bytes(2 * kMaxData + 5, 'a');
  bytes[kMaxData] = 'b';  // first byte of the second frame
  Decoder d;
  ASSERT_TRUE(d.feed(encodeData(7, bytes)).ok());
  auto frames = drain(d);
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0].payload.size(), kMaxData);
  EXPECT_EQ(frames[1].payload.size(), kMaxData);
  EXPECT_EQ(frames[1].payload[0], 'b');
  EXPECT_EQ(frames[2].payload.size(), 5u);
  EXPECT_EQ(frames[0].payload + frames[1].payload + frames[2].payload, bytes);
}

TEST(ProtocolFrame, EncodeDataOfNothingSendsNoFrame) {
  // An empty frame would end the channel's stream.
  EXPECT_TRUE(encodeData(7, "").empty());
}

TEST(ProtocolFrame, EncodeEndIsTheEmptyDataFrame) { EXPECT_EQ(encodeEnd(9), header(0, 2, 9)); }

TEST(ProtocolFrame, EncodeControlRefusesMessagesThePeerWouldDrop) {
  EXPECT_THROW(encodeControl(json::array()), std::invalid_argument);
  EXPECT_THROW(encodeControl({{"name", "x"}}), std::invalid_argument);
  EXPECT_THROW(encodeControl({{"type", 1}}), std::invalid_argument);
  EXPECT_THROW(encodeControl({{"type", "log"}, {"text", std::string(kMaxControl, 'x')}}),
               std::length_error);
}

TEST(ProtocolFrame, EncodeControlReplacesInvalidUtf8InsteadOfThrowing) {
  std::string bytes = encodeControl({{"type", "note"}, {"path", "caf\xe9"}});
  auto parsed = parseControl(std::string_view(bytes).substr(kHeaderSize));
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ((*parsed)["path"], "caf\xef\xbf\xbd");  // U+FFFD
}

// ---- Decoder --------------------------------------------------------------

// A conversation mixing every kind of frame, and what decoding it must give.
struct Conversation {
  std::string bytes;
  std::vector<Frame> frames;
};

Conversation sampleConversation() {
  Conversation c;
  auto add = [&](std::string encoded, std::vector<Frame> frames) {
    c.bytes += encoded;
    for (auto& f : frames) c.frames.push_back(std::move(f));
  };
  json hello = {{"type", "hello"}, {"name", "w"}};
  add(encodeControl(hello), {{Kind::control, 0, hello.dump()}});
  std::string output(kMaxData + 100, 'o');
  add(encodeData(3, output),
      {{Kind::data, 3, output.substr(0, kMaxData)}, {Kind::data, 3, output.substr(kMaxData)}});
  add(encodeEnd(3), {{Kind::data, 3, ""}});
  json bye = {{"type", "command-finished"}, {"status", 0}};
  add(encodeControl(bye), {{Kind::control, 0, bye.dump()}});
  return c;
}

void expectFrames(const std::vector<Frame>& got, const std::vector<Frame>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].kind, want[i].kind) << "frame " << i;
    EXPECT_EQ(got[i].channel, want[i].channel) << "frame " << i;
    EXPECT_EQ(got[i].payload, want[i].payload) << "frame " << i;
  }
}

TEST(ProtocolDecoder, DecodesOneByteAtATime) {
  Conversation c = sampleConversation();
  Decoder d;
  std::vector<Frame> got;
  for (char byte : c.bytes) {
    ASSERT_TRUE(d.feed(std::string_view(&byte, 1)).ok());
    for (auto& f : drain(d)) got.push_back(std::move(f));
  }
  expectFrames(got, c.frames);
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(ProtocolDecoder, DecodesRandomSplits) {
  Conversation c = sampleConversation();
  std::mt19937 rng(20240611);  // fixed seed: a failure reproduces
  for (int trial = 0; trial < 50; ++trial) {
    std::uniform_int_distribution<size_t> cut(0, trial % 2 ? 20 : 70000);
    Decoder d;
    std::vector<Frame> got;
    std::string_view rest = c.bytes;
    while (!rest.empty()) {
      size_t n = std::min(rest.size(), cut(rng));
      ASSERT_TRUE(d.feed(rest.substr(0, n)).ok());
      rest.remove_prefix(n);
      // Take frames only now and then: buffered ones must survive more feeds.
      if (rng() % 3 == 0)
        for (auto& f : drain(d)) got.push_back(std::move(f));
    }
    for (auto& f : drain(d)) got.push_back(std::move(f));
    expectFrames(got, c.frames);
  }
}

TEST(ProtocolDecoder, TruncatedFrameWaitsForTheRest) {
  std::string bytes = encodeControl({{"type", "heartbeat"}});
  Decoder d;
  ASSERT_TRUE(d.feed(bytes.substr(0, 4)).ok());  // part of the header
  EXPECT_FALSE(d.next());
  ASSERT_TRUE(d.feed(bytes.substr(4, kHeaderSize + 2 - 4)).ok());  // header and a bit
  EXPECT_FALSE(d.next());
  EXPECT_EQ(d.buffered(), kHeaderSize + 2);
  ASSERT_TRUE(d.feed(bytes.substr(kHeaderSize + 2)).ok());
  auto frame = d.next();
  ASSERT_TRUE(frame);
  EXPECT_EQ(frame->payload, R"({"type":"heartbeat"})");
}

TEST(ProtocolDecoder, BufferedCountsFramesNotYetTaken) {
  Decoder d;
  ASSERT_TRUE(d.feed(encodeData(1, "abcd") + encodeData(2, "efg") + header(10, 2, 1)).ok());
  EXPECT_EQ(d.buffered(), 4u + 3u + kHeaderSize);
  ASSERT_TRUE(d.next());
  EXPECT_EQ(d.buffered(), 3u + kHeaderSize);
  ASSERT_TRUE(d.next());
  EXPECT_FALSE(d.next());
  EXPECT_EQ(d.buffered(), kHeaderSize);
}

TEST(ProtocolDecoder, AcceptsFramesOfExactlyTheLimits) {
  Decoder d;
  ASSERT_TRUE(d.feed(header(kMaxControl, 1, 0) + std::string(kMaxControl, ' ')).ok());
  ASSERT_TRUE(d.feed(header(kMaxData, 2, 5) + std::string(kMaxData, 'd')).ok());
  auto frames = drain(d);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].payload.size(), kMaxControl);
  EXPECT_EQ(frames[1].payload.size(), kMaxData);
}

TEST(ProtocolDecoder, RefusesAnOversizedControlFrameFromItsHeaderAlone) {
  Decoder d;
  Status s = d.feed(header(kMaxControl + 1, 1, 0));
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(mentions(s.error().message, std::to_string(kMaxControl + 1))) << s.error().message;
  EXPECT_LE(d.buffered(), kHeaderSize);
}

TEST(ProtocolDecoder, RefusesAFourGigabyteAnnouncementWithoutHoldingIt) {
  Decoder d;
  // Header and the start of a payload in one read, as a socket would deliver.
  Status s = d.feed(header(0xffffffffu, 2, 1) + std::string(60000, 'x'));
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(mentions(s.error().message, "data frame")) << s.error().message;
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(ProtocolDecoder, RefusesAnOversizedDataFrame) {
  Decoder d;
  Status s = d.feed(header(kMaxData + 1, 2, 1));
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(mentions(s.error().message, std::to_string(kMaxData))) << s.error().message;
}

TEST(ProtocolDecoder, RefusesAnUnknownKind) {
  for (uint8_t kind : {0, 3, 255}) {
    Decoder d;
    Status s = d.feed(header(0, kind, 0));
    ASSERT_FALSE(s.ok()) << "kind " << int(kind);
    EXPECT_TRUE(mentions(s.error().message, "unknown frame kind " + std::to_string(kind)))
        << s.error().message;
  }
}

TEST(ProtocolDecoder, RefusesControlOnChannel3) {
  Decoder d;
  Status s = d.feed(header(2, 1, 3) + "{}");
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(mentions(s.error().message, "channel 3")) << s.error().message;
  EXPECT_FALSE(d.next());
}

TEST(ProtocolDecoder, StaysFailedWithTheSameMessage) {
  Decoder d;
  Status first = d.feed(encodeData(1, "fine") + header(0, 9, 0));
  ASSERT_FALSE(first.ok());
  // Even a perfectly good frame afterwards is refused, with the first reason.
  Status later = d.feed(encodeControl({{"type", "heartbeat"}}));
  ASSERT_FALSE(later.ok());
  EXPECT_EQ(later.error().message, first.error().message);
  Status empty = d.feed("");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().message, first.error().message);
  EXPECT_FALSE(d.next());
  EXPECT_EQ(d.buffered(), 0u);
}

// ---- parseControl ---------------------------------------------------------

TEST(ProtocolParseControl, AcceptsAnObjectWithAStringType) {
  auto m = parseControl(R"({"type":"heartbeat","n":1})");
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ((*m)["type"], "heartbeat");
  EXPECT_EQ((*m)["n"], 1);
}

TEST(ProtocolParseControl, RefusesAnArray) {
  auto m = parseControl("[]");
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(mentions(m.error().message, "not an object")) << m.error().message;
}

TEST(ProtocolParseControl, RefusesANumericType) {
  auto m = parseControl(R"({"type": 3})");
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(mentions(m.error().message, "not a string")) << m.error().message;
}

TEST(ProtocolParseControl, RefusesAMissingType) {
  auto m = parseControl(R"({"kind":"hello"})");
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(mentions(m.error().message, "without a \"type\"")) << m.error().message;
}

TEST(ProtocolParseControl, RefusesWhatIsNotJson) {
  for (std::string_view bad : {"not json", "", "{\"type\":\"x\"", "{\"type\":\"x\"} trailing"}) {
    auto m = parseControl(bad);
    ASSERT_FALSE(m.ok()) << bad;
    EXPECT_TRUE(mentions(m.error().message, "not JSON")) << m.error().message;
  }
}

TEST(ProtocolParseControl, RefusesInvalidUtf8InsideAString) {
  auto m = parseControl("{\"type\":\"hello\",\"name\":\"caf\xe9\"}");
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(mentions(m.error().message, "not JSON")) << m.error().message;
  EXPECT_EQ(m.error().message.find('\xe9'), std::string::npos) << "the peer's bytes are not quoted into the log";
}

TEST(ProtocolParseControl, SurvivesAMegabyteOfNesting) {
  // A hostile but size-legal payload: must be an error, not a stack overflow
  // (nlohmann::json copies recursively: it is refused before it is parsed).
  auto m = parseControl(std::string(kMaxControl / 2, '[') + std::string(kMaxControl / 2, ']'));
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(mentions(m.error().message, "nested more than 256 deep")) << m.error().message;
  // As deep as may be, and brackets inside strings are text.
  auto fine = parseControl(R"({"type": "x", "v": )" + std::string(255, '[') + R"("]]]]")" + std::string(255, ']') + "}");
  EXPECT_TRUE(fine.ok()) << fine.error().message;
}

// ---- base64 ---------------------------------------------------------------

TEST(ProtocolBase64, MatchesRfc4648Vectors) {
  std::pair<std::string, std::string> vectors[] = {{"", ""},
                                                   {"f", "Zg=="},
                                                   {"fo", "Zm8="},
                                                   {"foo", "Zm9v"},
                                                   {"foob", "Zm9vYg=="},
                                                   {"fooba", "Zm9vYmE="},
                                                   {"foobar", "Zm9vYmFy"}};
  for (auto& [plain, encoded] : vectors) {
    EXPECT_EQ(base64(plain), encoded);
    auto back = unbase64(encoded);
    ASSERT_TRUE(back.ok()) << encoded;
    EXPECT_EQ(*back, plain) << encoded;  // exact length: padding is not data
  }
}

TEST(ProtocolBase64, RoundTripsEveryByte) {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (size_t n = 0; n <= all.size(); n += 37) {
    auto back = unbase64(base64(all.substr(0, n)));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, all.substr(0, n));
  }
}

TEST(ProtocolBase64, RefusesMalformedText) {
  for (std::string_view bad : {"Zg=", "Zg", "Z===", "Zm9v\n", "Zm=v", "Zh==", "Zm9v*A==", "===="})
    EXPECT_FALSE(unbase64(bad).ok()) << bad;
}

// ---- Authentication -------------------------------------------------------

constexpr std::string_view kSecret = "correct horse battery staple";
constexpr std::string_view kName = "builder-1";
// Few iterations: these tests are about the protocol, not about PBKDF2's cost.
constexpr int kFast = 64;

struct Challenge {
  Verifier verifier;
  std::string nonce;
  std::string message;
};

Challenge challengeFor(std::string_view secret, std::string_view name) {
  auto v = parseVerifier(makeVerifier(secret, kFast));
  EXPECT_TRUE(v.ok()) << v.error().message;
  std::string nonce = newNonce();
  return {*v, nonce, authMessage(name, nonce)};
}

std::string proofFor(std::string_view secret, const Challenge& c) {
  return clientProof(secret, c.verifier.salt, c.verifier.iterations, c.message);
}

TEST(ProtocolAuth, RightSecretIsAccepted) {
  Challenge c = challengeFor(kSecret, kName);
  EXPECT_TRUE(proofValid(c.verifier, c.message, proofFor(kSecret, c)));
}

TEST(ProtocolAuth, WrongSecretIsRefused) {
  Challenge c = challengeFor(kSecret, kName);
  EXPECT_FALSE(proofValid(c.verifier, c.message, proofFor("correct horse battery stapler", c)));
  EXPECT_FALSE(proofValid(c.verifier, c.message, proofFor("", c)));
}

TEST(ProtocolAuth, ProofForAnotherNonceIsRefused) {
  Challenge c = challengeFor(kSecret, kName);
  std::string replayed = proofFor(kSecret, c);
  std::string fresh = authMessage(kName, newNonce());
  EXPECT_NE(fresh, c.message);
  EXPECT_FALSE(proofValid(c.verifier, fresh, replayed));
}

TEST(ProtocolAuth, ProofForAnotherNameIsRefused) {
  Challenge c = challengeFor(kSecret, kName);
  std::string proof = proofFor(kSecret, c);
  EXPECT_FALSE(proofValid(c.verifier, authMessage("builder-2", c.nonce), proof));
}

TEST(ProtocolAuth, GarbageProofIsRefused) {
  Challenge c = challengeFor(kSecret, kName);
  std::string proof = proofFor(kSecret, c);
  std::string tampered = *unbase64(proof);
  tampered[5] ^= 1;
  for (const std::string& bad :
       {proof.substr(0, proof.size() - 4), proof.substr(0, proof.size() - 1), std::string(),
        std::string("not base64 at all!"), base64(std::string(31, 'x')),
        base64(std::string(33, 'x')), base64(std::string(32, '\0')), base64(tampered),
        proof + "AAAA"})
    EXPECT_FALSE(proofValid(c.verifier, c.message, bad)) << bad;
}

TEST(ProtocolAuth, StoredKeyItselfIsNoProof) {
  // A stolen verifier must not be replayable: neither key works as a proof.
  Challenge c = challengeFor(kSecret, kName);
  EXPECT_FALSE(proofValid(c.verifier, c.message, base64(c.verifier.stored_key)));
  EXPECT_FALSE(proofValid(c.verifier, c.message, base64(c.verifier.server_key)));
}

TEST(ProtocolAuth, ServerSignatureVerifiesOnTheWorker) {
  Challenge c = challengeFor(kSecret, kName);
  std::string signature = serverSignature(c.verifier, c.message);
  EXPECT_TRUE(
      serverSignatureValid(kSecret, c.verifier.salt, c.verifier.iterations, c.message, signature));
}

TEST(ProtocolAuth, ServerSignatureFailsForAWrongSecretOrMessage) {
  Challenge c = challengeFor(kSecret, kName);
  std::string signature = serverSignature(c.verifier, c.message);
  EXPECT_FALSE(serverSignatureValid("another secret", c.verifier.salt, c.verifier.iterations,
                                    c.message, signature));
  EXPECT_FALSE(serverSignatureValid(kSecret, c.verifier.salt, c.verifier.iterations,
                                    authMessage(kName, newNonce()), signature));
  EXPECT_FALSE(serverSignatureValid(kSecret, c.verifier.salt, c.verifier.iterations, c.message,
                                    signature.substr(1)));
  EXPECT_FALSE(serverSignatureValid(kSecret, c.verifier.salt, 0, c.message, signature));
}

TEST(ProtocolAuth, TwoVerifiersForTheSameSecretDifferAndBothAccept) {
  std::string a = makeVerifier(kSecret, kFast), b = makeVerifier(kSecret, kFast);
  EXPECT_NE(a, b);
  auto va = parseVerifier(a), vb = parseVerifier(b);
  ASSERT_TRUE(va.ok() && vb.ok());
  EXPECT_NE(va->salt, vb->salt);
  EXPECT_EQ(va->salt.size(), 16u);
  std::string message = authMessage(kName, newNonce());
  for (const Verifier* v : {&*va, &*vb})
    EXPECT_TRUE(proofValid(*v, message, clientProof(kSecret, v->salt, v->iterations, message)));
}

TEST(ProtocolAuth, DecoyVerifierRefusesEveryProof) {
  Verifier decoy = decoyVerifier("stranger");
  std::string message = authMessage("stranger", newNonce());
  for (std::string_view secret : {kSecret, std::string_view(""), std::string_view("stranger")})
    EXPECT_FALSE(
        proofValid(decoy, message, clientProof(secret, decoy.salt, decoy.iterations, message)));
  EXPECT_FALSE(proofValid(decoy, message, base64(decoy.stored_key)));
}

TEST(ProtocolAuth, DecoyLooksLikeARealVerifier) {
  // Same name, same salt (as a real worker's would be); other names differ;
  // the shape matches makeVerifier's so a stranger learns nothing from it.
  Verifier a = decoyVerifier("stranger"), again = decoyVerifier("stranger");
  Verifier other = decoyVerifier("someone-else");
  auto real = parseVerifier(makeVerifier(kSecret));
  ASSERT_TRUE(real.ok());
  EXPECT_EQ(a.salt, again.salt);
  EXPECT_NE(a.salt, other.salt);
  EXPECT_EQ(a.salt.size(), real->salt.size());
  EXPECT_EQ(a.iterations, real->iterations);
  EXPECT_EQ(a.stored_key.size(), 32u);
  EXPECT_EQ(a.server_key.size(), 32u);
}

TEST(ProtocolAuth, NonceIsFresh64Hex) {
  std::string a = newNonce(), b = newNonce();
  EXPECT_NE(a, b);
  EXPECT_EQ(a.size(), 64u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(authMessage("w", "n1"), "pefnos-worker-v1,w,n1");
}

TEST(ProtocolAuth, MakeVerifierRefusesIterationsOutOfRange) {
  EXPECT_THROW(makeVerifier(kSecret, 0), std::invalid_argument);
  EXPECT_THROW(makeVerifier(kSecret, kMaxIterations + 1), std::invalid_argument);
}

// RFC 7677 §3's SCRAM-SHA-256 exchange (password "pencil"). Our proof and
// server signature are exactly SCRAM's over whatever auth message is given,
// so the RFC's AuthMessage must give the RFC's p= and v=.
TEST(ProtocolAuthKnownAnswer, MatchesRfc7677) {
  const std::string salt = *unbase64("W22ZaJ0SNY7soEsUEjb6gQ==");
  const std::string rfc_auth_message =
      "n=user,r=rOprNGfwEbeRWgbNEkqO,"
      "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
      "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
  EXPECT_EQ(clientProof("pencil", salt, 4096, rfc_auth_message),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
  EXPECT_TRUE(serverSignatureValid("pencil", salt, 4096, rfc_auth_message,
                                   "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
  auto v = parseVerifier(makeVerifier("pencil", salt, 4096));
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(serverSignature(*v, rfc_auth_message), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

// Pins the verifier derivation. Expected values computed independently with
// Python 3 (hashlib/hmac), secret = "correct horse battery staple",
// salt = b"pefnos-kat-salt!", 4096 iterations:
//   sp = hashlib.pbkdf2_hmac("sha256", secret, salt, 4096)
//   ck = hmac.new(sp, b"Client Key", "sha256").digest()
//   StoredKey = hashlib.sha256(ck).digest()
//   ServerKey = hmac.new(sp, b"Server Key", "sha256").digest()
//   proof = ck XOR hmac.new(StoredKey, auth_message, "sha256").digest()
//   signature = hmac.new(ServerKey, auth_message, "sha256").digest()
// (`openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt pass:... -kdfopt
// salt:pefnos-kat-salt! -kdfopt iter:4096 PBKDF2` agrees on sp: 92AD7623…948398.)
TEST(ProtocolAuthKnownAnswer, VerifierDerivationIsPinned) {
  const std::string verifier =
      "scram-sha256$4096$cGVmbm9zLWthdC1zYWx0IQ==$zNNc7x72kAGtHpZXKgh3TPTtdZ57Gf2m4AeqYGA6dzA=$"
      "GVq3owQV+nNLegOs1gf1DPKqKwG0qtAadYCPp1AhYw0=";
  EXPECT_EQ(makeVerifier(kSecret, "pefnos-kat-salt!", 4096), verifier);

  const std::string message =
      authMessage(kName, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
  EXPECT_EQ(clientProof(kSecret, "pefnos-kat-salt!", 4096, message),
            "hz0pJD1OdcqsLuHMMvg5VrqOOKz02M8VSnmqWeE/3kI=");
  auto v = parseVerifier(verifier);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_TRUE(proofValid(*v, message, "hz0pJD1OdcqsLuHMMvg5VrqOOKz02M8VSnmqWeE/3kI="));
  EXPECT_EQ(serverSignature(*v, message), "rq1ZbmT/aAW5eQi/0VyOu8SbzYODi3ZXV3ZMuVFJt0I=");
}

// ---- parseVerifier --------------------------------------------------------

std::string withField(size_t index, std::string value) {
  std::vector<std::string> f = {"scram-sha256", "4096",
                                "cGVmbm9zLWthdC1zYWx0IQ==", base64(std::string(32, 'k')),
                                base64(std::string(32, 's'))};
  f[index] = std::move(value);
  return f[0] + "$" + f[1] + "$" + f[2] + "$" + f[3] + "$" + f[4];
}

void expectRefused(const std::string& text, const std::string& why) {
  auto v = parseVerifier(text);
  ASSERT_FALSE(v.ok()) << text;
  EXPECT_TRUE(mentions(v.error().message, why)) << text << ": " << v.error().message;
}

TEST(ProtocolVerifier, ParsesAWellFormedOne) {
  auto v = parseVerifier(withField(1, "4096"));
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->iterations, 4096);
  EXPECT_EQ(v->salt, "pefnos-kat-salt!");
  EXPECT_EQ(v->stored_key, std::string(32, 'k'));
  EXPECT_EQ(v->server_key, std::string(32, 's'));
}

TEST(ProtocolVerifier, RefusesAWrongScheme) {
  expectRefused(withField(0, "scram-sha1"), "not a scram-sha256 verifier");
  expectRefused("$2b$12$abcdefghijklmnopqrstuv", "not a scram-sha256 verifier");
  expectRefused("", "not a scram-sha256 verifier");
}

TEST(ProtocolVerifier, RefusesAWrongNumberOfFields) {
  expectRefused("scram-sha256$4096$c2FsdA==", "3 fields, not 5");
  expectRefused(withField(4, base64(std::string(32, 's')) + "$extra"), "6 fields, not 5");
}

TEST(ProtocolVerifier, RefusesABadIterationCount) {
  for (const char* bad : {"", "abc", "12x", "-1", "+5", " 4096", "4096 "})
    expectRefused(withField(1, bad), "not a number");
  expectRefused(withField(1, "99999999999999999999"), "outside 1..10000000");
  expectRefused(withField(1, "0"), "outside 1..10000000");
  expectRefused(withField(1, "10000001"), "outside 1..10000000");
  EXPECT_TRUE(parseVerifier(withField(1, "1")).ok());
  EXPECT_TRUE(parseVerifier(withField(1, "10000000")).ok());
}

TEST(ProtocolVerifier, RefusesBadBase64) {
  expectRefused(withField(2, "not*base64"), "salt is not base64");
  expectRefused(withField(3, "abc"), "StoredKey is not base64");
  expectRefused(withField(4, "ab=c"), "ServerKey is not base64");
}

TEST(ProtocolVerifier, RefusesWrongLengths) {
  expectRefused(withField(2, ""), "salt is empty");
  expectRefused(withField(3, base64(std::string(31, 'k'))), "32 bytes");
  expectRefused(withField(4, base64(std::string(64, 's'))), "32 bytes");
}

TEST(ProtocolVerifier, ErrorsNeverQuoteTheVerifier) {
  std::string text = withField(1, "0");
  auto v = parseVerifier(text);
  ASSERT_FALSE(v.ok());
  EXPECT_FALSE(mentions(v.error().message, "cGVmbm9zLWthdC1zYWx0IQ=="));
}

}  // namespace
}  // namespace pefnos::protocol
