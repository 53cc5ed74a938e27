// The hostile input catalogue: tables of what a careless or malicious user,
// upstream, worker, HTTP client or plugin file can hand pefnos, one table per
// surface, each row with the clear error it must get or the harmless outcome
// it must have. Each runs where a user meets it: a real PostgreSQL, a real
// `pefnos master` (and `pefnos config import`, `pefnos plugins list`), real
// git upstreams, real workers and raw connections over loopback.
//
// Throughout: shell words in the inputs would create the canary file if a
// shell ever saw them (it must never exist); nothing lands outside the
// directory it belongs in; and after the hostile rows a normal command or
// build still works, in the same test.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "core/protocol/protocol.h"
#include "pefnos/plugin.h"
#include "tests/support/child.h"
#include "tests/support/forge.h"
#include "tests/support/http_client.h"
#include "tests/support/plugin_files.h"
#include "tests/support/testdb.h"
#include "tests/support/worker_session.h"

namespace pefnos {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono;
using nlohmann::json;
using test::Child;
using test::waitUntil;

// Bytes from the hex PostgreSQL's encode(..., 'hex') gives.
std::string unhex(const std::string& text) {
  std::string out;
  for (size_t i = 0; i + 1 < text.size(); i += 2) out.push_back(static_cast<char>(std::stoi(text.substr(i, 2), nullptr, 16)));
  return out;
}

// Lower-case hex of bytes, as PostgreSQL's encode(..., 'hex') gives them.
std::string hex(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) out += {digits[c >> 4], digits[c & 15]};
  return out;
}

// How many times needle occurs in text.
size_t occurrences(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

// Runs git; a failure fails the test. Returns stdout without its last newline.
std::string git(std::vector<std::string> args) {
  args.insert(args.begin(), {"git", "-c", "user.name=Mallory", "-c", "user.email=m@example.org"});
  auto [rc, out] = test::run(args);
  EXPECT_EQ(rc, 0) << args[5] << " " << (args.size() > 6 ? args[6] : "") << ": " << out;
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// A tree object made in the bare repository from (mode, name, object) entries:
// git mktree takes names git itself would never check out ("..", newlines).
// The names travel in a file; the test's own sh only redirects it to git.
std::string mktree(const std::string& bare, const std::vector<std::array<std::string, 3>>& entries) {
  const std::string list = bare + "/mktree-input";
  {
    std::ofstream out(list, std::ios::binary);
    for (const auto& [mode, name, object] : entries)
      out << mode << (mode == "040000" ? " tree " : " blob ") << object << '\t' << name << '\0';
  }
  auto [rc, out] = test::run({"sh", "-c", "exec git --git-dir=\"$0\" mktree -z < \"$1\"", bare, list});
  EXPECT_EQ(rc, 0) << out;
  fs::remove(list);
  return out.substr(0, out.find('\n'));
}

class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::signal(SIGPIPE, SIG_IGN);  // a master that died must fail the rows, not kill the test
    tdb_.scalar("INSERT INTO pefnos.project (name) VALUES ('p')");  // id 1
    canary_ = dir_.path() + "/CANARY";
  }
  void TearDown() override {
    EXPECT_FALSE(fs::exists(canary_)) << "a shell ran a hostile input";
    if (HasFailure() && master_) std::cerr << "master output:\n" << master_->output();
  }
  std::string q(const std::string& s) { return tdb_.conn().quote(s); }
  // Shell words that create the canary, without spaces (git refuses them in ref names).
  std::string touch() const { return "touch${IFS}" + canary_; }

  // A real master serving workers and HTTP on loopback ports of its own choosing.
  void startMaster() {
    master_ = std::make_unique<Child>(std::vector<std::string>{
        test::pefnosBinary(), "master", "--db", tdb_.conninfo(), "--name", "m", "--state-dir",
        dir_.path() + "/state", "--workers", "127.0.0.1:0", "--http", "127.0.0.1:0", "--heartbeat", "2"});
    worker_port_ = portAfter("listening for workers on 127.0.0.1:");
    http_port_ = portAfter("serving HTTP on http://127.0.0.1:");
    ASSERT_GT(worker_port_ * http_port_, 0) << master_->output();
  }
  int portAfter(const std::string& prefix) {
    if (!master_->waitOutput(prefix, seconds(30))) return 0;
    std::string out = master_->output();
    return std::atoi(out.c_str() + out.find(prefix) + prefix.size());
  }
  bool masterRuns() { return master_ && !master_->exited().has_value(); }

  // A command row through the SQL function every GUI uses; its id.
  std::string command(const std::string& kind, const std::string& args = "{}") {
    return tdb_.scalar("SELECT pefnos.command(" + q(kind) + ", " + q(args) + "::jsonb)");
  }
  // The command's end: "done <result>" or "failed <error>" ("queued"/"running" if it never ended).
  std::string outcome(const std::string& id) {
    const std::string sql = "SELECT state || ' ' || coalesce(error, result::text, '') FROM pefnos.command WHERE id = " + id;
    waitUntil([&] { return tdb_.scalar(sql).rfind("done ", 0) == 0 || tdb_.scalar(sql).rfind("failed ", 0) == 0; },
              seconds(20));
    return tdb_.scalar(sql);
  }

  // A git upstream with its main branch, followed by a repository row; the repository's id.
  int addUpstream(const std::string& branch = "main", bool pattern = false) {
    forge_ = test::Forge::make("git", dir_.path() + "/up");
    repo_ = std::stoi(tdb_.scalar("INSERT INTO pefnos.repository (project_id, name, vcs, url, poll_interval) "
                                  "VALUES (1, 'r', 'git', " + q(forge_->url()) + ", 3600) RETURNING id"));
    main_branch_ = addBranch(branch, pattern);
    return repo_;
  }
  int addBranch(const std::string& name, bool pattern = false) {
    return std::stoi(tdb_.scalar("INSERT INTO pefnos.branch (repository_id, name, pattern) VALUES (" +
                                 std::to_string(repo_) + ", " + q(name) + ", " + (pattern ? "true" : "false") +
                                 ") RETURNING id"));
  }
  // An upstream branch made without git's porcelain (which refuses some names git's refs allow).
  void upstreamBranch(const std::string& name, const std::string& revision) {
    git({"--git-dir=" + forge_->url(), "update-ref", "refs/heads/" + name, revision});
  }
  std::string pollNow() { return outcome(tdb_.scalar("SELECT pefnos.poll_now(" + std::to_string(repo_) + ")")); }

  // A builder that follows no branch: it builds what is forced only.
  int addBuilder(const std::string& steps) {
    return std::stoi(tdb_.scalar("INSERT INTO pefnos.builder (project_id, name, steps, trusted) VALUES (1, 'b" +
                                 std::to_string(++builders_) + "', " + q(steps) + "::jsonb, false) RETURNING id"));
  }
  // A worker row and its secret file (`pefnos ctl worker-secret`); the file's path.
  std::string addWorker(const std::string& name) {
    tdb_.scalar("INSERT INTO pefnos.worker (name, trusted, slots) VALUES (" + q(name) + ", true, 4)");
    const std::string file = dir_.path() + "/" + name + ".secret";
    auto [rc, out] = test::run({test::pefnosBinary(), "ctl", "worker-secret", name, "--secret-file", file,
                                "--db", tdb_.conninfo()});
    EXPECT_EQ(rc, 0) << out;
    return file;
  }
  std::unique_ptr<Child> startWorker(const std::string& name, const std::string& secret_file) {
    auto worker = std::make_unique<Child>(std::vector<std::string>{
        test::pefnosBinary(), "worker", "--master", "127.0.0.1:" + std::to_string(worker_port_), "--name", name,
        "--secret-file", secret_file, "--workdir", dir_.path() + "/work-" + name, "--slots", "2"});
    EXPECT_TRUE(master_->waitOutput("worker '" + name + "' connected", seconds(20))) << worker->output();
    return worker;
  }
  // Forces a build and waits for it to end; its id.
  std::string forceBuild(int builder, int branch, const std::string& revision = "") {
    std::string result = outcome(tdb_.scalar("SELECT pefnos.force_build(" + std::to_string(builder) + ", " +
                                             std::to_string(branch) + ", " + (revision.empty() ? "NULL" : q(revision)) +
                                             ")"));
    EXPECT_EQ(result.rfind("done ", 0), 0u) << result;
    std::smatch m;
    if (!std::regex_search(result, m, std::regex("\"request\": ?(\\d+)"))) return "0";
    const std::string sql = "SELECT coalesce((SELECT id || ' ' || state FROM pefnos.build WHERE request_id = " +
                            m[1].str() + " ORDER BY id DESC LIMIT 1), 'none')";
    EXPECT_TRUE(waitUntil([&] {
      auto s = tdb_.scalar(sql);
      return s.find(" pending") == std::string::npos && s.find(" running") == std::string::npos && s != "none";
    }, seconds(30))) << tdb_.scalar(sql);
    return tdb_.scalar(sql).substr(0, tdb_.scalar(sql).find(' '));
  }
  std::string buildField(const std::string& build, const std::string& field) {
    return tdb_.scalar("SELECT " + field + " FROM pefnos.build WHERE id = " + build);
  }
  std::string stepField(const std::string& build, int position, const std::string& field) {
    return tdb_.scalar("SELECT " + field + " FROM pefnos.step WHERE build_id = " + build +
                       " AND position = " + std::to_string(position));
  }
  // What a step printed, byte for byte.
  std::string log(const std::string& build, int position) {
    return unhex(tdb_.scalar(
        "SELECT encode(coalesce(string_agg(l.data, ''::bytea ORDER BY l.seq), ''::bytea), 'hex') FROM pefnos.log l "
        "JOIN pefnos.step s ON s.id = l.step_id WHERE s.build_id = " + build + " AND s.position = " +
        std::to_string(position)));
  }

  test::TestDatabase tdb_;
  test::TempDir dir_{"pefnos-hostile"};
  std::string canary_;
  std::unique_ptr<Child> master_;
  std::unique_ptr<test::Forge> forge_;
  int worker_port_ = 0, http_port_ = 0, repo_ = 0, main_branch_ = 0, builders_ = 0;
};

