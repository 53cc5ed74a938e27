// The loop room against a real libuv loop, real processes and real sockets.
// Every test ends with all its objects destroyed and the loop closing cleanly
// (uv_loop_close == 0): no handle leaked, none freed early.
#include "core/loop/loop.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <thread>

namespace pefnos::loop {
namespace {

class LoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);  // as the daemon does
    ASSERT_EQ(uv_loop_init(&loop), 0);
  }
  void TearDown() override {
    uv_run(&loop, UV_RUN_DEFAULT);  // lets the closes started by destructors finish
    EXPECT_EQ(uv_loop_close(&loop), 0) << "a handle was leaked";
  }
  // Runs until no work is left; a hung test fails instead of blocking ctest.
  void run() {
    Timer watchdog(&loop);
    watchdog.unref();
    watchdog.start(20000, 0, [this] {
      ADD_FAILURE() << "loop still busy after 20 s";
      uv_stop(&loop);
    });
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  uv_loop_t loop;
};

struct Captured {
  std::string out, err;
  int out_chunks = 0, exits = 0;
  int64_t exit_status = -1;
  int term_signal = -1;
  size_t out_at_exit = 0;
};

Process::Callbacks capture(Captured& c) {
  Process::Callbacks callbacks;
  callbacks.on_stdout = [&c](std::string_view chunk) {
    c.out.append(chunk);
    ++c.out_chunks;
  };
  callbacks.on_stderr = [&c](std::string_view chunk) { c.err.append(chunk); };
  callbacks.on_exit = [&c](int64_t status, int signal) {
    ++c.exits;
    c.exit_status = status;
    c.term_signal = signal;
    c.out_at_exit = c.out.size();
  };
  return callbacks;
}

TEST_F(LoopTest, TimerRepeatsNTimesThenStops) {
  Timer timer(&loop);
  int fired = 0;
  timer.start(1, 1, [&] {
    if (++fired == 5) timer.stop();
  });
  run();
  EXPECT_EQ(fired, 5);
  EXPECT_FALSE(timer.active());
}

TEST_F(LoopTest, SignalIsDelivered) {
  Signal signal(&loop);
  int received = 0;
  ASSERT_TRUE(signal
                  .start(SIGUSR1,
                         [&](int signum) {
                           received = signum;
                           signal.stop();
                         })
                  .ok());
  raise(SIGUSR1);
  run();
  EXPECT_EQ(received, SIGUSR1);
}

TEST_F(LoopTest, PollSeesReadableFd) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  int seen = 0;
  {
    Poll poll(&loop, fds[0]);
    ASSERT_TRUE(poll.start(UV_READABLE,
                           [&](int status, int events) {
                             EXPECT_EQ(status, 0);
                             seen = events;
                             poll.stop();
                           })
                    .ok());
    ASSERT_EQ(write(fds[1], "x", 1), 1);
    run();
  }
  uv_run(&loop, UV_RUN_DEFAULT);  // the poll handle is closed before its fd
  close(fds[0]);
  close(fds[1]);
  EXPECT_TRUE(seen & UV_READABLE);
}

TEST_F(LoopTest, ProcessOutputIsStreamedInChunksAndCompleteBeforeExit) {
  std::string expected;
  for (int i = 1; i <= 200000; ++i) expected += std::to_string(i) + "\n";
  Captured c;
  auto p = Process::spawn(&loop, {.argv = {"/usr/bin/seq", "1", "200000"}}, capture(c));
  ASSERT_TRUE(p.ok()) << p.error().message;
  run();
  EXPECT_GT(c.out_chunks, 1);
  EXPECT_EQ(c.out.size(), expected.size());
  EXPECT_TRUE(c.out == expected);
  EXPECT_EQ(c.out_at_exit, expected.size()) << "on_exit ran before the output was complete";
  EXPECT_EQ(c.exits, 1);
  EXPECT_EQ(c.exit_status, 0);
}

