// The http room against real loopback sockets: the server runs on a real libuv
// loop in the test thread, clients are plain blocking sockets on their own
// thread, reading responses with http-parser (not by hand). Every test ends
// with the server destroyed and the loop closing cleanly (uv_loop_close == 0).
#include "core/http/http.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <thread>

#include "core/loop/loop.h"

namespace pefnos::http {
namespace {

using Clock = std::chrono::steady_clock;

long msSince(Clock::time_point t) {
  return static_cast<long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

struct Reply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  int chunks = 0;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// A blocking client socket with a 5 s receive timeout, so that a broken
// server fails a test instead of hanging it.
class Client {
 public:
  explicit Client(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{5, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~Client() { close(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  bool send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // The next response; nullopt on EOF, timeout, reset or a malformed answer.
  std::optional<Reply> read(bool head = false) {
    Parse p;
    p.head = head;
    http_parser_init(&p.parser, HTTP_RESPONSE);
    p.parser.data = &p;
    for (;;) {
      if (!buffer_.empty()) {
        http_parser_pause(&p.parser, 0);
        size_t n = http_parser_execute(&p.parser, &settings(), buffer_.data(), buffer_.size());
        if (p.complete) {
          buffer_.erase(0, n);
          return p.reply;
        }
        if (HTTP_PARSER_ERRNO(&p.parser) != HPE_OK) return std::nullopt;
        buffer_.clear();
      }
      char buf[16384];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n == 0) {  // EOF ends a close-delimited body
        http_parser_execute(&p.parser, &settings(), nullptr, 0);
        if (p.complete) return p.reply;
        return std::nullopt;
      }
      if (n < 0) return std::nullopt;
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

  // True once the server closed (EOF or reset) within timeout_ms; data before is dropped.
  bool waitClosed(int timeout_ms) {
    auto start = Clock::now();
    while (msSince(start) < timeout_ms) {
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 50) <= 0) continue;
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return true;
    }
    return false;
  }

  // True if the socket has something to read (or EOF) within timeout_ms.
  bool readable(int timeout_ms) {
    if (!buffer_.empty()) return true;
    pollfd pfd{fd_, POLLIN, 0};
    return ::poll(&pfd, 1, timeout_ms) > 0;
  }

 private:
  struct Parse {
    http_parser parser;
    Reply reply;
    std::string field, value;
    bool head = false, complete = false;
    void commit() {
      if (field.empty()) return;
      for (auto& c : field) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      reply.headers[field] = value;
      field.clear();
      value.clear();
    }
  };
  static const http_parser_settings& settings() {
    static const http_parser_settings s = [] {
      http_parser_settings s;
      http_parser_settings_init(&s);
      s.on_header_field = [](http_parser* p, const char* at, size_t len) {
        auto* r = static_cast<Parse*>(p->data);
        if (!r->value.empty()) r->commit();
        r->field.append(at, len);
        return 0;
      };
      s.on_header_value = [](http_parser* p, const char* at, size_t len) {
        static_cast<Parse*>(p->data)->value.append(at, len);
        return 0;
      };
      s.on_headers_complete = [](http_parser* p) {
        auto* r = static_cast<Parse*>(p->data);
        r->commit();
        r->reply.status = static_cast<int>(p->status_code);
        return r->head ? 1 : 0;  // a HEAD response has no body, whatever it announces
      };
      s.on_body = [](http_parser* p, const char* at, size_t len) {
        static_cast<Parse*>(p->data)->reply.body.append(at, len);
        return 0;
      };
      s.on_chunk_header = [](http_parser* p) {
        if (p->content_length > 0) ++static_cast<Parse*>(p->data)->reply.chunks;
        return 0;
      };
      s.on_message_complete = [](http_parser* p) {
        static_cast<Parse*>(p->data)->complete = true;
        http_parser_pause(p, 1);  // a pipelined next response stays in the buffer
        return 0;
      };
      return s;
    }();
    return s;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buffer_;
};

std::string get(const std::string& path, const std::string& extra = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n" + extra + "\r\n";
}

class HttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);  // as the daemon does
    ASSERT_EQ(uv_loop_init(&loop), 0);
  }
  void TearDown() override {
    server.reset();
    timers.clear();
    uv_run(&loop, UV_RUN_DEFAULT);  // lets the closes started by destructors finish
    EXPECT_EQ(uv_loop_close(&loop), 0) << "a handle was leaked";
  }

  void listen(Options options, Handler handler) {
    auto s = Server::listen(&loop, std::move(options), std::move(handler));
    ASSERT_TRUE(s) << s.error().message;
    server = std::move(*s);
    port = server->port();
    ASSERT_GT(port, 0);
  }
  void listen(Handler handler) { listen(Options{}, std::move(handler)); }

  // Runs the loop while client() runs on its own thread, until it returns.
  void runClient(std::function<void()> client) {
    loop::Async done(&loop, [this] { uv_stop(&loop); });
    loop::Timer watchdog(&loop);
    watchdog.unref();
    watchdog.start(20000, 0, [this] {
      ADD_FAILURE() << "client still busy after 20 s";
      uv_stop(&loop);
    });
    std::thread thread([&] {
      client();
      done.send();
    });
    uv_run(&loop, UV_RUN_DEFAULT);
    thread.join();
  }

  // Runs fn on the loop after ms (timers owned by the fixture).
  void after(uint64_t ms, std::function<void()> fn) {
    timers.push_back(std::make_unique<loop::Timer>(&loop));
    timers.back()->start(ms, 0, std::move(fn));
  }

  uv_loop_t loop;
  std::unique_ptr<Server> server;
  int port = 0;
  std::vector<std::unique_ptr<loop::Timer>> timers;
};

// Answers every request with "METHOD PATH" as text.
Handler echo(std::vector<Request>* seen = nullptr) {
  return [seen](const Request& r, Responder responder) {
    if (seen) seen->push_back(r);
    responder.send(Response::text(200, r.method + " " + r.path));
  };
}

TEST_F(HttpTest, GetWithQueryAndHeadersReachesTheHandler) {
  std::vector<Request> seen;
  listen([&](const Request& r, Responder responder) {
    seen.push_back(r);
    responder.send(Response::json(200, "{\"ok\":true}"));
  });
  runClient([&] {
    Client c(port);
    ASSERT_TRUE(c.connected());
    c.send(get("/api/v1/builds/a%20b?limit=5&name=a+b%26c&flag", "X-Token: abc\r\n"));
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 200);
    EXPECT_EQ(reply->body, "{\"ok\":true}");
    EXPECT_EQ(reply->header("content-type"), "application/json");
    EXPECT_EQ(reply->header("content-length"), "11");
    EXPECT_EQ(reply->header("server"), "pefnos");
    EXPECT_NE(reply->header("date").find(" GMT"), std::string::npos);
  });
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "GET");
  EXPECT_EQ(seen[0].path, "/api/v1/builds/a b");
  EXPECT_EQ(seen[0].query, "limit=5&name=a+b%26c&flag");
  EXPECT_EQ(seen[0].queryParam("limit"), "5");
  EXPECT_EQ(seen[0].queryParam("name"), "a b&c");
  EXPECT_EQ(seen[0].queryParamIf("flag"), std::optional<std::string>(""));
  EXPECT_EQ(seen[0].queryParamIf("absent"), std::nullopt);
  EXPECT_EQ(seen[0].header("x-token"), "abc");
  EXPECT_EQ(seen[0].header("host"), "localhost");
}

TEST_F(HttpTest, PathIsPercentDecodedExactlyOnce) {
  std::vector<Request> seen;
  listen(echo(&seen));
  runClient([&] {
    Client c(port);
    c.send(get("/x%2541/..%2Fetc"));
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 200);
  });
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].path, "/x%41/../etc");  // %25 gave '%', not decoded again
  EXPECT_EQ(safeRelativePath(seen[0].path.substr(1)), std::nullopt);
}

