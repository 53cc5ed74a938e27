// Loopback sockets for tests, and a minimal HTTP/1.1 client: one request per connection
// (Connection: close), read to the end. Blocking; loopback only.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace pefnos::test {

struct Reply {
  int status = 0;
  std::string head, body;
};

// A TCP connection to 127.0.0.1:port that has sent bytes; reads on it time
// out after 10 s. The caller closes it.
inline int connectLoopback(int port, const std::string& bytes) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

// Reads a connection to its end (or the read timeout), closes it and parses
// the reply; status 0 if there was none.
inline Reply readReply(int fd) {
  std::string all;
  char buf[65536];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) all.append(buf, static_cast<size_t>(n));
  close(fd);
  Reply r;
  auto end = all.find("\r\n\r\n");
  if (end == std::string::npos) return r;
  r.head = all.substr(0, end);
  r.body = all.substr(end + 4);
  r.status = std::stoi(r.head.substr(9, 3));
  return r;
}

// One request on its own connection (Connection: close), read to the end.
// headers: extra lines, each ending in \r\n.
inline Reply request(int port, const std::string& method, const std::string& target,
                     const std::string& body = "", const std::string& headers = "") {
  int fd = connectLoopback(port, method + " " + target + " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" +
                                     headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
                                     body);
  return readReply(fd);
}

}  // namespace pefnos::test
