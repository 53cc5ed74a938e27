// The bzr plugin's pure half (plugins/vcs-bzr/bzr_parse.h): a branch's
// last-revision file, the helper's marks, locations, and the name checks that
// guard argv and paths. Contracts: accepted branch names cannot leave the
// location or be read as options; parsed marks written back parse the same;
// a local path never carries a NUL.
#include <optional>
#include <string>

#include "bzr_parse.h"
#include "fuzz.h"

using namespace pefnos;
using pefnos::fuzz::asText;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = asText(data, size);

  if (bzr::isValidBranchName(input)) {
    FUZZ_CHECK(!bzr::hasControlCharacter(input) && input.front() != '-' && input.front() != '/');
    for (size_t start = 0; start <= input.size();) {
      size_t end = input.find('/', start);
      if (end == std::string_view::npos) end = input.size();
      std::string_view part = input.substr(start, end - start);
      FUZZ_CHECK(!part.empty() && part != "." && part != ".." && part != ".bzr" && part[0] != '-');
      start = end + 1;
    }
  }
  if (bzr::isValidRevisionId(input)) {
    for (unsigned char c : input) FUZZ_CHECK(c > 0x20 && c != 0x7f);
  }
  if (bzr::isValidStreamRef(input)) {
    FUZZ_CHECK(input.substr(0, 5) == "refs/" && input.find("..") == std::string_view::npos);
    for (unsigned char c : input) FUZZ_CHECK(c > 0x20 && c != 0x7f);
  }
  if (bzr::isValidRefPrefix(input)) FUZZ_CHECK(input.back() == '/');

  if (auto path = bzr::localPath(input)) {
    FUZZ_CHECK(!path->empty() && path->front() == '/');
    // An escaped NUL (%00) is refused; a raw NUL is passed on as given (a
    // configured location is PostgreSQL text, which cannot hold one).
    if (input.find('\0') == std::string_view::npos) FUZZ_CHECK(path->find('\0') == std::string::npos);
  }
  (void)bzr::hasLastRevisionFile(input);

  if (auto id = bzr::parseLastRevision(input)) {
    FUZZ_CHECK(id->empty() || bzr::isValidRevisionId(*id));
  }

  if (auto marks = bzr::parseMarks(input)) {
    std::string written;
    for (const auto& [mark, revision] : *marks) {
      FUZZ_CHECK(mark > 0 && bzr::isValidRevisionId(revision));
      written += ":" + std::to_string(mark) + " " + revision + "\n";
    }
    auto again = bzr::parseMarks(written);
    FUZZ_CHECK(again && *again == *marks);
  }
  return 0;
}