// ------------------------------------------------------------ configuration rows
TEST_F(Hostile, ConfigurationRowsAreRefusedWithTheirReasonAndNothingIsWritten) {
  struct Row {
    std::string name, document, error;
  };
  const std::string repo = R"({"projects": [{"name": "q", "repositories": [{"name": "r", "vcs": "git", "url": "/x", )";
  const std::vector<Row> imports = {
      {"a vcs carrying shell words", R"({"projects": [{"name": "q", "repositories": [{"name": "r", "vcs": "git;)" +
                                         touch() + R"(", "url": "/x"}]}]})",
       "repository_vcs_check"},
      {"a URL that git would take for an option",
       R"({"projects": [{"name": "q", "repositories": [{"name": "r", "vcs": "git", "url": "--upload-pack=)" + touch() +
           R"("}]}]})",
       "repository_url_check"},
      {"a negative poll interval", repo + R"("poll_interval": -5}]}]})", "repository_poll_interval_check"},
      {"a poll interval no integer holds", repo + R"("poll_interval": 99999999999}]}]})",
       "/projects/0/repositories/0/poll_interval: integer out of range"},
      {"a number no double holds", repo + R"("poll_interval": 1e400}]}]})", "number overflow"},
      {"a project name that is a path", R"({"projects": [{"name": "../../etc"}]})", "pefnos.name"},
      {"a branch name climbing out", repo + R"("branches": [{"name": "a/../../etc"}]}]}]})", "branch_name_check"},
      {"a relative plugin directory", R"({"plugin_directories": [{"path": "plugins"}]})",
       "/plugin_directories/0/path: expected an absolute path"},
      {"a plugin directory with a newline", R"({"plugin_directories": [{"path": "/x\n/y"}]})",
       "control characters are not allowed"},
      {"steps that are not a list", R"({"projects": [{"name": "q", "builders": [{"name": "b", "steps": {"type": "shell"}}]}]})",
       "/projects/0/builders/0/steps: expected an array"},
      {"nesting 100000 deep", R"({"projects": [{"name": "q", "builders": [{"name": "b", "steps": )" +
                                  std::string(100000, '[') + std::string(100000, ']') + "}]}]}",
       "is nested more than 256 deep"},
      {"bytes that are not UTF-8", "{\"projects\": [{\"name\": \"q\", \"description\": \"caf\xe9\"}]}",
       "is not JSON: parse error at line 1, column 49: syntax error while parsing value - invalid string: "
       "ill-formed UTF-8 byte"},
      {"a NUL in a string", R"({"projects": [{"name": "q", "description": "a\u0000b"}]})",
       "/projects/0/description: NUL characters are not allowed"},
  };
  const std::string file = dir_.path() + "/config.json";
  for (const auto& row : imports) {
    SCOPED_TRACE(row.name);
    std::ofstream(file, std::ios::binary | std::ios::trunc) << row.document;
    auto [rc, out] = test::run({test::pefnosBinary(), "config", "import", file, "--db", tdb_.conninfo()});
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(out.find(row.error), std::string::npos) << out.substr(0, 2000);
  }

  // Rows written by hand (psql, a GUI) meet the same checks in the database itself.
  const std::vector<Row> inserts = {
      {"a URL beginning with a dash", "INSERT INTO pefnos.repository (project_id, name, vcs, url) VALUES (1, 'r', "
                                      "'git', " + q("-oProxyCommand=" + touch()) + ")",
       "repository_url_check"},
      {"a URL with a newline", "INSERT INTO pefnos.repository (project_id, name, vcs, url) VALUES (1, 'r', 'git', " +
                                   q("/x\n--upload-pack=" + touch()) + ")",
       "repository_url_check"},
      {"a name with shell words", "INSERT INTO pefnos.worker (name) VALUES (" + q("$(" + touch() + ")") + ")",
       "pefnos.name"},
      {"a relative plugin directory", "INSERT INTO pefnos.plugin_directory (path) VALUES ('lib/plugins')",
       "plugin_directory_path_check"},
      {"a command kind with spaces", "INSERT INTO pefnos.command (kind) VALUES ('rm -rf /')", "command_kind_check"},
      {"command args that are not an object", "INSERT INTO pefnos.command (kind, args) VALUES ('ping', '[]')",
       "command_args_check"},
      {"builder steps that are not a list",
       "INSERT INTO pefnos.builder (project_id, name, steps) VALUES (1, 'b', '{\"type\": \"shell\"}')",
       "builder_steps_check"},
  };
  for (const auto& row : inserts) {
    SCOPED_TRACE(row.name);
    try {
      tdb_.scalar(row.document);
      ADD_FAILURE() << "accepted: " << row.document;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(row.error), std::string::npos) << e.what();
    }
  }
  // Nothing was half written, and a good import still goes in.
  EXPECT_EQ(tdb_.scalar("SELECT (SELECT count(*) FROM pefnos.project) + (SELECT count(*) FROM pefnos.repository) + "
                        "(SELECT count(*) FROM pefnos.worker) + (SELECT count(*) FROM pefnos.plugin_directory) + "
                        "(SELECT count(*) FROM pefnos.builder) + (SELECT count(*) FROM pefnos.command)"),
            "1");
  std::ofstream(file, std::ios::binary | std::ios::trunc) << repo + R"("branches": [{"name": "main"}]}]}]})";
  auto [rc, out] = test::run({test::pefnosBinary(), "config", "import", file, "--db", tdb_.conninfo()});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.branch WHERE name = 'main'"), "1");
}


