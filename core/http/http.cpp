// HTTP/1.1 over loop::TcpServer, requests parsed by http-parser.
//
// One Connection per client, owned by Server::Impl (a shared_ptr, so that
// Responders and Streams can hold weak references and find out the client is
// gone). Every entry point into a Connection (read, timer, write done, a
// Responder call) holds a shared_ptr to it first: closing erases it from the
// server's map, and it must not die under its own feet.
#include "core/http/http.h"

#include <http_parser.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <unordered_map>

#include "core/base/log.h"
#include "core/loop/loop.h"

namespace pefnos::http {

namespace {

constexpr const char* kSource = "http";
// After an error response the client may still be sending (a body we refused);
// closing at once with unread input makes the kernel send RST, which can
// destroy our answer in flight. So input is read and dropped until the client
// closes, falls quiet for kLingerQuietMs, or kLingerMs have passed.
constexpr uint64_t kLingerMs = 2000;
constexpr uint64_t kLingerQuietMs = 500;
// Connections refused with 503 whose answer is still being written; beyond
// this, a refused connection is closed without a word (a flood).
constexpr size_t kMaxRefusing = 64;

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool iequals(const std::string& a, const char* b) { return lower(a) == lower(b); }

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// RFC 7231 IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
std::string httpDate() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

const char* reason(int status) {
  const char* r = http_status_str(static_cast<http_status>(status));
  return r ? r : "Unknown";
}

bool safeHeaderText(const std::string& s) {
  return s.find_first_of(std::string("\r\n\0", 3)) == std::string::npos;
}

// Status line and headers. content_length: nullopt for chunked or
// close-delimited bodies, and for statuses that carry no body.
std::string formatHead(int status, const std::vector<std::pair<std::string, std::string>>& headers,
                       std::optional<size_t> content_length, bool chunked, bool close,
                       bool keep_alive_header) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason(status) + "\r\n";
  bool has_date = false, has_server = false;
  for (const auto& [name, value] : headers) {
    std::string n = lower(name);
    // Framing is ours: a handler's Content-Length could desynchronise keep-alive.
    if (n == "content-length" || n == "transfer-encoding" || n == "connection") continue;
    if (name.empty() || !safeHeaderText(name) || !safeHeaderText(value)) {
      log::warning(kSource, "dropped a response header with CR, LF or NUL: ", name);
      continue;
    }
    has_date |= n == "date";
    has_server |= n == "server";
    out += name + ": " + value + "\r\n";
  }
  if (!has_date) out += "Date: " + httpDate() + "\r\n";
  if (!has_server) out += "Server: pefnos\r\n";
  if (content_length) out += "Content-Length: " + std::to_string(*content_length) + "\r\n";
  if (chunked) out += "Transfer-Encoding: chunked\r\n";
  if (close)
    out += "Connection: close\r\n";
  else if (keep_alive_header)
    out += "Connection: keep-alive\r\n";  // HTTP/1.0 clients need to be told
  out += "\r\n";
  return out;
}

bool statusHasNoBody(int status) { return status < 200 || status == 204 || status == 304; }

// http-parser has its own, process-wide cap on the header block (80 KiB by
// default); ours is checked in the callbacks and must be the one that bites.
void raiseParserHeaderCap(const Options& options) {
  if (options.max_header_bytes + 1024 > 80 * 1024)
    http_parser_set_max_header_size(static_cast<uint32_t>(options.max_header_bytes + 1024));
}

}  // namespace

// --- Request, Response

std::string Request::header(const std::string& lower_case_name) const {
  auto it = headers.find(lower_case_name);
  return it == headers.end() ? std::string() : it->second;
}

