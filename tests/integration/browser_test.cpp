// The status page as a person uses it: Debian's headless Chromium, driven by
// chromedriver over its W3C WebDriver HTTP API on loopback, against a real
// master with a real `pefnos worker`. No network beyond loopback: every
// other address goes to a proxy that is not there.
//
// It loads the console, enters a token, forces a build with the console's
// button, watches the build appear and its log grow while the step prints,
// checks the result, and saves screenshots under test-artifacts/ in the
// build tree.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "tests/support/child.h"
#include "tests/support/forge.h"
#include "tests/support/http_client.h"
#include "tests/support/testdb.h"

namespace pefnos {
namespace {

using namespace std::chrono;
using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kChromium = "/usr/bin/chromium";
constexpr const char* kChromedriver = "/usr/bin/chromedriver";

int freePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::string decodeBase64(const std::string& in) {
  std::string out;
  int value = 0, bits = -8;
  for (char c : in) {
    const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char* p = std::strchr(table, c);
    if (c == '=' || c == '\0' || !p) continue;
    value = (value << 6) + static_cast<int>(p - table);
    bits += 6;
    if (bits >= 0) {
      out.push_back(static_cast<char>((value >> bits) & 0xff));
      bits -= 8;
    }
  }
  return out;
}

// W3C WebDriver over chromedriver's HTTP port (which wants a loopback Host header).
class WebDriver {
 public:
  explicit WebDriver(int port) : port_(port) {}

