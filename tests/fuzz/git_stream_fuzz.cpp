// The git plugin's fast-import stream filters (plugins/vcs-git/git_stream):
// ExportFilter (git fast-export → host) and ImportFilter (host → git
// fast-import), and the parsers of rev-list and get-mark output. Contracts:
// the cut of a stream into chunks never changes what comes out or whether
// it is refused; the export filter only ever drops lines; the import filter
// never lets a refused command through and never names a mark twice.
#include <optional>
#include <set>
#include <string>

#include "fuzz.h"
#include "git_parse.h"
#include "git_stream.h"

using namespace pefnos;
using pefnos::fuzz::asText;

namespace {

const std::string kRef = "refs/heads/main";
const std::string kKnownOid = "0123456789abcdef0123456789abcdef01234567";

template <class Filter>
struct Run {
  std::string out;
  std::optional<std::string> error;  // of a feed, or of finish
};

template <class Filter>
Run<Filter> run(const std::vector<std::string_view>& pieces, Filter& f) {
  Run<Filter> r;
  for (auto piece : pieces) {
    if (auto s = f.feed(piece, r.out); !s) {
      r.error = s.error().message;
      FUZZ_CHECK(!f.finish());
      return r;
    }
  }
  if (auto s = f.finish(); !s) r.error = "finish: " + s.error().message;
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = asText(data, size);
  auto pieces = fuzz::chunks(input);

  {
    git::ExportFilter whole, cut;
    auto a = run({input}, whole);
    auto b = run(pieces, cut);
    FUZZ_CHECK(a.error == b.error);
    if (!a.error) {
      FUZZ_CHECK(a.out == b.out && whole.commits() == cut.commits() &&
                 whole.lastOriginal() == cut.lastOriginal());
      FUZZ_CHECK(a.out.size() <= input.size() + 1);  // lines are only dropped (the last gains its LF)
    }
  }
  {
    std::map<uint64_t, std::string> known{{1, kKnownOid}, {2, kKnownOid}};
    git::ImportFilter whole(kRef, known), cut(kRef, known);
    auto a = run({input}, whole);
    auto b = run(pieces, cut);
    FUZZ_CHECK(a.error == b.error);
    if (!a.error) {
      FUZZ_CHECK(a.out == b.out && whole.commitMarks() == cut.commitMarks());
      std::set<uint64_t> marks;
      for (uint64_t m : whole.commitMarks()) FUZZ_CHECK(m > 2 && marks.insert(m).second);
    }
  }

  for (size_t start = 0; start < input.size();) {
    size_t nl = input.find('\n', start);
    std::string_view line = input.substr(start, nl == std::string_view::npos ? nl : nl - start);
    if (auto e = git::parseRevListLine(line)) {
      FUZZ_CHECK(git::isObjectId(e->commit) && git::isObjectId(e->tree));
    }
    start = nl == std::string_view::npos ? input.size() : nl + 1;
  }
  for (size_t expected : {size_t(0), size_t(1), size_t(3)}) {
    if (auto ids = git::parseGetMarks(input, expected)) {
      FUZZ_CHECK(ids->size() == expected);
      for (const auto& id : *ids) FUZZ_CHECK(git::isObjectId(id));
    }
  }
  return 0;
}
