// "HOST:PORT" as the command line and the options give it: the host is a
// numeric address (name resolution is the caller's job), the port 0 to 65535
// (0: any free port).
#pragma once

#include <charconv>
#include <string>
#include <string_view>
#include <utility>

#include "core/base/result.h"

namespace pefnos {

struct HostPort {
  std::string host;
  int port = 0;
};

inline Result<HostPort> parseHostPort(std::string_view text) {
  const auto colon = text.rfind(':');
  auto bad = [&] { return Error{"'" + std::string(text) + "' is not HOST:PORT (a port from 0 to 65535)"}; };
  if (colon == std::string_view::npos || colon == 0) return bad();
  int port = -1;
  const char* first = text.data() + colon + 1;
  const char* last = text.data() + text.size();
  auto [end, ec] = std::from_chars(first, last, port);
  if (ec != std::errc() || end != last || first == last || port < 0 || port > 65535) return bad();
  return HostPort{std::string(text.substr(0, colon)), port};
}

}  // namespace pefnos