TEST_F(LoopTest, ArgvReachesChildVerbatimWithoutShell) {
  std::vector<std::string> args = {
      "two words", "\"double\" 'single'", "$(touch /tmp/pwned)", "a; exit 7", "*", "`id`", "$HOME"};
  std::vector<std::string> argv = {"/usr/bin/printf", "%s\\n"};
  argv.insert(argv.end(), args.begin(), args.end());
  Captured c;
  auto p = Process::spawn(&loop, {.argv = argv}, capture(c));
  ASSERT_TRUE(p.ok()) << p.error().message;
  run();
  std::string expected;
  for (auto& a : args) expected += a + "\n";
  EXPECT_EQ(c.out, expected);
  EXPECT_EQ(c.exit_status, 0);
}

TEST_F(LoopTest, SpawnOfMissingBinaryGivesErrorNamingIt) {
  Captured c;
  auto p = Process::spawn(&loop, {.argv = {"/nonexistent/pefnos-tool", "x"}}, capture(c));
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message.find("/nonexistent/pefnos-tool"), std::string::npos)
      << p.error().message;
  EXPECT_NE(p.error().message.find("no such file"), std::string::npos) << p.error().message;
}

TEST_F(LoopTest, ExplicitEnvironmentReplacesOurs) {
  Captured c;
  auto p = Process::spawn(
      &loop, {.argv = {"/usr/bin/env"}, .env = std::vector<std::string>{"A=1 2", "B=$(x)"}},
      capture(c));
  ASSERT_TRUE(p.ok()) << p.error().message;
  run();
  EXPECT_EQ(c.out, "A=1 2\nB=$(x)\n");
}

TEST_F(LoopTest, StdinPipeRoundTripsThroughCat) {
  std::string payload;
  for (int i = 0; i < 50000; ++i) payload += "line " + std::to_string(i) + "\n";
  Captured c;
  auto p =
      Process::spawn(&loop, {.argv = {"/bin/cat"}, .in = ProcessOptions::Stdio::pipe}, capture(c));
  ASSERT_TRUE(p.ok()) << p.error().message;
  int written = 0;
  ASSERT_TRUE((*p)->writeStdin(payload,
                               [&](Status s) {
                                 EXPECT_TRUE(s.ok()) << s.error().message;
                                 ++written;
                               })
                  .ok());
  ASSERT_TRUE((*p)->closeStdin().ok());
  run();
  EXPECT_EQ(written, 1);
  EXPECT_TRUE(c.out == payload);
  EXPECT_EQ(c.exit_status, 0);
}

TEST_F(LoopTest, KillOfSleepingChildReportsTheSignal) {
  Captured c;
  auto p = Process::spawn(&loop, {.argv = {"/bin/sleep", "30"}}, capture(c));
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_GT((*p)->pid(), 0);
  ASSERT_TRUE((*p)->kill(SIGTERM).ok());
  run();
  EXPECT_EQ(c.exits, 1);
  EXPECT_EQ(c.term_signal, SIGTERM);
  EXPECT_FALSE((*p)->kill(SIGTERM).ok()) << "a reaped pid must not be signalled";
}

TEST_F(LoopTest, DestroyingProcessInsideItsOwnOnExitIsSafe) {
  std::unique_ptr<Process> process;
  int exits = 0;
  std::string out;
  auto p = Process::spawn(&loop, {.argv = {"/bin/echo", "bye"}},
                          {.on_stdout = [&](std::string_view s) { out.append(s); },
                           .on_exit =
                               [&, keep = std::string(1000, 'k')](int64_t, int) {
                                 process.reset();  // destroys the lambda's owner, not the lambda
                                 exits += keep.size() == 1000;
                               }});
  ASSERT_TRUE(p.ok()) << p.error().message;
  process = std::move(p.value());
  run();
  EXPECT_EQ(exits, 1);
  EXPECT_EQ(process, nullptr);
  EXPECT_EQ(out, "bye\n");
}

