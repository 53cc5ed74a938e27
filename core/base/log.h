// Log lines to stderr: "2026-11-25T10:00:00.123Z warning db: message".
// Thread-safe (one line is written whole); the level is set once at start-up.
#pragma once

#include <sstream>
#include <string>
#include <string_view>

namespace pefnos::log {

enum class Level { debug, info, warning, error };

void setLevel(Level level);
Level level();
bool parseLevel(std::string_view text, Level* out);
void write(Level level, std::string_view source, std::string_view message);

template <class... Args>
void line(Level lvl, std::string_view source, const Args&... args) {
  if (lvl < level()) return;
  std::ostringstream s;
  (s << ... << args);
  write(lvl, source, s.str());
}
template <class... Args>
void debug(std::string_view source, const Args&... args) { line(Level::debug, source, args...); }
template <class... Args>
void info(std::string_view source, const Args&... args) { line(Level::info, source, args...); }
template <class... Args>
void warning(std::string_view source, const Args&... args) { line(Level::warning, source, args...); }
template <class... Args>
void error(std::string_view source, const Args&... args) { line(Level::error, source, args...); }

}  // namespace pefnos::log