  json call(const std::string& method, const std::string& path, const json& body = nullptr) {
    const std::string text = body.is_null() ? "" : body.dump();
    const std::string bytes = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port_) +
                              "\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(text.size()) + "\r\n\r\n" + text;
    // Quietly: chromedriver may not listen yet (ready() polls).
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
      close(fd);
      return json{{"value", {{"error", "chromedriver unreachable"}}}};
    }
    timeval tv{60, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    // Until the end of the body: chromedriver may keep the connection open.
    std::string all;
    char buf[65536];
    for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) {
      all.append(buf, static_cast<size_t>(n));
      auto head_end = all.find("\r\n\r\n");
      if (head_end == std::string::npos) continue;
      std::smatch m;
      std::string head = all.substr(0, head_end);
      if (std::regex_search(head, m, std::regex("[Cc]ontent-[Ll]ength: *(\\d+)")) &&
          all.size() >= head_end + 4 + std::stoul(m[1]))
        break;
      if (head.find("chunked") != std::string::npos && all.find("\r\n0\r\n\r\n", head_end) != std::string::npos) break;
    }
    close(fd);
    auto end = all.find("\r\n\r\n");
    if (end == std::string::npos) return json{{"value", {{"error", "no answer"}}}};
    std::string head = all.substr(0, end), payload = all.substr(end + 4);
    if (head.find("chunked") != std::string::npos) {  // take the framing off
      std::string plain;
      for (size_t at = 0;;) {
        size_t line = payload.find("\r\n", at);
        if (line == std::string::npos) break;
        size_t size = std::stoul(payload.substr(at, line - at), nullptr, 16);
        if (size == 0) break;
        plain += payload.substr(line + 2, size);
        at = line + 2 + size + 2;
      }
      payload = plain;
    }
    return json::parse(payload, nullptr, false);
  }
  bool ready() {
    auto r = call("GET", "/status");
    return r.is_object() && r["value"].is_object() && r["value"].value("ready", false);
  }
  std::string start(const std::string& profile_dir) {
    json caps = {{"capabilities",
                  {{"alwaysMatch",
                    {{"browserName", "chrome"},
                     {"goog:chromeOptions",
                      {{"binary", kChromium},
                       {"args",
                        {"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--window-size=1400,1000", "--user-data-dir=" + profile_dir,
                         "--disk-cache-dir=" + profile_dir + "/cache",
                         // Nothing but loopback: everything else goes to a proxy that is not there.
                         // (Chromium bypasses proxies for loopback by itself; "<-loopback>" would
                         // send loopback to the proxy too.)
                         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"}}}}}}}}};
    auto r = call("POST", "/session", caps);
    if (r.is_object() && r["value"].is_object() && r["value"].contains("sessionId"))
      session_ = r["value"]["sessionId"].get<std::string>();
    else
      error_ = r.dump();
    return session_;
  }
  const std::string& error() const { return error_; }
  void stop() {
    if (!session_.empty()) call("DELETE", "/session/" + session_);
    session_.clear();
  }
  json session(const std::string& method, const std::string& path, const json& body = json::object()) {
    return call(method, "/session/" + session_ + path, method == "GET" ? json(nullptr) : body)["value"];
  }
  void go(const std::string& url) { session("POST", "/url", {{"url", url}}); }
  json script(const std::string& js) { return session("POST", "/execute/sync", {{"script", js}, {"args", json::array()}}); }
  // Polls a script until it returns something truthy, within the time left.
  json waitScript(const std::string& js, milliseconds timeout) {
    const auto end = steady_clock::now() + timeout;
    for (;;) {
      json v = script(js);
      if (!v.is_null() && v != false && v != "" && !(v.is_object() && v.contains("error"))) return v;
      if (steady_clock::now() > end) return nullptr;
      std::this_thread::sleep_for(milliseconds(100));
    }
  }
  std::string element(const std::string& css) {
    auto v = session("POST", "/element", {{"using", "css selector"}, {"value", css}});
    for (auto& [k, id] : v.items())
      if (k.rfind("element-", 0) == 0) return id.get<std::string>();
    return "";
  }
  bool click(const std::string& css) {
    auto id = element(css);
    if (id.empty()) return false;
    return session("POST", "/element/" + id + "/click").is_null();
  }
  bool type(const std::string& css, const std::string& text) {
    auto id = element(css);
    if (id.empty()) return false;
    return session("POST", "/element/" + id + "/value", {{"text", text}}).is_null();
  }
  // A PNG of the window, saved; its path.
  std::string screenshot(const std::string& path) {
    auto v = session("GET", "/screenshot");
    if (!v.is_string()) return "";
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path, std::ios::binary) << decodeBase64(v.get<std::string>());
    return path;
  }

 private:
  int port_;
  std::string session_, error_;
};

class Browser : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kChromium) || !fs::exists(kChromedriver))
      GTEST_SKIP() << "needs Debian's chromium and chromium-driver (scripts/install-deps installs them)";
    signal(SIGPIPE, SIG_IGN);
    deadline_ = steady_clock::now() + seconds(55);
  }
  void TearDown() override {
    if (driver_) driver_->stop();  // closes Chromium before its driver goes
    if (chromedriver_) chromedriver_->stop(SIGTERM, milliseconds(3000));
  }
  milliseconds left() const {
    return std::max(milliseconds(0), duration_cast<milliseconds>(deadline_ - steady_clock::now()));
  }
  std::string q(const std::string& s) { return tdb_.conn().quote(s); }

  test::TestDatabase tdb_;
  test::TempDir dir_{"pefnos-browser"};
  std::unique_ptr<test::Child> master_, worker_, chromedriver_;
  std::unique_ptr<WebDriver> driver_;
  steady_clock::time_point deadline_;
};

TEST_F(Browser, AForcedBuildIsWatchedLiveFromTheConsoleToItsResult) {
  // A builder whose one step prints a line every 0.3 s; a branch with a head
  // (the repository is not polled: the build needs no source).
  tdb_.scalar("INSERT INTO pefnos.project (id, name) VALUES (1, 'demo')");
  tdb_.scalar("INSERT INTO pefnos.repository (id, project_id, name, vcs, url, active) VALUES"
              " (1, 1, 'app', 'git', '/nonexistent', false)");
  tdb_.scalar("INSERT INTO pefnos.branch (id, repository_id, name) VALUES (1, 1, 'main')");
  tdb_.scalar("INSERT INTO pefnos.commit (id, network_id, revision, author, message) VALUES"
              " (1, 1, repeat('a', 40), 'Ann Author', 'Make the console colourful')");
  tdb_.scalar("INSERT INTO pefnos.branch_head (branch_id, revision, commit_id) VALUES (1, repeat('a', 40), 1)");
  const std::string steps =
      R"([{"type": "shell", "name": "count", "argv": ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.3; done"]}])";
  tdb_.scalar("INSERT INTO pefnos.builder (id, project_id, name, steps, trusted) VALUES (1, 1, 'count', " + q(steps) +
              "::jsonb, false)");
  tdb_.scalar("INSERT INTO pefnos.builder (id, project_id, name, trusted) VALUES (2, 1, 'idle', false)");
  tdb_.scalar("INSERT INTO pefnos.builder_branch (builder_id, branch_id) VALUES (1, 1), (2, 1)");
  tdb_.scalar("INSERT INTO pefnos.worker (name, slots) VALUES ('w1', 2)");
  const std::string secret = dir_.path() + "/w1.secret";
  auto [src, sout] = test::run({test::pefnosBinary(), "ctl", "worker-secret", "w1", "--secret-file", secret, "--db",
                                tdb_.conninfo()});
  ASSERT_EQ(src, 0) << sout;
  auto [trc, token] = test::run({test::pefnosBinary(), "ctl", "token", "create", "browser", "--db", tdb_.conninfo()});
  ASSERT_EQ(trc, 0) << token;
  while (!token.empty() && token.back() == '\n') token.pop_back();

