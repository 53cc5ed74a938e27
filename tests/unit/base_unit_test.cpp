// core/base: the pure helpers every part uses on text from outside.
#include <gtest/gtest.h>

#include <string>

#include "core/base/json_text.h"
#include "core/base/utf8.h"

namespace pefnos {
namespace {

// The steps over text: (valid, length) per step, and the code points taken.
std::string steps(std::string_view text) {
  std::string out;
  for (size_t at = 0; at < text.size();) {
    Utf8Step s = decodeUtf8(text, at);
    if (!out.empty()) out += ' ';
    out += s.valid ? "U+" + std::to_string(static_cast<uint32_t>(s.code)) : "bad";
    out += "/" + std::to_string(s.length);
    at += s.length;
  }
  return out;
}

TEST(Utf8, DecodesEachLengthToItsCodePoint) {
  EXPECT_EQ(steps("a"), "U+97/1");
  EXPECT_EQ(steps("\xc3\xa9"), "U+233/2");          // é
  EXPECT_EQ(steps("\xe5\x88\x86"), "U+20998/3");    // 分
  EXPECT_EQ(steps("\xf0\x9f\x98\x80"), "U+128512/4");  // 😀
  EXPECT_EQ(steps("\xf4\x8f\xbf\xbf"), "U+1114111/4");  // U+10FFFF, the last
  EXPECT_EQ(steps(std::string_view("\0x", 2)), "U+0/1 U+120/1");
}

TEST(Utf8, TakesBadBytesAsMaximalSubparts) {
  EXPECT_EQ(steps("caf\xe9"), "U+99/1 U+97/1 U+102/1 bad/1");
  EXPECT_EQ(steps("\xe9\x92s"), "bad/2 U+115/1") << "a three-byte lead and one continuation";
  EXPECT_EQ(steps("\x92\x92"), "bad/1 bad/1") << "lone continuations";
  EXPECT_EQ(steps("\xed\xa0\x80"), "bad/1 bad/1 bad/1") << "a surrogate";
  EXPECT_EQ(steps("\xc0\xaf"), "bad/1 bad/1") << "an overlong";
  EXPECT_EQ(steps("\xe0\x80\x80"), "bad/1 bad/1 bad/1") << "an overlong of three";
  EXPECT_EQ(steps("\xf4\x90\x80\x80"), "bad/1 bad/1 bad/1 bad/1") << "beyond U+10FFFF";
  EXPECT_EQ(steps("\xe2\x82"), "bad/2") << "cut short at the end";
  EXPECT_EQ(steps("\xe2\x82x"), "bad/2 U+120/1") << "cut short by a character";
  EXPECT_EQ(steps("\xf0\x9f\x98"), "bad/3");
  EXPECT_EQ(steps("\xff\xfe"), "bad/1 bad/1");
}

TEST(JsonDepth, CountsBracketsOutsideStringsAndStopsPastTheLimit) {
  EXPECT_EQ(jsonDepth("1"), 0u);
  EXPECT_EQ(jsonDepth(R"({"a": [1, {"b": []}]})"), 4u);
  EXPECT_EQ(jsonDepth(R"(["[[[\"[[", "\\"])"), 1u) << "brackets and escaped quotes inside strings";
  EXPECT_EQ(jsonDepth(std::string(1000000, '['), 10), 11u) << "stops once past the limit";
  EXPECT_EQ(jsonDepth("]]]][]"), 1u) << "unbalanced closing brackets do not go below zero";
}

// Whether text is UTF-8 throughout: what PostgreSQL's text and a log line need.
bool isUtf8(std::string_view text) {
  for (size_t at = 0; at < text.size();) {
    Utf8Step s = decodeUtf8(text, at);
    if (!s.valid) return false;
    at += s.length;
  }
  return true;
}

TEST(ParseJson, GivesTheValueOrWhyNotWithoutQuotingTheText) {
  auto ok = parseJson(R"({"a": [1, "b"]})");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok.value()["a"][1], "b");
  EXPECT_EQ(parseJson(std::string(300, '[') + std::string(300, ']')).error().message, "nested more than 256 deep");
  EXPECT_TRUE(parseJson(std::string(256, '[') + std::string(256, ']')).ok()) << "as deep as may be";
  EXPECT_EQ(parseJson("{x}").error().message,
            "not JSON: parse error at line 1, column 2: syntax error while parsing object key - invalid literal");
  EXPECT_EQ(parseJson("{\"a\": \"x'; expected \xfe\xff\n\"}").error().message,
            "not JSON: parse error at line 1, column 21: syntax error while parsing value - invalid string: "
            "ill-formed UTF-8 byte")
      << "the quoted text may look like the library's own words (found by fuzz_config_import)";
  EXPECT_EQ(parseJson("[1,\n tru]").error().message,
            "not JSON: parse error at line 2, column 5: syntax error while parsing value - invalid literal")
      << "the library's \"last read: 'tru]'\" is left out";
  EXPECT_EQ(parseJson("[1e400]").error().message, "not JSON: number overflow parsing '1e400'");
  for (std::string_view bad : {"\"caf\xe9\"", "[\"\xff\xfe\"]", "[\"\xc0\"]", "{\"\xe2\x82\": 1}"}) {
    auto r = parseJson(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_TRUE(isUtf8(r.error().message)) << r.error().message;
    EXPECT_NE(r.error().message.find("ill-formed UTF-8 byte"), std::string::npos) << r.error().message;
  }
}

}  // namespace
}  // namespace pefnos
