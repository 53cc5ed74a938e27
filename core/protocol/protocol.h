// The worker protocol: how a master and its workers talk over one TCP (or
// Unix) stream. Pure logic, no I/O: both ends feed received bytes to a
// Decoder and send what encode() returns.
//
// A frame is a 9-byte header and a payload:
//
//   u32 payload length (big-endian) | u8 kind | u32 channel (big-endian) | payload
//
//   kind 1, control: a JSON object with a string "type" (channel 0). At most
//           kMaxControl bytes.
//   kind 2, data:    raw bytes for a channel (a running command's output, a
//           source tree being sent); the channel's meaning is set up by a
//           control frame. At most kMaxData bytes; an empty data frame ends
//           the channel's stream.
//
// Anything else (an unknown kind, an oversized length, a control payload that
// is not a JSON object with a type) is a protocol error: the connection is
// dropped and the peer keeps serving everyone else.
//
// Conversation (see docs/PROTOCOL.md):
//   worker → hello {version, name, tags, slots, running}
//   master → challenge {nonce, salt, iterations}   (or refused {reason})
//   worker → auth {proof}
//   master → welcome {server_signature, heartbeat_s} | refused {reason}
//   then both ways: heartbeat, build, stop, command-started/finished, ...
#pragma once

#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/base/result.h"

namespace pefnos::protocol {

inline constexpr int kVersion = 1;
inline constexpr size_t kHeaderSize = 9;
inline constexpr size_t kMaxControl = 1u << 20;  // 1 MiB of JSON
inline constexpr size_t kMaxData = 256u << 10;   // 256 KiB of bytes per frame

enum class Kind : uint8_t { control = 1, data = 2 };

struct Frame {
  Kind kind = Kind::control;
  uint32_t channel = 0;
  std::string payload;
};

// The bytes of one frame. Data payloads longer than kMaxData must be split by
// the caller (encodeData does it).
//
// encodeControl throws std::invalid_argument for a message that is not an
// object with a string "type" and std::length_error for one over kMaxControl:
// the peer would drop us for either, so it is the sender's bug. Invalid UTF-8
// inside strings is replaced (U+FFFD), never thrown.
std::string encodeControl(const nlohmann::json& message);
// As many frames as it takes (none for no bytes: an empty frame means the end).
std::string encodeData(uint32_t channel, std::string_view bytes);
std::string encodeEnd(uint32_t channel);  // the empty data frame

// Reassembles frames from bytes as they arrive, in any split.
class Decoder {
 public:
  // Takes bytes; after an error every later call fails too, with the same
  // message (drop the peer), and nothing is held any more. An incomplete
  // frame is not an error: it waits for the rest.
  Status feed(std::string_view bytes);
  // The next complete frame, if any.
  std::optional<Frame> next();
  // Bytes held (incomplete frame + complete frames not yet taken): bounded
  // by one frame of each size beyond what the caller leaves untaken.
  size_t buffered() const;

 private:
  std::string pending_;
  std::deque<Frame> ready_;
  size_t ready_bytes_ = 0;
  std::optional<Error> failed_;
};

// A control frame's payload as a JSON object with a string "type", or why not.
Result<nlohmann::json> parseControl(std::string_view payload);

}  // namespace pefnos::protocol
