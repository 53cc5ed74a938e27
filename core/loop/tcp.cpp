// TcpStream and TcpServer over uv_tcp_t.
#include <arpa/inet.h>

#include "core/base/log.h"
#include "core/loop/loop.h"

namespace pefnos::loop {

using detail::callSafely;
using detail::closeAndDelete;
using detail::uvMessage;

namespace {

Result<sockaddr_storage> parseAddress(const std::string& host, int port) {
  sockaddr_storage addr{};
  if (uv_ip4_addr(host.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr)) == 0) return addr;
  if (uv_ip6_addr(host.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr)) == 0) return addr;
  return Error{"'" + host + "' is not a numeric IP address"};
}

std::string formatAddress(const sockaddr_storage& addr) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (addr.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    uv_ip6_name(a, ip, sizeof ip);
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
  uv_ip4_name(a, ip, sizeof ip);
  return std::string(ip) + ":" + std::to_string(ntohs(a->sin_port));
}

std::string target(const std::string& host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
         std::to_string(port);
}

}  // namespace

// --- TcpStream

struct TcpStream::Impl {
  uv_tcp_t handle;
  int init_rc = 0;
  bool owner_gone = false;
  std::string peer;
  std::function<void(std::string_view)> on_data;
  std::function<void(Status)> on_end;
  char buffer[64 * 1024];
};

TcpStream::TcpStream(uv_loop_t* loop) : impl_(new Impl) {
  uv_tcp_init(loop, &impl_->handle);  // no socket yet: cannot fail
  impl_->handle.data = impl_;
}

TcpStream::~TcpStream() {
  impl_->owner_gone = true;
  impl_->on_data = nullptr;
  impl_->on_end = nullptr;
  closeAndDelete(impl_);
}

Status TcpStream::connect(uv_loop_t* loop, const std::string& host, int port,
                          std::function<void(Result<std::unique_ptr<TcpStream>>)> connected) {
  struct Request {
    uv_connect_t req;
    std::unique_ptr<TcpStream> stream;  // closed with the request if the connect fails
    std::function<void(Result<std::unique_ptr<TcpStream>>)> connected;
    std::string what;
  };
  std::string what = "cannot connect to " + target(host, port);
  auto addr = parseAddress(host, port);
  if (!addr) return Error{what + ": " + addr.error().message};
  auto* r =
      new Request{{}, std::unique_ptr<TcpStream>(new TcpStream(loop)), std::move(connected), what};
  r->req.data = r;
  r->stream->impl_->peer = target(host, port);
  int rc = uv_tcp_connect(
      &r->req, &r->stream->impl_->handle, reinterpret_cast<const sockaddr*>(&*addr),
      [](uv_connect_t* req, int status) {
        std::unique_ptr<Request> r(static_cast<Request*>(req->data));
        if (status != 0) {
          callSafely("tcp", std::move(r->connected),
                     Result<std::unique_ptr<TcpStream>>(Error{uvMessage(r->what, status)}));
          return;
        }
        // Messages are small and answered: no Nagle delay (40 ms with delayed ACKs).
        uv_tcp_nodelay(&r->stream->impl_->handle, 1);
        callSafely("tcp", std::move(r->connected), std::move(r->stream));
      });
  if (rc == 0) return ok();
  delete r;
  return Error{uvMessage(what, rc)};
}

Status TcpStream::read(std::function<void(std::string_view)> on_data,
                       std::function<void(Status)> on_end) {
  impl_->on_data = std::move(on_data);
  impl_->on_end = std::move(on_end);
  return resumeReading();
}

void TcpStream::stopReading() { uv_read_stop(reinterpret_cast<uv_stream_t*>(&impl_->handle)); }