std::optional<std::string> Request::queryParamIf(const std::string& name) const {
  size_t start = 0;
  while (start <= query.size()) {
    size_t end = query.find('&', start);
    if (end == std::string::npos) end = query.size();
    std::string pair = query.substr(start, end - start);
    size_t eq = pair.find('=');
    auto key = percentDecode(pair.substr(0, eq), true);
    if (key && *key == name) {
      if (eq == std::string::npos) return std::string();
      auto value = percentDecode(pair.substr(eq + 1), true);
      if (value) return value;
    }
    start = end + 1;
  }
  return std::nullopt;
}

std::string Request::queryParam(const std::string& name) const {
  return queryParamIf(name).value_or(std::string());
}

Response Response::json(int status, std::string text) {
  return Response{status, {{"Content-Type", "application/json"}}, std::move(text)};
}
Response Response::text(int status, std::string text) {
  return Response{status, {{"Content-Type", "text/plain; charset=utf-8"}}, std::move(text)};
}
Response Response::html(int status, std::string text) {
  return Response{status, {{"Content-Type", "text/html; charset=utf-8"}}, std::move(text)};
}
Response Response::notFound() { return text(404, "not found\n"); }

std::optional<std::string> percentDecode(const std::string& text, bool plus_is_space) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%') {
      if (i + 2 >= text.size()) return std::nullopt;
      int hi = hexValue(text[i + 1]), lo = hexValue(text[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

std::optional<std::string> safeRelativePath(const std::string& path) {
  if (path.empty() || path[0] == '/') return std::nullopt;
  for (char c : path) {
    auto u = static_cast<unsigned char>(c);
    if (c == '\\' || u < 0x20 || u == 0x7f) return std::nullopt;  // NUL included
  }
  std::string out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (part == "..") return std::nullopt;
    if (!part.empty() && part != ".") out += (out.empty() ? "" : "/") + part;
    start = end + 1;
  }
  if (out.empty()) return std::nullopt;
  return out;
}

// --- Connection

namespace detail {

struct ResponderState {
  std::weak_ptr<Connection> connection;
  uint64_t serial;
  bool answered = false;
  ~ResponderState();
};

struct StreamState {
  std::weak_ptr<Connection> connection;
  uint64_t serial;
  bool open = true;
  std::function<void()> on_close;
  ~StreamState();
};

// The parsing half of a connection: http-parser and the request it builds,
// with the limits checked as the bytes come. No I/O: what a connection does
// at a request's edges (re-arm a deadline, say 100 Continue) it is told
// through the hooks. readRequests() drives the same code without a socket.
struct RequestParser {
  RequestParser(size_t max_header_bytes, size_t max_body_bytes, std::string peer);
  RequestParser(const RequestParser&) = delete;  // parser_.data points at this object
  RequestParser& operator=(const RequestParser&) = delete;

  struct Outcome {
    size_t consumed = 0;    // bytes of the input parsed
    bool complete = false;  // a whole request is ready (take it); parsing paused after it
    int refused = 0;        // non-zero: the status the refused request is answered with
    const char* why = "";
  };
  // Parses input, stopping after a complete request: the caller keeps the
  // bytes past `consumed` for the next call. Incomplete input is all consumed.
  Outcome execute(std::string_view input);
  Request take();

  std::function<void()> on_begin;     // a request's first byte
  std::function<void()> on_continue;  // the client waits for "100 Continue" before its body

  // The request just completed (or being read).
  bool head = false, http10 = false, keep_alive = false, upgrade = false;
  bool message_begun = false;

 private:
  static int onMessageBegin(http_parser* p);
  static int onUrl(http_parser* p, const char* at, size_t len);
  static int onHeaderField(http_parser* p, const char* at, size_t len);
  static int onHeaderValue(http_parser* p, const char* at, size_t len);
  static int onHeadersComplete(http_parser* p);
  static int onBody(http_parser* p, const char* at, size_t len);
  static int onMessageComplete(http_parser* p);
  static const http_parser_settings& settings();
  bool countHeaderBytes(size_t len);
  void commitHeader();

  size_t max_header_bytes_, max_body_bytes_;
  std::string peer_;
  http_parser parser_{};
  Request request_;
  std::string url_, field_, value_;
  bool in_value_ = false;
  size_t header_bytes_ = 0;
  bool message_complete_ = false;
  int error_status_ = 0;  // set by a callback that refused the request
};

enum class ConnectionState {
  reading,    // parsing a request, or waiting for one
  answering,  // a complete request is with the handler
  streaming,  // a chunked response is open
  closing,    // the last response is queued; closed (or lingering) once written
  lingering,  // after an error answer: input dropped until EOF, quiet or kLingerMs
  closed,
};

struct Connection : std::enable_shared_from_this<Connection> {
  Connection(Server::Impl* server, uv_loop_t* loop, std::unique_ptr<loop::TcpStream> tcp,
             uint64_t id);

  void start();
  void detach();  // the server is being destroyed: close without a word or a callback

  void onData(std::string_view data);
  void onEnd(Status status);
  void onDeadline();
  void onWritten(Status status);

  void processInput();
  void dispatch();
  void answer(uint64_t serial, Response response);
  Stream startStream(uint64_t serial, int status,
                     std::vector<std::pair<std::string, std::string>> headers);
  bool streamWrite(uint64_t serial, std::string chunk);
  void streamClose(uint64_t serial);
  bool answering(uint64_t s) const { return state == ConnectionState::answering && serial == s; }
  bool streamingNow(uint64_t s) const { return state == ConnectionState::streaming && serial == s; }

  void finishResponse();
  void fail(int status, bool linger);
  void closeWhenWritten();
  void close(bool notify_stream);
  void write(std::string data);
  void armHeaderDeadline();
  void armIdleDeadline();
  size_t maxBufferedInput() const;

  Server::Impl* server;  // null once detached
  uv_loop_t* loop;
  std::unique_ptr<loop::TcpStream> tcp;
  loop::Timer timer;
  uint64_t id;
  ConnectionState state = ConnectionState::reading;
  std::string input;  // received but not parsed yet (a request is being answered)
  bool reading_paused = false;
  bool processing = false;  // processInput is on the stack: it picks up new state itself
  bool idle_deadline = false;
  bool linger_after_close = false;
  uint64_t linger_start = 0;  // uv_now when lingering began
  uint64_t msSince(uint64_t t) const { return uv_now(loop) - t; }
  size_t writes_in_flight = 0;

  RequestParser reader;  // the request being parsed

  // The request being answered.
  uint64_t serial = 0;
  bool head = false, keep_alive = false, http10 = false, chunked = false;
  std::weak_ptr<StreamState> stream;
};

}  // namespace detail

using detail::Connection;
using detail::ConnectionState;

struct Server::Impl {
  uv_loop_t* loop;
  Options options;
  Handler handler;
  std::unique_ptr<loop::TcpServer> listener;
  std::unordered_map<uint64_t, std::shared_ptr<Connection>> connections;
  std::unordered_map<uint64_t, std::unique_ptr<loop::TcpStream>> refusing;  // 503 being written
  uint64_t next_id = 1;

  void accept(std::unique_ptr<loop::TcpStream> tcp);
  void refuse(std::unique_ptr<loop::TcpStream> tcp);

  ~Impl() {
    listener.reset();
    for (auto& [id, c] : connections) c->detach();
    connections.clear();
    refusing.clear();
  }
};

namespace detail {

Connection::Connection(Server::Impl* server, uv_loop_t* loop, std::unique_ptr<loop::TcpStream> tcp,
                       uint64_t id)
    : server(server),
      loop(loop),
      tcp(std::move(tcp)),
      timer(loop),
      id(id),
      reader(server->options.max_header_bytes, server->options.max_body_bytes,
             this->tcp->peer()) {}

ResponderState::~ResponderState() {
  if (answered) return;
  answered = true;
  // Every copy of the Responder is gone without an answer: the request would
  // hang forever, so say so.
  try {
    if (auto c = connection.lock()) c->answer(serial, Response::text(500, "no response\n"));
  } catch (...) {
    loop::detail::logCallbackException(kSource);
  }
}

StreamState::~StreamState() {
  if (!open) return;
  open = false;
  try {
    if (auto c = connection.lock()) c->streamClose(serial);
  } catch (...) {
    loop::detail::logCallbackException(kSource);
  }
}

void Connection::start() {
  reader.on_begin = [this] {
    // The first byte of a request after a keep-alive pause: now it must be
    // complete within the header timeout.
    if (idle_deadline) armHeaderDeadline();
  };
  reader.on_continue = [this] { write("HTTP/1.1 100 Continue\r\n\r\n"); };
  // The lambdas hold a raw pointer: the TcpStream is ours and drops them when destroyed.
  auto st = tcp->read([this](std::string_view data) { onData(data); },
                      [this](Status status) { onEnd(std::move(status)); });
  if (!st) {
    log::debug(kSource, st.error().message);
    close(false);
    return;
  }
  // A new connection gets the header timeout, not the idle one: one that never
  // says anything is a slot held for nothing.
  armHeaderDeadline();
}

void Connection::detach() {
  server = nullptr;
  if (auto s = stream.lock()) s->open = false;
  state = ConnectionState::closed;
  timer.stop();
  tcp.reset();
}

size_t Connection::maxBufferedInput() const {
  return std::max<size_t>(64 * 1024, server ? server->options.max_header_bytes : 0);
}

void Connection::armHeaderDeadline() {
  idle_deadline = false;
  timer.start(static_cast<uint64_t>(server->options.header_timeout_ms), 0,
              [this] { onDeadline(); });
}

void Connection::armIdleDeadline() {
  idle_deadline = true;
  timer.start(static_cast<uint64_t>(server->options.idle_timeout_ms), 0, [this] { onDeadline(); });
}

void Connection::onData(std::string_view data) {
  auto self = shared_from_this();
  if (state == ConnectionState::lingering) {  // dropped on purpose; still talking: wait on
    if (msSince(linger_start) < kLingerMs)
      timer.start(std::min(kLingerQuietMs, kLingerMs - msSince(linger_start)), 0,
                  [this] { onDeadline(); });
    return;
  }
  if (state != ConnectionState::reading && state != ConnectionState::answering &&
      state != ConnectionState::streaming)
    return;
  input.append(data);
  // Pipelined input waits while a response is pending; past a bound, stop
  // reading (the kernel's buffers and TCP flow control take over).
  if (state != ConnectionState::reading && input.size() > maxBufferedInput() && !reading_paused) {
    tcp->stopReading();
    reading_paused = true;
  }
  processInput();
}

void Connection::onEnd(Status status) {
  auto self = shared_from_this();
  if (!status) log::debug(kSource, status.error().message);
  // A client that half-closes is taken as gone: browsers and curl never do it,
  // and an SSE stream must notice a departed client.
  close(true);
}

void Connection::onDeadline() {
  auto self = shared_from_this();
  if (state == ConnectionState::lingering) {
    close(false);
  } else if (state == ConnectionState::reading) {
    if (reader.message_begun || !input.empty()) {
      log::debug(kSource, tcp->peer(), ": request not complete in time");
      fail(408, false);  // a slow client is not waited for any longer
    } else {
      close(false);  // idle keep-alive, or a connection that never spoke
    }
  }
}

void Connection::onWritten(Status status) {
  auto self = shared_from_this();
  --writes_in_flight;
  if (!status) {
    log::debug(kSource, status.error().message);
    close(true);
    return;
  }
  if (writes_in_flight == 0 && state == ConnectionState::closing) closeWhenWritten();
}

void Connection::write(std::string data) {
  ++writes_in_flight;
  std::weak_ptr<Connection> weak = weak_from_this();
  auto st = tcp->write(std::move(data), [weak](Status status) {
    if (auto c = weak.lock()) c->onWritten(std::move(status));
  });
  if (!st) {
    --writes_in_flight;
    log::debug(kSource, st.error().message);
    close(true);
  }
}

void Connection::processInput() {
  if (processing) return;  // the loop below, further up the stack, sees the new state
  auto self = shared_from_this();
  processing = true;
  while (state == ConnectionState::reading && !input.empty()) {
    auto got = reader.execute(input);
    if (got.complete) {
      input.erase(0, got.consumed);
      head = reader.head;
      http10 = reader.http10;
      keep_alive = reader.keep_alive;
      dispatch();
      continue;
    }
    if (got.refused) {
      log::debug(kSource, tcp ? tcp->peer() : "", ": ", got.refused, " (", got.why, ")");
      fail(got.refused, true);
      break;
    }
    input.clear();  // all consumed into the request being built
  }
  if (reading_paused && state != ConnectionState::closed && input.size() <= maxBufferedInput()) {
    reading_paused = false;
    if (auto st = tcp->resumeReading(); !st) close(true);
  }
  processing = false;
}

void Connection::dispatch() {
  state = ConnectionState::answering;
  timer.stop();  // the handler takes the time it needs; the client waits for it
  ++serial;
  auto responder = std::make_shared<ResponderState>();
  responder->connection = weak_from_this();
  responder->serial = serial;
  Request req = reader.take();
  Handler handler = server->handler;  // a copy: the handler may destroy the server
  try {
    handler(req, Responder(responder));
  } catch (const std::exception& e) {
    log::error(kSource, req.method, " ", req.path, ": handler threw: ", e.what());
    if (!responder->answered) {
      responder->answered = true;
      answer(serial, Response::text(500, "internal error\n"));
    }
  } catch (...) {
    log::error(kSource, req.method, " ", req.path, ": handler threw");
    if (!responder->answered) {
      responder->answered = true;
      answer(serial, Response::text(500, "internal error\n"));
    }
  }
}

void Connection::answer(uint64_t s, Response response) {
  if (!answering(s)) return;
  bool no_body = statusHasNoBody(response.status);
  std::optional<size_t> length;
  // HEAD gets the length the body would have; 1xx/204/304 have none at all.
  if (!no_body) length = response.body.size();
  std::string out = formatHead(response.status, response.headers, length, false, !keep_alive,
                               keep_alive && http10);
  if (!head && !no_body) out += response.body;
  write(std::move(out));
  if (state == ConnectionState::answering) finishResponse();
}

Stream Connection::startStream(uint64_t s, int status,
                               std::vector<std::pair<std::string, std::string>> headers) {
  if (!answering(s)) return Stream();
  // HTTP/1.0 has no chunked encoding: the body then ends with the connection.
  chunked = !http10;
  if (!chunked) keep_alive = false;
  write(formatHead(status, headers, std::nullopt, chunked, !keep_alive, false));
  if (state != ConnectionState::answering) return Stream();  // the write failed
  auto st = std::make_shared<StreamState>();
  st->connection = weak_from_this();
  st->serial = s;
  if (head) {  // the head is all a HEAD request gets
    st->open = false;
    finishResponse();
    return Stream(st);
  }
  state = ConnectionState::streaming;
  stream = st;
  return Stream(st);
}

bool Connection::streamWrite(uint64_t s, std::string chunk) {
  if (!streamingNow(s)) return false;
  if (chunk.empty()) return true;
  if (chunked) {
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
    write(size + std::move(chunk) + "\r\n");
  } else {
    write(std::move(chunk));
  }
  return state == ConnectionState::streaming;
}

void Connection::streamClose(uint64_t s) {
  if (!streamingNow(s)) return;
  if (auto st = stream.lock()) st->open = false;
  stream.reset();
  if (chunked) write("0\r\n\r\n");
  if (state == ConnectionState::streaming) finishResponse();
}

void Connection::finishResponse() {
  if (!keep_alive) {
    state = ConnectionState::closing;
    linger_after_close = false;
    if (writes_in_flight == 0) closeWhenWritten();
    return;
  }
  state = ConnectionState::reading;
  armIdleDeadline();
  processInput();  // a pipelined request may be waiting
}

void Connection::fail(int status, bool linger) {
  keep_alive = false;
  std::string body = std::to_string(status) + " " + reason(status) + "\n";
  write(formatHead(status, {{"Content-Type", "text/plain; charset=utf-8"}}, body.size(), false,
                   true, false) +
        body);
  if (state == ConnectionState::closed) return;
  state = ConnectionState::closing;
  linger_after_close = linger;
  input.clear();
  if (writes_in_flight == 0) closeWhenWritten();
}

void Connection::closeWhenWritten() {
  if (!linger_after_close) {
    close(false);
    return;
  }
  state = ConnectionState::lingering;
  linger_start = uv_now(loop);
  timer.start(kLingerQuietMs, 0, [this] { onDeadline(); });
  if (reading_paused) {
    reading_paused = false;
    if (!tcp->resumeReading()) close(false);
  }
}

void Connection::close(bool notify_stream) {
  if (state == ConnectionState::closed) return;
  auto self = shared_from_this();
  state = ConnectionState::closed;
  timer.stop();
  tcp.reset();  // allowed from inside its own callbacks
  std::function<void()> on_close;
  if (auto st = stream.lock(); st && st->open) {
    st->open = false;
    if (notify_stream) on_close = std::move(st->on_close);
  }
  stream.reset();
  if (server) server->connections.erase(id);
  loop::detail::callSafely(kSource, std::move(on_close));
}

// --- RequestParser

RequestParser::RequestParser(size_t max_header_bytes, size_t max_body_bytes, std::string peer)
    : max_header_bytes_(max_header_bytes), max_body_bytes_(max_body_bytes), peer_(std::move(peer)) {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
}

const http_parser_settings& RequestParser::settings() {
  static const http_parser_settings s = [] {
    http_parser_settings s;
    http_parser_settings_init(&s);
    s.on_message_begin = onMessageBegin;
    s.on_url = onUrl;
    s.on_header_field = onHeaderField;
    s.on_header_value = onHeaderValue;
    s.on_headers_complete = onHeadersComplete;
    s.on_body = onBody;
    s.on_message_complete = onMessageComplete;
    return s;
  }();
  return s;
}

RequestParser::Outcome RequestParser::execute(std::string_view input) {
  Outcome got;
  http_parser_pause(&parser_, 0);
  got.consumed = http_parser_execute(&parser_, &settings(), input.data(), input.size());
  if (message_complete_) {  // onMessageComplete paused the parser there
    message_complete_ = false;
    message_begun = false;
    // After an Upgrade the rest is another protocol, which we do not speak.
    upgrade = parser_.upgrade;
    if (upgrade) keep_alive = false;
    got.complete = true;
    return got;
  }
  auto err = HTTP_PARSER_ERRNO(&parser_);
  if (err != HPE_OK) {
    got.refused = error_status_ ? error_status_ : err == HPE_HEADER_OVERFLOW ? 431 : 400;
    got.why = http_errno_description(err);
  }
  return got;
}

Request RequestParser::take() {
  Request r = std::move(request_);
  request_ = Request{};
  return r;
}

bool RequestParser::countHeaderBytes(size_t len) {
  header_bytes_ += len;
  if (header_bytes_ <= max_header_bytes_) return true;
  error_status_ = 431;
  return false;
}

void RequestParser::commitHeader() {
  if (field_.empty()) return;
  std::string name = lower(std::move(field_));
  auto [it, inserted] = request_.headers.emplace(name, value_);
  if (!inserted) it->second += (name == "cookie" ? "; " : ", ") + value_;
  field_.clear();
  value_.clear();
  in_value_ = false;
}

int RequestParser::onMessageBegin(http_parser* p) {
  auto* c = static_cast<RequestParser*>(p->data);
  c->request_ = Request{};
  c->url_.clear();
  c->field_.clear();
  c->value_.clear();
  c->in_value_ = false;
  c->header_bytes_ = 0;
  c->error_status_ = 0;
  c->message_begun = true;
  if (c->on_begin) c->on_begin();
  return 0;
}

int RequestParser::onUrl(http_parser* p, const char* at, size_t len) {
  auto* c = static_cast<RequestParser*>(p->data);
  if (!c->countHeaderBytes(len)) return 1;
  c->url_.append(at, len);
  return 0;
}

int RequestParser::onHeaderField(http_parser* p, const char* at, size_t len) {
  auto* c = static_cast<RequestParser*>(p->data);
  if (!c->countHeaderBytes(len)) return 1;
  if (c->in_value_) c->commitHeader();
  c->field_.append(at, len);
  return 0;
}

int RequestParser::onHeaderValue(http_parser* p, const char* at, size_t len) {
  auto* c = static_cast<RequestParser*>(p->data);
  if (!c->countHeaderBytes(len)) return 1;
  c->in_value_ = true;
  c->value_.append(at, len);
  return 0;
}

int RequestParser::onHeadersComplete(http_parser* p) {
  // Any return other than 0, 1 or 2 is an error (1 and 2 mean "skip the body").
  constexpr int kRefuse = -1;
  auto* c = static_cast<RequestParser*>(p->data);
  c->commitHeader();
  Request& r = c->request_;
  r.method = http_method_str(static_cast<http_method>(p->method));
  r.peer = c->peer_;
  c->head = p->method == HTTP_HEAD;
  c->http10 = p->http_major == 1 && p->http_minor == 0;

  if (c->url_ == "*") {
    r.path = "*";  // OPTIONS *
  } else {
    http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(c->url_.data(), c->url_.size(), p->method == HTTP_CONNECT, &u) != 0) {
      c->error_status_ = 400;
      return kRefuse;
    }
    std::string raw_path = "/";
    if (u.field_set & (1 << UF_PATH))
      raw_path = c->url_.substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    if (u.field_set & (1 << UF_QUERY))
      r.query = c->url_.substr(u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
    // Decoded here, once: handlers never decode again (no double-decoding tricks).
    auto path = percentDecode(raw_path, false);
    if (!path || path->find('\0') != std::string::npos) {
      c->error_status_ = 400;
      return kRefuse;
    }
    r.path = std::move(*path);
  }

  // Refused from the announced length, before a byte of the body is read.
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->max_body_bytes_) {
    c->error_status_ = 413;
    return kRefuse;
  }
  bool has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length > 0);
  if (has_body && !c->http10 && iequals(r.header("expect"), "100-continue") && c->on_continue)
    c->on_continue();
  return 0;
}

