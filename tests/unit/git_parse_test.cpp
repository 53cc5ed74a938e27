// The git plugin's pure half: which names and revisions reach argv, and how
// ls-remote and log output are read, including hostile names and messages.
#include "git_parse.h"

#include <gtest/gtest.h>

namespace pefnos::git {
namespace {

using namespace std::string_literals;

TEST(GitParse, ObjectIdsAreFullLowercaseHexOnly) {
  EXPECT_TRUE(isObjectId(std::string(40, 'a')));
  EXPECT_TRUE(isObjectId(std::string(64, '0')));
  EXPECT_FALSE(isObjectId(std::string(39, 'a')));
  EXPECT_FALSE(isObjectId(std::string(40, 'A')));
  EXPECT_FALSE(isObjectId(std::string(40, 'g')));
  EXPECT_FALSE(isObjectId("HEAD"));
  EXPECT_FALSE(isObjectId("--output=/tmp/x"));
  EXPECT_FALSE(isObjectId(""));
}

TEST(GitParse, BranchNamesFollowGitsRules) {
  for (const char* good :
       {"main", "feature/x", "a-b_c.d", "ünïcode/ブランチ", "v1.0", "a@b", "x=y"}) {
    EXPECT_TRUE(isValidBranchName(good)) << good;
  }
  for (const std::string& bad :
       std::vector<std::string>{"",        "-x",        "--upload-pack=evil",
                                "HEAD",    "a..b",      "a b",
                                "a:b",     "a~1",       "a^",
                                "a?",      "a*",        "a[",
                                "a\\b",    ".hidden",   "x/.hidden",
                                "x.lock",  "x.lock/y",  "a//b",
                                "/a",      "a/",        "a.",
                                "a@{1}",   "tab\there", "nl\nhere",
                                "del\x7f", "\x01"s}) {
    EXPECT_FALSE(isValidBranchName(bad)) << bad;
  }
}

TEST(GitParse, RefPrefixesMustBeANamespaceUnderRefs) {
  EXPECT_TRUE(isValidRefPrefix("refs/pefnos/7/"));
  EXPECT_FALSE(isValidRefPrefix("refs/pefnos/7"));  // would also match refs/pefnos/70/
  EXPECT_FALSE(isValidRefPrefix("refs/"));
  EXPECT_FALSE(isValidRefPrefix("heads/7/"));
  EXPECT_FALSE(isValidRefPrefix("refs/pefnos/*/"));
  EXPECT_FALSE(isValidRefPrefix("refs/a b/"));
}

TEST(GitParse, HeadsKeepValidBranchesAndReportTheRest) {
  std::string a(40, 'a'), b(40, 'b'), c(40, 'c');
  auto parsed = parseHeads(a + "\trefs/heads/main\n" + b + "\trefs/heads/feature/ü\n" + c +
                           "\trefs/heads/--upload-pack=x\n" + "garbage\n" + a + "\trefs/tags/v1\n");
  ASSERT_EQ(parsed.heads.size(), 2u);
  EXPECT_EQ(parsed.heads[0].branch, "main");
  EXPECT_EQ(parsed.heads[0].revision, a);
  EXPECT_EQ(parsed.heads[1].branch, "feature/ü");
  EXPECT_EQ(parsed.heads[1].revision, b);
  EXPECT_EQ(parsed.refused,
            (std::vector<std::string>{"--upload-pack=x", "garbage", a + "\trefs/tags/v1"}));
  EXPECT_TRUE(parseHeads("").heads.empty());
}

std::string record(const std::string& rev, const std::string& parents, const std::string& message,
                   const std::string& files) {
  return "\x1e" + rev + '\0' + parents + '\0' + "A <a@x>" + '\0' + "2024-01-01T00:00:00+02:00" +
         '\0' + "C <c@x>" + '\0' + "2024-01-02T00:00:00Z" + '\0' + message + '\0' + files;
}

TEST(GitParse, LogRecordsSurviveSeparatorsInMessagesAndQuotedFileNames) {
  std::string a(40, 'a'), b(40, 'b'), c(40, 'c');
  std::string out = record(a, "", "root\n", "\n\nx.txt\n\"we ird\\036\\\"q\\\".txt\"\n") +
                    // A message holding the record and field separators.
                    record(b, a, "evil \x1e\x1f message\n\nbody\n", "\n\ndir/y\n") +
                    record(c, a + " " + b, "merge", "");
  auto log = parseLog(out);
  ASSERT_TRUE(log) << log.error().message;
  ASSERT_EQ(log->size(), 3u);
  const auto& root = (*log)[0];
  EXPECT_EQ(root.revision, a);
  EXPECT_TRUE(root.parents.empty());
  EXPECT_EQ(root.author, "A <a@x>");
  EXPECT_EQ(root.author_date, "2024-01-01T00:00:00+02:00");
  EXPECT_EQ(root.committer, "C <c@x>");
  EXPECT_EQ(root.committer_date, "2024-01-02T00:00:00Z");
  EXPECT_EQ(root.message, "root");
  EXPECT_EQ(root.files, (std::vector<std::string>{"x.txt", "we ird\x1e\"q\".txt"}));
  EXPECT_EQ((*log)[1].message, "evil \x1e\x1f message\n\nbody");
  EXPECT_EQ((*log)[1].files, std::vector<std::string>{"dir/y"});
  EXPECT_EQ((*log)[2].parents, (std::vector<std::string>{a, b}));
  EXPECT_TRUE((*log)[2].files.empty());
}

TEST(GitParse, TruncatedOrForeignLogOutputIsAnError) {
  EXPECT_FALSE(parseLog("fatal: something"));
  EXPECT_FALSE(parseLog("\x1e" + std::string(40, 'a') + '\0' + "only two fields"));
  EXPECT_FALSE(parseLog(record("not-a-revision", "", "m", "")));
  auto empty = parseLog("");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
}

TEST(GitParse, UnquotePathUndoesGitsCQuoting) {
  EXPECT_EQ(unquotePath("plain name.txt"), "plain name.txt");
  EXPECT_EQ(unquotePath("\"tab\\there\""), "tab\there");
  EXPECT_EQ(unquotePath("\"nl\\nq\\\"b\\\\\""), "nl\nq\"b\\");
  EXPECT_EQ(unquotePath("\"\\303\\251t\\303\\251\""), "été");
  EXPECT_EQ(unquotePath("\"\\001\""), "\x01");
}

}  // namespace
}  // namespace pefnos::git