// ------------------------------------------------------------ ref and branch names
TEST_F(Hostile, UpstreamBranchNamesAreRecordedVerbatimOrRefusedAndNeverReachAShell) {
  struct Row {
    std::string name;
    bool recorded;  // verbatim as a branch row with its head; otherwise refused with a warning
  };
  const std::vector<Row> rows = {
      {"$(" + touch() + ")", true},
      {"`" + touch() + "`", true},
      {";" + touch() + ";", true},
      {"|" + touch(), true},
      {"&&" + touch(), true},
      {"x>" + canary_, true},
      {"it's\"quoted\"", true},
      {"caf\xc3\xa9/\xe5\x88\x86\xe6\x94\xaf", true},
      {"--upload-pack=" + touch(), false},  // git would read it as an option
      {"-", false},
      {"latin1-caf\xe9", false},  // PostgreSQL holds text as UTF-8 only
      {"long/" + std::string(300, 'x').replace(100, 1, "/").replace(200, 1, "/"), false},  // over 255 bytes
  };
  addUpstream("*", true);
  const std::string head = forge_->head("main");
  for (const auto& row : rows) upstreamBranch(row.name, head);
  int builder = addBuilder(R"([{"type": "source"}, {"type": "shell", "argv": ["cat", "README"]}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);

  std::string polled = pollNow();
  EXPECT_EQ(polled.rfind("done ", 0), 0u) << "one bad name must not stop the repository's poll: " << polled;
  for (const auto& row : rows) {
    SCOPED_TRACE(row.name);
    const std::string id = tdb_.scalar(
        "SELECT coalesce((SELECT b.id || '' FROM pefnos.branch b JOIN pefnos.branch_head h ON h.branch_id = b.id "
        "WHERE encode(convert_to(b.name, 'UTF8'), 'hex') = '" + hex(row.name) + "' AND h.revision = " + q(head) +
        "), 'none')");
    if (!row.recorded) {
      EXPECT_EQ(id, "none");
      continue;
    }
    ASSERT_NE(id, "none") << tdb_.scalar("SELECT string_agg(name, ' | ') FROM pefnos.branch");
    // Built from that branch: its name reaches git and the worker as data only.
    std::string build = forceBuild(builder, std::stoi(id));
    EXPECT_EQ(buildField(build, "state"), "succeeded") << buildField(build, "summary::text");
    EXPECT_EQ(log(build, 1), "first\n");
  }
  // The API gives every recorded name back as it is.
  auto listed = json::parse(test::request(http_port_, "GET", "/api/v1/branches?limit=200").body, nullptr, false);
  std::set<std::string> names;
  for (const auto& branch : listed["branches"]) names.insert(branch["name"].get<std::string>());
  for (const auto& row : rows) EXPECT_EQ(names.count(row.name), row.recorded ? 1u : 0u) << row.name;
  // Warned about once, not on every poll.
  EXPECT_EQ(pollNow().rfind("done ", 0), 0u);
  for (const std::string warning : {"ignoring branches whose names git refuses",
                                    "ignoring branches whose names cannot be recorded"})
    EXPECT_EQ(occurrences(master_->output(), warning), 1u) << warning << "\n" << master_->output();
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.branch WHERE name = 'main'"), "1")
      << "the sound branches of the same upstream were polled";
  EXPECT_TRUE(masterRuns());
}


// ------------------------------------------------------------ file names in repositories
TEST_F(Hostile, FileNamesInARepositoryAreUnpackedAsTheyAreAndNothingLandsOutsideTheBuild) {
  addUpstream();
  const std::string bare = forge_->url();
  auto object = [&](const std::string& content) {
    const std::string file = dir_.path() + "/object";
    std::ofstream(file, std::ios::binary | std::ios::trunc) << content;
    return git({"--git-dir=" + bare, "hash-object", "-w", "--", file});
  };
  const std::string blob = object("");
  // Names git stores and checks out: the worker must unpack each as it is (type
  // f, l or d; a link's target), and follow none of the links.
  struct Row {
    std::string name, mode, target;  // target: what a link points at
    char type;
  };
  const std::vector<Row> unpacked = {
      {"-rf", "100644", "", 'f'},
      {"--checkpoint-action=exec=touch CANARY", "100644", "", 'f'},
      {"$(touch CANARY)", "100644", "", 'f'},
      {";touch CANARY;", "100755", "", 'f'},
      {"a \"quoted\" 'name'", "100644", "", 'f'},
      {"new\nline", "100644", "", 'f'},
      {"tab\there", "100644", "", 'f'},
      {"latin1-caf\xe9", "100644", "", 'f'},
      {"caf\xc3\xa9-\xe5\x88\x86\xe6\x94\xaf", "100644", "", 'f'},
      {"up", "120000", "../..", 'l'},
      {"etc", "120000", "/etc", 'l'},
  };
  std::vector<std::array<std::string, 3>> entries;
  for (const auto& row : unpacked)
    entries.push_back({row.mode, row.name, row.type == 'l' ? object(row.target) : blob});
  entries.push_back({"100644", "README", object("first\n")});
  auto commitTree = [&](const std::string& tree, const std::string& branch) {
    std::string c = git({"--git-dir=" + bare, "commit-tree", "-p", forge_->head("main"), "-m", "hostile names", tree});
    upstreamBranch(branch, c);
    return c;
  };
  const std::string weird = commitTree(mktree(bare, entries), "main");
  // Trees git never makes, from a malicious upstream: a ".." directory, and a
  // link and a directory of the same name (a link out, then a file "through" it).
  const std::string outside = dir_.path() + "/outside";
  fs::create_directories(outside);
  const std::string dotdot = mktree(bare, {{"040000", "..", mktree(bare, {{"100644", "ESCAPED", blob}})}});
  const std::string shadow = mktree(bare, {{"120000", "link", object(outside)},
                                           {"040000", "link", mktree(bare, {{"100644", "PWNED", blob}})}});
  // GNU tar makes a link to an absolute target last, from a placeholder file.
  // When the directory "link" replaces that placeholder and happens to get its
  // inode number (ext4 reuses them, tmpfs does not), tar refuses at the end
  // ("Cannot unlink"); otherwise it leaves the directory. Either is safe: what
  // must never happen is a file written through the link.
  struct Crafted {
    std::string name, tree, error;
    std::string or_file;  // when tar does not refuse: this file, in a plain directory
  };
  const std::vector<Crafted> crafted = {
      {"a tree with a '..' directory", dotdot, "invalid path '../ESCAPED'", ""},
      {"a link and a directory of one name", shadow, "Cannot unlink", "link/PWNED"},
  };

  // Listed with their types and link targets, NUL-terminated (a name may hold a newline).
  int lister = addBuilder(R"([{"type": "source"},
      {"type": "shell", "argv": ["find", ".", "-mindepth", "1", "-printf", "%y %P\t%l\\0"]},
      {"type": "shell", "argv": ["touch", "ESCAPED"], "cwd": "up/escaped"}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  EXPECT_EQ(pollNow().rfind("done ", 0), 0u);

  std::string build = forceBuild(lister, main_branch_, weird);
  EXPECT_EQ(stepField(build, 0, "state"), "succeeded") << stepField(build, 0, "summary::text");
  using Listing = std::map<std::string, std::pair<char, std::string>>;  // name -> (type, link target)
  auto parse = [](const std::string& listing) {
    Listing found;
    for (size_t at = 0, end; (end = listing.find('\0', at)) != std::string::npos; at = end + 1) {
      std::string entry = listing.substr(at, end - at);
      size_t tab = entry.rfind('\t');
      found[entry.substr(2, tab - 2)] = {entry[0], entry.substr(tab + 1)};
    }
    return found;
  };
  const std::string listing = log(build, 1);
  Listing found = parse(listing);
  for (const auto& row : unpacked) {
    SCOPED_TRACE(row.name);
    ASSERT_TRUE(found.count(row.name)) << listing;
    EXPECT_EQ(found[row.name].first, row.type);
    EXPECT_EQ(found[row.name].second, row.target);
  }
  EXPECT_EQ(found.count("CANARY"), 0u) << "tar or a shell ran a file name";
  // A step's working directory through the repository's link out of the build is refused.
  EXPECT_EQ(stepField(build, 2, "state"), "failed");
  EXPECT_NE(log(build, 2).find("leaves the build directory"), std::string::npos) << log(build, 2);
  EXPECT_FALSE(fs::exists(dir_.path() + "/escaped")) << "the worker made a directory outside the build";

  for (const auto& row : crafted) {
    SCOPED_TRACE(row.name);
    const std::string c = commitTree(row.tree, "main");
    EXPECT_EQ(pollNow().rfind("done ", 0), 0u);
    std::string b = forceBuild(lister, main_branch_, c);
    const std::string state = stepField(b, 0, "state");
    if (!row.or_file.empty() && state == "succeeded") {
      Listing tree = parse(log(b, 1));
      EXPECT_EQ(tree[fs::path(row.or_file).parent_path().string()].first, 'd') << log(b, 1);
      EXPECT_EQ(tree[row.or_file].first, 'f') << log(b, 1);
      continue;
    }
    EXPECT_EQ(state, "failed") << stepField(b, 0, "summary::text");
    EXPECT_NE((stepField(b, 0, "summary::text") + log(b, 0)).find(row.error), std::string::npos)
        << stepField(b, 0, "summary::text") << log(b, 0);
  }
  EXPECT_TRUE(fs::is_empty(outside)) << "a file was written through a link out of the build";
  for (const std::string& escaped : {dir_.path() + "/ESCAPED", dir_.path() + "/work-w1/ESCAPED"})
    EXPECT_FALSE(fs::exists(escaped)) << escaped;
  // The worker goes on building.
  EXPECT_EQ(log(forceBuild(lister, main_branch_, weird), 1), listing);
}


// ------------------------------------------------------------ commit messages
TEST_F(Hostile, CommitMessagesAreRecordedIntactOrWithTheirBadBytesReplaced) {
  struct Row {
    std::string name, message, recorded;  // recorded: what pefnos.commit.message holds
  };
  const std::string huge(1 << 20, 'm');
  const std::vector<Row> rows = {
      {"an empty message", "", ""},
      {"a message of 1 MiB", huge, huge},
      // git gives a message that is not UTF-8 (and names no encoding) as Latin-1.
      {"bytes that are not UTF-8", "caf\xe9 \xff\xfe", "caf\xc3\xa9 \xc3\xbf\xc3\xbe"},
      {"control characters", "\x01\x1b[31mred\x1b[0m\x7f\x1e\x1f", "\x01\x1b[31mred\x1b[0m\x7f\x1e\x1f"},
      {"shell words", "$(" + touch() + ") `" + touch() + "`", "$(" + touch() + ") `" + touch() + "`"},
      {"SQL", "'); DROP TABLE pefnos.commit; --", "'); DROP TABLE pefnos.commit; --"},
      {"a forged log record", "x\n\x1e" + std::string(40, 'a') + "\nnot a commit", "x\n\x1e" + std::string(40, 'a') + "\nnot a commit"},
  };
  addUpstream();
  startMaster();
  EXPECT_EQ(pollNow().rfind("done ", 0), 0u);
  // Each message from a file, kept verbatim by git (no clean-up of any kind).
  const std::string work = dir_.path() + "/clone", message_file = dir_.path() + "/message";
  git({"clone", "-q", forge_->url(), work});
  std::vector<std::string> revisions;
  for (const auto& row : rows) {
    std::ofstream(message_file, std::ios::binary | std::ios::trunc) << row.message;
    git({"-C", work, "-c", "i18n.commitEncoding=UTF-8", "commit", "-q", "--allow-empty", "--allow-empty-message",
         "--cleanup=verbatim", "-F", message_file});
    revisions.push_back(git({"-C", work, "rev-parse", "HEAD"}));
  }
  git({"-C", work, "push", "-q", "origin", "HEAD:refs/heads/main"});
  std::string polled = pollNow();
  EXPECT_EQ(polled.rfind("done ", 0), 0u) << polled;
  for (size_t i = 0; i < rows.size(); ++i) {
    SCOPED_TRACE(rows[i].name);
    EXPECT_EQ(unhex(tdb_.scalar("SELECT coalesce((SELECT encode(convert_to(message, 'UTF8'), 'hex') FROM "
                                "pefnos.commit WHERE revision = " + q(revisions[i]) + "), 'none')")),
              rows[i].recorded);
  }
  EXPECT_EQ(tdb_.scalar("SELECT revision FROM pefnos.branch_head WHERE branch_id = " + std::to_string(main_branch_)),
            revisions.back());
  // The master goes on: the next commit is polled as any other.
  forge_->commit("main", "after", "after the hostile messages");
  EXPECT_EQ(pollNow().rfind("done ", 0), 0u);
  EXPECT_EQ(tdb_.scalar("SELECT message FROM pefnos.commit WHERE revision = " + q(forge_->head("main"))),
            "after the hostile messages");
}


// ------------------------------------------------------------ worker frames
// A frame's bytes by hand: any length, kind and channel.
std::string frame(uint32_t length, uint8_t kind, uint32_t channel, const std::string& payload) {
  std::string out;
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(length >> shift));
  out.push_back(static_cast<char>(kind));
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(channel >> shift));
  return out + payload;
}
std::string control(const std::string& payload) { return frame(payload.size(), 1, 0, payload); }