int RequestParser::onBody(http_parser* p, const char* at, size_t len) {
  auto* c = static_cast<RequestParser*>(p->data);
  // Chunked bodies announce no length: counted as they come.
  if (c->request_.body.size() + len > c->max_body_bytes_) {
    c->error_status_ = 413;
    return 1;
  }
  c->request_.body.append(at, len);
  return 0;
}

int RequestParser::onMessageComplete(http_parser* p) {
  auto* c = static_cast<RequestParser*>(p->data);
  c->message_complete_ = true;
  c->keep_alive = http_should_keep_alive(p) != 0;
  // Stop here: the next pipelined request is parsed once this one is answered.
  http_parser_pause(p, 1);
  return 0;
}

}  // namespace detail

// --- Responder, Stream

bool Responder::connected() const {
  if (!state_ || state_->answered) return false;
  auto c = state_->connection.lock();
  return c && c->answering(state_->serial);
}

void Responder::send(Response response) {
  if (!state_ || state_->answered) return;
  state_->answered = true;
  if (auto c = state_->connection.lock()) c->answer(state_->serial, std::move(response));
}

Stream Responder::stream(int status, std::vector<std::pair<std::string, std::string>> headers) {
  if (!state_ || state_->answered) return Stream();
  state_->answered = true;
  if (auto c = state_->connection.lock())
    return c->startStream(state_->serial, status, std::move(headers));
  return Stream();
}

