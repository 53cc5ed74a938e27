// The worker protocol's frame decoder and control messages (core/protocol).
// Contracts: the cut of the bytes does not matter; memory held stays within
// one frame; after an error every feed fails the same way and nothing is
// held; every frame read re-encodes to exactly the bytes it came from; an
// accepted control message re-encodes and decodes to itself.
#include <optional>
#include <string>

#include "core/protocol/protocol.h"
#include "fuzz.h"

using namespace pefnos;
using pefnos::fuzz::asText;

namespace {

struct Decoded {
  std::vector<protocol::Frame> frames;
  std::optional<std::string> error;
};

Decoded decode(const std::vector<std::string_view>& pieces) {
  Decoded d;
  protocol::Decoder decoder;
  for (auto piece : pieces) {
    Status fed = decoder.feed(piece);
    if (!fed) {
      FUZZ_CHECK(decoder.buffered() == 0);
      FUZZ_CHECK(!decoder.next());
      Status again = decoder.feed("x");
      FUZZ_CHECK(!again && again.error().message == fed.error().message);
      d.error = fed.error().message;
      return d;
    }
    // Taken after every feed, so at most one incomplete frame is held.
    while (auto f = decoder.next()) d.frames.push_back(std::move(*f));
    FUZZ_CHECK(decoder.buffered() < protocol::kHeaderSize + protocol::kMaxControl);
  }
  return d;
}

std::string reencode(const protocol::Frame& f) {
  if (f.kind == protocol::Kind::data)
    return f.payload.empty() ? protocol::encodeEnd(f.channel) : protocol::encodeData(f.channel, f.payload);
  std::string out;
  uint32_t n = static_cast<uint32_t>(f.payload.size());
  for (int shift : {24, 16, 8, 0}) out.push_back(static_cast<char>(n >> shift));
  out.push_back(static_cast<char>(protocol::Kind::control));
  out.append(4, '\0');
  return out + f.payload;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = asText(data, size);
  Decoded whole = decode({input});
  Decoded cut = decode(fuzz::chunks(input));
  FUZZ_CHECK(whole.error == cut.error);
  // After an error nothing read in the same feed is kept: the cut decides how
  // many frames came out before it, so only a clean run is compared.
  if (whole.error) {
    FUZZ_CHECK(whole.frames.size() <= cut.frames.size());
    cut.frames.resize(whole.frames.size());
  }
  FUZZ_CHECK(whole.frames.size() == cut.frames.size());

  std::string again;
  for (size_t i = 0; i < whole.frames.size(); ++i) {
    const auto& f = whole.frames[i];
    FUZZ_CHECK(f.kind == cut.frames[i].kind && f.channel == cut.frames[i].channel &&
               f.payload == cut.frames[i].payload);
    FUZZ_CHECK(f.kind == protocol::Kind::data || f.channel == 0);
    FUZZ_CHECK(f.payload.size() <= (f.kind == protocol::Kind::data ? protocol::kMaxData : protocol::kMaxControl));
    again += reencode(f);

    if (f.kind != protocol::Kind::control) continue;
    auto message = protocol::parseControl(f.payload);
    if (!message) {
      FUZZ_CHECK(message.error().message.rfind("protocol error: ", 0) == 0);
      continue;
    }
    FUZZ_CHECK(message->is_object() && (*message)["type"].is_string());
    std::string bytes;
    try {
      bytes = protocol::encodeControl(*message);
    } catch (const std::length_error&) {
      continue;  // longer once re-dumped than the limit: the sender's to split
    }
    protocol::Decoder decoder;
    FUZZ_CHECK(decoder.feed(bytes));
    auto frame = decoder.next();
    FUZZ_CHECK(frame && !decoder.next() && decoder.buffered() == 0);
    auto back = protocol::parseControl(frame->payload);
    FUZZ_CHECK(back);
    FUZZ_CHECK(back->dump() == message->dump());
  }
  // The frames read are a prefix of the input, byte for byte.
  FUZZ_CHECK(input.substr(0, again.size()) == again);
  if (!whole.error) FUZZ_CHECK(input.size() - again.size() < protocol::kHeaderSize + protocol::kMaxControl);
  return 0;
}