TEST_F(HttpTest, BadEscapesAndNulInPathGet400) {
  int calls = 0;
  listen([&](const Request&, Responder r) {
    ++calls;
    r.send(Response::text(200, "no"));
  });
  runClient([&] {
    for (const char* path : {"/%zz", "/a%00b", "/trailing%4"}) {
      Client c(port);
      c.send(get(path));
      auto reply = c.read();
      ASSERT_TRUE(reply) << path;
      EXPECT_EQ(reply->status, 400) << path;
      EXPECT_TRUE(c.waitClosed(3000)) << path;
    }
  });
  EXPECT_EQ(calls, 0);
}

TEST_F(HttpTest, KeepAliveServesTwoRequestsOnOneConnection) {
  std::vector<Request> seen;
  listen(echo(&seen));
  runClient([&] {
    Client c(port);
    c.send(get("/one"));
    auto first = c.read();
    ASSERT_TRUE(first);
    EXPECT_EQ(first->body, "GET /one");
    EXPECT_EQ(first->header("connection"), "");  // HTTP/1.1: keep-alive is the default
    c.send(get("/two"));
    auto second = c.read();
    ASSERT_TRUE(second);
    EXPECT_EQ(second->body, "GET /two");
  });
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].peer, seen[1].peer) << "the same connection";
}