bool Stream::open() const {
  if (!state_ || !state_->open) return false;
  auto c = state_->connection.lock();
  return c && c->streamingNow(state_->serial);
}

bool Stream::write(std::string chunk) {
  if (!open()) return false;
  auto c = state_->connection.lock();
  return c->streamWrite(state_->serial, std::move(chunk));
}

void Stream::close() {
  if (!state_ || !state_->open) return;
  state_->open = false;
  if (auto c = state_->connection.lock()) c->streamClose(state_->serial);
}

void Stream::abort() {
  if (!state_ || !state_->open) return;
  state_->open = false;
  if (auto c = state_->connection.lock(); c && c->streamingNow(state_->serial)) c->close(false);
}

size_t Stream::writeQueueSize() const {
  if (!open()) return 0;
  auto c = state_->connection.lock();
  return c->tcp ? c->tcp->writeQueueSize() : 0;
}

void Stream::onClose(std::function<void()> on_close) {
  if (state_) state_->on_close = std::move(on_close);
}

// --- Server

void Server::Impl::accept(std::unique_ptr<loop::TcpStream> tcp) {
  if (connections.size() >= options.max_connections) {
    refuse(std::move(tcp));
    return;
  }
  uint64_t id = next_id++;
  auto c = std::make_shared<Connection>(this, loop, std::move(tcp), id);
  connections.emplace(id, c);
  c->start();
}

