#include "core/protocol/protocol.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "core/base/json_text.h"

namespace pefnos::protocol {
namespace {

void putU32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

uint32_t getU32(std::string_view in) {
  auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(in[i])); };
  return b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3);
}

void appendFrame(std::string& out, Kind kind, uint32_t channel, std::string_view payload) {
  putU32(out, static_cast<uint32_t>(payload.size()));
  out.push_back(static_cast<char>(kind));
  putU32(out, channel);
  out.append(payload);
}

struct Header {
  uint32_t length;
  uint8_t kind;
  uint32_t channel;
};

Header readHeader(std::string_view bytes) {
  return {getU32(bytes), static_cast<uint8_t>(bytes[4]), getU32(bytes.substr(5))};
}

// Everything that makes a frame unacceptable is visible in its header, so it
// is judged before a single payload byte is held.
std::optional<Error> checkHeader(const Header& h) {
  switch (h.kind) {
    case static_cast<uint8_t>(Kind::control):
      if (h.length > kMaxControl)
        return Error{"protocol error: a control frame of " + std::to_string(h.length) +
                     " bytes, over the limit of " + std::to_string(kMaxControl)};
      if (h.channel != 0)
        return Error{"protocol error: a control frame on channel " + std::to_string(h.channel) +
                     " (control frames use channel 0)"};
      return std::nullopt;
    case static_cast<uint8_t>(Kind::data):
      if (h.length > kMaxData)
        return Error{"protocol error: a data frame of " + std::to_string(h.length) +
                     " bytes, over the limit of " + std::to_string(kMaxData)};
      return std::nullopt;
    default:
      return Error{"protocol error: unknown frame kind " + std::to_string(h.kind)};
  }
}

}  // namespace

std::string encodeControl(const nlohmann::json& message) {
  // The peer's decoder would drop us for either of these; failing here names
  // the sender's bug instead of a mysterious disconnect.
  if (!message.is_object() || !message.contains("type") || !message["type"].is_string())
    throw std::invalid_argument("encodeControl: a control message is an object with a string type");
  // replace: a string carrying invalid UTF-8 (a path, a command's words) must
  // not make dump() throw halfway through a conversation.
  std::string payload = message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (payload.size() > kMaxControl)
    throw std::length_error("encodeControl: a " + message["type"].get<std::string>() +
                            " message of " + std::to_string(payload.size()) +
                            " bytes, over the control frame limit");
  std::string out;
  out.reserve(kHeaderSize + payload.size());
  appendFrame(out, Kind::control, 0, payload);
  return out;
}

std::string encodeData(uint32_t channel, std::string_view bytes) {
  std::string out;
  size_t frames = (bytes.size() + kMaxData - 1) / kMaxData;
  out.reserve(bytes.size() + frames * kHeaderSize);
  // No bytes, no frame: an empty data frame would end the channel's stream.
  while (!bytes.empty()) {
    size_t n = std::min(bytes.size(), kMaxData);
    appendFrame(out, Kind::data, channel, bytes.substr(0, n));
    bytes.remove_prefix(n);
  }
  return out;
}

std::string encodeEnd(uint32_t channel) {
  std::string out;
  appendFrame(out, Kind::data, channel, {});
  return out;
}

Status Decoder::feed(std::string_view bytes) {
  if (failed_) return *failed_;
  // Bytes are moved into pending_ only as far as the current frame needs
  // them: first its header, which is judged, then exactly its payload. So a
  // peer announcing 4 GiB is refused after 9 bytes, having cost nothing.
  while (!bytes.empty()) {
    if (pending_.size() < kHeaderSize) {
      size_t take = std::min(kHeaderSize - pending_.size(), bytes.size());
      pending_.append(bytes.substr(0, take));
      bytes.remove_prefix(take);
      if (pending_.size() < kHeaderSize) break;
      if (auto bad = checkHeader(readHeader(pending_))) {
        // Once failed we hold nothing: the peer is about to be dropped.
        failed_ = std::move(*bad);
        pending_ = {};
        ready_.clear();
        ready_bytes_ = 0;
        return *failed_;
      }
    }
    Header h = readHeader(pending_);
    size_t size = kHeaderSize + h.length;
    size_t take = std::min(size - pending_.size(), bytes.size());
    pending_.append(bytes.substr(0, take));
    bytes.remove_prefix(take);
    if (pending_.size() == size) {
      Frame frame{static_cast<Kind>(h.kind), h.channel, pending_.substr(kHeaderSize)};
      ready_bytes_ += frame.payload.size();
      ready_.push_back(std::move(frame));
      pending_.clear();
    }
  }
  return ok();
}

std::optional<Frame> Decoder::next() {
  if (ready_.empty()) return std::nullopt;
  Frame frame = std::move(ready_.front());
  ready_.pop_front();
  ready_bytes_ -= frame.payload.size();
  return frame;
}

size_t Decoder::buffered() const { return pending_.size() + ready_bytes_; }

Result<nlohmann::json> parseControl(std::string_view payload) {
  auto parsed = parseJson(payload);
  if (!parsed) return Error{"protocol error: a control frame that is " + parsed.error().message};
  nlohmann::json message = std::move(parsed.value());
  if (!message.is_object())
    return Error{std::string("protocol error: a control frame that is a JSON ") +
                 message.type_name() + ", not an object"};
  auto type = message.find("type");
  if (type == message.end()) return Error{"protocol error: a control message without a \"type\""};
  if (!type->is_string())
    return Error{std::string("protocol error: a control message whose \"type\" is a ") +
                 type->type_name() + ", not a string"};
  return message;
}

}  // namespace pefnos::protocol