TEST_F(HttpTest, PipelinedRequestsAreAnsweredInOrder) {
  // /slow is answered 50 ms later; /fast at once: the answers still keep order.
  listen([&](const Request& r, Responder responder) {
    if (r.path == "/slow")
      after(50,
            [responder, path = r.path]() mutable { responder.send(Response::text(200, path)); });
    else
      responder.send(Response::text(200, r.path));
  });
  runClient([&] {
    Client c(port);
    c.send(get("/slow") + get("/fast") + get("/slow") + get("/last"));
    for (const char* expected : {"/slow", "/fast", "/slow", "/last"}) {
      auto reply = c.read();
      ASSERT_TRUE(reply) << expected;
      EXPECT_EQ(reply->body, expected);
    }
  });
}

TEST_F(HttpTest, ConnectionCloseIsHonoured) {
  listen(echo());
  runClient([&] {
    Client c(port);
    c.send(get("/bye", "Connection: close\r\n"));
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 200);
    EXPECT_EQ(reply->header("connection"), "close");
    EXPECT_TRUE(c.waitClosed(3000));
  });
}

TEST_F(HttpTest, Http10WithoutKeepAliveIsClosedAndWithItKept) {
  listen(echo());
  runClient([&] {
    Client a(port);
    a.send("GET /a HTTP/1.0\r\n\r\n");
    auto reply = a.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->body, "GET /a");
    EXPECT_TRUE(a.waitClosed(3000));

    Client b(port);
    b.send("GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    reply = b.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->header("connection"), "keep-alive");
    b.send("GET /c HTTP/1.0\r\n\r\n");
    reply = b.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->body, "GET /c");
  });
}

TEST_F(HttpTest, HeadGetsTheHeadersWithoutTheBody) {
  listen([](const Request&, Responder r) { r.send(Response::text(200, "hello")); });
  runClient([&] {
    Client c(port);
    c.send("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    auto head = c.read(/*head=*/true);
    ASSERT_TRUE(head);
    EXPECT_EQ(head->status, 200);
    EXPECT_EQ(head->header("content-length"), "5");
    EXPECT_EQ(head->body, "");
    // Had the body been sent, it would now be read as a (malformed) response.
    c.send(get("/"));
    auto next = c.read();
    ASSERT_TRUE(next);
    EXPECT_EQ(next->status, 200);
    EXPECT_EQ(next->body, "hello");
  });
}

TEST_F(HttpTest, PostBodiesAreDelivered) {
  std::vector<Request> seen;
  listen(echo(&seen));
  runClient([&] {
    Client c(port);
    c.send(
        "POST /api/v1/commands HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"a\":\"bc\"}\n");
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->body, "POST /api/v1/commands");
    c.send(
        "PUT /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
    reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->body, "PUT /chunked");
  });
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].body, "{\"a\":\"bc\"}\n");
  EXPECT_EQ(seen[1].body, "abcdefg");
}

