// The http room: an HTTP/1.1 server on the daemon's libuv loop. It owns the
// listening socket, one connection object per client, request parsing (by
// Debian's http-parser, never by hand), the limits and timeouts that keep a
// hostile or slow client from holding memory or slots, and response framing
// (Content-Length, chunked streams, keep-alive, HEAD). It never routes, never
// touches the database and never blocks: what a request means is the
// Handler's business, including methods it does not support.
//
// Threading: everything here runs on the loop thread, including Responder and
// Stream calls. Post to the loop (loop::Mailbox) to answer from elsewhere.
//
// Per connection, requests are answered strictly in order: after a request is
// complete, parsing of the next (pipelined) one waits until its response is
// finished. Bytes that arrive meanwhile are buffered up to a bound, then
// reading pauses (so memory per connection stays bounded).
#pragma once

#include <uv.h>

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/base/result.h"

namespace pefnos::http {

struct Request {
  std::string method;  // "GET", "POST", ... as sent (any method http-parser knows)
  std::string path;    // percent-decoded once, e.g. "/api/v1/builds/a b"
  std::string query;   // raw, without '?': decode with queryParam()
  std::map<std::string, std::string> headers;  // lower-case names; repeats joined by ", "
  std::string body;
  std::string peer;  // "address:port"

  std::string header(const std::string& lower_case_name) const;  // "" if absent
  // The first value of name in the query string, '+' and %XX decoded; "" if absent.
  std::string queryParam(const std::string& name) const;
  std::optional<std::string> queryParamIf(const std::string& name) const;
};

struct Response {
  int status = 200;
  // Content-Length, Transfer-Encoding and Connection belong to the server and
  // are ignored here; Date and Server are added unless set. Headers containing
  // CR, LF or NUL are dropped (no response splitting).
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  static Response json(int status, std::string text);
  static Response text(int status, std::string text);  // text/plain; charset=utf-8
  static Response html(int status, std::string text);
  static Response notFound();
};

namespace detail {
struct Connection;
struct ResponderState;
struct StreamState;
}  // namespace detail

// A chunked response in progress (text/event-stream later). Copies share one
// stream. Safe to keep and call later from the loop thread: once the client is
// gone, write() and close() do nothing and open() is false. When the last
// copy is dropped without close(), the stream is closed then.
class Stream {
 public:
  Stream() = default;
  bool open() const;
  // Sends one chunk (an empty one is skipped: it would end the stream). False
  // if the stream is no longer open.
  bool write(std::string chunk);
  // Ends the response; the connection then serves its next request or closes.
  void close();
  // Drops the connection at once, with whatever is still queued for it (a
  // client that does not read). onClose does not run.
  void abort();
  // Bytes queued on the connection, not yet taken by the kernel: a slow reader
  // makes this grow, and the caller decides when to drop it (close()).
  size_t writeQueueSize() const;
  // Runs once if the client goes away (or a write fails) while the stream is
  // open. Not run after close(), nor when the Server itself is destroyed (its
  // owner is shutting down anyway).
  void onClose(std::function<void()> on_close);

 private:
  friend struct detail::Connection;
  friend class Responder;
  explicit Stream(std::shared_ptr<detail::StreamState> state) : state_(std::move(state)) {}
  std::shared_ptr<detail::StreamState> state_;
};

// The way to answer one request, exactly once: send() or stream(). Copyable;
// may be kept and called later on the loop thread. If the client has gone,
// calls do nothing (connected() tells). If every copy is dropped without an
// answer, the server answers 500 so that the connection is not stuck.
class Responder {
 public:
  bool connected() const;  // false once the client is gone or the request was answered
  void send(Response response);
  // Starts a chunked response (status and headers as in Response). For HEAD,
  // only the head is sent and the stream's writes are dropped.
  Stream stream(int status, std::vector<std::pair<std::string, std::string>> headers);

 private:
  friend struct detail::Connection;
  explicit Responder(std::shared_ptr<detail::ResponderState> state) : state_(std::move(state)) {}
  std::shared_ptr<detail::ResponderState> state_;
};

using Handler = std::function<void(const Request&, Responder)>;

struct Options {
  std::string host = "127.0.0.1";       // numeric address
  int port = 0;                         // 0 picks a free port: see Server::port()
  size_t max_header_bytes = 16 * 1024;  // request line + headers; beyond: 431
  size_t max_body_bytes = 1024 * 1024;  // beyond: 413 (from Content-Length, before reading)
  // From a connection's accept (or a request's first byte) to the request's
  // last byte, body included; beyond: 408 and closed (slowloris).
  int header_timeout_ms = 10000;
  int idle_timeout_ms = 60000;    // between keep-alive requests; beyond: closed silently
  size_t max_connections = 1024;  // beyond: answered 503 and closed
};

class Server {
 public:
  static Result<std::unique_ptr<Server>> listen(uv_loop_t* loop, Options options, Handler handler);
  // Closes the listener and every connection; pending Responders and Streams
  // become inert (no callback runs).
  ~Server();
  Server(const Server&) = delete;  // owns the listener and the connections
  Server& operator=(const Server&) = delete;

  int port() const;
  size_t connections() const;  // open client connections (not counting ones refused with 503)

  struct Impl;  // opaque; named only by http.cpp

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// What the server reads from a client's bytes, without a connection: the
// requests, in order and as the handler gets them (peer empty), up to the
// first refused one or the one after which the connection closes. The same
// parser and limits as a Server's connections (timeouts aside); arrivals are
// the bytes as they come in. For tests and fuzzing.
struct ReadRequests {
  std::vector<Request> requests;
  int refused = 0;          // non-zero: the status the server answers (and closes) with
  bool incomplete = false;  // the bytes ended inside a request
};
ReadRequests readRequests(const std::vector<std::string_view>& arrivals, const Options& limits);

// For asset and log names taken from a URL: the path below a route's prefix
// ("css/site.css", "42/step-3.log"), checked to stay below it. Refuses "",
// "..", absolute paths, backslashes, NUL and control characters; drops "." and
// empty components ("a//./b" gives "a/b"). Expects a path already
// percent-decoded (Request::path is).
std::optional<std::string> safeRelativePath(const std::string& path_under_prefix);

// %XX decoding; '+' becomes a space only if plus_is_space (query strings).
// nullopt for a malformed escape.
std::optional<std::string> percentDecode(const std::string& text, bool plus_is_space);

}  // namespace pefnos::http
