// Mirrors as a user meets them: a real `pefnos master`, real upstreams made
// by each VCS's own tools (tests/support/forge.h), mirror rows, commands and
// `pefnos ctl`. Written once, built once per pair of VCSs
// (PEFNOS_MIRROR_SOURCE -> PEFNOS_MIRROR_TARGET): bzr->git, git->bzr, svn->git.
//
// What the runs wrote is checked independently of the mirror's own
// verification: the target repository is polled by the scheduler, whose
// commit rows (parents, messages, authors) must correspond through the marks,
// and files are read back from the target with its own tools.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "tests/support/child.h"
#include "tests/support/forge.h"
#include "tests/support/testdb.h"

#if !defined(PEFNOS_MIRROR_SOURCE) || !defined(PEFNOS_MIRROR_TARGET)
#error "compile with PEFNOS_MIRROR_SOURCE and PEFNOS_MIRROR_TARGET"
#endif

namespace pefnos {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono;
using test::Child;
using test::waitUntil;

const std::string kSource = PEFNOS_MIRROR_SOURCE;
const std::string kTarget = PEFNOS_MIRROR_TARGET;

class Mirror : public ::testing::Test {
 protected:
  void SetUp() override {
    tdb_.scalar("INSERT INTO pefnos.project (id, name) VALUES (1, 'p')");
    src_ = test::Forge::make(kSource, dir_.path() + "/src");
    tgt_ = test::Forge::make(kTarget, dir_.path() + "/tgt");
  }
  void TearDown() override {
    if (master_) master_->stop(SIGTERM, seconds(20));
  }
  std::string q(const std::string& s) { return tdb_.conn().quote(s); }
  std::string sql(const std::string& s) { return tdb_.scalar(s); }
  int addRepository(const std::string& name, const std::string& vcs, const std::string& url) {
    return std::stoi(sql("INSERT INTO pefnos.repository (project_id, name, vcs, url, poll_interval) "
                         "VALUES (1, " + q(name) + ", " + q(vcs) + ", " + q(url) + ", 3600) RETURNING id"));
  }
  int addBranch(int repo, const std::string& name) {
    return std::stoi(sql("INSERT INTO pefnos.branch (repository_id, name) VALUES (" + std::to_string(repo) +
                         ", " + q(name) + ") RETURNING id"));
  }
  int addMirror(const std::string& name, int source_branch, int target_repo, const std::string& target_branch,
                const std::string& collection = "") {
    return std::stoi(sql(
        "INSERT INTO pefnos.mirror (name, kind, collection, source_branch_id, target_repository_id, "
        "target_branch, delay) VALUES (" + q(name) + ", " + (collection.empty() ? "'branch', NULL" : "'collection', " + q(collection)) +
        ", " + std::to_string(source_branch) + ", " + std::to_string(target_repo) + ", " + q(target_branch) +
        ", 0) RETURNING id"));
  }
  // A mirror "m" of the source's main branch into the target's "mirrored",
  // run only when asked; the master started and the source polled.
  struct Rows {
    int srepo, trepo, mirror;
  };
  Rows onDemandMirror() {
    const int srepo = addRepository("src", kSource, src_->url());
    const int sbranch = addBranch(srepo, src_->mainBranch());
    const int trepo = addRepository("tgt", kTarget, tgt_->url());
    const int mirror = addMirror("m", sbranch, trepo, "mirrored");
    sql("UPDATE pefnos.mirror SET delay = 3600");
    startMaster();
    pollNow(srepo);
    return {srepo, trepo, mirror};
  }
  void startMaster() {
    master_ = std::make_unique<Child>(std::vector<std::string>{
        test::pefnosBinary(), "master", "--workers", "none", "--db", tdb_.conninfo(), "--name", "m",
        "--state-dir", dir_.path() + "/state"});
  }
  // A command through its SQL function; returns {state, result or error}.
  std::pair<std::string, std::string> command(const std::string& call, seconds timeout = seconds(120)) {
    std::string id = sql("SELECT " + call);
    EXPECT_TRUE(waitUntil([&] {
      auto s = sql("SELECT state FROM pefnos.command WHERE id = " + id);
      return s == "done" || s == "failed";
    }, timeout)) << call << "\n" << master_->output();
    return {sql("SELECT state FROM pefnos.command WHERE id = " + id),
            sql("SELECT coalesce(error, result::text) FROM pefnos.command WHERE id = " + id)};
  }
  void pollNow(int repo) {
    auto [state, out] = command("pefnos.poll_now(" + std::to_string(repo) + ")");
    ASSERT_EQ(state, "done") << out << master_->output();
  }
  // A branch row just inserted reaches the master's model by NOTIFY: polls
  // until the branch has a head (bounded).
  void pollUntilHead(int repo, int branch) {
    for (int i = 0; i < 50; ++i) {
      pollNow(repo);
      if (sql("SELECT count(*) FROM pefnos.branch_head WHERE branch_id = " + std::to_string(branch)) == "1") return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "branch " << branch << " never got a head";
  }
  std::pair<std::string, std::string> mirrorNow(int mirror) {
    return command("pefnos.mirror_now(" + std::to_string(mirror) + ")");
  }
  std::string marks(int mirror) { return sql("SELECT count(*) FROM pefnos.mirror_mark WHERE mirror_id = " + std::to_string(mirror)); }
  std::string targetOf(int mirror, const std::string& source) {
    return sql("SELECT target_revision FROM pefnos.mirror_mark WHERE mirror_id = " + std::to_string(mirror) +
               " AND source_revision = " + q(source));
  }
  // A file of the target branch, read with the target VCS's own tools.
  std::string targetFile(const std::string& branch, const std::string& path) {
    auto [rc, out] = kTarget == "git"
                         ? test::run({"git", "-C", tgt_->url(), "show", "refs/heads/" + branch + ":" + path})
                         : test::run({"brz", "cat", tgt_->url() + "/" + branch + "/" + path});
    EXPECT_EQ(rc, 0) << "reading " << path << ": " << out;
    return out;
  }
  // Every mark's target commit corresponds to its source commit, as the
  // scheduler recorded both (independently of the mirror's verification).
  void expectCommitsCorrespond(int mirror, int src_repo, int tgt_repo) {
    const std::string m = std::to_string(mirror);
    auto rows = tdb_.conn().quote("x");  // keep the connection warm
    (void)rows;
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_mark k "
                  "LEFT JOIN pefnos.commit s ON s.revision = k.source_revision AND s.network_id = " + std::to_string(src_repo) +
                  " LEFT JOIN pefnos.commit t ON t.revision = k.target_revision AND t.network_id = " + std::to_string(tgt_repo) +
                  " WHERE k.mirror_id = " + m + " AND (s.id IS NULL OR t.id IS NULL)"),
              "0") << "every marked revision was seen by the polls of both sides";
    // Parents: the source's parents mapped through the marks are the target's.
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_mark k "
                  "JOIN pefnos.commit s ON s.revision = k.source_revision AND s.network_id = " + std::to_string(src_repo) +
                  " JOIN pefnos.commit t ON t.revision = k.target_revision AND t.network_id = " + std::to_string(tgt_repo) +
                  " WHERE k.mirror_id = " + m + " AND t.parents IS DISTINCT FROM ARRAY(SELECT p.target_revision "
                  "FROM unnest(s.parents) WITH ORDINALITY AS u(rev, n) JOIN pefnos.mirror_mark p "
                  "ON p.mirror_id = k.mirror_id AND p.source_revision = u.rev ORDER BY u.n)"),
              "0") << sql("SELECT string_agg(k.source_revision, ', ') FROM pefnos.mirror_mark k WHERE k.mirror_id = " + m);
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_mark k "
                  "JOIN pefnos.commit s ON s.revision = k.source_revision AND s.network_id = " + std::to_string(src_repo) +
                  " JOIN pefnos.commit t ON t.revision = k.target_revision AND t.network_id = " + std::to_string(tgt_repo) +
                  " WHERE k.mirror_id = " + m + " AND (rtrim(s.message, E'\\n ') <> rtrim(t.message, E'\\n ') "
                  "OR split_part(s.author, ' <', 1) <> split_part(t.author, ' <', 1) "
                  "OR date_trunc('second', s.author_date) <> date_trunc('second', t.author_date))"),
              "0") << "messages, authors and dates survive";
  }
  // Processes below pid whose command line contains needle.
  static std::vector<int> descendants(int pid, const std::string& needle) {
    std::map<int, int> parent;
    std::map<int, std::string> cmd;
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string n = e.path().filename();
      if (n.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream st(e.path() / "stat");
      std::string line;
      std::getline(st, line);
      auto close = line.rfind(')');
      if (close == std::string::npos) continue;
      int ppid = 0;
      char state;
      std::sscanf(line.c_str() + close + 2, "%c %d", &state, &ppid);
      parent[std::stoi(n)] = ppid;
      std::ifstream c(e.path() / "cmdline");
      std::string s((std::istreambuf_iterator<char>(c)), {});
      std::replace(s.begin(), s.end(), '\0', ' ');
      cmd[std::stoi(n)] = s;
    }
    std::vector<int> out;
    for (const auto& [p, pp] : parent) {
      for (int a = pp, hops = 0; a > 1 && hops < 10; a = parent.count(a) ? parent[a] : 0, ++hops) {
        if (a == pid) {
          if (cmd[p].find(needle) != std::string::npos) out.push_back(p);
          break;
        }
      }
    }
    return out;
  }

  test::TestDatabase tdb_;
  test::TempDir dir_{"pefnos-mirror"};
  std::unique_ptr<test::Forge> src_, tgt_;
  std::unique_ptr<Child> master_;
};

