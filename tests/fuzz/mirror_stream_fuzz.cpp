// The master's fast-import stream filter (core/mirror/fast_stream): what
// passes from an exporter to an importer. Contracts: the cut of the stream
// never changes the output, the commits read or the verdict; the output is
// the input without the original-oid lines; every commit it accepts has a
// new mark and parents that are known or earlier; after finish() every
// commit has its source revision.
#include <set>
#include <optional>
#include <string>

#include "core/mirror/fast_stream.h"
#include "fuzz.h"

using namespace pefnos;
using pefnos::fuzz::asText;

namespace {

constexpr uint64_t kKnownMax = 3;  // marks 1..3 are revisions the target already has

struct Run {
  std::string out;
  std::optional<std::string> error;
  bool finished = false;
};

Run run(mirror::StreamFilter& f, const std::vector<std::string_view>& pieces) {
  Run r;
  for (auto piece : pieces) {
    if (auto s = f.feed(piece, r.out); !s) {
      r.error = s.error().message;
      FUZZ_CHECK(!f.feed("x", r.out) && !f.finish());
      return r;
    }
  }
  auto s = f.finish();
  r.finished = bool(s);
  if (!s) r.error = "finish: " + s.error().message;
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input = asText(data, size);
  mirror::StreamFilter whole(kKnownMax, "refs/heads/main"), cut(kKnownMax, "refs/heads/main");
  Run a = run(whole, {input});
  Run b = run(cut, fuzz::chunks(input));
  FUZZ_CHECK(a.error == b.error);
  if (a.error && a.error->rfind("finish: ", 0) != 0) return 0;

  FUZZ_CHECK(a.out == b.out);
  FUZZ_CHECK(whole.bytes() == input.size() && cut.bytes() == input.size());
  FUZZ_CHECK(whole.commits().size() == cut.commits().size());
  FUZZ_CHECK(whole.knownParents() == cut.knownParents());

  // Only original-oid lines are taken out (with their LF); a last line
  // without LF stays unread until finish().
  size_t removed = 0;
  for (const auto& c : whole.commits()) removed += c.source.empty() ? 0 : 13 + c.source.size() + 1;
  FUZZ_CHECK(a.out.size() + removed <= input.size());

  std::set<uint64_t> marks;
  for (size_t i = 0; i < whole.commits().size(); ++i) {
    const auto& c = whole.commits()[i];
    FUZZ_CHECK(c.source == cut.commits()[i].source && c.mark == cut.commits()[i].mark &&
               c.parents == cut.commits()[i].parents);
    // A commit still open at the end of a broken stream may lack its mark.
    if (c.mark == 0) continue;
    FUZZ_CHECK(c.mark > kKnownMax && marks.insert(c.mark).second);
    for (uint64_t p : c.parents) {
      FUZZ_CHECK(p != 0);
      FUZZ_CHECK(p <= kKnownMax ? whole.knownParents().count(p) == 1 : marks.count(p) == 1);
    }
    if (a.finished) FUZZ_CHECK(!c.source.empty());
  }
  if (a.finished) {
    FUZZ_CHECK(a.out.size() + removed == input.size());
  }
  return 0;
}