void Server::Impl::refuse(std::unique_ptr<loop::TcpStream> tcp) {
  if (refusing.size() >= kMaxRefusing) return;  // closed by the destructor, silently
  log::warning(kSource, "refused ", tcp->peer(), ": ", options.max_connections,
               " connections already open");
  std::string body = "too many connections\n";
  std::string out = formatHead(503, {{"Content-Type", "text/plain; charset=utf-8"}}, body.size(),
                               false, true, false) +
                    body;
  uint64_t id = next_id++;
  loop::TcpStream* raw = tcp.get();
  refusing.emplace(id, std::move(tcp));
  // The stream owns this callback, so `this` outlives it.
  auto st = raw->write(std::move(out), [this, id](Status) { refusing.erase(id); });
  if (!st) refusing.erase(id);
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

Result<std::unique_ptr<Server>> Server::listen(uv_loop_t* loop, Options options, Handler handler) {
  auto impl = std::make_unique<Impl>();
  impl->loop = loop;
  impl->options = std::move(options);
  impl->handler = std::move(handler);
  raiseParserHeaderCap(impl->options);
  Impl* raw = impl.get();
  auto listener = loop::TcpServer::listen(
      loop, raw->options.host, raw->options.port,
      [raw](std::unique_ptr<loop::TcpStream> tcp) { raw->accept(std::move(tcp)); });
  if (!listener) return listener.error();
  impl->listener = std::move(*listener);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

ReadRequests readRequests(const std::vector<std::string_view>& arrivals, const Options& limits) {
  raiseParserHeaderCap(limits);
  detail::RequestParser reader(limits.max_header_bytes, limits.max_body_bytes, "");
  ReadRequests out;
  std::string input;
  // Connection::processInput, with every request answered at once.
  for (std::string_view bytes : arrivals) {
    input.append(bytes);
    while (!input.empty()) {
      auto got = reader.execute(input);
      if (got.complete) {
        input.erase(0, got.consumed);
        out.requests.push_back(reader.take());
        if (!reader.keep_alive) return out;  // the connection closes after the answer
        continue;
      }
      if (got.refused) {
        out.refused = got.refused;
        return out;
      }
      input.clear();
    }
  }
  out.incomplete = reader.message_begun;
  return out;
}

int Server::port() const { return impl_->listener->port(); }
size_t Server::connections() const { return impl_->connections.size(); }

}  // namespace pefnos::http