// History that branches from old revisions and merges back, twice: the
// second time into a run that has to build on what the first one carried.
TEST_F(Mirror, CarriesHistoryWithOldBranchesIncrementallyAndVerifiesIt) {
  const std::string main = src_->mainBranch();
  src_->commit(main,
               {test::File{"a.txt", "one\n"}, test::File{"bin/run.sh", "#!/bin/sh\necho hi\n", true},
                test::File{"docs/\xc3\xbcn\xc3\xaf" "code name.txt", "caf\xc3\xa9\n"},
                test::File{"link", "a.txt", false, true}},
               "second: \xc3\xbcn\xc3\xaf" "code");
  const std::string old = src_->sideBranch("old"), older = src_->sideBranch("older");
  src_->branch(old, main);
  src_->branch(older, main);
  src_->commit(main, "b.txt", "third");
  src_->commit(old, "side.txt", "side one");
  src_->commit(old, {test::File{"a.txt", "one, changed on the side\n"}}, "side two");
  src_->commit(older, "older.txt", "on an older branch");
  const std::string m1 = src_->merge(main, old, "merge the old side");

  const int srepo = addRepository("src", kSource, src_->url());
  const int sbranch = addBranch(srepo, main);
  const int trepo = addRepository("tgt", kTarget, tgt_->url());
  const int mirror = addMirror("m", sbranch, trepo, "mirrored");
  startMaster();
  pollNow(srepo);
  const std::string source_commits = sql("SELECT count(*) FROM pefnos.commit WHERE network_id = " + std::to_string(srepo));

  // The first run starts by itself: the source branch has a head, the delay is 0.
  ASSERT_TRUE(waitUntil([&] { return sql("SELECT count(*) FROM pefnos.mirror_run WHERE state <> 'running'") != "0"; },
                        seconds(90))) << master_->output();
  ASSERT_EQ(sql("SELECT state || ' ' || coalesce(error, '') FROM pefnos.mirror_run"), "succeeded ") << master_->output();
  EXPECT_EQ(marks(mirror), source_commits);
  EXPECT_EQ(sql("SELECT revisions FROM pefnos.mirror_run"), source_commits);
  EXPECT_EQ(sql("SELECT count(*) || ' ' || bool_and(ok) FROM pefnos.mirror_verify"), source_commits + " true");
  EXPECT_EQ(tgt_->head("mirrored"), targetOf(mirror, m1)) << "the target branch is the mapped head";
  EXPECT_EQ(targetFile("mirrored", "a.txt"), "one, changed on the side\n");
  EXPECT_EQ(targetFile("mirrored", "docs/\xc3\xbcn\xc3\xaf" "code name.txt"), "caf\xc3\xa9\n");

  pollUntilHead(trepo, addBranch(trepo, "mirrored"));
  expectCommitsCorrespond(mirror, srepo, trepo);

  // Old history merged in after the first run: its parent is an old, known revision.
  src_->commit(main, "c.txt", "fourth");
  const std::string m2 = src_->merge(main, older, "merge the older side");
  pollNow(srepo);
  const int more = std::stoi(sql("SELECT count(*) FROM pefnos.commit WHERE network_id = " + std::to_string(srepo))) -
                   std::stoi(source_commits);
  ASSERT_GE(more, 2);
  auto [state, out] = mirrorNow(mirror);
  ASSERT_EQ(state, "done") << out << master_->output();
  EXPECT_NE(out.find("\"revisions\": " + std::to_string(more)), std::string::npos) << out;
  EXPECT_EQ(tgt_->head("mirrored"), targetOf(mirror, m2));
  EXPECT_EQ(targetFile("mirrored", "older.txt"), "on an older branch\n");
  pollNow(trepo);
  expectCommitsCorrespond(mirror, srepo, trepo);

  // Nothing new: nothing carried, nothing written.
  auto [state2, out2] = mirrorNow(mirror);
  EXPECT_EQ(state2, "done") << out2;
  EXPECT_NE(out2.find("\"revisions\": 0"), std::string::npos) << out2;
  EXPECT_EQ(tgt_->head("mirrored"), targetOf(mirror, m2));

  // verify --all from the command line: every revision again, all equal.
  auto [rc, vout] = test::run({test::pefnosBinary(), "ctl", "verify", "m", "--all", "--db", tdb_.conninfo()});
  EXPECT_EQ(rc, 0) << vout;
  EXPECT_NE(vout.find("verified " + marks(mirror) + " revisions of m: 0 differ"), std::string::npos) << vout;
}