// "127.0.0.1:PORT" of our end of a connection: how the master names its peer.
std::string localAddress(int fd) {
  sockaddr_in addr{};
  socklen_t size = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &size);
  return "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
}

// Reads until the peer closes (true) or 10 s pass (false).
bool closedByPeer(int fd) {
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) != 0;)
    if (n < 0) return false;
  return true;
}

TEST_F(Hostile, MalformedOrUntimelyWorkerFramesDropOnlyThatConnectionWithTheReason) {
  struct Row {
    std::string name;
    bool authenticated;  // sent after logging in properly (as worker "raw")
    std::string bytes, logged;  // logged: what the master's log says right after the peer's address
  };
  const std::string hello = protocol::encodeControl({{"type", "hello"}, {"version", 1}, {"name", "raw"}});
  const std::vector<Row> rows = {
      {"a length prefix of 4 GiB", false, frame(0xffffffff, 1, 0, ""),
       " closed: protocol error: a control frame of 4294967295 bytes, over the limit"},
      {"an oversized data frame", false, frame(300000, 2, 1, ""),
       " closed: protocol error: a data frame of 300000 bytes, over the limit"},
      {"a control frame off channel 0", false, frame(2, 1, 5, "{}"),
       " closed: protocol error: a control frame on channel 5"},
      {"an unknown frame kind", false, frame(2, 7, 0, "{}"), " closed: protocol error: unknown frame kind 7"},
      {"a truncated frame, then the end", false, frame(100, 1, 0, "{\"type\": \"hel"), " closed: disconnected"},
      {"a control frame that is not JSON", false, control("{x}"),
       " closed: protocol error: a control frame that is not JSON: parse error at line 1, column 2: syntax error "
       "while parsing object key - invalid literal"},
      {"a control frame nested 500000 deep", false,
       control(R"({"type": "hello", "version": 1, "name": "raw", "tags": )" + std::string(500000, '[') +
               std::string(500000, ']') + "}"),
       " closed: protocol error: a control frame that is nested more than 256 deep"},
      {"JSON of the wrong type", false, control("[\"hello\"]"),
       " closed: protocol error: a control frame that is a JSON array, not an object"},
      {"a message without a type", false, control("{\"version\": 1}"),
       " closed: protocol error: a control message without a \"type\""},
      {"a type that is not a string", false, control("{\"type\": 5}"),
       " closed: protocol error: a control message whose \"type\" is a number, not a string"},
      {"a hello whose version is a string", false, control(R"({"type": "hello", "version": "1", "name": "raw"})"),
       " closed: malformed hello message"},
      {"a hello without a name", false, control(R"({"type": "hello", "version": 1})"), " closed: malformed hello message"},
      {"a hello of another protocol", false, control(R"({"type": "hello", "version": 99, "name": "raw"})"),
       ": protocol version 99"},
      {"auth before hello", false, protocol::encodeControl({{"type", "auth"}, {"proof", "x"}}), " closed: expected hello"},
      {"data before authentication", false, frame(3, 2, 1, "log"), " closed: data before authentication"},
      {"a garbage auth proof", false, hello + protocol::encodeControl({{"type", "auth"}, {"proof", "\xff\x01garbage"}}),
       ": 'raw': unknown worker or wrong secret"},
      {"a name with shell words", false,
       protocol::encodeControl({{"type", "hello"}, {"version", 1}, {"name", "$(" + touch() + ")"}}) +
           protocol::encodeControl({{"type", "auth"}, {"proof", "AAAA"}}),
       ": '$(" + touch() + ")': unknown worker or wrong secret"},
      {"a name of 300 brackets (text, not nesting)", false,
       protocol::encodeControl({{"type", "hello"}, {"version", 1}, {"name", std::string(300, '[')}}) +
           protocol::encodeControl({{"type", "auth"}, {"proof", "AAAA"}}),
       ": '" + std::string(300, '[') + "': unknown worker or wrong secret"},
      {"an unknown message type", true, protocol::encodeControl({{"type", "format-disk"}}),
       ") lost: unexpected message 'format-disk'"},
      {"a second hello", true, hello, ") lost: unexpected message 'hello'"},
      {"a finished whose channel is a string", true, control(R"({"type": "finished", "channel": "x"})"),
       ") lost: malformed finished message"},
      // Ignored, not fatal (late output of a stopped build looks the same):
      // the probe after it proves the connection was still there.
      {"output for a build it does not run", true, frame(6, 2, 77, "forged") + frame(0, 2, 77, ""),
       ") lost: unexpected message 'probe'"},
      {"a finished for a command it does not run", true,
       control(R"({"type": "finished", "channel": 77, "exit_code": 0})"), ") lost: unexpected message 'probe'"},
      {"build-ready for a build it does not run", true, control(R"({"type": "build-ready", "build": 12345})"),
       ") lost: unexpected message 'probe'"},
  };
  addUpstream();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["true"]}])");
  std::string raw_secret_file = addWorker("raw");
  std::string secret_file = addWorker("w1");
  std::string raw_secret;
  std::getline(std::ifstream(raw_secret_file), raw_secret);
  startMaster();
  EXPECT_EQ(pollNow().rfind("done ", 0), 0u);
  std::string replayed;  // a proof that was good once
  for (const auto& row : rows) {
    SCOPED_TRACE(row.name);
    int fd = -1;
    std::string bytes = row.bytes;
    if (row.authenticated) {
      auto session = test::helloAs(worker_port_, "raw");
      if (replayed.empty()) replayed = session.proof(raw_secret);
      auto welcome = session.auth(session.proof(raw_secret));
      ASSERT_TRUE(welcome && (*welcome)["type"] == "welcome");
      fd = session.fd;
      bytes += protocol::encodeControl({{"type", "probe"}});
      ASSERT_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    } else {
      fd = test::connectLoopback(worker_port_, bytes);
      if (row.name.find("truncated") != std::string::npos) shutdown(fd, SHUT_WR);
    }
    const std::string peer = localAddress(fd);
    EXPECT_TRUE(closedByPeer(fd)) << "the master kept the connection";
    close(fd);
    EXPECT_TRUE(master_->waitOutput(peer + row.logged, seconds(5))) << peer + row.logged;
  }
  // A proof replayed on a new connection (a new nonce) proves nothing.
  auto replay = test::helloAs(worker_port_, "raw");
  auto refused = replay.auth(replayed);
  ASSERT_TRUE(refused);
  EXPECT_EQ((*refused)["type"], "refused");
  EXPECT_EQ((*refused)["reason"], "unknown worker or wrong secret");
  close(replay.fd);
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.log"), "0") << "forged output was stored";
  // The master serves the real worker as if nothing happened.
  EXPECT_TRUE(masterRuns());
  auto worker = startWorker("w1", secret_file);
  EXPECT_EQ(buildField(forceBuild(builder, main_branch_), "state"), "succeeded");
}


