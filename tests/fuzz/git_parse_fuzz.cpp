// The git plugin's output parsers (plugins/vcs-git/git_parse): `git ls-remote
// --heads`, `git log --format=kLogFormat --name-only`, C-quoted paths and the
// name checks that guard argv. Contracts: whatever parseHeads accepts passes
// the checks; a parsed log written back in git's format parses to the same
// commits; unquotePath undoes git's quoting of any path.
#include <optional>
#include <string>

#include "fuzz.h"
#include "git_parse.h"

using namespace pefnos;
using pefnos::fuzz::asText;

namespace {

// git's quote_c_style: named escapes, octal for other control bytes, and
// quotes around the path when anything needed escaping (or it would read as quoted).
std::string quote(std::string_view path) {
  std::string body;
  bool needed = path.empty() || path.front() == '"';
  for (unsigned char c : path) {
    const char* named = c == '\a' ? "\\a" : c == '\b' ? "\\b" : c == '\t' ? "\\t" : c == '\n' ? "\\n"
                      : c == '\v' ? "\\v" : c == '\f' ? "\\f" : c == '\r' ? "\\r" : c == '"' ? "\\\""
                      : c == '\\' ? "\\\\" : nullptr;
    if (named) {
      body += named;
      needed = true;
    } else if (c < 0x20 || c == 0x7f || c >= 0x80) {
      char octal[5];
      std::snprintf(octal, sizeof octal, "\\%03o", c);
      body += octal;
      needed = true;
    } else {
      body += static_cast<char>(c);
    }
  }
  return needed ? "\"" + body + "\"" : body;
}

std::string writeLog(const std::vector<CommitInfo>& commits) {
  std::string out;
  for (const auto& c : commits) {
    out += '\x1e' + c.revision + '\0';
    for (size_t i = 0; i < c.parents.size(); ++i) out += (i ? " " : "") + c.parents[i];
    out += '\0' + c.author + '\0' + c.author_date + '\0' + c.committer + '\0' + c.committer_date +
           '\0' + c.message + "\n" + '\0' + "\n";
    for (const auto& f : c.files) out += quote(f) + "\n";
  }
  return out;
}

bool same(const CommitInfo& a, const CommitInfo& b) {
  return a.revision == b.revision && a.parents == b.parents && a.author == b.author &&
         a.author_date == b.author_date && a.committer == b.committer &&
         a.committer_date == b.committer_date && a.message == b.message && a.files == b.files;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = asText(data, size);

  auto heads = git::parseHeads(input);
  for (const auto& h : heads.heads) {
    FUZZ_CHECK(git::isValidBranchName(h.branch) && git::isObjectId(h.revision));
    FUZZ_CHECK(git::isValidRefName("refs/heads/" + h.branch));
  }

  auto log = git::parseLog(input);
  if (log) {
    for (const auto& c : *log) {
      FUZZ_CHECK(git::isObjectId(c.revision));
      for (const auto& p : c.parents) FUZZ_CHECK(!p.empty() && p.find(' ') == std::string::npos);
    }
    auto again = git::parseLog(writeLog(*log));
    FUZZ_CHECK(again && again->size() == log->size());
    for (size_t i = 0; i < log->size(); ++i) FUZZ_CHECK(same((*log)[i], (*again)[i]));
  }

  FUZZ_CHECK(git::unquotePath(quote(input)) == input);
  (void)git::unquotePath(input);

  if (git::isValidBranchName(input)) {
    FUZZ_CHECK(input.front() != '-' && input.find("..") == std::string_view::npos);
    FUZZ_CHECK(git::isValidRefName("refs/heads/" + std::string(input)));
  }
  if (git::isValidRefPrefix(input)) FUZZ_CHECK(git::isValidRefName(std::string(input) + "x"));
  if (git::isValidRefName(input)) {
    for (unsigned char c : input) FUZZ_CHECK(c >= 0x20 && c != 0x7f && c != ' ' && c != ':');
  }
  return 0;
}