TEST_F(Mirror, ATargetChangedBySomeoneElseStopsTheMirrorAndIsNotOverwritten) {
  const std::string main = src_->mainBranch();
  src_->commit(main, "a.txt", "second");
  const auto [srepo, trepo, mirror] = onDemandMirror();
  ASSERT_EQ(mirrorNow(mirror).first, "done");
  const std::string before = marks(mirror);

  const std::string foreign = tgt_->commit("mirrored", "foreign.txt", "someone else");
  src_->commit(main, "b.txt", "third");
  pollNow(srepo);
  auto [state, out] = mirrorNow(mirror);
  EXPECT_EQ(state, "failed");
  EXPECT_NE(out.find("diverged"), std::string::npos) << out;
  EXPECT_EQ(tgt_->head("mirrored"), foreign) << "never overwritten";
  EXPECT_EQ(marks(mirror), before);
  EXPECT_EQ(sql("SELECT state FROM pefnos.mirror_run ORDER BY id DESC LIMIT 1"), "failed");
  EXPECT_NE(sql("SELECT count(*) FROM pefnos.event WHERE source = 'mirror' AND message LIKE '%diverged%'"), "0");
}

TEST_F(Mirror, ATargetMovedBackBySomeoneElseIsDivergenceToo) {
  const std::string main = src_->mainBranch();
  src_->commit(main, "a.txt", "second");
  src_->commit(main, "b.txt", "third");
  const auto [srepo, trepo, mirror] = onDemandMirror();
  ASSERT_EQ(mirrorNow(mirror).first, "done") << master_->output();

  // Every revision of the rewound target is one the mirror wrote: only
  // knowing where it left the target tells that someone moved it.
  const std::string rewound = tgt_->rewindOne("mirrored");
  src_->commit(main, "c.txt", "fourth");
  pollNow(srepo);
  auto [state, out] = mirrorNow(mirror);
  EXPECT_EQ(state, "failed");
  EXPECT_NE(out.find("diverged"), std::string::npos) << out;
  EXPECT_NE(out.find("not where this mirror left it"), std::string::npos) << out;
  EXPECT_EQ(tgt_->head("mirrored"), rewound);
}

