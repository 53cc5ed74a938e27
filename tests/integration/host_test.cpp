// The Host that plugins are given (core/plugin ProcessHost): real processes on
// a real loop, argv only. These are what the VCS and step plugins stand on.
#include <gtest/gtest.h>

#include <csignal>

#include "tests/support/vcs_fixture.h"

namespace pefnos {
namespace {

class HostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);
    ASSERT_EQ(uv_loop_init(&loop), 0);
    host = std::make_unique<plugin::ProcessHost>(&loop);
  }
  void TearDown() override {
    host.reset();
    uv_run(&loop, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop), 0) << "a handle was leaked";
  }
  void runUntil(const std::function<bool()>& done) {
    bool expired = false;
    loop::Timer watchdog(&loop);
    watchdog.start(20000, 0, [&] { expired = true; });
    while (!done() && !expired) uv_run(&loop, UV_RUN_ONCE);
    ASSERT_FALSE(expired) << "no answer in time";
  }
  static ProcessSpec spec(std::vector<std::string> argv, bool stdin_pipe = false) {
    ProcessSpec s;
    s.argv = std::move(argv);
    s.stdin_pipe = stdin_pipe;
    return s;
  }

  uv_loop_t loop;
  std::unique_ptr<plugin::ProcessHost> host;
};

TEST_F(HostTest, AHelperReadsWhatIsWrittenAndAnswersLineByLine) {
  // A long-lived helper speaking lines: cat echoes each request.
  std::string out;
  std::optional<ProcessResult> result;
  auto helper = host->stream(spec({"cat"}, true), [&](std::string_view c) { out.append(c); },
                             [&](ProcessResult r) { result = std::move(r); });
  int written = 0;
  helper->write("first request\n", [&](bool ok) { written += ok; });
  runUntil([&] { return out == "first request\n"; });
  EXPECT_FALSE(result) << "the helper stays up between requests";
  // 4 MB in one write: more than a pipe holds, so it is written as cat reads.
  std::string big(4u << 20, 'x');
  helper->write(big + "\n", [&](bool ok) { written += ok; });
  helper->closeInput();
  runUntil([&] { return result.has_value(); });
  EXPECT_EQ(written, 2);
  EXPECT_TRUE(result->ok()) << result->describe("cat");
  EXPECT_EQ(out.size(), std::string("first request\n").size() + big.size() + 1);

  bool late = true;
  helper->write("after the end\n", [&](bool ok) { late = ok; });
  runUntil([&] { return !late; });  // reported false, from the loop, never lost
}

TEST_F(HostTest, WithoutAStdinPipeWritesFailAndTheProgramSeesEndOfFile) {
  std::optional<ProcessResult> result;
  auto running = host->run(spec({"cat"}), [&](ProcessResult r) { result = std::move(r); });
  std::optional<bool> written;
  running->write("ignored\n", [&](bool ok) { written = ok; });
  runUntil([&] { return result.has_value() && written.has_value(); });
  EXPECT_FALSE(*written);
  EXPECT_TRUE(result->ok());
  EXPECT_EQ(result->out, "");
}

TEST_F(HostTest, ATimeoutKillsAndZeroMeansNone) {
  std::optional<ProcessResult> limited, unlimited;
  auto s = spec({"sleep", "30"});
  s.timeout_seconds = 1;
  host->run(s, [&](ProcessResult r) { limited = std::move(r); });
  auto forever = spec({"sleep", "2"});
  forever.timeout_seconds = 0;
  host->run(forever, [&](ProcessResult r) { unlimited = std::move(r); });
  runUntil([&] { return limited && unlimited; });
  EXPECT_TRUE(limited->timed_out);
  EXPECT_NE(limited->describe("sleep").find("timed out"), std::string::npos);
  EXPECT_TRUE(unlimited->ok()) << unlimited->describe("sleep");
}

}  // namespace
}  // namespace pefnos
