// The mirror's pure logic: the stream filter between exporter and importer,
// the tar listing that names differing paths, and the comparisons.
#include <gtest/gtest.h>

#include "core/mirror/fast_stream.h"
#include "core/mirror/mirror.h"
#include "core/mirror/tree_diff.h"

namespace pefnos::mirror {
namespace {

const std::string kStream =
    "reset refs/heads/m\n"
    "commit refs/heads/m\nmark :3\noriginal-oid rev-a\n"
    "author A <a@x> 1700000000 +0100\ncommitter A <a@x> 1700000000 +0100\n"
    "data 5\nfirst\nfrom :2\nM 100644 inline f\ndata 4\nabc\n\n"
    "commit refs/heads/m\nmark :4\noriginal-oid rev-b\n"
    "author A <a@x> 1700000001 +0100\ncommitter A <a@x> 1700000001 +0100\n"
    "data 14\nmerge\nfrom :9\n\nfrom :3\nmerge :1\nD f\n\n";

TEST(StreamFilter, LearnsMarksAndParentsAndDropsOriginalOids) {
  StreamFilter f(2, "refs/heads/m");
  std::string out;
  ASSERT_TRUE(f.feed(kStream, out));
  ASSERT_TRUE(f.finish());
  ASSERT_EQ(f.commits().size(), 2u);
  EXPECT_EQ(f.commits()[0].mark, 3u);
  EXPECT_EQ(f.commits()[0].source, "rev-a");
  EXPECT_EQ(f.commits()[0].parents, (std::vector<uint64_t>{2}));
  EXPECT_EQ(f.commits()[1].parents, (std::vector<uint64_t>{3, 1}));
  EXPECT_EQ(f.knownParents(), (std::set<uint64_t>{1, 2}));
  EXPECT_EQ(out.find("original-oid"), std::string::npos);
  // A data block that looks like commands is passed, not read.
  EXPECT_NE(out.find("merge\nfrom :9\n"), std::string::npos);
  EXPECT_EQ(out.size(), kStream.size() - std::string("original-oid rev-a\n").size() * 2);
}

TEST(StreamFilter, GivesTheSameResultWhateverTheChunking) {
  for (size_t step : {1, 2, 3, 7, 64}) {
    StreamFilter f(2, "refs/heads/m");
    std::string out;
    for (size_t i = 0; i < kStream.size(); i += step) ASSERT_TRUE(f.feed(std::string_view(kStream).substr(i, step), out));
    ASSERT_TRUE(f.finish());
    ASSERT_EQ(f.commits().size(), 2u) << step;
    EXPECT_EQ(f.commits()[1].source, "rev-b");
    EXPECT_EQ(out.find("original-oid"), std::string::npos);
  }
}

TEST(StreamFilter, RefusesStreamsThatBreakTheContract) {
  struct Case {
    const char* stream;
    const char* error;
  } cases[] = {
      {"commit refs/heads/other\nmark :3\n", "not"},
      {"commit refs/heads/m\nfrom :1\n", "without a mark"},
      {"commit refs/heads/m\nmark :2\n", "reused mark"},
      {"commit refs/heads/m\nmark :3\noriginal-oid x\nfrom :7\n", "no earlier commit"},
      {"commit refs/heads/m\nmark :3\noriginal-oid x\nfrom 1234abcd\n", "not a mark"},
      {"commit refs/heads/m\nmark :3\noriginal-oid x\nmerge :1\n", "before the from"},
      {"commit refs/heads/m\nmark :3\ndata <<EOF\n", "delimited"},
      {"commit refs/heads/m\nmark :3\ndata 12x\n", "bad data length"},
      {"original-oid x\n", "misplaced"},
  };
  for (const auto& c : cases) {
    StreamFilter f(2, "refs/heads/m");
    std::string out;
    auto s = f.feed(c.stream, out);
    ASSERT_FALSE(s) << c.stream;
    EXPECT_NE(s.error().message.find(c.error), std::string::npos) << c.stream << " -> " << s.error().message;
    EXPECT_FALSE(f.feed("progress x\n", out)) << "a broken stream stays broken";
  }
}

TEST(StreamFilter, AnEndInTheMiddleIsAnError) {
  for (const char* s : {"commit refs/heads/m\nmark :3\noriginal-oid x\ndata 10\nabc",
                        "commit refs/heads/m\nmark :3\noriginal-oid x\nfrom :1", "commit refs/heads/m\n",
                        "commit refs/heads/m\nmark :3\ndata 0\n\n"}) {
    StreamFilter f(2, "refs/heads/m");
    std::string out;
    ASSERT_TRUE(f.feed(s, out)) << s;
    EXPECT_FALSE(f.finish()) << s;
  }
}

TEST(StreamFilter, ALineWithoutEndIsBounded) {
  StreamFilter f(0, "refs/heads/m");
  std::string out, big(StreamFilter::kMaxLine / 4, 'x');
  Status s = ok();
  for (int i = 0; i < 5 && s; ++i) s = f.feed(big, out);
  EXPECT_FALSE(s);
}

// A tar stream written by hand: ustar headers with checksum ignored by the reader.
std::string tarEntry(const std::string& name, char type, const std::string& content, const char* mode = "0000644",
                     const std::string& link = "") {
  std::string h(512, '\0');
  h.replace(0, std::min<size_t>(name.size(), 100), name.substr(0, 100));
  h.replace(100, 7, mode);
  char size[13];
  std::snprintf(size, sizeof size, "%011o", static_cast<unsigned>(content.size()));
  h.replace(124, 11, size);
  h[156] = type;
  h.replace(157, link.size(), link);
  h.replace(257, 5, "ustar");
  std::string out = h + content;
  out.append((512 - content.size() % 512) % 512, '\0');
  return out;
}

std::string pax(const std::string& key, const std::string& value) {
  std::string rec = " " + key + "=" + value + "\n";
  size_t len = rec.size() + 1;
  while (std::to_string(len).size() + rec.size() != len) ++len;
  return tarEntry("pax", 'x', std::to_string(len) + rec);
}

TEST(TarIndex, ListsFilesLinksAndLongNamesAndNamesTheDifferences) {
  const std::string long_name = std::string(150, 'd') + "/file.txt";
  std::string a = tarEntry("./", '5', "") + tarEntry("./a.txt", '0', "hello\n") +
                  tarEntry("run.sh", '0', "#!/bin/sh\n", "0000755") + tarEntry("link", '2', "", "0000777", "a.txt") +
                  pax("path", long_name) + tarEntry("ignored", '0', "long\n") + std::string(1024, '\0');
  std::string b = tarEntry("a.txt", '0', "hellO\n") + tarEntry("run.sh", '0', "#!/bin/sh\n", "0000644") +
                  tarEntry("link", '2', "", "0000777", "a.txt") + tarEntry("extra", '0', "") +
                  std::string(1024, '\0');
  TarIndex ia, ib;
  for (size_t i = 0; i < a.size(); i += 100) ASSERT_TRUE(ia.feed(std::string_view(a).substr(i, 100)));
  ASSERT_TRUE(ia.finish());
  ASSERT_TRUE(ib.feed(b));
  ASSERT_TRUE(ib.finish());
  EXPECT_EQ(ia.entries().size(), 4u);
  EXPECT_TRUE(ia.entries().count(long_name));
  EXPECT_EQ(ia.entries().at("run.sh").kind, 'x');
  EXPECT_EQ(ia.entries().at("link").kind, 'l');
  auto d = diffTrees(ia, ib);
  ASSERT_EQ(d.size(), 4u);
  EXPECT_EQ(d[0].path, "a.txt");
  EXPECT_EQ(d[1].path, long_name);
  EXPECT_EQ(d[1].target, "missing");
  EXPECT_EQ(d[2].path, "extra");
  EXPECT_EQ(d[2].source, "missing");
  EXPECT_EQ(d[3].path, "run.sh");
  EXPECT_NE(d[3].source.find("executable"), std::string::npos);
  EXPECT_TRUE(diffTrees(ia, ia).empty());
}

TEST(TarIndex, ATruncatedStreamIsAnError) {
  std::string a = tarEntry("a.txt", '0', std::string(1000, 'x'));
  TarIndex i;
  ASSERT_TRUE(i.feed(std::string_view(a).substr(0, 700)));
  EXPECT_FALSE(i.finish());
}

TEST(Compare, TextIdentitiesAndDates) {
  EXPECT_EQ(normalText("msg\r\nline\n\n"), "msg\nline");
  EXPECT_EQ(normalText("caf\xe9"), "caf\xef\xbf\xbd");
  EXPECT_EQ(normalText("caf\xc3\xa9"), "caf\xc3\xa9");
  // One U+FFFD per maximal subpart, as Python's 'replace' (and so Breezy) gives.
  const std::string r = "\xef\xbf\xbd";
  EXPECT_EQ(normalText("caf\xe9\x92s"), "caf" + r + "s");
  EXPECT_EQ(normalText("\xed\xa0\x80x"), r + r + r + "x") << "a surrogate";
  EXPECT_EQ(normalText("\xc0\xafx"), r + r + "x") << "an overlong";
  EXPECT_EQ(normalText("\xf4\x90\x80\x80x"), r + r + r + r + "x") << "beyond U+10FFFF";
  EXPECT_EQ(normalText("\xe2\x82"), r) << "cut short at the end";
  EXPECT_EQ(normalText("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");
  EXPECT_EQ(splitIdentity("Ann Example <ann@example.org>"), (std::pair<std::string, std::string>{"Ann Example", "ann@example.org"}));
  EXPECT_EQ(splitIdentity("Ann <a@x>, Bob <b@x>").first, "Ann");
  EXPECT_EQ(splitIdentity("svnuser").first, "svnuser");
  EXPECT_EQ(isoSeconds("2023-11-14T22:13:20+00:00"), 1700000000);
  EXPECT_EQ(isoSeconds("2023-11-14T23:13:20+01:00"), 1700000000);
  EXPECT_EQ(isoSeconds("2023-11-14T22:13:20.123456Z"), 1700000000);
  EXPECT_EQ(isoSeconds("2023-11-14 23:13:20 +0100"), 1700000000);
  EXPECT_FALSE(isoSeconds("yesterday"));
}

}  // namespace
}  // namespace pefnos::mirror