TEST_F(Mirror, AMarkThatDoesNotMatchTheTargetIsCaughtWithThePathNamed) {
  const std::string main = src_->mainBranch();
  src_->commit(main, {test::File{"a.txt", "good\n"}, test::File{"b.txt", "fine\n"}}, "second");
  const auto [srepo, trepo, mirror] = onDemandMirror();
  ASSERT_EQ(mirrorNow(mirror).first, "done") << master_->output();

  // A target revision like the mirrored head with one file corrupted, and
  // the head's mark pointed at it.
  const std::string head = src_->head(main);
  tgt_->branch("corrupt", "mirrored");
  const std::string bad = tgt_->commit("corrupt", {test::File{"a.txt", "corrupted\n"}}, "second");
  pollUntilHead(trepo, addBranch(trepo, "corrupt"));
  sql("UPDATE pefnos.mirror_mark SET target_revision = " + q(bad) + " WHERE source_revision = " + q(head));

  auto [rc, out] = test::run({test::pefnosBinary(), "ctl", "verify", std::to_string(mirror), "--all", "--db", tdb_.conninfo()});
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("1 differ"), std::string::npos) << out;
  EXPECT_NE(out.find("a.txt"), std::string::npos) << out;
  EXPECT_EQ(out.find("b.txt"), std::string::npos) << "only the corrupted path: " << out;
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_verify WHERE NOT ok AND source_revision = " + q(head) +
                " AND differences::text LIKE '%a.txt%'"),
            "1");
}