TEST_F(HttpTest, UnknownButParsableMethodIsTheHandlersBusiness) {
  std::vector<Request> seen;
  listen([&](const Request& r, Responder responder) {
    seen.push_back(r);
    responder.send(Response::text(405, "no"));
  });
  runClient([&] {
    Client c(port);
    c.send("PROPFIND / HTTP/1.1\r\nHost: x\r\n\r\n");
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 405);
  });
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "PROPFIND");
}

TEST_F(HttpTest, GarbageGets400AndTheConnectionClosed) {
  int calls = 0;
  listen([&](const Request&, Responder r) {
    ++calls;
    r.send(Response::text(200, "no"));
  });
  runClient([&] {
    Client c(port);
    c.send(std::string("\x16\x03\x01\x02\x00garbage\r\n\r\n", 16));
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 400);
    EXPECT_EQ(reply->header("connection"), "close");
    EXPECT_TRUE(c.waitClosed(3000));
  });
  EXPECT_EQ(calls, 0);
}

TEST_F(HttpTest, TwentyKibOfHeadersGet431) {
  int calls = 0;
  listen([&](const Request&, Responder r) {
    ++calls;
    r.send(Response::text(200, "no"));
  });
  runClient([&] {
    Client c(port);
    std::string headers;
    for (int i = 0; i < 20; ++i)
      headers += "X-Filler-" + std::to_string(i) + ": " + std::string(1000, 'a') + "\r\n";
    c.send(get("/", headers));
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 431);
    EXPECT_TRUE(c.waitClosed(3000));
  });
  EXPECT_EQ(calls, 0);
}

TEST_F(HttpTest, TwoMibContentLengthGets413BeforeAnyBodyIsSent) {
  int calls = 0;
  listen([&](const Request&, Responder r) {
    ++calls;
    r.send(Response::text(200, "no"));
  });
  runClient([&] {
    Client c(port);
    // Not a byte of the body is sent: the answer can only come from Content-Length.
    c.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n");
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 413);
    EXPECT_EQ(reply->header("connection"), "close");
    // The client may still push its body: the server drops it and closes once we do.
    EXPECT_TRUE(c.send(std::string(256 * 1024, 'x')));
  });
  EXPECT_EQ(calls, 0);
}

TEST_F(HttpTest, ChunkedBodyOverTheLimitGets413) {
  Options options;
  options.max_body_bytes = 1000;
  int calls = 0;
  listen(options, [&](const Request&, Responder r) {
    ++calls;
    r.send(Response::text(200, "no"));
  });
  runClient([&] {
    Client c(port);
    std::string chunk(800, 'x');
    c.send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n" + chunk +
           "\r\n320\r\n" + chunk + "\r\n0\r\n\r\n");
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 413);
  });
  EXPECT_EQ(calls, 0);
}

TEST_F(HttpTest, SlowlorisIsClosedAtTheHeaderTimeoutWhileOthersAreServed) {
  Options options;
  options.header_timeout_ms = 300;
  listen(options, echo());
  std::atomic<int> served{0};
  runClient([&] {
    std::thread others([&] {
      // Served meanwhile, each on a fresh connection.
      for (int i = 0; i < 5; ++i) {
        Client c(port);
        c.send(get("/other"));
        auto reply = c.read();
        if (reply && reply->status == 200) ++served;
        std::this_thread::sleep_for(std::chrono::milliseconds(60));
      }
    });
    Client slow(port);
    auto start = Clock::now();
    slow.send("GET / HTTP/1.1\r\n");
    // One header byte every 50 ms: dribbling must not keep the request alive.
    while (!slow.readable(50) && msSince(start) < 3000) slow.send("X");
    long elapsed = msSince(start);
    auto reply = slow.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 408);
    EXPECT_TRUE(slow.waitClosed(3000));
    EXPECT_GE(elapsed, 250);
    EXPECT_LT(elapsed, 1500);
    others.join();
  });
  EXPECT_EQ(served.load(), 5);
}