Status TcpStream::resumeReading() {
  auto on_alloc = [](uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* impl = static_cast<Impl*>(h->data);
    *buf = uv_buf_init(impl->buffer, sizeof impl->buffer);
  };
  auto on_read = [](uv_stream_t* s, ssize_t n, const uv_buf_t*) {
    auto* impl = static_cast<Impl*>(s->data);
    if (n > 0) {
      callSafely("tcp", impl->on_data, std::string_view(impl->buffer, static_cast<size_t>(n)));
      return;
    }
    if (n == 0) return;  // EAGAIN
    uv_read_stop(s);
    Status end =
        n == UV_EOF
            ? ok()
            : Status(Error{uvMessage("cannot read from " + impl->peer, static_cast<int>(n))});
    callSafely("tcp", impl->on_end, std::move(end));
  };
  int rc = uv_read_start(reinterpret_cast<uv_stream_t*>(&impl_->handle), on_alloc, on_read);
  if (rc != 0 && rc != UV_EALREADY) return Error{uvMessage("cannot read from " + impl_->peer, rc)};
  return ok();
}

Status TcpStream::write(std::string data, std::function<void(Status)> done) {
  return detail::writeStream(reinterpret_cast<uv_stream_t*>(&impl_->handle), std::move(data),
                             std::move(done), &impl_->owner_gone, impl_->peer);
}

size_t TcpStream::writeQueueSize() const { return impl_->handle.write_queue_size; }
const std::string& TcpStream::peer() const { return impl_->peer; }

// --- TcpServer

struct TcpServer::Impl {
  uv_tcp_t handle;
  int init_rc = 0;
  uv_loop_t* loop;
  std::string address;
  std::function<void(std::unique_ptr<TcpStream>)> on_connection;
};

TcpServer::TcpServer(uv_loop_t* loop) : impl_(new Impl) {
  uv_tcp_init(loop, &impl_->handle);
  impl_->handle.data = impl_;
  impl_->loop = loop;
}

TcpServer::~TcpServer() {
  impl_->on_connection = nullptr;
  closeAndDelete(impl_);
}

Result<std::unique_ptr<TcpServer>> TcpServer::listen(
    uv_loop_t* loop, const std::string& host, int port,
    std::function<void(std::unique_ptr<TcpStream>)> on_connection) {
  std::string what = "cannot listen on " + target(host, port);
  auto addr = parseAddress(host, port);
  if (!addr) return Error{what + ": " + addr.error().message};
  std::unique_ptr<TcpServer> server(new TcpServer(loop));
  Impl* impl = server->impl_;
  impl->address = target(host, port);
  impl->on_connection = std::move(on_connection);
  // libuv may defer a bind error (address in use) to uv_listen: both say "what".
  int rc = uv_tcp_bind(&impl->handle, reinterpret_cast<const sockaddr*>(&*addr), 0);
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(&impl->handle), 128,
                   [](uv_stream_t* s, int status) {
                     auto* impl = static_cast<Impl*>(s->data);
                     if (status != 0) {
                       log::warning("tcp", uvMessage("cannot accept on " + impl->address, status));
                       return;
                     }
                     std::unique_ptr<TcpStream> stream(new TcpStream(impl->loop));
                     auto* client = reinterpret_cast<uv_stream_t*>(&stream->impl_->handle);
                     if (int rc = uv_accept(s, client); rc != 0) {
                       log::warning("tcp", uvMessage("cannot accept on " + impl->address, rc));
                       return;
                     }
                     uv_tcp_nodelay(&stream->impl_->handle, 1);  // small, answered messages
                     sockaddr_storage peer{};
                     int len = sizeof peer;
                     if (uv_tcp_getpeername(&stream->impl_->handle,
                                            reinterpret_cast<sockaddr*>(&peer), &len) == 0)
                       stream->impl_->peer = formatAddress(peer);
                     callSafely("tcp", impl->on_connection, std::move(stream));
                   });
  }
  if (rc != 0) return Error{uvMessage(what, rc)};
  return server;
}

int TcpServer::port() const {
  sockaddr_storage addr{};
  int len = sizeof addr;
  if (uv_tcp_getsockname(&impl_->handle, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
}

}  // namespace pefnos::loop