TEST_F(Mirror, AKilledExporterOrMasterIsResumedFromTheCommittedMarks) {
  const std::string main = src_->mainBranch();
  // Enough history that the stream takes a while: a few MB over many revisions.
  std::string blob;
  for (int i = 0; i < 20000; ++i) blob += "line " + std::to_string(i) + " of a file that changes\n";
  for (int i = 0; i < 12; ++i) src_->commit(main, {test::File{"big.txt", std::to_string(i) + blob}}, "big " + std::to_string(i));
  const auto [srepo, trepo, mirror] = onDemandMirror();

  // kill -9 of the exporter, as soon as it runs.
  const std::string cmd = sql("SELECT pefnos.mirror_now(" + std::to_string(mirror) + ")");
  std::vector<int> exporters;
  const std::string exporter = kSource == "svn" ? "vcs-svn-export" : "fast-export";
  ASSERT_TRUE(waitUntil([&] { return !(exporters = descendants(master_->pid(), exporter)).empty(); }, seconds(60)))
      << master_->output();
  for (int p : exporters) kill(p, SIGKILL);
  ASSERT_TRUE(waitUntil([&] { return sql("SELECT state FROM pefnos.command WHERE id = " + cmd) == "failed"; }, seconds(60)));
  EXPECT_EQ(sql("SELECT state FROM pefnos.mirror_run"), "interrupted");
  EXPECT_EQ(marks(mirror), "0") << "nothing recorded from a broken stream";
  EXPECT_EQ(test::run({"git", "-C", tgt_->url(), "rev-parse", "--verify", "-q", "refs/heads/mirrored"}).first != 0 ||
                kTarget != "git",
            true)
      << "the target branch was not published";
  auto [state, out] = mirrorNow(mirror);
  ASSERT_EQ(state, "done") << out << master_->output();
  const std::string all = sql("SELECT count(*) FROM pefnos.commit WHERE network_id = " + std::to_string(srepo));
  EXPECT_EQ(marks(mirror), all);

  // kill -9 of the master in the middle of a run: started again, it resumes.
  for (int i = 12; i < 20; ++i) src_->commit(main, {test::File{"big.txt", std::to_string(i) + blob}}, "big " + std::to_string(i));
  pollNow(srepo);
  sql("SELECT pefnos.mirror_now(" + std::to_string(mirror) + ")");
  ASSERT_TRUE(waitUntil([&] { return !descendants(master_->pid(), "fast-").empty(); }, seconds(60))) << master_->output();
  master_->stop(SIGKILL, seconds(10));
  EXPECT_EQ(sql("SELECT state FROM pefnos.mirror_run ORDER BY id DESC LIMIT 1"), "running");
  startMaster();
  ASSERT_TRUE(waitUntil([&] {
    return sql("SELECT state FROM pefnos.mirror_run ORDER BY id DESC LIMIT 1") == "succeeded";
  }, seconds(120))) << master_->output();
  const std::string all2 = sql("SELECT count(*) FROM pefnos.commit WHERE network_id = " + std::to_string(srepo));
  EXPECT_EQ(marks(mirror), all2);
  EXPECT_EQ(tgt_->head("mirrored"), targetOf(mirror, src_->head(main)));
  EXPECT_EQ(targetFile("mirrored", "big.txt"), "19" + blob);
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_verify WHERE NOT ok"), "0");
}