TEST_F(LoopTest, TcpEchoCarriesSeveralMegabytesIntact) {
  std::string payload(8 << 20, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 31 % 251);
  constexpr size_t kHighWater = 1 << 20;

  std::unique_ptr<TcpStream> echo;  // the server side of the one connection
  bool paused = false;
  int pauses = 0;
  auto listening = TcpServer::listen(&loop, "127.0.0.1", 0, [&](std::unique_ptr<TcpStream> s) {
    echo = std::move(s);
    auto status = echo->read(
        [&](std::string_view chunk) {
          // Back-pressure: stop reading while the echo is not drained.
          auto written = echo->write(std::string(chunk), [&](Status) {
            if (paused && echo->writeQueueSize() < kHighWater) {
              paused = false;
              EXPECT_TRUE(echo->resumeReading().ok());
            }
          });
          EXPECT_TRUE(written.ok());
          if (!paused && echo->writeQueueSize() >= kHighWater) {
            paused = true;
            ++pauses;
            echo->stopReading();
          }
        },
        [&](Status) { echo.reset(); });
    EXPECT_TRUE(status.ok());
  });
  ASSERT_TRUE(listening.ok()) << listening.error().message;
  std::unique_ptr<TcpServer> server = std::move(listening.value());
  ASSERT_GT(server->port(), 0);

  // The client reads only after a pause, so that the echo's queue fills up.
  std::unique_ptr<TcpStream> client;
  std::string received;
  Timer slow_reader(&loop);
  auto read_back = [&] {
    auto status = client->read(
        [&](std::string_view chunk) {
          received.append(chunk);
          if (received.size() >= payload.size()) {
            client.reset();  // from inside its own callback
            server.reset();
          }
        },
        [&](Status s) { ADD_FAILURE() << "client ended early: " << s.ok(); });
    EXPECT_TRUE(status.ok());
  };
  auto connecting = TcpStream::connect(
      &loop, "127.0.0.1", server->port(), [&](Result<std::unique_ptr<TcpStream>> r) {
        ASSERT_TRUE(r.ok()) << r.error().message;
        client = std::move(r.value());
        EXPECT_EQ(client->peer(), "127.0.0.1:" + std::to_string(server->port()));
        EXPECT_TRUE(client->write(payload, nullptr).ok());
        slow_reader.start(100, 0, read_back);
      });
  ASSERT_TRUE(connecting.ok()) << connecting.error().message;
  run();
  EXPECT_EQ(received.size(), payload.size());
  EXPECT_TRUE(received == payload);
  EXPECT_GT(pauses, 0) << "back-pressure never engaged";
  EXPECT_EQ(echo, nullptr);
}

TEST_F(LoopTest, ListeningOnTakenPortSaysInUse) {
  auto first = TcpServer::listen(&loop, "127.0.0.1", 0, [](std::unique_ptr<TcpStream>) {});
  ASSERT_TRUE(first.ok()) << first.error().message;
  int port = (*first)->port();
  auto second = TcpServer::listen(&loop, "127.0.0.1", port, [](std::unique_ptr<TcpStream>) {});
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.error().message.find("in use"), std::string::npos) << second.error().message;
  EXPECT_NE(second.error().message.find("127.0.0.1:" + std::to_string(port)), std::string::npos)
      << second.error().message;
}

TEST_F(LoopTest, MailboxRunsPostsFromManyThreadsInPerThreadOrder) {
  constexpr int kThreads = 4, kPosts = 1000;
  auto mailbox = std::make_unique<Mailbox>(&loop);
  ASSERT_TRUE(mailbox->status().ok());
  std::vector<std::vector<int>> seen(kThreads);  // touched only on the loop thread
  int total = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t, mb = mailbox.get()] {
      for (int i = 0; i < kPosts; ++i) {
        mb->post([&, t, i] {
          seen[t].push_back(i);
          if (++total == kThreads * kPosts) uv_stop(&loop);
        });
      }
    });
  }
  run();
  for (auto& thread : threads) thread.join();  // before the Mailbox they post to goes
  mailbox.reset();
  EXPECT_EQ(total, kThreads * kPosts);
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(seen[t].size(), static_cast<size_t>(kPosts)) << "thread " << t;
    for (int i = 0; i < kPosts; ++i) ASSERT_EQ(seen[t][i], i) << "thread " << t;
  }
}

TEST_F(LoopTest, RunToCompletionReturnsOutputAndStatus) {
  auto r = runToCompletion({.argv = {"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  EXPECT_EQ(r->exit_status, 3);
  EXPECT_EQ(r->term_signal, 0);
}

}  // namespace
}  // namespace pefnos::loop