TEST_F(HttpTest, SilentNewConnectionIsClosedAtTheHeaderTimeout) {
  Options options;
  options.header_timeout_ms = 200;
  listen(options, echo());
  runClient([&] {
    Client c(port);
    auto start = Clock::now();
    EXPECT_TRUE(c.waitClosed(3000));
    EXPECT_GE(msSince(start), 150);
  });
  EXPECT_EQ(server->connections(), 0u);
}

TEST_F(HttpTest, IdleKeepAliveConnectionIsClosed) {
  Options options;
  options.idle_timeout_ms = 200;
  listen(options, echo());
  runClient([&] {
    Client c(port);
    c.send(get("/"));
    ASSERT_TRUE(c.read());
    auto start = Clock::now();
    EXPECT_TRUE(c.waitClosed(3000));
    EXPECT_GE(msSince(start), 150);
  });
  EXPECT_EQ(server->connections(), 0u);
}

TEST_F(HttpTest, DelayedResponseThroughTheResponder) {
  listen([&](const Request&, Responder responder) {
    after(50, [responder]() mutable {
      EXPECT_TRUE(responder.connected());
      responder.send(Response::text(200, "later"));
      EXPECT_FALSE(responder.connected()) << "answered";
    });
  });
  runClient([&] {
    Client c(port);
    auto start = Clock::now();
    c.send(get("/"));
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->body, "later");
    EXPECT_GE(msSince(start), 45);
  });
}

TEST_F(HttpTest, ResponderAfterTheClientLeftDoesNothing) {
  std::optional<Responder> kept;
  std::atomic<bool> checked{false};
  bool was_connected = true;
  listen([&](const Request&, Responder responder) { kept = responder; });
  // Polls on the loop: once the server has noticed the client left, answer.
  loop::Timer poll(&loop);
  poll.start(10, 10, [&] {
    if (!kept || server->connections() != 0) return;
    was_connected = kept->connected();
    kept->send(Response::text(200, "nobody listens"));
    Stream s = kept->stream(200, {});
    EXPECT_FALSE(s.open());
    EXPECT_FALSE(s.write("x"));
    poll.stop();
    checked = true;
  });
  runClient([&] {
    {
      Client c(port);
      c.send(get("/"));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }  // closed without waiting for the answer
    auto start = Clock::now();
    while (!checked && msSince(start) < 5000)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  });
  EXPECT_TRUE(checked.load());
  EXPECT_FALSE(was_connected);
}

TEST_F(HttpTest, DroppedResponderAnswers500) {
  listen([](const Request&, Responder) {});  // forgets to answer
  runClient([&] {
    Client c(port);
    c.send(get("/"));
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 500);
    c.send(get("/"));  // and the connection is still usable
    reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 500);
  });
}

TEST_F(HttpTest, HandlerExceptionAnswers500) {
  listen([](const Request&, Responder) { throw std::runtime_error("broken"); });
  runClient([&] {
    Client c(port);
    c.send(get("/"));
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 500);
  });
}

TEST_F(HttpTest, ChunkedStreamDeliversThreeChunksThenServesTheNextRequest) {
  listen([&](const Request& r, Responder responder) {
    if (r.path != "/events") {
      responder.send(Response::text(200, "after"));
      return;
    }
    Stream s = responder.stream(200, {{"Content-Type", "text/event-stream"}});
    EXPECT_TRUE(s.write("data: 1\n\n"));
    after(20, [s]() mutable { EXPECT_TRUE(s.write("data: 2\n\n")); });
    after(40, [s]() mutable {
      EXPECT_TRUE(s.write("data: 3\n\n"));
      s.close();
      EXPECT_FALSE(s.open());
      EXPECT_FALSE(s.write("late"));
    });
  });
  runClient([&] {
    Client c(port);
    c.send(get("/events"));
    auto reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, 200);
    EXPECT_EQ(reply->header("transfer-encoding"), "chunked");
    EXPECT_EQ(reply->header("content-type"), "text/event-stream");
    EXPECT_EQ(reply->chunks, 3);
    EXPECT_EQ(reply->body, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    c.send(get("/next"));
    reply = c.read();
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->body, "after");
  });
}