  master_ = std::make_unique<test::Child>(std::vector<std::string>{
      test::pefnosBinary(), "master", "--db", tdb_.conninfo(), "--name", "m", "--state-dir", dir_.path() + "/state",
      "--workers", "127.0.0.1:0", "--http", "127.0.0.1:0"});
  ASSERT_TRUE(master_->waitOutput("listening for workers on 127.0.0.1:", seconds(20))) << master_->output();
  std::smatch m;
  std::string out = master_->output();
  ASSERT_TRUE(std::regex_search(out, m, std::regex("serving HTTP on http://127\\.0\\.0\\.1:(\\d+)/")));
  const int http = std::stoi(m[1]);
  ASSERT_TRUE(std::regex_search(out, m, std::regex("listening for workers on 127\\.0\\.0\\.1:(\\d+)")));
  worker_ = std::make_unique<test::Child>(std::vector<std::string>{
      test::pefnosBinary(), "worker", "--master", "127.0.0.1:" + std::string(m[1]), "--name", "w1", "--secret-file",
      secret, "--workdir", dir_.path() + "/work", "--slots", "1"});
  ASSERT_TRUE(master_->waitOutput("worker 'w1' connected", seconds(20))) << master_->output() << worker_->output();

  const int driver_port = freePort();
  chromedriver_ = std::make_unique<test::Child>(
      std::vector<std::string>{kChromedriver, "--port=" + std::to_string(driver_port), "--allowed-ips=127.0.0.1"});
  driver_ = std::make_unique<WebDriver>(driver_port);
  ASSERT_TRUE(test::waitUntil([&] { return driver_->ready(); }, seconds(15))) << chromedriver_->output();
  ASSERT_FALSE(driver_->start(dir_.path() + "/profile").empty()) << driver_->error() << chromedriver_->output();

  // The console: both builders across, the head's revision down, no build yet.
  const std::string base = "http://127.0.0.1:" + std::to_string(http) + "/";
  driver_->go(base + "#/");
  ASSERT_FALSE(driver_->waitScript("return document.querySelectorAll('#console th.builder').length === 2", left())
                   .is_null())
      << driver_->script("return document.body.innerText");
  EXPECT_EQ(driver_->script("return document.querySelector('#live').className"), "live on");
  EXPECT_EQ(driver_->script("return getComputedStyle(document.querySelector('button[data-action=force]')).display"),
            "none")
      << "no token, no buttons";