// Runs that published and then died before they could say so (as kill -9 of
// the master leaves them): each later run starts from where the last one left
// the target, and no mark of a published run is forgotten.
TEST_F(Mirror, RunsThatPublishedAndDiedKeepTheirMarks) {
  const std::string main = src_->mainBranch();
  src_->commit(main, "a.txt", "one");
  const auto [srepo, trepo, mirror] = onDemandMirror();
  for (int i = 0; i < 3; ++i) {
    if (i > 0) {
      src_->commit(main, "a.txt", "change " + std::to_string(i));
      pollNow(srepo);
    }
    auto [state, out] = mirrorNow(mirror);
    ASSERT_EQ(state, "done") << out << master_->output();
    EXPECT_EQ(marks(mirror), sql("SELECT count(*) FROM pefnos.commit WHERE network_id = " + std::to_string(srepo)))
        << "after run " << i + 1;
    // Published, then died: the run is left as a restarted master finds it.
    sql("UPDATE pefnos.mirror_run SET state = 'interrupted' WHERE mirror_id = " + std::to_string(mirror));
  }
  EXPECT_EQ(tgt_->head("mirrored"), targetOf(mirror, src_->head(main)));
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_verify WHERE NOT ok"), "0");
}

// Only git stores messages that are not UTF-8; Bazaar holds Unicode, so what
// arrives there has U+FFFD for the bytes it cannot hold, and verification
// compares what each side can express.
TEST_F(Mirror, AMessageThatIsNotUtf8IsCarriedAsTheTargetCanHoldIt) {
  if (kSource != "git") GTEST_SKIP() << "only git stores bytes that are not UTF-8";
  const std::string main = src_->mainBranch();
  // git commit would convert the message: the object is written by hand.
  const std::string parent = src_->commit(main, "a.txt", "second");
  const std::string tree = test::run({"git", "-C", src_->url(), "rev-parse", parent + "^{tree}"}).second.substr(0, 40);
  const std::string object_file = dir_.path() + "/latin1-commit";
  std::ofstream(object_file) << "tree " << tree << "\nparent " << parent
                             << "\nauthor Ren\xe9 <rene@example.org> 1700000000 +0100"
                             << "\ncommitter Ren\xe9 <rene@example.org> 1700000000 +0100\n\ncaf\xe9 in Latin-1\n";
  auto [hrc, hashed] = test::run({"git", "-C", src_->url(), "hash-object", "-t", "commit", "-w", object_file});
  ASSERT_EQ(hrc, 0) << hashed;
  const std::string head = hashed.substr(0, 40);
  ASSERT_EQ(test::run({"git", "-C", src_->url(), "update-ref", "refs/heads/" + main, head}).first, 0);
  const auto [srepo, trepo, mirror] = onDemandMirror();
  auto [state, out] = mirrorNow(mirror);
  ASSERT_EQ(state, "done") << out << master_->output();
  EXPECT_EQ(sql("SELECT bool_and(ok)::text FROM pefnos.mirror_verify"), "true");
  const std::string target = targetOf(mirror, head);
  auto [rc, message] = kTarget == "git"
                           ? test::run({"git", "-C", tgt_->url(), "log", "-1", "--format=%B", target})
                           : test::run({"brz", "log", "-r", "revid:" + target, tgt_->url() + "/mirrored"});
  ASSERT_EQ(rc, 0) << message;
  EXPECT_NE(message.find(kTarget == "git" ? "caf\xe9 in Latin-1" : "caf\xef\xbf\xbd in Latin-1"), std::string::npos)
      << message;
  EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_run WHERE state = 'succeeded'"), "1");
}

