// The Subversion plugin's pure half (plugins/vcs-svn/svn_parse): `svn list
// --xml` and `svn log --xml -v` as pugixml reads them, the branch search fed
// with those listings, the history walk over that log, and revision ids,
// URLs and paths. Contracts: ids and encoded paths round-trip; a walked
// history is oldest first, each commit's parent the one before it, never
// longer than asked; the branch search only reports valid paths and ends.
#include <optional>
#include <set>
#include <string>

#include "fuzz.h"
#include "svn_parse.h"

using namespace pefnos;
using pefnos::fuzz::asText;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = asText(data, size);

  if (auto lists = svn::parseLists(input)) {
    for (const auto& list : *lists)
      for (const auto& e : list) FUZZ_CHECK(!e.name.empty() && e.last_changed >= 0);
    auto search = svn::BranchSearch::make(
        {Repo::Branch{"trunk", false}, Repo::Branch{"branches/*", true}, Repo::Branch{"tags/*/x", true}});
    FUZZ_CHECK(search);
    // Each round is fed the same listings: the search must still end.
    for (int round = 0; round < 8 && !search->finished(); ++round) {
      auto targets = search->targets();
      std::set<std::string> unique(targets.begin(), targets.end());
      FUZZ_CHECK(unique.size() == targets.size());
      search->feed(*lists);
    }
    for (const auto& h : search->heads()) {
      FUZZ_CHECK(svn::isValidBranchPath(h.branch));
      auto id = svn::parseRevisionId(h.revision);
      FUZZ_CHECK(id && id->path == h.branch);
    }
  }

  if (auto log = svn::parseLog(input)) {
    std::string branch = "/proj/trunk";
    if (!log->empty() && !log->front().paths.empty()) branch = log->front().paths.front().path;
    for (size_t limit : {size_t(1), size_t(1000)}) {
      auto commits = svn::branchHistory(*log, branch, "/proj", {svn::RevisionId{"trunk", 2}}, limit);
      FUZZ_CHECK(commits.size() <= limit && commits.size() <= log->size());
      for (size_t i = 0; i < commits.size(); ++i) {
        if (i > 0) FUZZ_CHECK(commits[i].parents.size() == 1 && commits[i].parents[0] == commits[i - 1].revision);
        FUZZ_CHECK(commits[i].revision.find('@') != std::string::npos);
      }
    }
    for (const auto& e : *log) (void)svn::isoDate(e.date);
  }

  if (auto id = svn::parseRevisionId(input)) {
    FUZZ_CHECK(svn::isValidBranchPath(id->path) && id->revision >= 0);
    auto back = svn::parseRevisionId(svn::revisionId(id->path, id->revision));
    FUZZ_CHECK(back && back->path == id->path && back->revision == id->revision);
  }
  if (svn::isValidBranchPath(input)) {
    auto back = svn::parseRevisionId(svn::revisionId(input, 7));
    FUZZ_CHECK(back && back->path == input && back->revision == 7);
  }
  std::string encoded = svn::encodePath(input);
  FUZZ_CHECK(svn::decodePercent(encoded) == input);
  for (unsigned char c : encoded) FUZZ_CHECK(c > 0x20 && c < 0x7f);
  if (auto path = svn::localPathOfUrl(input)) FUZZ_CHECK(path->find('\0') == std::string::npos);
  std::string url = svn::joinUrl(input, "trunk");
  FUZZ_CHECK(url.size() >= 6 && url.substr(url.size() - 6) == "/trunk");
  (void)svn::withoutTrailingSlash(input);
  (void)svn::parseYoungest(input);
  (void)svn::onlyMissingTargets(input);
  std::string iso = svn::isoDate(input);
  (void)iso;
  return 0;
}