// ------------------------------------------------------------ HTTP requests
// The bytes of a request on its own connection.
std::string httpRequest(const std::string& method, const std::string& target, const std::string& headers = "",
                        const std::string& body = "") {
  return method + " " + target + " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" + headers +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST_F(Hostile, HostileHttpRequestsGetAClearErrorAndCreateNothing) {
  addUpstream();
  startMaster();
  auto [rc, token] = test::run({test::pefnosBinary(), "ctl", "token", "create", "gui", "--db", tdb_.conninfo()});
  ASSERT_EQ(rc, 0) << token;
  token.erase(token.find_last_not_of('\n') + 1);
  const std::string bearer = "Authorization: Bearer " + token + "\r\n";
  auto post = [&](const std::string& body, const std::string& headers) {
    return httpRequest("POST", "/api/v1/commands", headers, body);
  };
  struct Row {
    std::string name, bytes;
    int status;
    std::string says;  // in the body
  };
  const std::vector<Row> rows = {
      {"a path climbing out", httpRequest("GET", "/../../etc/passwd"), 404, "no such path"},
      {"an encoded path climbing out", httpRequest("GET", "/%2e%2e/%2e%2e/etc/passwd"), 404, "no such path"},
      {"an asset climbing out", httpRequest("GET", "/assets/..%2f..%2fetc%2fpasswd"), 400, "refused asset name"},
      {"an asset named with a NUL", httpRequest("GET", "/assets/app.js%00.png"), 400, "Bad Request"},
      {"a step id climbing out", httpRequest("GET", "/api/v1/steps/..%2f..%2fetc/log"), 404, "no such path"},
      {"headers of 20 kB", httpRequest("GET", "/api/v1/builds", "X-Pad: " + std::string(20000, 'a') + "\r\n"), 431, ""},
      {"a URL of 20 kB", httpRequest("GET", "/api/v1/builds?" + std::string(20000, 'a')), 431, ""},
      {"a body of 2 MB announced", "POST /api/v1/commands HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n{", 413, ""},
      {"a method nobody knows", httpRequest("BREW", "/"), 400, ""},
      {"a write method on a read path", httpRequest("DELETE", "/api/v1/builds"), 405, "only GET and HEAD"},
      {"Content-Length beside chunked", "POST /api/v1/commands HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                                        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, ""},
      {"a TLS handshake", std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11), 400, ""},
      {"two Content-Lengths", "POST /api/v1/commands HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                              "Content-Length: 40\r\n\r\n{}", 400, ""},
      {"a body nested 500000 deep, before any token is checked",
       post(R"({"kind": "ping", "args": {"x": )" + std::string(500000, '[') + std::string(500000, ']') + "}}",
            "Authorization: Bearer x\r\n"),
       400,
       "the body is nested more than 256 deep"},
      {"a parameter carrying a header", httpRequest("GET", "/api/v1/builds?state=x%0d%0aX-Injected:%20yes"), 400,
       "'state'"},
      {"a negative limit", httpRequest("GET", "/api/v1/builds?limit=-1"), 400, "'limit'"},
      {"a write without a token", post(R"({"kind": "ping"})", ""), 401, "a write needs a token"},
      {"a wrong token", post(R"({"kind": "ping"})", "Authorization: Bearer pft_wrong\r\n"), 401,
       "unknown or inactive token"},
      {"a token with SQL", post(R"({"kind": "ping"})", "Authorization: Bearer x' OR '1'='1\r\n"), 401,
       "unknown or inactive token"},
      {"a body that is not JSON", post("{\"kind\": ", bearer), 400,
       "the body is not JSON: parse error at line 1, column 10: syntax error while parsing value - unexpected end "
       "of input; expected '[', '{', or a literal"},
      {"an unknown kind", post(R"({"kind": "../../bin/sh"})", bearer), 400, "no command kind '../../bin/sh'"},
      {"an id that is SQL", post(R"({"kind": "force-build", "args": {"builder": "1; DROP TABLE pefnos.command", "branch": 1}})", bearer),
       400, "'builder' must be an integer"},
      {"an id beyond integers", post(R"({"kind": "force-build", "args": {"builder": 99999999999, "branch": 1}})", bearer),
       400, "out of range for type integer"},
      {"an id nested 10000 deep", post(R"({"kind": "poll-now", "args": {"repository": )" + std::string(10000, '[') +
                                           std::string(10000, ']') + "}}", bearer),
       400, "the body is nested more than 256 deep"},
      {"args that are not an object", post(R"({"kind": "ping", "args": "rm -rf /"})", bearer), 400,
       "'args' must be an object"},
      {"a builder that does not exist", post(R"({"kind": "force-build", "args": {"builder": -1, "branch": 1}})", bearer),
       400, "no active builder with id -1"},
  };
  for (const auto& row : rows) {
    SCOPED_TRACE(row.name);
    auto reply = test::readReply(test::connectLoopback(http_port_, row.bytes));
    EXPECT_EQ(reply.status, row.status) << reply.head << "\n" << reply.body.substr(0, 300);
    EXPECT_NE(reply.body.find(row.says), std::string::npos) << reply.body.substr(0, 300);
    EXPECT_EQ(reply.head.find("X-Injected"), std::string::npos) << reply.head;
    EXPECT_EQ(reply.body.find("root:"), std::string::npos) << "a file outside was served";
  }
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.command"), "0") << "a refused request wrote a command";
  EXPECT_TRUE(masterRuns());
  // The same server still takes a sound write, and its command runs.
  auto made = test::request(http_port_, "POST", "/api/v1/commands", R"({"kind": "ping"})", bearer);
  ASSERT_EQ(made.status, 202) << made.body;
  EXPECT_EQ(outcome(std::to_string(json::parse(made.body)["command"].get<long long>())).rfind("done ", 0), 0u);
}


// ------------------------------------------------------------ plugin files
TEST_F(Hostile, BadPluginFilesAreRefusedWithTheReasonAndTheRestLoads) {
  const std::string plugins = dir_.path() + "/plugins";
  fs::create_directories(plugins);
  ASSERT_EQ(chmod(plugins.c_str(), 0755), 0);
  const std::string open_to_all = dir_.path() + "/world-writable";
  fs::create_directories(open_to_all);
  test::copyPlugin(PEFNOS_STAMP_PLUGIN, open_to_all + "/stamp-too.so");
  ASSERT_EQ(chmod(open_to_all.c_str(), 0777), 0);
  struct Row {
    std::string file, reason;
  };
  const std::vector<Row> rows = {
      {"text.so", "not a loadable shared object: not an ELF file"},
      {"empty.so", "not a loadable shared object: not an ELF file"},
      {"truncated.so", "not a loadable shared object: truncated"},
      {"nosymbol.so", "not a pefnos plugin: it exports no 'pefnos_plugin'"},
      {"wrongabi.so", "built for plugin ABI 999, this pefnos has ABI " + std::to_string(kPluginAbiVersion)},
      {"fifo.so", "not a loadable shared object: not a regular file"},
      {"directory.so", "not a loadable shared object: not a regular file"},
      {"device.so", "not a loadable shared object: not a regular file"},
      {"writable.so", "the plugin file is writable by others than its owner"},
      {"linked.so", "it lies in " + open_to_all + ", which is writable by others than its owner"},
  };
  test::writeFile(plugins + "/text.so", "#!/bin/sh\n" + touch() + "\n");
  test::writeFile(plugins + "/empty.so", "");
  test::copyPlugin(PEFNOS_GIT_PLUGIN, plugins + "/truncated.so", 4096);
  ASSERT_FALSE(test::plainSharedLibrary().empty());
  test::copyPlugin(test::plainSharedLibrary(), plugins + "/nosymbol.so");
  test::copyPlugin(PEFNOS_STAMP_ABI999_PLUGIN, plugins + "/wrongabi.so");
  ASSERT_EQ(mkfifo((plugins + "/fifo.so").c_str(), 0644), 0);  // opening it would wait for a writer forever
  fs::create_directories(plugins + "/directory.so");
  fs::create_symlink("/dev/zero", plugins + "/device.so");  // reading it never ends
  test::copyPlugin(PEFNOS_STAMP_PLUGIN, plugins + "/writable.so");
  ASSERT_EQ(chmod((plugins + "/writable.so").c_str(), 0666), 0);  // anyone may put code into it
  test::copyPlugin(PEFNOS_STAMP_PLUGIN, plugins + "/stamp.so");

  fs::create_symlink(open_to_all + "/stamp-too.so", plugins + "/linked.so");  // anyone may swap its target

  // Directories configured in the database, refused whole.
  struct Directory {
    std::string path, reason;
  };
  const std::vector<Directory> directories = {
      {open_to_all, "the plugin directory is writable by others than its owner; refusing all of it"},
      {dir_.path() + "/nowhere", "the plugin directory cannot be read: No such file or directory"},
  };
  for (const auto& d : directories)
    tdb_.scalar("INSERT INTO pefnos.plugin_directory (path) VALUES (" + q(d.path) + ")");

  Child list({test::pefnosBinary(), "plugins", "list", "--db", tdb_.conninfo(), "--plugin-dir", plugins});
  ASSERT_TRUE(waitUntil([&] { return list.exited().has_value(); }, seconds(20)))
      << "plugins list hangs on a plugin file:\n" << list.output();
  const std::string listing = list.output();
  EXPECT_EQ(list.exited().value_or(-1), 3) << listing;  // something was refused
  for (const auto& row : rows) {
    SCOPED_TRACE(row.file);
    std::string line = test::listedLine(listing, "refused  ", plugins + "/" + row.file + ": ");
    EXPECT_NE(line.find(row.reason), std::string::npos) << line << "\n" << listing;
  }
  for (const auto& d : directories) {
    SCOPED_TRACE(d.path);
    EXPECT_NE(test::listedLine(listing, "refused  ", d.path + ": ").find(d.reason), std::string::npos) << listing;
  }
  EXPECT_EQ(listing.find("stamp-too.so"), std::string::npos) << "a file of a refused directory was read";
  // The rest loads: the sound plugin beside them and the built-in ones.
  EXPECT_NE(test::listedLine(listing, "loaded   vcs  stamp ", plugins + "/stamp.so"), "") << listing;
  EXPECT_NE(listing.find("loaded   vcs  git "), std::string::npos) << listing;
}


// ------------------------------------------------------------ command arguments
TEST_F(Hostile, CommandsWithHostileArgumentsFailWithAClearErrorAndTheNextOneRuns) {
  addUpstream();
  int builder = addBuilder(R"([{"type": "shell", "argv": ["true"]}])");
  std::string secret = addWorker("w1");
  startMaster();
  auto worker = startWorker("w1", secret);
  EXPECT_EQ(pollNow().rfind("done ", 0), 0u);
  const std::string b = std::to_string(builder), br = std::to_string(main_branch_);
  struct Row {
    std::string name, kind, args, outcome;  // outcome: how the row ends ("failed <error>")
  };
  const std::vector<Row> rows = {
      {"an unknown kind", "format-disk", "{}", "failed unknown command kind 'format-disk'"},
      {"an unknown builder", "force-build", R"({"builder": 999, "branch": )" + br + "}",
       "failed no active builder with id 999"},
      {"a negative builder", "force-build", R"({"builder": -1, "branch": )" + br + "}",
       "failed no active builder with id -1"},
      {"a builder id beyond integers", "force-build", R"({"builder": 4294967297, "branch": )" + br + "}",
       "failed force-build needs {\"builder\": ID, \"branch\": ID}"},
      {"a builder id that is a string", "force-build", R"({"builder": ")" + b + R"(", "branch": )" + br + "}",
       "failed force-build needs {\"builder\": ID, \"branch\": ID}"},
      {"a builder id that is SQL", "force-build", R"({"builder": "1; DROP TABLE pefnos.command; --", "branch": 1})",
       "failed force-build needs {\"builder\": ID, \"branch\": ID}"},
      {"a fractional branch id", "force-build", R"({"builder": )" + b + R"(, "branch": 1.5})",
       "failed force-build needs {\"builder\": ID, \"branch\": ID}"},
      {"an unknown branch", "force-build", R"({"builder": )" + b + R"(, "branch": 999})", "failed no branch with id 999"},
      {"a huge argument", "force-build", R"({"builder": ")" + std::string(1 << 20, '9') + R"(", "branch": 1})",
       "failed force-build needs {\"builder\": ID, \"branch\": ID}"},
      {"a repository that is a path", "poll-now", R"({"repository": "../../etc"})",
       "failed poll-now needs {\"repository\": ID}"},
      {"an unknown repository", "poll-now", R"({"repository": 999})", "failed no repository with id 999"},
      {"a repository id beyond integers", "poll-now", R"({"repository": 4294967297})",
       "failed poll-now needs {\"repository\": ID}"},
      {"a build that is not running", "stop-build", R"({"build": 123456})",
       "failed build 123456 is not running on this master"},
      {"a mirror that does not exist", "mirror-now", R"({"mirror": 999})", "failed no active mirror with id 999"},
      {"args nested 10000 deep", "force-build", R"({"builder": )" + std::string(10000, '[') +
                                                     std::string(10000, ']') + R"(, "branch": 1})",
       "failed force-build: the arguments are nested more than 256 deep"},
      {"a mirror id that is an object", "mirror-verify", R"({"mirror": {"id": 1}})",
       "failed mirror-verify needs {\"mirror\": ID}"},
  };
  for (const auto& row : rows) {
    SCOPED_TRACE(row.name);
    std::string got = outcome(command(row.kind, row.args));
    EXPECT_EQ(got.substr(0, row.outcome.size()), row.outcome) << got.substr(0, 300);
  }
  EXPECT_EQ(tdb_.scalar("SELECT count(*) FROM pefnos.build_request"), "0") << "a refused command queued a build";
  // A revision that git would read as an option is refused where it is used,
  // as the build's error; nothing reaches a shell or writes a file.
  int source = addBuilder(R"([{"type": "source"}, {"type": "shell", "argv": ["true"]}])");
  std::string forged = forceBuild(source, main_branch_, "--output=" + canary_);
  EXPECT_EQ(buildField(forged, "state"), "failed");
  EXPECT_EQ(stepField(forged, 0, "state"), "failed");
  EXPECT_NE((stepField(forged, 0, "summary::text") + log(forged, 0)).find("is not a full git object id"),
            std::string::npos)
      << stepField(forged, 0, "summary::text") << log(forged, 0);
  // The API and the live events show the too-deep arguments as a note, not by recursing into them.
  const std::string deep = tdb_.scalar("SELECT min(id) FROM pefnos.command WHERE error LIKE '%nested more than%'");
  auto shown = test::request(http_port_, "GET", "/api/v1/commands/" + deep);
  EXPECT_EQ(shown.status, 200);
  EXPECT_NE(shown.body.find("\"args\":\"(JSON nested more than 256 deep, not shown)\""), std::string::npos)
      << shown.body.substr(0, 300);
  // The master goes on with the next commands.
  EXPECT_EQ(outcome(tdb_.scalar("SELECT pefnos.ping()")).rfind("done ", 0), 0u);
  EXPECT_EQ(buildField(forceBuild(builder, main_branch_), "state"), "succeeded");
  EXPECT_TRUE(masterRuns());
}

}  // namespace
}  // namespace pefnos