  // A token makes the buttons appear; the console's button forces a build.
  ASSERT_TRUE(driver_->type("#token", token));
  ASSERT_TRUE(driver_->click("#token-save"));
  ASSERT_FALSE(driver_->waitScript("return document.body.classList.contains('can-write')", left()).is_null());
  ASSERT_TRUE(driver_->click("button[data-action=force][data-builder='1']"));

  // The build appears in the console, pushed by the server (no reload).
  auto cell = driver_->waitScript(
      "const a = document.querySelector(\"td.cell[data-builder='1'] a[data-build]\");"
      " return a ? {build: a.dataset.build, state: a.dataset.state} : null",
      left());
  ASSERT_FALSE(cell.is_null()) << driver_->script("return document.body.innerText") << master_->output();
  EXPECT_TRUE(cell["state"] == "pending" || cell["state"] == "running") << cell;
  EXPECT_EQ(driver_->script("return document.querySelector('#notice').innerText.includes('force count')"), true);

  // Its page: the log grows while the step prints, and follows to the end.
  ASSERT_TRUE(driver_->click("td.cell[data-builder='1'] a[data-build]"));
  ASSERT_FALSE(driver_->waitScript("const l = document.querySelector('#log');"
                                   " return l && l.textContent.includes('line 1')",
                                   left())
                   .is_null())
      << driver_->script("return document.body.innerText");
  std::vector<int> seen;  // lines in the log, sampled while the build runs
  while (left() > milliseconds(0)) {
    auto s = driver_->script(
        "return {lines: (document.querySelector('#log').textContent.match(/line \\d+/g) || []).length,"
        " state: document.querySelector('#build-state').dataset.state}");
    if (s["state"] != "running") break;
    if (seen.empty() || seen.back() != s["lines"].get<int>()) seen.push_back(s["lines"].get<int>());
    std::this_thread::sleep_for(milliseconds(150));
  }
  EXPECT_GE(seen.size(), 3u) << "the log grew live, line after line, while the step ran";
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  ASSERT_FALSE(driver_->waitScript("return document.querySelector('#build-state').dataset.state === 'succeeded'", left())
                   .is_null())
      << driver_->script("return document.body.innerText") << master_->output() << worker_->output();
  ASSERT_FALSE(driver_->waitScript("return document.querySelector('#log').dataset.done === '1'", left()).is_null());
  EXPECT_EQ(driver_->script("return document.querySelector('#log').textContent"),
            "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\nline 9\nline 10\n");
  EXPECT_EQ(driver_->script("return document.querySelector('.steps [data-state]').dataset.state"), "succeeded");
  const std::string artefacts = std::string(PEFNOS_BUILD_DIR) + "/test-artifacts";
  std::string build_png = driver_->screenshot(artefacts + "/build.png");

  // Back on the console, the cell says how it ended.
  driver_->go(base + "#/");
  ASSERT_FALSE(driver_->waitScript("return document.querySelector(\"td.cell[data-builder='1'] a[data-state=succeeded]\")"
                                   " !== null", left())
                   .is_null())
      << driver_->script("return document.body.innerText");
  std::string console_png = driver_->screenshot(artefacts + "/console.png");
  ASSERT_FALSE(console_png.empty());
  std::ifstream png(console_png, std::ios::binary);
  std::string magic(8, '\0');
  png.read(magic.data(), 8);
  EXPECT_EQ(magic, "\x89PNG\r\n\x1a\n");
  EXPECT_GT(fs::file_size(console_png), 5000u);
  std::cout << "screenshots: " << console_png << " " << build_png << std::endl;
  EXPECT_EQ(tdb_.scalar("SELECT state || ' ' || requested_by FROM pefnos.command WHERE kind = 'force-build'"),
            "done api:browser");
}

}  // namespace
}  // namespace pefnos