TEST_F(HttpTest, StreamOnCloseRunsWhenTheClientLeaves) {
  std::optional<Stream> kept;
  std::atomic<bool> closed{false};
  listen([&](const Request&, Responder responder) {
    kept = responder.stream(200, {{"Content-Type", "text/event-stream"}});
    kept->onClose([&] { closed = true; });
    kept->write("data: hello\n\n");
  });
  runClient([&] {
    {
      Client c(port);
      c.send(get("/events"));
      ASSERT_TRUE(c.readable(3000));
    }
    auto start = Clock::now();
    while (!closed && msSince(start) < 5000)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  });
  EXPECT_TRUE(closed.load());
  ASSERT_TRUE(kept);
  EXPECT_FALSE(kept->open());
  EXPECT_FALSE(kept->write("nobody"));
}

TEST_F(HttpTest, MaxConnectionsIsRespected) {
  Options options;
  options.max_connections = 2;
  listen(options, echo());
  runClient([&] {
    Client a(port), b(port);
    a.send(get("/a"));
    b.send(get("/b"));
    ASSERT_TRUE(a.read());
    ASSERT_TRUE(b.read());
    {
      Client c(port);  // the third one
      auto reply = c.read();
      ASSERT_TRUE(reply);
      EXPECT_EQ(reply->status, 503);
      EXPECT_TRUE(c.waitClosed(3000));
    }
    a.send(get("/a2"));  // the first two are still served
    auto again = a.read();
    ASSERT_TRUE(again);
    EXPECT_EQ(again->body, "GET /a2");
    a.close();  // frees a slot, once the server notices
    bool served = false;
    for (int i = 0; i < 50 && !served; ++i) {
      Client d(port);
      d.send(get("/d"));
      auto reply = d.read();
      served = reply && reply->status == 200;
      if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_TRUE(served);
  });
}

TEST(SafeRelativePath, AcceptsNamesBelowThePrefix) {
  EXPECT_EQ(safeRelativePath("css/site.css"), "css/site.css");
  EXPECT_EQ(safeRelativePath("42/step-3.log"), "42/step-3.log");
  EXPECT_EQ(safeRelativePath("a//./b/"), "a/b");
  EXPECT_EQ(safeRelativePath("..."), "...");  // a name, not a parent
  EXPECT_EQ(safeRelativePath("a..b/c"), "a..b/c");
}

TEST(SafeRelativePath, RefusesEscapesAndOddCharacters) {
  for (std::string bad : {"", ".", "./", "/etc/passwd", "..", "../x", "a/../../x", "a/..", "a/../b",
                          "a\\..\\b", "a\\b", "a\nb", "a\x7f"})
    EXPECT_EQ(safeRelativePath(bad), std::nullopt) << bad;
  EXPECT_EQ(safeRelativePath(std::string("a\0b", 3)), std::nullopt);
}

TEST(PercentDecode, DecodesOnceAndRefusesBadEscapes) {
  EXPECT_EQ(percentDecode("a%20b+c", false), "a b+c");
  EXPECT_EQ(percentDecode("a%20b+c", true), "a b c");
  EXPECT_EQ(percentDecode("%2541", false), "%41");
  EXPECT_EQ(percentDecode("%4", false), std::nullopt);
  EXPECT_EQ(percentDecode("%g1", false), std::nullopt);
}

}  // namespace
}  // namespace pefnos::http
