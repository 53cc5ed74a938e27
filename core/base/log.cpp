#include "core/base/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace pefnos::log {
namespace {
std::atomic<Level> g_level{Level::info};
std::mutex g_mutex;

const char* name(Level l) {
  switch (l) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warning: return "warning";
    case Level::error: return "error";
  }
  return "?";
}
}  // namespace

void setLevel(Level l) { g_level = l; }
Level level() { return g_level; }

bool parseLevel(std::string_view text, Level* out) {
  for (Level l : {Level::debug, Level::info, Level::warning, Level::error}) {
    if (text == name(l)) {
      *out = l;
      return true;
    }
  }
  return false;
}

void write(Level l, std::string_view source, std::string_view message) {
  using namespace std::chrono;
  auto now = system_clock::now();
  std::time_t t = system_clock::to_time_t(now);
  int ms = static_cast<int>(duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  std::string out;
  out.reserve(message.size() + 64);
  out.append(stamp).append(".");
  char msbuf[8];
  std::snprintf(msbuf, sizeof msbuf, "%03dZ ", ms);
  out.append(msbuf).append(name(l)).append(" ").append(source).append(": ").append(message);
  out.push_back('\n');
  std::lock_guard lock(g_mutex);
  // One write(2) per line so that lines of several processes do not interleave.
  ssize_t unused = ::write(STDERR_FILENO, out.data(), out.size());
  (void)unused;
}

}  // namespace pefnos::log