#if defined(PEFNOS_MIRROR_COLLECTION)
// One branch living in three repositories of two VCSs (git A, Bazaar B, git
// C), each carried to the others: a commit on any of them reaches the other
// two once, and nothing comes back.
TEST_F(Mirror, AThreeWayCollectionCarriesEachNewCommitToTheOthersOnce) {
  const std::string main = src_->mainBranch();
  src_->commit(main, "a.txt", "second");
  const std::string side = src_->sideBranch("old");
  src_->branch(side, main);
  src_->commit(main, "b.txt", "third");
  src_->commit(side, "side.txt", "on the side");
  src_->merge(main, side, "merge the old side");
  src_->branch("shared", main);
  auto c_forge = test::Forge::make("git", dir_.path() + "/c");

  const int a = addRepository("a", "git", src_->url()), b = addRepository("b", "bzr", tgt_->url()),
            c = addRepository("c", "git", c_forge->url());
  const int ab = addBranch(a, "shared"), bb = addBranch(b, "shared"), cb = addBranch(c, "shared");
  std::map<std::string, int> m;
  const std::map<char, std::pair<int, int>> members{{'a', {a, ab}}, {'b', {b, bb}}, {'c', {c, cb}}};
  for (const auto& [from, fr] : members) {
    for (const auto& [to, tr] : members) {
      if (from != to) m[std::string{from, to}] = addMirror(std::string{from, '-', to}, fr.second, tr.first, "shared", "trio");
    }
  }
  auto runs = [&] { return sql("SELECT count(*) FROM pefnos.mirror_run WHERE state = 'succeeded'"); };
  auto settled = [&](const std::string& expected) {
    EXPECT_TRUE(waitUntil([&] { return runs() == expected; }, seconds(120)))
        << runs() << "\n" << sql("SELECT string_agg(mirror_id || ' ' || state || ' ' || coalesce(error, ''), E'\n') FROM pefnos.mirror_run")
        << master_->output();
    for (int r : {a, b, c}) pollNow(r);
    std::this_thread::sleep_for(seconds(5));  // two ticks of the mirror scheduler: nothing more runs
    EXPECT_EQ(runs(), expected);
    EXPECT_EQ(sql("SELECT count(*) FROM pefnos.mirror_run WHERE state <> 'succeeded'"), "0")
        << sql("SELECT string_agg(mirror_id || ' ' || state || ' ' || coalesce(error, ''), E'\n') FROM pefnos.mirror_run");
  };
  startMaster();
  pollNow(a);
  settled("2");  // a -> b, a -> c
  const std::string a_head = src_->head("shared");
  EXPECT_EQ(tgt_->head("shared"), targetOf(m["ab"], a_head));
  EXPECT_EQ(c_forge->head("shared"), targetOf(m["ac"], a_head));

  const std::string b_new = tgt_->commit("shared", "from-b.txt", "made in Bazaar");
  pollNow(b);
  settled("4");  // b -> a, b -> c: one revision each
  EXPECT_EQ(sql("SELECT string_agg(revisions::text, ',' ORDER BY id) FROM pefnos.mirror_run WHERE mirror_id IN (" +
                std::to_string(m["ba"]) + ", " + std::to_string(m["bc"]) + ")"),
            "1,1");
  EXPECT_EQ(src_->head("shared"), targetOf(m["ba"], b_new));
  EXPECT_EQ(c_forge->head("shared"), targetOf(m["bc"], b_new));
  auto [rc, out] = test::run({"git", "-C", c_forge->url(), "show", "refs/heads/shared:from-b.txt"});
  EXPECT_EQ(out, "made in Bazaar\n");

  const std::string c_new = c_forge->commit("shared", "from-c.txt", "made in C");
  pollNow(c);
  settled("6");  // c -> a, c -> b
  EXPECT_EQ(src_->head("shared"), targetOf(m["ca"], c_new));
  EXPECT_EQ(tgt_->head("shared"), targetOf(m["cb"], c_new));
}
#endif

}  // namespace
}  // namespace pefnos
