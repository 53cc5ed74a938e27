#include "core/worker/worker.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "core/base/log.h"
#include "core/loop/loop.h"
#include "core/protocol/auth.h"
#include "core/protocol/protocol.h"

extern char** environ;

namespace pefnos::worker {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

constexpr uint32_t kStderrBit = 0x80000000u;  // a command's stderr: its channel with the top bit
constexpr uint64_t kHandshakeMs = 30000;
constexpr uint64_t kKillGraceMs = 5000;  // a killed command whose pipes stay open is given up then

// A path relative to the build directory that stays inside it.
bool insideRelative(const std::string& path) {
  if (path.empty()) return true;
  fs::path p(path);
  if (p.is_absolute()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  return true;
}

std::vector<std::string> environmentWith(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  std::set<std::string> overridden;
  for (const auto& e : extra) overridden.insert(e.substr(0, e.find('=')));
  for (char** e = environ; *e; ++e) {
    std::string entry(*e);
    if (!overridden.count(entry.substr(0, entry.find('=')))) env.push_back(std::move(entry));
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

}  // namespace

// One command (or one unpacking tar) of a build.
struct Command {
  int64_t build = 0;
  uint32_t channel = 0;
  bool unpack = false;
  std::unique_ptr<loop::Process> process;
  std::unique_ptr<loop::Timer> timer;
  size_t max_output = 0, output = 0;
  bool timed_out = false, output_limited = false, killed = false;
  int timeout_seconds = 0;
  std::string tail, partial_line;
  std::optional<std::regex> collect;
  std::vector<std::string> collected;
  size_t collected_bytes = 0;
  size_t stdin_queued = 0;  // unpack: bytes handed to tar, not yet written
};

// What `finished` may carry of collected lines: with the tail, well under a
// control frame's limit.
constexpr size_t kMaxCollectedBytes = 512u << 10;
constexpr size_t kMaxRegexLine = 4096;

struct Worker::Impl {
  Impl(uv_loop_t* l, Options o)
      : loop(l), options(std::move(o)), reconnect(l), heartbeat(l) {}

  uv_loop_t* loop;
  Options options;
  std::function<void(const std::string&)> on_fatal;
  enum class State { idle, connecting, hello_sent, auth_sent, ready } state = State::idle;
  bool stopping = false;
  std::unique_ptr<loop::TcpStream> stream;
  protocol::Decoder decoder;
  loop::Timer reconnect, heartbeat;
  uint64_t backoff_ms = 100, last_heard = 0;
  std::string auth_message, salt;
  int iterations = 0;
  std::map<uint32_t, std::unique_ptr<Command>> commands;  // by channel
  std::set<std::unique_ptr<Command>> orphans;             // killed, waiting for their exit
  std::map<uint64_t, std::unique_ptr<loop::Process>> cleanups;  // rm -rf of ended builds
  uint64_t last_cleanup = 0;
  std::set<int64_t> builds;        // build directories made for the master
  std::set<int64_t> interrupted;   // builds killed by a lost connection: told at the next hello
  bool output_paused = false, reading_paused = false;

  // ------------------------------------------------------------ connection
  void connect() {
    if (stopping) return;
    state = State::connecting;
    decoder = protocol::Decoder();
    auto started = loop::TcpStream::connect(
        loop, options.master_host, options.master_port,
        [this](Result<std::unique_ptr<loop::TcpStream>> s) {
          if (stopping) return;
          if (!s) return retry("cannot connect to the master: " + s.error().message);
          stream = std::move(s.value());
          auto reading = stream->read([this](std::string_view bytes) { onBytes(bytes); },
                                      [this](Status end) {
                                        drop(end ? "the master closed the connection"
                                                 : "connection lost: " + end.error().message);
                                      });
          if (!reading) return drop("cannot read from the master: " + reading.error().message);
          last_heard = uv_now(loop);
          // A master that takes the connection but never answers: dropped.
          heartbeat.start(kHandshakeMs, 0, [this] {
            if (state != State::ready) drop("no answer from the master during the handshake");
          });
          json tags = json::object();
          for (const auto& [k, v] : options.tags) tags[k] = v;
          send({{"type", "hello"},
                {"version", protocol::kVersion},
                {"name", options.name},
                {"tags", tags},
                {"slots", options.slots},
                {"interrupted", std::vector<int64_t>(interrupted.begin(), interrupted.end())}});
          state = State::hello_sent;
        });
    if (!started) retry("cannot connect to the master: " + started.error().message);
  }

  void retry(const std::string& why) {
    log::warning("worker", why, "; retrying in ", backoff_ms, " ms");
    state = State::idle;
    reconnect.start(backoff_ms, 0, [this] { connect(); });
    backoff_ms = std::min<uint64_t>(backoff_ms * 2, static_cast<uint64_t>(options.reconnect_max_ms));
  }

  // The connection is gone: what ran for the master is killed (the master
  // re-runs it elsewhere), and we connect again.
  void drop(const std::string& why) {
    heartbeat.stop();
    killAll(true);
    stream.reset();
    reading_paused = false;
    if (stopping) return;
    retry(why);
  }

  void fatal(const std::string& why) {
    log::error("worker", why);
    stopping = true;
    heartbeat.stop();
    killAll(true);
    stream.reset();
    if (on_fatal) on_fatal(why);
  }

  void send(const json& message) {
    try {
      write(protocol::encodeControl(message));
    } catch (const std::exception& e) {  // too big: never lose the message whole
      log::error("worker", "cannot send ", message.value("type", std::string("?")), ": ", e.what());
      if (message.value("type", std::string()) == "finished") {
        json smaller = message;
        smaller["collected"] = json::array();
        smaller["tail"] = "";
        write(protocol::encodeControl(smaller));
      }
    }
  }

  void write(std::string bytes) {
    if (!stream) return;
    auto status = stream->write(std::move(bytes), [this](Status) { onWritten(); });
    if (!status) return;
    if (!output_paused && stream->writeQueueSize() > kHighWater) {
      output_paused = true;
      for (auto& [ch, c] : commands)
        if (c->process) c->process->pauseOutput();
    }
  }

  void onWritten() {
    if (output_paused && stream && stream->writeQueueSize() < kHighWater / 4) {
      output_paused = false;
      for (auto& [ch, c] : commands)
        if (c->process) c->process->resumeOutput();
    }
  }

  void onBytes(std::string_view bytes) {
    last_heard = uv_now(loop);
    if (auto s = decoder.feed(bytes); !s) return drop("protocol error from the master: " + s.error().message);
    while (auto frame = decoder.next()) {
      if (!stream) return;  // dropped while handling an earlier frame
      if (frame->kind == protocol::Kind::data) {
        onData(frame->channel, std::move(frame->payload));
        continue;
      }
      auto message = protocol::parseControl(frame->payload);
      if (!message) return drop("protocol error from the master: " + message.error().message);
      onControl(*message);
    }
  }

  // ------------------------------------------------------------ messages
  void onControl(const json& m) {
    const std::string type = m["type"];
    try {
      if (type == "refused") return fatal("the master refused this worker: " + m.value("reason", std::string("no reason given")));
      if (type == "heartbeat") return;
      switch (state) {
        case State::hello_sent:
          if (type != "challenge") return drop("expected a challenge, got " + type);
          return answerChallenge(m);
        case State::auth_sent:
          if (type != "welcome") return drop("expected welcome, got " + type);
          return welcome(m);
        case State::ready:
          if (type == "build-start") return buildStart(m.at("build").get<int64_t>());
          if (type == "run") return run(m);
          if (type == "unpack") return unpack(m);
          if (type == "stop") return stopBuild(m.at("build").get<int64_t>());
          if (type == "build-end") return buildEnd(m.at("build").get<int64_t>());
          return drop("unknown message type '" + type + "'");
        default:
          return drop("unexpected message " + type);
      }
    } catch (const json::exception& e) {
      drop("malformed " + type + " message from the master: " + e.what());
    }
  }

  void answerChallenge(const json& m) {
    auto salt_bytes = protocol::unbase64(m.at("salt").get<std::string>());
    if (!salt_bytes) return drop("malformed challenge: " + salt_bytes.error().message);
    salt = *salt_bytes;
    iterations = m.at("iterations").get<int>();
    if (iterations < 1 || iterations > 10'000'000) return drop("malformed challenge: iterations");
    auth_message = protocol::authMessage(options.name, m.at("nonce").get<std::string>());
    send({{"type", "auth"},
          {"proof", protocol::clientProof(options.secret, salt, iterations, auth_message)}});
    state = State::auth_sent;
  }

  void welcome(const json& m) {
    if (!protocol::serverSignatureValid(options.secret, salt, iterations, auth_message,
                                        m.at("server_signature").get<std::string>())) {
      return fatal("the master could not prove that it knows this worker's secret: refusing it");
    }
    state = State::ready;
    backoff_ms = 100;
    interrupted.clear();
    log::info("worker", "connected to the master at ", options.master_host, ":", options.master_port,
              " as '", options.name, "'");
    // The master's period, which it announces: it drops a worker silent for
    // three of its own heartbeats, whatever this worker was started with.
    int seconds = options.heartbeat_seconds;
    if (auto it = m.find("heartbeat_s"); it != m.end() && it->is_number_integer()) {
      seconds = std::clamp(it->get<int>(), 1, 3600);
    }
    const uint64_t hb = static_cast<uint64_t>(seconds) * 1000;
    heartbeat.start(hb, hb, [this, hb] {
      // While we do not read (tar is slow), the master's heartbeats wait unread.
      if (!reading_paused && uv_now(loop) - last_heard > 3 * hb) return drop("the master has been silent too long");
      send({{"type", "heartbeat"}});
    });
  }

  fs::path buildDir(int64_t build) const {
    return fs::path(options.workdir) / ("build-" + std::to_string(build));
  }

  void buildStart(int64_t build) {
    std::error_code ec;
    fs::path dir = buildDir(build);
    fs::remove_all(dir, ec);  // a leftover of an interrupted run
    fs::create_directories(dir, ec);
    json reply{{"type", "build-ready"}, {"build", build}};
    if (ec) {
      reply["error"] = "cannot create the build directory " + dir.string() + ": " + ec.message();
    } else {
      builds.insert(build);
    }
    send(reply);
  }

  void buildEnd(int64_t build) {
    stopBuild(build);
    builds.erase(build);
    std::error_code ec;
    if (fs::remove(buildDir(build), ec) || !fs::exists(buildDir(build), ec)) return;  // it was empty
    // rm in a child: a build tree can be large, and the loop must not wait.
    // Kept until it exits, so that it is reaped.
    loop::ProcessOptions o{.argv = {"rm", "-rf", "--", buildDir(build).string()}};
    o.out = o.err = loop::ProcessOptions::Stdio::ignore;
    auto id = ++last_cleanup;
    loop::Process::Callbacks cb;
    cb.on_exit = [this, id](int64_t, int) { cleanups.erase(id); };
    auto rm = loop::Process::spawn(loop, std::move(o), std::move(cb));
    if (rm) cleanups[id] = std::move(rm.value());
  }

  void stopBuild(int64_t build) {
    for (auto& [ch, c] : commands)
      if (c->build == build) killGroup(*c);
  }

  void killGroup(Command& c) {
    if (!c.process || c.killed) return;
    c.killed = true;
    ::kill(-c.process->pid(), SIGKILL);  // the command's whole process group
    // A child that left the group may keep the pipes open: the command is
    // reported over after a grace period all the same.
    if (!c.timer) c.timer = std::make_unique<loop::Timer>(loop);
    Command* raw = &c;
    c.timer->start(kKillGraceMs, 0, [this, raw] {
      auto it = commands.find(raw->channel);
      if (it == commands.end() || it->second.get() != raw) return;
      onExit(raw, -1, SIGKILL, true);
    });
  }

  void killAll(bool remember) {
    for (auto& [ch, c] : commands) {
      if (remember) interrupted.insert(c->build);
      killGroup(*c);
    }
    // Their exits arrive later and find no master to tell: kept aside until
    // then, so that they are reaped.
    for (auto& [ch, c] : commands) {
      c->timer.reset();
      if (c->process) orphans.insert(std::move(c));
    }
    commands.clear();
    output_paused = false;
  }

  // Answers a command that could not start.
  void notStarted(uint32_t channel, const std::string& why) {
    send({{"type", "finished"}, {"channel", channel}, {"not_started", true}, {"message", why},
          {"exit_code", -1}, {"signal", 0}, {"timed_out", false}, {"output_limited", false},
          {"tail", ""}, {"collected", json::array()}});
  }

  Result<fs::path> commandDir(int64_t build, const std::string& cwd) {
    if (!builds.count(build)) return Error{"build " + std::to_string(build) + " has no directory here"};
    if (!insideRelative(cwd)) return Error{"working directory '" + cwd + "' leaves the build directory"};
    // The source may hold symbolic links: where they lead must be inside too,
    // or the directory would be made (and the command run) outside.
    std::error_code root_ec, real_ec;
    const fs::path root = fs::canonical(buildDir(build), root_ec);
    const fs::path real = fs::weakly_canonical(buildDir(build) / cwd, real_ec);
    if (root_ec || real_ec || std::mismatch(root.begin(), root.end(), real.begin(), real.end()).first != root.end())
      return Error{"working directory '" + cwd + "' leaves the build directory through a symbolic link"};
    return buildDir(build) / cwd;
  }

  // A new command of a run or unpack message: its channel must be new; its
  // directory (made) inside the build's. nullptr when refused (answered).
  std::unique_ptr<Command> newCommand(const json& m, fs::path& dir) {
    const uint32_t channel = m.at("channel").get<uint32_t>();
    const int64_t build = m.at("build").get<int64_t>();
    if (commands.count(channel) || channel == 0 || (channel & kStderrBit)) {
      drop("the master reused channel " + std::to_string(channel));
      return nullptr;
    }
    auto made = commandDir(build, m.value("cwd", std::string()));
    if (!made) {
      notStarted(channel, made.error().message);
      return nullptr;
    }
    std::error_code ec;
    fs::create_directories(*made, ec);
    if (ec) {
      notStarted(channel, "cannot create " + made->string() + ": " + ec.message());
      return nullptr;
    }
    dir = *made;
    auto c = std::make_unique<Command>();
    c->build = build;
    c->channel = channel;
    c->timeout_seconds = m.value("timeout", 3600);
    return c;
  }

  void run(const json& m) {
    fs::path dir;
    auto c = newCommand(m, dir);
    if (!c) return;
    const uint32_t channel = c->channel;
    c->max_output = m.value("max_output", size_t{64} << 20);
    if (auto re = m.value("collect_regex", std::string()); !re.empty()) {
      try {
        c->collect.emplace(re, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        return notStarted(channel, "collect_regex '" + re + "' is not a valid regex: " + e.what());
      }
    }
    std::vector<std::string> argv = m.at("argv").get<std::vector<std::string>>();
    if (argv.empty()) return notStarted(channel, "an empty argv");
    loop::ProcessOptions o;
    o.argv = std::move(argv);
    o.env = environmentWith(m.value("env", std::vector<std::string>{}));
    o.cwd = dir.string();
    o.detached = true;  // its own session and process group: a kill takes its children too
    start(std::move(c), std::move(o));
  }

  void unpack(const json& m) {
    fs::path dir;
    auto c = newCommand(m, dir);
    if (!c) return;
    c->unpack = true;
    c->max_output = 1u << 20;  // tar's complaints
    loop::ProcessOptions o;
    // GNU tar refuses members with ".." and strips leading "/": nothing lands
    // outside the directory. Owners are ours, not the archive's.
    o.argv = {"tar", "-x", "-f", "-", "-C", dir.string(), "--no-same-owner"};
    o.cwd = dir.string();
    o.detached = true;
    o.in = loop::ProcessOptions::Stdio::pipe;
    start(std::move(c), std::move(o));
  }

  void start(std::unique_ptr<Command> c, loop::ProcessOptions o) {
    Command* raw = c.get();  // callbacks find their own command, never a newcomer on its channel
    loop::Process::Callbacks cb;
    cb.on_stdout = [this, raw](std::string_view chunk) { onOutput(raw, chunk, false); };
    cb.on_stderr = [this, raw](std::string_view chunk) { onOutput(raw, chunk, true); };
    cb.on_exit = [this, raw](int64_t status, int signal) {
      for (auto it = orphans.begin(); it != orphans.end(); ++it) {
        if (it->get() == raw) return void(orphans.erase(it));
      }
      onExit(raw, status, signal);
    };
    auto spawned = loop::Process::spawn(loop, std::move(o), std::move(cb));
    if (!spawned) return notStarted(c->channel, spawned.error().message);
    c->process = std::move(spawned.value());
    if (output_paused) c->process->pauseOutput();
    if (c->timeout_seconds > 0) {
      c->timer = std::make_unique<loop::Timer>(loop);
      c->timer->start(static_cast<uint64_t>(c->timeout_seconds) * 1000, 0, [this, raw] {
        auto it = commands.find(raw->channel);
        if (it == commands.end() || it->second.get() != raw) return;
        raw->timed_out = true;
        killGroup(*raw);
      });
    }
    commands[c->channel] = std::move(c);
  }

  void onOutput(Command* raw, std::string_view chunk, bool is_stderr) {
    auto it = commands.find(raw->channel);
    if (it == commands.end() || it->second.get() != raw) return;  // an orphan's last words
    Command& c = *raw;
    const uint32_t channel = c.channel;
    c.output += chunk.size();
    if (c.output > c.max_output) {
      if (!c.output_limited) {
        c.output_limited = true;
        killGroup(c);
      }
      return;
    }
    c.tail.append(chunk);
    if (c.tail.size() > 2 * kTailBytes) c.tail.erase(0, c.tail.size() - kTailBytes);
    if (c.collect) collectLines(c, chunk);
    if (!c.unpack) write(protocol::encodeData(channel | (is_stderr ? kStderrBit : 0), chunk));
  }

  static void collectLines(Command& c, std::string_view chunk) {
    c.partial_line.append(chunk);
    size_t start = 0;
    for (size_t nl; (nl = c.partial_line.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string line = c.partial_line.substr(start, nl - start);
      // Long lines are not searched: std::regex recurses per character and a
      // megabyte line could take the worker's stack.
      if (line.size() <= kMaxRegexLine && c.collected.size() < kMaxCollected &&
          c.collected_bytes + line.size() <= kMaxCollectedBytes && std::regex_search(line, *c.collect)) {
        c.collected_bytes += line.size();
        c.collected.push_back(std::move(line));
      }
    }
    c.partial_line.erase(0, start);
    if (c.partial_line.size() > kTailBytes) c.partial_line.clear();  // a line that never ends
  }

  void onData(uint32_t channel, std::string payload) {
    auto it = commands.find(channel);
    if (it == commands.end() || !it->second->unpack) return;  // a stopped unpack: drain quietly
    Command& c = *it->second;
    if (!c.process || c.killed) return;
    if (payload.empty()) {
      (void)c.process->closeStdin();
      return;
    }
    const size_t size = payload.size();
    c.stdin_queued += size;
    auto status = c.process->writeStdin(std::move(payload), [this, channel, size](Status) {
      auto it = commands.find(channel);
      if (it != commands.end()) it->second->stdin_queued -= size;
      resumeReadingIfDrained();
    });
    if (!status) {
      c.stdin_queued -= size;
      return;
    }
    // tar is slower than the master: stop taking frames until it catches up.
    if (c.stdin_queued > kHighWater && stream && !reading_paused) {
      reading_paused = true;
      stream->stopReading();
    }
  }

  void resumeReadingIfDrained() {
    if (!reading_paused || !stream) return;
    for (auto& [ch, c] : commands)
      if (c->stdin_queued > kHighWater / 4) return;
    reading_paused = false;
    last_heard = uv_now(loop);
    (void)stream->resumeReading();
  }

  // The command ended (given_up: killed, but its pipes stayed open past the
  // grace period; the process is kept aside until it really exits).
  void onExit(Command* raw, int64_t status, int signal, bool given_up = false) {
    auto it = commands.find(raw->channel);
    if (it == commands.end() || it->second.get() != raw) return;
    const uint32_t channel = raw->channel;
    std::unique_ptr<Command> c = std::move(it->second);
    commands.erase(it);
    c->timer.reset();
    resumeReadingIfDrained();
    if (!c->partial_line.empty() && c->collect && c->partial_line.size() <= kMaxRegexLine &&
        c->collected.size() < kMaxCollected &&
        c->collected_bytes + c->partial_line.size() <= kMaxCollectedBytes &&
        std::regex_search(c->partial_line, *c->collect)) {
      c->collected.push_back(c->partial_line);
    }
    if (c->tail.size() > kTailBytes) c->tail.erase(0, c->tail.size() - kTailBytes);
    json message{{"type", "finished"},    {"channel", channel},
                 {"exit_code", status},   {"signal", signal},
                 {"timed_out", c->timed_out}, {"output_limited", c->output_limited},
                 {"not_started", false},  {"message", c->unpack && status != 0 ? c->tail : ""},
                 {"tail", c->tail},       {"collected", c->collected}};
    if (!c->unpack) write(protocol::encodeEnd(channel));
    send(message);
    if (given_up && c->process) orphans.insert(std::move(c));
  }
};

Worker::Worker(uv_loop_t* loop, Options options)
    : impl_(std::make_unique<Impl>(loop, std::move(options))) {}

Worker::~Worker() {
  impl_->stopping = true;
  impl_->killAll(false);
}

void Worker::start(std::function<void(const std::string&)> on_fatal) {
  impl_->on_fatal = std::move(on_fatal);
  impl_->stopping = false;
  impl_->connect();
}

void Worker::stop() {
  impl_->stopping = true;
  impl_->reconnect.stop();
  impl_->heartbeat.stop();
  impl_->killAll(false);
  impl_->stream.reset();
}

bool Worker::connected() const { return impl_->state == Impl::State::ready && impl_->stream; }
size_t Worker::running() const { return impl_->commands.size(); }

Result<bool> createSecretFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST) return false;
  if (fd < 0) return Error{"cannot create the secret file " + path + ": " + std::strerror(errno)};
  const std::string line = protocol::newNonce() + "\n";
  const bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  ::close(fd);
  if (!written) return Error{"cannot write the secret file " + path};
  return true;
}

Result<std::string> readSecretFile(const std::string& path, bool refuse_shared) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Error{"cannot read the secret file " + path + ": " + std::strerror(errno)};
  if (refuse_shared && (st.st_mode & 077)) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", st.st_mode & 0777);
    return Error{"the secret file " + path + " may be read by others (mode " + mode + "): chmod 600 it"};
  }
  std::ifstream in(path);
  std::string secret;
  if (!in || !std::getline(in, secret)) return Error{"cannot read the secret file " + path};
  while (!secret.empty() && (secret.back() == '\r' || secret.back() == ' ')) secret.pop_back();
  if (secret.empty()) return Error{"the secret file " + path + " is empty"};
  return secret;
}

}  // namespace pefnos::worker
